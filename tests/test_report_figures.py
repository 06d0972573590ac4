"""Cross-paper figures and the variants table from metrics files (made here), and the promise that
every number our paper notes (docs/papers/) list appears in that paper's reported-vs-reproduced
table data (reports/reported/<paper>.yaml), matched to a metric or explained."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asrcompress.report.figures import collect_points, write_all
from asrcompress.report.tables import build_table

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _suite(params_m: float, nonzero_m: float, wer: float, **extra: Any) -> dict[str, Any]:
    return {"params_m": params_m, "nonzero_params_m": nonzero_m, "wer_pct": wer, "wer_ci_low_pct": wer - 1,
            "wer_ci_high_pct": wer + 1, "gflops_utterance": 0.3 * params_m, **extra}


@pytest.fixture()
def metrics_tree(tmp_path: Path) -> Path:
    m = tmp_path / "reports/metrics"
    _write(m / "dense_hi.json", _suite(1.0, 1.0, 20.0))
    _write(m / "sgl_pruned_hi.json", _suite(0.7, 0.6, 21.0, reference="dense_hi", speedup_vs_reference=1.3))
    _write(m / "p1_imp_hi.json", _suite(1.0, 0.6, 23.0, reference="dense_hi"))
    _write(m / "dense_bm.json", _suite(1.0, 1.0, 18.0))
    _write(m / "p2_final.json", _suite(0.7, 0.7, 20.0, reference="dense_bm", speedup_vs_reference=1.4,
                                       real_speedup_30s=1.2))
    _write(m / "p2_merge_raw.json", _suite(0.8, 0.8, 600.0, reference="dense_bm", speedup_vs_reference=0.3))
    _write(tmp_path / "reports/p3/sweep.json", {"points": [
        {"point": "dense", "params_m": 1.0, "nonzero_params_m": 1.0, "wer_pct": 17.0},
        {"point": "global_x100", "params_m": 1.0, "nonzero_params_m": 0.6, "wer_pct": 19.0}]})
    _write(m / "p4_wav2vec2_dense.json", _suite(0.5, 0.5, 50.0))  # measure@ files of paper 4's entries
    _write(m / "p4_wav2vec2_gates.json", _suite(0.5, 0.2, 51.0, reference="p4_wav2vec2_dense"))
    _write(m / "p4_wav2vec2_structured.json", _suite(0.3, 0.3, 55.0, reference="p4_wav2vec2_dense"))
    _write(m / "p4_wav2vec2_gates_vs_control.json", {"wer_delta_abs": 1.0})  # a compare@ file: no point
    return tmp_path


def test_points_follow_the_metrics_files(metrics_tree: Path) -> None:
    points = {(p.paper, p.variant): p for p in collect_points(metrics_tree)}
    assert points[("p1", "dense_hi")].is_reference and not points[("p1", "p1_imp_hi")].is_reference
    assert points[("p1", "sgl_pruned_hi")].params_m == 0.7 and points[("p1", "sgl_pruned_hi")].wer_pct == 21.0
    assert points[("p1", "sgl_pruned_hi")].speedup == 1.3
    assert points[("p1", "p1_imp_hi")].params_m == 1.0 and points[("p1", "p1_imp_hi")].nonzero_params_m == 0.6
    assert ("p1", "p1_dense_ft_hi") not in points  # not measured: not invented
    assert points[("p2", "dense_bm")].is_reference and points[("p2", "final")].real_speedup == 1.2
    assert points[("p3", "global_x100")].nonzero_params_m == 0.6
    assert points[("p4", "wav2vec2:structured")].params_m == pytest.approx(0.3)  # physically removed
    assert points[("p4", "wav2vec2:gates")].params_m == pytest.approx(0.5)       # masked
    assert ("p4", "wav2vec2:ump") not in points  # absent from the metrics file: not invented
    assert points[("p4", "wav2vec2:dense")].is_reference and points[("p4", "wav2vec2:gates")].nonzero_params_m == 0.2
    assert len([p for p in points.values() if p.paper == "p4"]) == 3


def test_generic_variants_join_the_points(metrics_tree: Path) -> None:
    _write(metrics_tree / "reports/metrics/my_method.json", _suite(0.5, 0.5, 19.0, speedup_vs_reference=1.7,
                                                                   reference="dense_bm"))
    points = collect_points(metrics_tree, ["p1"], ["my_method", "not_measured_yet", "sgl_pruned_hi"])
    generic = [p for p in points if p.paper == "variants"]  # sgl_pruned_hi is drawn once, in p1's panel
    assert [(p.variant, p.is_reference) for p in generic] == [("dense_bm", True), ("my_method", False)]
    assert generic[-1].speedup == 1.7 and generic[0].wer_pct == 18.0
    # a paper's own variant listed under `variants` (paper 4's) is drawn in its paper's panel only
    both = collect_points(metrics_tree, ["p4"], ["p4_wav2vec2_gates", "my_method"])
    assert [(p.paper, p.variant) for p in both if "gates" in p.variant] == [("p4", "wav2vec2:gates")]


def test_figures_and_variants_table_are_written(metrics_tree: Path) -> None:
    written = write_all(metrics_tree)
    names = {p.name for p in written}
    assert {"wer_vs_params.png", "wer_vs_flops.png", "speedup.png", "variants.md"} <= names
    for p in written:
        assert p.stat().st_size > 1000 or p.suffix == ".md"
    table = (metrics_tree / "reports/tables/variants.md").read_text()
    assert "| p2 | merge_raw |" in table and "| p4 | wav2vec2:structured |" in table
    csv_rows = (metrics_tree / "reports/tables/variants.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(collect_points(metrics_tree))


def test_missing_papers_are_left_out_not_faked(tmp_path: Path) -> None:
    assert collect_points(tmp_path) == []
    assert [p.name for p in write_all(tmp_path)] == ["variants.md"]


NUMBER = re.compile(r"(?<![A-Za-z\d.,])\d+(?:[.,]\d+)*")


def _reported_numbers(note: Path) -> set[str]:
    """Numbers in the 'Reported numbers' table of one paper note (not those inside names like wav2vec2.0)."""
    text = note.read_text()
    section = text[text.index("## Reported"):]
    section = section[:section.index("\n## ", 5)]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    return {n for row in rows for n in NUMBER.findall(row)}


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (_strings(k) + _strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [str(node)]


@pytest.mark.parametrize("paper", ["p1", "p2", "p3", "p4"])
def test_every_reported_number_is_in_the_papers_table(paper: str) -> None:
    note = next((ROOT / "docs/papers").glob(f"{paper}_*.md"))
    data = yaml.safe_load((ROOT / f"reports/reported/{paper}.yaml").read_text())
    text = " ".join(_strings(data["rows"]))
    found = {float(n.replace(",", "")) for n in NUMBER.findall(text)}
    missing = sorted(n for n in _reported_numbers(note) if float(n.replace(",", "")) not in found)
    assert not missing, f"{note.name}: numbers not in reports/reported/{paper}.yaml: {missing}"
    # and every row of that yaml becomes a table row with a status
    _, rows = build_table(ROOT / f"reports/reported/{paper}.yaml", ROOT, "smoke")
    assert len(rows) == len(data["rows"]) and all(r["status"] for r in rows)
