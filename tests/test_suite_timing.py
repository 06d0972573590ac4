"""The measure suite's timing: batch-1 latency with repeats and the speed-up's spread, the fixed-length
timing of the architecture (encoder; encoder + N decoder steps), and their params."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_tiny_whisper
from transformers import WhisperFeatureExtractor

from asrcompress.config import ParamError, load_params
from asrcompress.measure.latency import paired_speedup
from asrcompress.measure.suite import _fixed_length_timing, _per_utt_latency, validate_measure_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair():
    """A tiny English-only Whisper and a wider reference, with a 1 s feature extractor (100 frames)."""
    processor = SimpleNamespace(feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=1))
    models = []
    for ffn in (32, 512):
        m = make_tiny_whisper(encoder_ffn_dim=ffn, decoder_ffn_dim=ffn)
        m.generation_config.is_multilingual = False
        m.generation_config.max_length = 6
        models.append(m)
    rng = np.random.default_rng(0)
    rows = [{"id": f"u{i}", "audio": {"array": 0.1 * rng.standard_normal(8000 + 1000 * i).astype(np.float32),
                                      "sampling_rate": 16000}, "duration": 0.5 + 0.0625 * i} for i in range(3)]
    return models[0], models[1], processor, rows


def test_paired_speedup_spread() -> None:
    out = paired_speedup([2.0, 2.0, 4.0], [1.0, 1.0, 1.0], n_resamples=200, seed=0, prefix="s")
    assert out["s"] == 2.0 and out["s_min"] == 2.0 and out["s_max"] == 4.0 and out["s_pairs"] == 3
    assert 2.0 <= out["s_ci_low"] <= out["s"] <= out["s_ci_high"] <= 4.0
    assert out == paired_speedup([2.0, 2.0, 4.0], [1.0, 1.0, 1.0], n_resamples=200, seed=0, prefix="s")  # seeded
    with pytest.raises(ValueError, match="2 reference vs 3 variant"):
        paired_speedup([1.0, 1.0], [1.0, 1.0, 1.0], 10, 0)


def test_per_utterance_latency_repeats_and_speedup_spread(pair) -> None:
    variant, reference, processor, rows = pair
    out = _per_utt_latency(variant, processor, rows, "en", reference, processor, seed=1, repeats=2, n_resamples=100)
    assert out["latency_repeats"] == 2 and out["latency_utterances"] == 3
    assert out["latency_ms_p10"] <= out["latency_ms_p50"] <= out["latency_ms_p90"]
    assert out["reference_latency_ms_p10"] <= out["reference_latency_ms_p90"]
    s = out["speedup_vs_reference"]
    assert out["speedup_vs_reference_min"] <= out["speedup_vs_reference_ci_low"] <= s
    assert s <= out["speedup_vs_reference_ci_high"] <= out["speedup_vs_reference_max"]
    assert out["speedup_vs_reference_pairs"] == 3  # one paired ratio per utterance
    alone = _per_utt_latency(variant, processor, rows[:2], "en", None, None, seed=1, repeats=1)
    assert "speedup_vs_reference" not in alone and alone["latency_repeats"] == 1


def test_fixed_length_timing_of_a_tiny_whisper(pair) -> None:
    variant, reference, processor, rows = pair
    out = _fixed_length_timing(variant, processor, rows[0], reference, processor, tokens=12, repeats=5, seed=3,
                               n_resamples=100)
    assert out["fixed_latency_tokens"] == 12 and out["fixed_repeats"] == 5
    for what in ("fixed_encoder", "fixed_latency"):
        for who in (what, f"reference_{what}"):
            assert 0 < out[f"{who}_ms_min"] <= out[f"{who}_ms_p50"] <= out[f"{who}_ms_max"]
        s = out[f"{what}_speedup"]
        assert out[f"{what}_speedup_min"] <= out[f"{what}_speedup_ci_low"] <= s <= out[f"{what}_speedup_ci_high"]
        assert out[f"{what}_speedup_pairs"] == 5  # one paired ratio per round
    # 12 forced decoder steps on top of the same encoder call cost more than the encoder alone
    assert out["fixed_latency_ms_p50"] > out["fixed_encoder_ms_p50"]
    alone = _fixed_length_timing(variant, processor, rows[0], None, None, tokens=2, repeats=2, seed=3, n_resamples=10)
    assert "fixed_encoder_speedup" not in alone and "reference_fixed_encoder_ms_p50" not in alone


@pytest.mark.parametrize(("key", "value", "message"), [
    ("latency_repeats", 0, r"measure\.latency_repeats: must be >= 1, got 0"),
    ("latency_repeats", 2.5, r"measure\.latency_repeats: must be int, got float"),
    ("fixed_tokens", 0, r"measure\.fixed_tokens: must be >= 1, got 0"),
    ("fixed_repeats", -1, r"measure\.fixed_repeats: must be >= 0, got -1"),
])
def test_timing_params_are_validated(key: str, value, message: str) -> None:
    cfg = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    validate_measure_params(cfg, "variants", "p1_imp_hi")
    cfg["measure"][key] = value
    with pytest.raises(ParamError, match=message):
        validate_measure_params(cfg, "variants", "p1_imp_hi")
    del cfg["measure"][key]
    with pytest.raises(ParamError, match=rf"measure\.{key}"):
        validate_measure_params(cfg, "variants", "p1_imp_hi")
