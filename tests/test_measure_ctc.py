"""The one measurement path on CTC models (paper 4): ``measure_variant`` measures a wav2vec2 / HuBERT
variant into the same flat schema as a Whisper one (WER with CI, counts, FLOPs, latency, peak RSS,
a paired test against its reference), decoding through ``inference.transcribe``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from asrcompress.compress.checkpoint import save_compressed
from asrcompress.compress.surgery import prune_ffn_neurons
from asrcompress.inference import transcribe
from asrcompress.measure.params import count_params
from asrcompress.measure.suite import measure_variant
from asrcompress.models.ctc import build_model, build_processor, build_vocab, save_pretrained, transcribe_ctc

TEXTS = ["the strange dog visited our bottle", "call 42 now", "a quick brown fox", "the dog", "our fox now"]
MCFG = {"num_threads": 1, "batch_size": 2, "bootstrap_resamples": 50, "latency_utterances": 3,
        "rss_utterances": 2, "real_scale_tokens": 4, "real_scale_repeats": 1, "latency_repeats": 2,
        "fixed_tokens": 4, "fixed_repeats": 2}
DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, spec_augment=False)


def _rows() -> list[dict]:
    rng = np.random.default_rng(3)
    out = []
    for i, (text, n) in enumerate(zip(TEXTS, [16000, 8000, 12000, 9600, 11200], strict=True)):
        out.append({"id": f"u{i}", "text": text, "duration": n / 16000,
                    "audio": {"array": (0.1 * rng.standard_normal(n)).astype(np.float32), "sampling_rate": 16000}})
    return out


@pytest.fixture(scope="module", params=["wav2vec2", "hubert"])
def ctc_dirs(request, tmp_path_factory) -> tuple[Path, Path, torch.nn.Module, torch.nn.Module]:
    """A dense CTC model (save_pretrained + processor) and a child with FFN neurons removed and
    weights zeroed (save_compressed + processor)."""
    tmp = tmp_path_factory.mktemp(request.param)
    proc = build_processor(build_vocab(TEXTS))
    torch.manual_seed(0)
    dense = build_model(request.param, "scratch", proc, DIMS).eval()
    save_pretrained(dense, proc, tmp / "dense")
    child = copy.deepcopy(dense)
    prune_ffn_neurons(child, "encoder", 0, list(range(16)))  # 16 of 64 neurons of layer 0
    with torch.no_grad():
        child.base_model.encoder.layers[1].feed_forward.intermediate_dense.weight[:, :8] = 0
    save_compressed(child, tmp / "child", "test_surgery", {"removed": 16}, processor=proc)
    return tmp / "dense", tmp / "child", dense, child


def test_transcribe_dispatches_ctc_models_to_greedy_ctc(ctc_dirs) -> None:
    _, _, dense, _ = ctc_dirs
    proc = build_processor(build_vocab(TEXTS))
    hyps, lengths = transcribe(dense, proc, _rows(), "en", batch_size=2)
    assert hyps == transcribe_ctc(dense, proc, _rows(), batch_size=2)
    # emitted labels (collapsed, blanks dropped): none exactly where the hypothesis is empty
    assert all(isinstance(n, int) and (n == 0) == (h == "") for n, h in zip(lengths, hyps, strict=True))
    assert sum(lengths) > 0
    with pytest.raises(ValueError, match="no decoder for model type"):
        transcribe(type("M", (), {"config": type("C", (), {"model_type": "bert"})()})(), proc, _rows(), "en")


def test_measure_variant_measures_a_ctc_model_against_its_reference(ctc_dirs) -> None:
    dense_dir, child_dir, dense, child = ctc_dirs
    rows = _rows()
    ref, ref_hyps = measure_variant(dense_dir, rows, "en", "english", MCFG, seed=1)
    # WER with its CI, every row's raw hypothesis (the greedy CTC decoding) with its errors
    for key in ("wer_pct", "wer_ci_low_pct", "wer_ci_high_pct", "cer_pct", "wer_raw_pct"):
        assert isinstance(ref[key], float), key
    assert ref["wer_ci_low_pct"] <= ref["wer_pct"] <= ref["wer_ci_high_pct"]
    assert [h["id"] for h in ref_hyps] == [r["id"] for r in rows]
    assert [h["hyp"] for h in ref_hyps] == transcribe_ctc(dense, build_processor(build_vocab(TEXTS)), rows, batch_size=2)
    assert all({"ref", "errors", "ref_words", "tokens"} <= set(h) for h in ref_hyps)
    assert ref["test_utterances"] == 5 and ref["method"] == "dense"
    # counts of the model as loaded
    counts = count_params(dense)
    assert ref["params"] == counts["params"] and ref["nonzero_params"] == counts["nonzero_params"]
    # FLOPs of the forward on an utterance of the mean test duration, latency, peak RSS of a probe process
    assert ref["gmacs_utterance"] > 0 and ref["gflops_utterance"] == pytest.approx(2 * ref["gmacs_utterance"])
    assert ref["flops_audio_s"] == pytest.approx(np.mean([r["duration"] for r in rows]))
    assert ref["latency_ms_p50"] > 0 and ref["latency_utterances"] == 3 and ref["peak_rss_delta_mib"] > 0

    errors = [h["errors"] for h in ref_hyps]
    m, hyps = measure_variant(child_dir, rows, "en", "english", MCFG, seed=1, reference_dir=dense_dir,
                              reference_metrics=ref, reference_errors=errors)
    removed = 16 * (2 * DIMS["hidden_size"] + 1)
    assert m["method"] == "test_surgery"
    assert m["params"] == ref["params"] - removed  # physically removed
    # zeroed weights count as sparsity only (the dense model's zero-initialised biases are zeros too)
    assert m["nonzero_params"] == count_params(child)["nonzero_params"]
    assert m["params"] - m["nonzero_params"] == ref["params"] - ref["nonzero_params"] - 16 + 8 * DIMS["intermediate_size"]
    assert m["sparsity_pct"] == pytest.approx(100 * (1 - m["nonzero_params"] / m["params"]))
    assert m["params_reduction_pct"] == pytest.approx(100 * removed / ref["params"])
    assert 0 < m["gmacs_utterance"] < ref["gmacs_utterance"]  # removed neurons cut MACs, zeroed ones do not
    assert m["speedup_vs_reference"] > 0 and m["reference_latency_ms_p50"] > 0
    assert m["paired_delta_wer_pct"] == pytest.approx(m["wer_delta_abs"])
    assert m["paired_delta_ci_low_pct"] <= m["paired_delta_wer_pct"] <= m["paired_delta_ci_high_pct"]
    assert m["wer_delta_abs"] == pytest.approx(m["wer_pct"] - ref["wer_pct"])
    assert [h["hyp"] for h in hyps] == transcribe_ctc(child, build_processor(build_vocab(TEXTS)), rows, batch_size=2)
