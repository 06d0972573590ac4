"""Real-scale projection and timing (measure/real_scale.py): the layer rule that maps a smoke model's
lost layers onto the real architecture, the speed-up spread of interleaved rounds, and the repeats
that an interval needs (issue 16, defect 5)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from transformers import WhisperConfig, WhisperForConditionalGeneration

from asrcompress.compress.surgery import STRUCTURE_FORMAT
from asrcompress.config import ParamError, load_params
from asrcompress.measure import real_scale
from asrcompress.measure.real_scale import build_real, project_structure, real_config, speedup_spread
from asrcompress.measure.suite import validate_measure_params


def _merged_smoke(ffn: float = 1.0) -> dict[str, Any]:
    """The smoke recipe's structure: 2+2 layers, the decoder's pair merged into one layer, rank d/4."""
    enc = [{"origin": [i], "ffn": 1.0, "heads": 1.0} for i in range(2)]
    dec = [{"origin": [0, 1], "ffn": ffn, "heads": 1.0, "cross_heads": 1.0}]
    return {"format": STRUCTURE_FORMAT, "kind": "fractions", "family": "whisper", "embedding_rank": 0.25,
            "stacks": {"encoder": {"base_layers": 2, "layers": enc}, "decoder": {"base_layers": 2, "layers": dec}}}


def test_one_merged_pair_costs_one_real_layer_under_the_count_rule() -> None:
    cfg = real_config("whisper-small")
    proj = project_structure(_merged_smoke(ffn=0.5), cfg)  # the default rule: count
    dec = proj["stacks"]["decoder"]["layers"]
    assert len(dec) == 11 and len(proj["stacks"]["encoder"]["layers"]) == 12  # not 6 of 12
    assert [r["origin"][0] for r in dec] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]  # the pair's slot: layer 6
    assert all(r["ffn"] == 0.5 for r in dec)  # every real layer takes the merged layer's widths
    frac = project_structure(_merged_smoke(), cfg, layers="fraction")  # the smoke model's share, labelled
    assert len(frac["stacks"]["decoder"]["layers"]) == 6
    with pytest.raises(ValueError, match="layer projection rule 'half'"):
        project_structure(_merged_smoke(), cfg, layers="half")


def test_projected_model_has_the_documented_layer_count() -> None:
    model = build_real("whisper-small", _merged_smoke(), device="meta")
    assert len(model.model.decoder.layers) == 11 and len(model.model.encoder.layers) == 12
    assert model.model.decoder.embed_tokens.rank == 192  # a quarter of d_model 768


def test_several_lost_layers_count_one_each() -> None:
    s = _merged_smoke()
    s["stacks"]["decoder"] = {"base_layers": 4, "layers": [{"origin": [0, 1], "ffn": 1.0, "heads": 1.0},
                                                           {"origin": [2, 3], "ffn": 1.0, "heads": 1.0}]}
    proj = project_structure(s, real_config("whisper-small"))
    assert len(proj["stacks"]["decoder"]["layers"]) == 10
    slots = [r["origin"][0] for r in proj["stacks"]["decoder"]["layers"]]
    assert slots == sorted(set(slots))


def test_speedup_spread_keys_and_interval() -> None:
    dense = {"encoder": [2.0] * 6, "decoder_token": [0.2, 0.21, 0.19, 0.2, 0.22, 0.18]}
    comp = {"encoder": [2.0] * 6, "decoder_token": [0.1, 0.1, 0.11, 0.09, 0.1, 0.1]}
    for d in (dense, comp):
        d["30s"] = [e + 10 * t for e, t in zip(d["encoder"], d["decoder_token"], strict=True)]
    tok = speedup_spread(dense, comp, "decoder_token", seed=1)
    assert tok["speedup_decoder_token"] == pytest.approx(2.0)
    assert tok["speedup_decoder_token_ci_low"] <= tok["speedup_decoder_token"] <= tok["speedup_decoder_token_ci_high"]
    assert tok["speedup_decoder_token_round_min"] <= tok["speedup_decoder_token_round_median"] \
        <= tok["speedup_decoder_token_round_max"] and tok["speedup_decoder_token_rounds"] == 6
    assert tok["speedup_decoder_token_ci_high"] > tok["speedup_decoder_token_ci_low"]  # noisy rounds: an interval
    e2e = speedup_spread(dense, comp, "30s", n_tokens=10, seed=1)
    assert e2e["speedup_30s"] == pytest.approx(4.0 / 3.0)  # (2 + 10 x 0.2) / (2 + 10 x 0.1)
    assert 1.0 < e2e["speedup_30s_ci_low"] <= e2e["speedup_30s_ci_high"] < 2.0
    enc = speedup_spread(dense, comp, "encoder")
    assert enc["speedup_encoder"] == enc["speedup_encoder_ci_low"] == enc["speedup_encoder_ci_high"] == 1.0


def test_too_few_repeats_are_refused() -> None:
    with pytest.raises(ValueError, match=r"measure\.real_scale_repeats"):
        real_scale.real_scale_report("whisper-small", _merged_smoke(), repeats=2)
    cfg = copy.deepcopy(load_params(profile="smoke"))
    cfg["measure"]["real_scale_repeats"] = 2
    with pytest.raises(ParamError, match=r"measure\.real_scale_repeats: must be >= 5, got 2"):
        validate_measure_params(cfg, "dense", "dense_en")
    cfg["measure"]["real_scale_repeats"] = 5
    cfg["measure"]["real_scale_layers"] = "proportional"
    with pytest.raises(ParamError, match=r"measure\.real_scale_layers"):
        validate_measure_params(cfg, "dense", "dense_en")


def test_report_on_a_tiny_real_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    hp = dict(vocab_size=64, num_mel_bins=80, max_source_positions=1500, max_target_positions=64, d_model=16,
              encoder_layers=2, decoder_layers=4, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=32, decoder_ffn_dim=32, decoder_start_token_id=1, bos_token_id=2,
              eos_token_id=2, pad_token_id=2)
    monkeypatch.setitem(real_scale.REAL_ARCHS, "tiny-test", (WhisperConfig, WhisperForConditionalGeneration, hp))
    out = real_scale.real_scale_report("tiny-test", _merged_smoke(), n_tokens=2, warmup=0, repeats=5, flops=False)
    assert out["layer_rule"] == "count" and out["decoder_layers"] == 3 and out["decoder_layers_dense"] == 4
    for what in ("encoder", "decoder_token", "30s"):
        k = f"speedup_{what}"
        assert out[f"{k}_ci_low"] <= out[f"{k}_ci_high"] and out[f"{k}_rounds"] == 5
        assert out[f"{k}_round_min"] <= out[f"{k}_round_median"] <= out[f"{k}_round_max"]
    assert out["speedup_encoder"] == 1.0  # the encoder is unchanged: timed once, shared
    assert out["speedup_30s"] == pytest.approx(out["rtfx_30s"] / out["rtfx_30s_dense"])
    assert out["params_reduction_pct"] > 0
