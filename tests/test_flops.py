"""FLOPs follow physical removal, not zeroing; attention matmuls are counted; the step cost is affine."""

import pytest
import torch
from conftest import make_tiny_ctc, make_tiny_whisper

from asrcompress.compress.surgery import factorize_embedding, prune_ffn_neurons, prune_heads, svd_factors
from asrcompress.measure.flops import (
    _WhisperEncoder,
    count_macs,
    ctc_flops,
    ctc_macs,
    whisper_cost,
    whisper_decoder_step_macs,
    whisper_encoder_macs,
    whisper_flops,
)


def test_ffn_removal_lowers_flops_zeroing_does_not():
    dense = make_tiny_whisper()
    before = whisper_flops(dense, n_new_tokens=8)
    zeroed = make_tiny_whisper()
    with torch.no_grad():
        for layer in [*zeroed.model.encoder.layers, *zeroed.model.decoder.layers]:
            layer.fc1.weight[:64].zero_()
            layer.fc1.bias[:64].zero_()
            layer.fc2.weight[:, :64].zero_()
    assert whisper_flops(zeroed, n_new_tokens=8) == before

    pruned = make_tiny_whisper()
    for stack in ("encoder", "decoder"):
        for i in range(2):
            prune_ffn_neurons(pruned, stack, i, range(64))
    after = whisper_flops(pruned, n_new_tokens=8)
    # per layer and position: fc1 loses 64 x (64 + 1 bias), fc2 loses 64 x 64 MACs
    per_pos = 64 * 65 + 64 * 64
    assert (before["gmacs_encoder"] - after["gmacs_encoder"]) * 1e9 == pytest.approx(2 * 50 * per_pos)
    assert (before["gmacs_decoder_token"] - after["gmacs_decoder_token"]) * 1e9 == pytest.approx(2 * per_pos)
    assert after["gflops_utterance"] == 2 * after["gmacs_utterance"]


def test_ctc_ffn_removal_lowers_flops_zeroing_does_not():
    m = make_tiny_ctc("hubert")
    before = ctc_macs(m, 16000)
    with torch.no_grad():
        m.hubert.encoder.layers[0].feed_forward.intermediate_dense.weight[:64].zero_()
    assert ctc_macs(m, 16000) == before
    prune_ffn_neurons(m, "encoder", 0, range(64))
    assert ctc_macs(m, 16000) < before
    f = ctc_flops(m, seconds=1.0)
    assert f["gflops_per_audio_s"] == 2 * f["gmacs_per_audio_s"]


def test_eager_attention_matmuls_are_counted(tiny_whisper):
    assert tiny_whisper.config._attn_implementation == "sdpa"
    sdpa = count_macs(_WhisperEncoder(tiny_whisper), torch.zeros(1, 80, 100))
    eager = whisper_encoder_macs(tiny_whisper)
    assert tiny_whisper.config._attn_implementation == "sdpa"  # restored
    # per layer: Q K^T and A V (50 x 50 x 64 each) + softmax over 4 heads x 50 x 50
    assert eager - sdpa == 2 * (2 * 50 * 50 * 64 + 4 * 50 * 50)


def test_decoder_step_is_affine_in_past_length(tiny_whisper):
    cost = whisper_cost(tiny_whisper)
    for past in (0, 3, 11, 40):
        assert whisper_decoder_step_macs(tiny_whisper, past) == cost.step(past)
    # per past position and layer: 2 matmuls x 4 heads x 16 dims + softmax over 4 heads
    assert cost.step_slope == 2 * (2 * 4 * 16 + 4)
    # cross K/V once per utterance: k (no bias) and v projections of 50 encoder states, 2 layers
    assert cost.cross_kv == 2 * (50 * 64 * 64 + 50 * (64 * 64 + 64))
    n = 5
    assert cost.utterance_macs(n, 1) == cost.encoder + cost.cross_kv + sum(cost.step(t) for t in range(n))


def test_head_and_embedding_surgery_lower_decoder_flops():
    m = make_tiny_whisper()
    step, cross = whisper_decoder_step_macs(m, 4), whisper_cost(m).cross_kv
    prune_heads(m, "decoder", 0, [0, 1], attn="cross")
    assert whisper_cost(m).cross_kv < cross and whisper_decoder_step_macs(m, 4) < step
    step = whisper_decoder_step_macs(m, 4)
    A, B = svd_factors(m.model.decoder.embed_tokens.weight.detach(), 8)
    factorize_embedding(m, A, B)
    # logits 300 x 64 -> 8 x (64 + 300); the embedding lookup gains 8 x 64
    assert step - whisper_decoder_step_macs(m, 4) == 300 * 64 - 8 * (64 + 300) - 8 * 64
