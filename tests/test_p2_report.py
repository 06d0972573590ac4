"""Paper 2 on the one measurement path: its variants are `variants` entries (measure@p2_<v>), its
"performance kept" and part reductions come from compare@ (measure/compare.py), its table and figures
from those flat files (report/figures.py), and a row that holds by construction is not a match
(issue 16, defect 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from asrcompress.config import load_params
from asrcompress.measure.compare import compare_variants
from asrcompress.report.figures import collect_points, p2_summary_rows, write_all
from asrcompress.report.tables import build_table, compare_row, write_index

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _hyps(errors: list[int]) -> list[dict[str, Any]]:
    return [{"id": f"u{i}", "errors": e, "ref_words": 10} for i, e in enumerate(errors)]


def test_by_construction_is_shown_but_never_a_match(tmp_path: Path) -> None:
    row = {"id": "emb", "setting": {"m": "lowrank"}, "quantity": "x", "kind": "relative", "source": "s",
           "reported": 4.0, "tolerance": 0.5, "by_construction": "the rank was chosen to give it"}
    out = compare_row(row, 3.9, None, "smoke")
    assert out["status"] == "by construction: the rank was chosen to give it"
    assert out["ours"] == 3.9 and out["diff"] == pytest.approx(-0.1)
    index = tmp_path / "README.md"
    write_index([({"paper": "p2", "title": "t"}, [out])], index)
    assert "| 1 | 0 | 0 | 0 | 0 |" in index.read_text()  # one row, not counted as a match


def test_the_embedding_row_of_p2_is_marked_by_construction() -> None:
    rows = {r["id"]: r for r in yaml.safe_load((ROOT / "reports/reported/p2.yaml").read_text())["rows"]}
    assert rows["embedding_factor"].get("by_construction")
    assert "by_construction" not in rows["perf_kept"]


def test_compare_gives_performance_kept_and_part_factors() -> None:
    v = {"wer_pct": 28.0, "decoder_params": 500, "token_embedding_params": 100, "encoder_params": 500}
    b = {"wer_pct": 20.0, "decoder_params": 1000, "token_embedding_params": 400, "encoder_params": 500}
    out = compare_variants(v, _hyps([3] * 16 + [2] * 4), b, _hyps([2] * 20), n_resamples=50, seed=0)
    assert out["performance_kept_pct"] == pytest.approx(90.0)  # (100 - 28) / (100 - 20)
    assert out["wer_relative_change_pct"] == pytest.approx(40.0)
    assert out["decoder_params_reduction_pct"] == pytest.approx(50.0)
    assert out["token_embedding_params_factor"] == pytest.approx(4.0)
    assert out["encoder_params_factor"] == pytest.approx(1.0)
    babble = compare_variants({"wer_pct": 50.0}, _hyps([1]), {"wer_pct": 100.0}, _hyps([1]), n_resamples=5, seed=0)
    assert babble["performance_kept_pct"] is None


def test_p2_is_measured_and_compared_by_the_generic_stages() -> None:
    cfg = load_params(ROOT / "params.yaml", profile="smoke")
    for key in cfg["p2"]["variants"]:
        entry = cfg["variants"][f"p2_{key}"]
        assert entry["model"] == f"data/models/p2_{key}" and entry["reference"] == cfg["p2"]["reference"]
    measured = set(cfg["variants"]) | set(cfg["dense"])
    for key, c in cfg["comparisons"].items():
        assert c["variant"] in measured and c["baseline"] in measured, key
    for row in yaml.safe_load((ROOT / "reports/reported/p2.yaml").read_text())["rows"]:
        if row.get("ours"):  # every p2 row reads a measure@ or compare@ file
            stem = Path(row["ours"]["metrics"]).stem
            assert stem in cfg["variants"] or stem in cfg["comparisons"], row["id"]
    assert not (ROOT / "stages/p2_measure.py").exists() and not (ROOT / "stages/p2_report.py").exists()


@pytest.fixture()
def p2_tree(tmp_path: Path) -> Path:
    m = tmp_path / "reports/metrics"
    suite = {"params_m": 1.0, "nonzero_params_m": 1.0, "wer_ci_low_pct": 1.0, "wer_ci_high_pct": 30.0}
    _write(m / "dense_bm.json", {**suite, "wer_pct": 10.0, "variant": "dense_bm"})
    for key, wer in (("p2_control", 8.0), ("p2_final", 11.0)):
        _write(m / f"{key}.json", {**suite, "params_m": 0.7 if key == "p2_final" else 1.0, "wer_pct": wer,
                                   "variant": key, "reference": "dense_bm", "speedup_vs_reference": 1.2,
                                   "params_reduction_pct": 30.0})
    fin = json.loads((m / "p2_final.json").read_text())
    fin.update(real_speedup_30s=1.05, real_speedup_30s_ci_low=1.01, real_speedup_30s_ci_high=1.09,
               real_speedup_decoder_token=1.4, real_params_reduction_pct=20.0, real_decoder_layers=11)
    _write(m / "p2_final.json", fin)
    _write(m / "p2_final_vs_dense.json", {"comparison": "p2_final_vs_dense", "variant": "p2_final",
                                          "baseline": "dense_bm", "performance_kept_pct": 98.9})
    _write(m / "p2_final_vs_control.json", {"comparison": "p2_final_vs_control", "variant": "p2_final",
                                            "baseline": "p2_control", "performance_kept_pct": 96.7,
                                            "p_value_worse": 0.01})
    _write(tmp_path / "reports/p2/final/compress.json", {"dev_loss_init": 0.3, "lowrank": {"rank": 4},
                                                         "structure": {"decoder_layers": 1, "embedding_rank": 4}})
    (tmp_path / "reports/p2/final/rank_error.csv").write_text(
        "rank,rank_fraction,plain_weight_rel_err,plain_act_rel_err,aware_weight_rel_err,aware_act_rel_err\n"
        "2,0.125,0.5,0.4,0.55,0.3\n4,0.25,0.3,0.2,0.35,0.1\n16,1.0,0,0,0,0\n")
    return tmp_path


def test_p2_summary_and_points_read_the_flat_files(p2_tree: Path) -> None:
    rows = {r["variant"]: r for r in p2_summary_rows(p2_tree)}
    assert list(rows) == ["dense_bm", "p2_control", "p2_final"]
    fin = rows["p2_final"]
    assert fin["performance_kept_pct"] == 98.9 and fin["performance_kept_vs_control_pct"] == 96.7
    assert fin["real_speedup_30s_ci_low"] == 1.01 and fin["decoder_layers"] == 1 and fin["dev_loss_init"] == 0.3
    assert rows["p2_control"]["performance_kept_pct"] is None  # no comparisons entry: not invented
    points = collect_points(p2_tree, ["p2"], ["p2_final", "p2_control"])
    assert sorted(p.variant for p in points) == ["control", "dense_bm", "final"]  # no compare@ files, no doubles
    assert all(p.paper == "p2" for p in points)
    names = {p.name for p in write_all(p2_tree, ["p2"], ["p2_final", "p2_control"])}
    assert {"p2_summary.md", "p2_rank_error.png", "p2_speedup.png"} <= names
    assert "| p2_final | 0.7 |" in (p2_tree / "reports/tables/p2_summary.md").read_text()
    _, table = build_table(ROOT / "reports/reported/p2.yaml", p2_tree, "smoke")
    status = {r["id"]: r["status"] for r in table}
    assert status["perf_kept"] == "differs" and status["speedup_real_arch"] == "differs"
    assert status["embedding_factor"].startswith("not run")
