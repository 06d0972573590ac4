"""The real-track figures: WER vs non-zero parameters and vs latency of real_variants (stages/real_figures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import load_stage

from asrcompress.config import ParamError
from asrcompress.report.figures import measured_variants


def _metrics(root: Path, key: str, params_m: float, wer: float, latency: float, reference: str | None) -> None:
    d = root / "reports/metrics"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{key}.json").write_text(json.dumps({
        "variant": key, "reference": reference, "params_m": params_m, "nonzero_params_m": params_m, "wer_pct": wer,
        "wer_ci_low_pct": wer - 1, "wer_ci_high_pct": wer + 1, "latency_ms_p50": latency}))


def test_real_figures_draw_every_variant_beside_its_reference(tmp_path: Path, monkeypatch) -> None:
    _metrics(tmp_path, "base_en_real", 72.6, 11.4, 900.0, None)
    _metrics(tmp_path, "base_en_synth", 72.6, 50.1, 400.0, None)
    _metrics(tmp_path, "x_final_en", 50.0, 12.0, 600.0, "base_en_real")
    _metrics(tmp_path, "x_control_en", 72.6, 11.0, 910.0, "base_en_real")
    _metrics(tmp_path, "x_final_synth", 50.0, 30.0, 300.0, "base_en_synth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "smoke", "real_variants": {
        "x_final_en": {"corpus": "en_real"}, "x_control_en": {"corpus": "en_real"}, "x_final_synth": {"corpus": "en"}}}))
    monkeypatch.chdir(tmp_path)
    stage = load_stage("real_figures")
    stage.main("fig/x", "x_final_en", "x_control_en", "x_final_synth")
    for what in ("params", "latency"):
        assert (tmp_path / f"fig/x_wer_vs_{what}.png").stat().st_size > 5000
    points = measured_variants(tmp_path, ["x_final_en", "x_control_en"])
    assert [p.variant for p in points] == ["base_en_real", "x_final_en", "x_control_en"]  # the reference once
    assert points[1].latency_ms_p50 == 600.0
    with pytest.raises(FileNotFoundError, match=r"x_missing\.json: not measured"):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "smoke", "real_variants": {
            "x_missing": {"corpus": "en"}}}))
        stage.main("fig/y", "x_missing")
    with pytest.raises(ParamError, match=r"real_variants\.nope"):
        stage.main("fig/y", "nope")
