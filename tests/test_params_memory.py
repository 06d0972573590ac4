"""Parameter counts (real configs on meta, ties, masks), weight bytes, checkpoint size, peak RSS."""

import sys

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from conftest import make_tiny_ctc, make_tiny_whisper

from asrcompress.measure.memory import dir_size_bytes, memory_metrics, peak_rss_subprocess, weight_bytes
from asrcompress.measure.params import count_params, percent_reduction
from asrcompress.measure.real_scale import REFERENCE_PARAMS, build_real, real_config


@pytest.mark.parametrize("name", ["whisper-small", "whisper-medium", "wav2vec2-base", "hubert-large"])
def test_real_configs_on_meta(name):
    p = count_params(build_real(name, device="meta"))
    assert p["params"] == REFERENCE_PARAMS[name]
    assert p["encoder_params"] + p["decoder_params"] + p["embedding_params"] + p["other_params"] == p["params"]
    assert p["nonzero_params"] is None
    if name == "whisper-small":
        assert p["params"] == 241_734_912 and p["token_embedding_params"] == 39_832_320
    if name == "whisper-medium":
        assert p["params"] == 763_857_920 and p["token_embedding_params"] == 53_109_760


def test_real_structure_half_ffn_half_heads_on_meta():
    from asrcompress.compress.surgery import uniform_fractions

    s = uniform_fractions(real_config("whisper-small"), ffn=0.5, heads=0.5)
    p = count_params(build_real("whisper-small", s, device="meta"))["params"]
    ffn = 1536 * (2 * 768 + 1)  # removed per layer: fc1 rows + bias, fc2 columns
    attn = 4 * 384 * 768 + 2 * 384  # 6 of 12 heads: q/k/v rows, out_proj columns, q/v bias
    assert p == 241_734_912 - 12 * (ffn + attn) - 12 * (ffn + 2 * attn)


def test_tied_embedding_counted_once(tiny_whisper):
    m = tiny_whisper
    assert m.proj_out.weight is m.model.decoder.embed_tokens.weight
    p = count_params(m)
    assert p["params"] == sum(x.numel() for x in m.parameters())  # torch dedupes the tie too
    naive = sum(x.numel() for _, x in m.named_parameters(remove_duplicate=False))
    assert naive - p["params"] == m.proj_out.weight.numel()
    assert p["token_embedding_params"] == 300 * 64 and p["other_params"] == 0


def test_ctc_buckets(tiny_ctc):
    p = count_params(tiny_ctc)
    assert p["decoder_params"] == 0 and p["token_embedding_params"] == 0
    assert p["other_params"] >= tiny_ctc.lm_head.weight.numel()
    assert 0 < p["frontend_params"] < p["encoder_params"]


def test_nonzero_with_masks_and_zeroing():
    m = make_tiny_whisper()
    base = count_params(m)
    fc1 = m.model.encoder.layers[0].fc1
    torch_prune.l1_unstructured(fc1, "weight", amount=0.5)
    p = count_params(m)
    assert p["params"] == base["params"]  # masks never remove parameters
    assert base["nonzero_params"] - p["nonzero_params"] == fc1.weight.numel() // 2
    with torch.no_grad():
        m.model.decoder.layers[0].fc2.weight.zero_()
    assert count_params(m)["nonzero_params"] == p["nonzero_params"] - 128 * 64
    assert weight_bytes(m) == 4 * base["params"]  # the prune mask buffer is not counted
    assert weight_bytes(m, include_masks=True) == 4 * base["params"] + 4 * fc1.weight.numel()


def test_weight_bytes_dtypes_and_percent_reduction(tiny_whisper):
    n = count_params(tiny_whisper)["params"]
    assert weight_bytes(tiny_whisper) == 4 * n
    assert weight_bytes(tiny_whisper.half()) == 2 * n
    assert percent_reduction(65, 100) == pytest.approx(35.0)
    with pytest.raises(ValueError):
        percent_reduction(1, 0)


def test_checkpoint_size(tmp_path, tiny_whisper):
    tiny_whisper.save_pretrained(tmp_path)
    m = memory_metrics(tiny_whisper, tmp_path)
    assert m["checkpoint_bytes"] == dir_size_bytes(tmp_path)
    assert m["weight_bytes"] < m["checkpoint_bytes"] < m["weight_bytes"] + 64 * 1024  # + headers, json


def test_peak_rss_probe_loads_compressed_checkpoint(tmp_path):
    from asrcompress.compress.checkpoint import save_compressed
    from asrcompress.compress.surgery import prune_ffn_neurons

    m = make_tiny_ctc("wav2vec2")
    prune_ffn_neurons(m, "encoder", 0, range(64))
    save_compressed(m, tmp_path, method="test", method_params={})
    r = peak_rss_subprocess([sys.executable, "-m", "asrcompress.measure.memory_probe", str(tmp_path),
                             "--seconds", "1", "--loader", "compressed"])
    assert r["loader"] == "compressed" and r["task"] == "forward" and r["input_shape"] == [1, 16000]
    assert r["peak_rss_mib"] >= r["baseline_rss_mib"] > 50  # torch is imported before the baseline
    assert 0 <= r["peak_rss_delta_mib"] < 500
    assert r["cuda_peak_mib"] is None


def test_project_tiny_structure_onto_real_layers():
    from asrcompress.compress.surgery import prune_ffn_neurons, prune_heads, remove_layers, structure_of

    tiny = make_tiny_whisper()
    remove_layers(tiny, "decoder", [1])
    prune_heads(tiny, "encoder", 0, [0, 1])
    prune_ffn_neurons(tiny, "encoder", 1, range(32))
    real = build_real("whisper-small", structure_of(tiny), device="meta")
    enc = real.model.encoder.layers
    assert len(enc) == 12 and len(real.model.decoder.layers) == 11  # one layer removed: one real layer (count)
    share = build_real("whisper-small", structure_of(tiny), device="meta", layers="fraction")
    assert len(share.model.decoder.layers) == 6  # the smoke model's share: tiny decoder layer 1 -> real 6..11
    assert [layer.self_attn.num_heads for layer in enc] == [6] * 6 + [12] * 6
    assert [layer.fc1.out_features for layer in enc] == [3072] * 6 + [2304] * 6


@pytest.mark.gpu
def test_cuda_peak_memory():
    from asrcompress.measure.memory import cuda_peak_mib

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    peak = cuda_peak_mib(lambda: torch.ones(256, 1024, 1024, device="cuda"))  # 1 GiB of fp32
    assert 1023 <= peak < 1100
