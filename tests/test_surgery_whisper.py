"""Physical surgery on Whisper: shapes, parameter counts, function preservation, generate() after edits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny_whisper
from transformers import WhisperConfig, WhisperForConditionalGeneration

from asrcompress.compress.surgery import (
    LowRankEmbedding,
    SurgeryError,
    WhisperAttentionNoHeads,
    apply_structure,
    factorize_embedding,
    merge_layers,
    num_parameters,
    prune_ffn_neurons,
    prune_heads,
    remove_layers,
    scale_structure,
    structure_fractions,
    structure_of,
    svd_factors,
    uniform_fractions,
)
from asrcompress.compress.surgery import _round_kept as round_kept

D, HEADS, HD, FFN, VOCAB = 64, 4, 16, 128, 300
DEC = torch.tensor([[1, 5, 7, 9, 11, 13]] * 2)


def logits(model, feats):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=DEC).logits


def incremental_logits(model, feats, split=2):
    """Logits of DEC[:, split:] computed with the KV cache filled by DEC[:, :split]."""
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state
        first = model(encoder_outputs=(enc,), decoder_input_ids=DEC[:, :split], use_cache=True)
        steps = []
        past = first.past_key_values
        for t in range(split, DEC.shape[1]):
            out = model(encoder_outputs=(enc,), decoder_input_ids=DEC[:, t:t + 1], past_key_values=past,
                        use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        return torch.cat(steps, dim=1)


def check_generate(model, feats):
    """generate() (greedy and beam) runs with the KV cache and cached decoding equals a full forward."""
    out = model.generate(feats, max_new_tokens=6, min_new_tokens=6)
    assert out.shape[0] == 2 and out.shape[1] >= 6
    beams = model.generate(feats, max_new_tokens=4, min_new_tokens=4, num_beams=2)
    assert beams.shape[0] == 2
    torch.testing.assert_close(incremental_logits(model, feats), logits(model, feats)[:, 2:], atol=1e-5, rtol=1e-5)


def test_ffn_neuron_with_zero_fc2_column_is_removed_without_changing_outputs(tiny_whisper, whisper_features):
    m = tiny_whisper
    with torch.no_grad():
        m.model.encoder.layers[0].fc2.weight[:, [3, 10]] = 0
        m.model.decoder.layers[1].fc2.weight[:, [0, 127]] = 0
    ref = logits(m, whisper_features)
    n0 = num_parameters(m)
    prune_ffn_neurons(m, "encoder", 0, [3, 10])
    prune_ffn_neurons(m, "decoder", 1, [127, 0])
    assert num_parameters(m) == n0 - 4 * (2 * D + 1)
    assert m.model.encoder.layers[0].fc1.weight.shape == (FFN - 2, D)
    assert m.model.encoder.layers[0].fc2.weight.shape == (D, FFN - 2)
    assert m.model.decoder.layers[1].fc1.out_features == FFN - 2
    torch.testing.assert_close(logits(m, whisper_features), ref, atol=1e-5, rtol=1e-5)
    check_generate(m, whisper_features)


def test_zero_width_ffn_is_a_residual_pass_through(tiny_whisper, whisper_features):
    m = tiny_whisper
    ref_model = copy.deepcopy(m)
    with torch.no_grad():  # reference: the FFN contributes only fc2's bias
        for layer in (ref_model.model.encoder.layers[1], ref_model.model.decoder.layers[0]):
            layer.fc2.weight.zero_()
    prune_ffn_neurons(m, "encoder", 1, range(FFN))
    prune_ffn_neurons(m, "decoder", 0, list(range(FFN)))
    assert m.model.encoder.layers[1].fc1.weight.shape == (0, D)
    assert m.model.decoder.layers[0].fc2.weight.shape == (D, 0)
    assert m.model.decoder.layers[0].fc2.bias.shape == (D,)
    torch.testing.assert_close(logits(m, whisper_features), logits(ref_model, whisper_features), atol=1e-5, rtol=1e-5)
    check_generate(m, whisper_features)


@pytest.mark.parametrize("stack,layer,attn", [("encoder", 0, "self"), ("decoder", 1, "self"), ("decoder", 0, "cross")])
def test_head_with_zero_out_proj_columns_is_removed_without_changing_outputs(stack, layer, attn, whisper_features):
    m = make_tiny_whisper()
    owner = getattr(m.model, stack).layers[layer]
    att = owner.encoder_attn if attn == "cross" else owner.self_attn
    with torch.no_grad():
        att.out_proj.weight[:, 1 * HD:2 * HD] = 0  # head 1 writes nothing
        att.out_proj.weight[:, 3 * HD:4 * HD] = 0  # nor head 3
    ref = logits(m, whisper_features)
    n0 = num_parameters(m)
    prune_heads(m, stack, layer, [3, 1], attn=attn)
    # q, k, v rows + out_proj columns (4 * hd * d) and q, v bias entries (Whisper's k_proj has no bias)
    assert num_parameters(m) == n0 - 2 * (4 * HD * D + 2 * HD)
    assert att.num_heads == 2 and att.head_dim == HD and att.embed_dim == 2 * HD
    assert att.q_proj.weight.shape == (2 * HD, D) and att.out_proj.weight.shape == (D, 2 * HD)
    assert att.k_proj.bias is None and att.v_proj.bias.shape == (2 * HD,)
    torch.testing.assert_close(logits(m, whisper_features), ref, atol=1e-5, rtol=1e-5)
    check_generate(m, whisper_features)


def test_successive_head_pruning_records_original_indices(tiny_whisper, whisper_features):
    m = tiny_whisper
    prune_heads(m, "decoder", 1, [1], attn="cross")
    prune_heads(m, "decoder", 1, [0], attn="cross")  # current head 0 = original head 0
    prune_heads(m, "decoder", 1, [1])  # self-attention: current 1 = original 1
    prune_heads(m, "decoder", 1, [1])  # now current 1 = original 2
    rec = structure_of(m)["stacks"]["decoder"]["layers"][1]
    assert rec["cross_heads"] == [2, 3]
    assert rec["heads"] == [0, 3]
    check_generate(m, whisper_features)


@pytest.mark.parametrize("stack,layer,attn", [("decoder", 0, "self"), ("decoder", 1, "cross"), ("encoder", 0, "self")])
def test_removing_every_head_outputs_the_out_proj_bias(stack, layer, attn, whisper_features):
    """All heads removed: the attention outputs out_proj.bias at every position (= zero out_proj weight).
    Decoder layer 0 self-attention is the case the KV cache counts positions from."""
    m = make_tiny_whisper()
    ref_model = copy.deepcopy(m)
    owner = getattr(ref_model.model, stack).layers[layer]
    with torch.no_grad():
        (owner.encoder_attn if attn == "cross" else owner.self_attn).out_proj.weight.zero_()
    n0 = num_parameters(m)
    prune_heads(m, stack, layer, range(HEADS), attn=attn)
    att = getattr(m.model, stack).layers[layer]
    att = att.encoder_attn if attn == "cross" else att.self_attn
    assert isinstance(att, WhisperAttentionNoHeads) and att.num_heads == 0
    assert num_parameters(m) == n0 - HEADS * (4 * HD * D + 2 * HD)
    torch.testing.assert_close(logits(m, whisper_features), logits(ref_model, whisper_features), atol=1e-5, rtol=1e-5)
    check_generate(m, whisper_features)
    assert structure_of(m)["stacks"][stack]["layers"][layer]["cross_heads" if attn == "cross" else "heads"] == []


def test_remove_layers_renumbers_cache_slots_and_config(tiny_whisper, whisper_features):
    m = make_tiny_whisper(decoder_layers=3, encoder_layers=3)
    n0 = num_parameters(m)
    per_dec = sum(p.numel() for p in m.model.decoder.layers[0].parameters())
    per_enc = sum(p.numel() for p in m.model.encoder.layers[0].parameters())
    remove_layers(m, "decoder", [0])
    remove_layers(m, "encoder", [2, 0])
    assert num_parameters(m) == n0 - per_dec - 2 * per_enc
    assert m.config.decoder_layers == 2 and m.config.encoder_layers == 1
    assert m.model.decoder.config.decoder_layers == 2
    assert [layer.self_attn.layer_idx for layer in m.model.decoder.layers] == [0, 1]
    assert [layer.encoder_attn.layer_idx for layer in m.model.decoder.layers] == [0, 1]
    st = structure_of(m)
    assert st["layers_kept"] == {"encoder": [1], "decoder": [1, 2]}
    assert st["stacks"]["decoder"]["base_layers"] == 3
    check_generate(m, whisper_features)
    remove_layers(m, "encoder", [0])  # an encoder may lose every layer
    assert m.config.encoder_layers == 0
    check_generate(m, whisper_features)


def test_removing_every_decoder_layer_is_refused(tiny_whisper):
    with pytest.raises(SurgeryError, match="decoder: cannot remove every layer"):
        remove_layers(tiny_whisper, "decoder", [0, 1])


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_merge_with_1_0_equals_dropping_the_second_layer(stack, whisper_features):
    a = make_tiny_whisper(encoder_layers=3, decoder_layers=3)
    b = copy.deepcopy(a)
    merge_layers(a, stack, 1, 1.0, 0.0)
    remove_layers(b, stack, [2])
    assert num_parameters(a) == num_parameters(b)
    assert torch.equal(logits(a, whisper_features), logits(b, whisper_features))
    assert structure_of(a)["stacks"][stack]["layers"][1]["origin"] == [1, 2]
    check_generate(a, whisper_features)


def test_merge_averages_every_parameter(tiny_whisper, whisper_features):
    m = tiny_whisper
    first = {k: v.clone() for k, v in m.model.decoder.layers[0].named_parameters()}
    second = {k: v.clone() for k, v in m.model.decoder.layers[1].named_parameters()}
    merge_layers(m, "decoder", 0, 0.25, 0.75)
    assert len(m.model.decoder.layers) == 1 and m.config.decoder_layers == 1
    for name, p in m.model.decoder.layers[0].named_parameters():
        torch.testing.assert_close(p, 0.25 * first[name] + 0.75 * second[name])
    check_generate(m, whisper_features)


def test_merge_of_different_shapes_is_refused(tiny_whisper):
    prune_heads(tiny_whisper, "encoder", 1, [0])
    with pytest.raises(SurgeryError, match=r"encoder layers 0 and 1: .*k_proj.weight has shape \(64, 64\) vs \(48, 64\)"):
        merge_layers(tiny_whisper, "encoder", 0, 0.5, 0.5)
    with pytest.raises(SurgeryError, match="cannot merge layers 1 and 2"):
        merge_layers(tiny_whisper, "decoder", 1, 0.5, 0.5)


def test_full_rank_factorisation_reproduces_logits(tiny_whisper, whisper_features):
    m = tiny_whisper
    ref = logits(m, whisper_features)
    W = m.model.decoder.embed_tokens.weight
    A, B = svd_factors(W, D)
    torch.testing.assert_close(A @ B, W, atol=1e-5, rtol=1e-4)
    factorize_embedding(m, A, B)
    emb = m.model.decoder.embed_tokens
    assert isinstance(emb, LowRankEmbedding) and emb.rank == D
    assert m.proj_out.embedding is emb  # the output projection uses the very same parameters
    assert not any(k.startswith("proj_out") for k in m.state_dict())
    torch.testing.assert_close(logits(m, whisper_features), ref, atol=1e-4, rtol=1e-4)
    check_generate(m, whisper_features)


def test_low_rank_factorisation_counts_and_generates(tiny_whisper, whisper_features):
    m = tiny_whisper
    n0 = num_parameters(m)
    A, B = svd_factors(m.model.decoder.embed_tokens.weight, 8)
    factorize_embedding(m, A, B)
    assert num_parameters(m) == n0 - VOCAB * D + 8 * (VOCAB + D)
    assert structure_of(m)["embedding_rank"] == 8
    # gradients reach the shared factors through both the input lookup and the output logits
    m.train()
    loss = m(input_features=whisper_features, labels=DEC[:, 1:]).loss
    loss.backward()
    assert m.model.decoder.embed_tokens.A.grad is not None and m.model.decoder.embed_tokens.B.grad.abs().sum() > 0
    m.eval()
    check_generate(m, whisper_features)
    # a second factorisation of an already factorised model
    A2, B2 = svd_factors(m.model.decoder.embed_tokens.full_weight(), 4)
    factorize_embedding(m, A2, B2)
    assert m.model.decoder.embed_tokens.rank == 4
    check_generate(m, whisper_features)


def test_bad_requests_name_stack_layer_and_index(tiny_whisper):
    m = tiny_whisper
    with pytest.raises(SurgeryError, match=r"decoder layer 1: head 7 does not exist \(layer has 4 heads\)"):
        prune_heads(m, "decoder", 1, [7])
    with pytest.raises(SurgeryError, match=r"decoder layer 0 cross-attention: head 4 does not exist"):
        prune_heads(m, "decoder", 0, [4], attn="cross")
    with pytest.raises(SurgeryError, match=r"encoder layer 0: duplicate head indices \[2\]"):
        prune_heads(m, "encoder", 0, [2, 2])
    with pytest.raises(SurgeryError, match=r"encoder layer 1: neuron 128 does not exist \(FFN has 128 neurons\)"):
        prune_ffn_neurons(m, "encoder", 1, [0, 128])
    with pytest.raises(SurgeryError, match=r"encoder layer 1: neuron -1 does not exist"):
        prune_ffn_neurons(m, "encoder", 1, [-1])
    with pytest.raises(SurgeryError, match=r"decoder: layer 5 does not exist \(decoder has 2 layers\)"):
        prune_ffn_neurons(m, "decoder", 5, [0])
    with pytest.raises(SurgeryError, match=r"unknown stack 'middle'"):
        remove_layers(m, "middle", [0])
    with pytest.raises(SurgeryError, match=r"encoder: layer 2 does not exist"):
        remove_layers(m, "encoder", [2])
    with pytest.raises(SurgeryError, match=r"encoder layer 0: no cross-attention"):
        prune_heads(m, "encoder", 0, [0], attn="cross")
    with pytest.raises(SurgeryError, match=r"decoder embedding: factors must be \(300 x r\) and \(r x 64\)"):
        factorize_embedding(m, torch.zeros(299, 4), torch.zeros(4, 64))
    with pytest.raises(SurgeryError, match="rank 65 out of range"):
        svd_factors(torch.zeros(300, 64), 65)
    # nothing was changed by the refused requests
    assert num_parameters(m) == num_parameters(make_tiny_whisper())


def test_structure_roundtrip_on_a_fresh_model(tiny_whisper, whisper_features):
    m = make_tiny_whisper(encoder_layers=3, decoder_layers=3)
    prune_heads(m, "encoder", 2, [0, 3])
    prune_heads(m, "decoder", 2, [1], attn="cross")
    prune_ffn_neurons(m, "decoder", 2, range(0, 128, 2))
    remove_layers(m, "encoder", [0])
    merge_layers(m, "decoder", 0, 0.5, 0.5)
    factorize_embedding(m, *svd_factors(m.model.decoder.embed_tokens.weight, 16))
    st = structure_of(m)
    assert json.loads(json.dumps(st)) == st
    assert st["base_config"]["encoder_layers"] == 3 and st["base_config"]["tie_word_embeddings"] is True
    fresh = WhisperForConditionalGeneration(WhisperConfig(**st["base_config"])).eval()
    apply_structure(fresh, st)
    assert structure_of(fresh) == st
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    fresh.load_state_dict(m.state_dict(), strict=True)
    fresh.generation_config = m.generation_config
    assert torch.equal(logits(fresh, whisper_features), logits(m, whisper_features))


def test_rounding_rule_for_fractions():
    assert round_kept(0.5, 12) == 6
    assert round_kept(0.3, 4) == 1  # 1.2 -> 1
    assert round_kept(0.375, 4) == 2  # 1.5 -> 2: halves round up
    assert round_kept(0.01, 4) == 1  # a kept fraction > 0 keeps at least one unit
    assert round_kept(0.0, 4) == 0
    assert round_kept(1 / 3, 12) == 4  # float noise tolerated
    with pytest.raises(SurgeryError):
        round_kept(1.5, 4)


def test_fraction_structure_transfers_to_a_bigger_architecture(whisper_features):
    small = make_tiny_whisper(encoder_layers=3, decoder_layers=3)
    prune_heads(small, "encoder", 0, [0, 1])  # keep 2/4
    prune_heads(small, "decoder", 2, [0, 1, 2], attn="cross")  # keep 1/4
    prune_ffn_neurons(small, "decoder", 1, range(96))  # keep 32/128
    remove_layers(small, "encoder", [1])
    big_cfg = dict(d_model=128, encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=512,
                   decoder_ffn_dim=512, encoder_layers=3, decoder_layers=3)
    big = make_tiny_whisper(seed=1, **big_cfg)
    fr = structure_fractions(structure_of(small))
    assert fr["stacks"]["decoder"]["layers"][1]["ffn"] == 0.25
    target = scale_structure(fr, big.config)
    apply_structure(big, target)
    st = structure_of(big)
    enc, dec = st["stacks"]["encoder"]["layers"], st["stacks"]["decoder"]["layers"]
    assert [r["origin"] for r in enc] == [[0], [2]]
    assert [len(r["heads"]) for r in enc] == [4, 8]
    assert [r["ffn"] for r in dec] == [512, 128, 512]
    assert [len(r["cross_heads"]) for r in dec] == [8, 8, 2]
    check_generate(big, whisper_features)
    with pytest.raises(SurgeryError, match="encoder: structure has a 3-layer base, target config has 2 layers"):
        scale_structure(fr, make_tiny_whisper().config)


def test_uniform_half_structure_on_whisper_small_counts_exactly():
    """Whisper-small architecture (meta device: no memory, instant): half the FFN neurons and heads of every
    layer removes exactly the hand-computed number of parameters."""
    cfg = WhisperConfig(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=51865,
                        num_mel_bins=80, max_source_positions=1500, max_target_positions=448)
    with torch.device("meta"):
        m = WhisperForConditionalGeneration(cfg)
    assert num_parameters(m) == 241_734_912
    apply_structure(m, uniform_fractions(cfg, ffn=0.5, heads=0.5))
    attn_half = 4 * 384 * 768 + 2 * 384  # q, k, v rows + out_proj columns; q and v biases
    ffn_half = 1536 * (2 * 768 + 1)
    removed = 12 * (attn_half + ffn_half) + 12 * (2 * attn_half + ffn_half)
    assert num_parameters(m) == 241_734_912 - removed
    assert m.model.decoder.layers[5].encoder_attn.num_heads == 6
    assert m.model.encoder.layers[11].fc1.out_features == 1536
