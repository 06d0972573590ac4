"""Reported-vs-reproduced tables and the CI regression check."""

import json
from pathlib import Path

import pytest
import yaml

from asrcompress.report.regression import compare
from asrcompress.report.tables import build_table, compare_row, load_reported, write_index, write_table

ROOT = Path(__file__).resolve().parents[1]
RULES = yaml.safe_load((ROOT / "reports/tolerances.yaml").read_text())["rules"]


@pytest.mark.parametrize("paper", ["p1", "p2", "p3", "p4"])
def test_reported_files_are_valid_and_cover_the_paper_notes(paper):
    data = load_reported(ROOT / f"reports/reported/{paper}.yaml")
    assert data["paper"] == paper and len(data["rows"]) >= 4
    for row in data["rows"]:
        assert row.get("ours") or row.get("reason")


def test_status_logic():
    row = {"id": "x", "setting": {"m": "s"}, "quantity": "q", "kind": "relative", "source": "abs",
           "reported": 35.4, "tolerance": 5.0}
    assert compare_row(row, 33.0, None, "smoke")["status"] == "matches"
    assert compare_row(row, 20.0, None, "smoke")["status"] == "differs"
    assert compare_row(row, None, "not run (f missing)", "smoke")["status"].startswith("not run")
    limited = {**row, "comparable_in": ["paper"], "reason": "medium only"}
    out = compare_row(limited, 20.0, None, "smoke")
    assert out["status"].startswith("not comparable in smoke") and out["ours"] == 20.0 and out["diff"] == -15.4
    qual = {**row, "kind": "qualitative", "reported": "<= 0", "check": {"max": 0.0}}
    assert compare_row(qual, -0.5, None, "smoke")["status"] == "matches"
    assert compare_row(qual, 1.5, None, "smoke")["status"] == "differs"


def test_table_files_written(tmp_path):
    m = tmp_path / "reports/metrics"
    m.mkdir(parents=True)
    (m / "sgl_pruned_hi.json").write_text(json.dumps(
        {"params_reduction_pct": 32.0, "nonzero_params_reduction_pct": 40.0, "wer_pct": 20.0}))
    (m / "p1_imp_hi.json").write_text(json.dumps(
        {"params_reduction_pct": 0.0, "nonzero_params_reduction_pct": 39.5, "wer_pct": 31.5}))
    data, rows = build_table(ROOT / "reports/reported/p1.yaml", tmp_path, "smoke")
    write_table(data, rows, tmp_path / "t.md", tmp_path / "t.csv")
    write_index([(data, rows)], tmp_path / "README.md")
    md = (tmp_path / "t.md").read_text()
    assert "small_params" in md and "35.4" in md and "matches" in md
    by_id = {r["id"]: r for r in rows}
    assert by_id["small_params"]["ours"] == 32.0
    assert by_id["vs_imp_wer"]["ours"] == 11.5    # across files: p1_imp_hi wer_pct - sgl_pruned_hi wer_pct
    assert by_id["small_flops"]["status"].startswith("not run")  # key absent: not invented
    assert "tables/p1.md" in (tmp_path / "README.md").read_text()


def test_p1_vs_imp_reported_on_physical_and_nonzero_counts(tmp_path):
    m = tmp_path / "reports/metrics"
    m.mkdir(parents=True)
    (m / "sgl_pruned_hi.json").write_text(json.dumps({"params_reduction_pct": 29.0,
                                                      "nonzero_params_reduction_pct": 35.0}))
    (m / "p1_imp_hi.json").write_text(json.dumps({"params_reduction_pct": 0.0, "nonzero_params_reduction_pct": 34.0}))
    _, rows = build_table(ROOT / "reports/reported/p1.yaml", tmp_path, "smoke")
    by_id = {r["id"]: r for r in rows}
    assert by_id["vs_imp_params"]["ours"] == 29.0 and "PHYSICAL" in by_id["vs_imp_params"]["quantity"]
    assert by_id["vs_imp_nonzero_params"]["ours"] == 1.0 and "NON-ZERO" in by_id["vs_imp_nonzero_params"]["quantity"]


@pytest.mark.parametrize(("ci", "status"), [((-2.0, -0.5), "matches"), ((-1.0, 3.0), "inconclusive"),
                                             ((0.5, 4.0), "differs")])
def test_use_ci_check_is_decided_by_the_whole_interval(tmp_path, ci, status):
    """p1 small_wer: "not degraded" (WER change <= 0) with use_ci: the point estimate alone (-0.2 here)
    does not make it match when the paired CI reaches above 0."""
    m = tmp_path / "reports/metrics"
    m.mkdir(parents=True)
    (m / "sgl_pruned_hi.json").write_text(json.dumps(
        {"wer_delta_abs": -0.2 if status != "differs" else 2.0,
         "paired_delta_ci_low_pct": ci[0], "paired_delta_ci_high_pct": ci[1]}))
    _, rows = build_table(ROOT / "reports/reported/p1.yaml", tmp_path, "smoke")
    assert {r["id"]: r for r in rows}["small_wer"]["status"].startswith(status)


def test_use_ci_without_ci_keys_is_refused(tmp_path):
    data = yaml.safe_load((ROOT / "reports/reported/p1.yaml").read_text())
    row = next(r for r in data["rows"] if r["id"] == "small_wer")
    del row["ours"]["ci"]
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="small_wer: check.use_ci needs ours.ci"):
        load_reported(tmp_path / "p1.yaml")


def test_use_ci_row_measured_on_the_real_model_only(tmp_path):
    """p1 small_wer_real_speech has no smoke figure (ours: null): its use_ci check judges the real column by
    the real CI, which must be named; the smoke column says why it has no figure."""
    data = yaml.safe_load((ROOT / "reports/reported/p1.yaml").read_text())
    row = next(r for r in data["rows"] if r["id"] == "small_wer_real_speech")
    assert row["ours"] is None and row["check"]["use_ci"]
    m = tmp_path / "reports/metrics"
    m.mkdir(parents=True)
    (m / "p1r_sgl_pruned_hi_real.json").write_text(json.dumps(
        {"wer_delta_abs": 3.0, "paired_delta_ci_low_pct": 1.0, "paired_delta_ci_high_pct": 5.0,
         "paired_p_value_b_worse": 0.001}))
    _, rows = build_table(ROOT / "reports/reported/p1.yaml", tmp_path, "smoke", real=True)
    out = {r["id"]: r for r in rows}["small_wer_real_speech"]
    assert out["status"].startswith("not comparable in smoke") and out["ours"] is None
    assert out["real"] == 3.0 and out["real_status"] == "differs" and "[+1, +5]" in out["note"]
    del row["real"]["ci"]
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="small_wer_real_speech: check.use_ci needs real.ci"):
        load_reported(tmp_path / "p1.yaml")


def _diff(old, new, path="reports/metrics/dense_en.json"):
    return {path: {k: {"old": old[k], "new": new.get(k)} for k in old}}


BASE = {"wer_pct": 12.0, "wer_ci_low_pct": 10.5, "wer_ci_high_pct": 13.5, "params": 1000, "gmacs_utterance": 0.5,
        "speedup_vs_reference": 2.0, "latency_ms_p50": 30.0}


def test_equal_metrics_pass_the_regression_check():
    findings = compare(_diff(BASE, dict(BASE)), RULES, {"reports/metrics/dense_en.json": BASE})
    assert findings and all(f.verdict == "ok" for f in findings)


@pytest.mark.parametrize("change", [{"wer_pct": 16.5}, {"params": 1001}, {"gmacs_utterance": 0.6},
                                    {"speedup_vs_reference": 1.0}, {"wer_pct": None}])
def test_worse_metrics_fail_the_regression_check(change):
    findings = compare(_diff(BASE, {**BASE, **change}), RULES, {"reports/metrics/dense_en.json": BASE})
    assert any(f.verdict == "regression" for f in findings)


def test_wer_within_ci_is_not_a_regression_and_improvement_is_reported():
    ok = compare(_diff(BASE, {**BASE, "wer_pct": 13.4}), RULES, {"reports/metrics/dense_en.json": BASE})
    assert not any(f.verdict == "regression" for f in ok)
    better = compare(_diff(BASE, {**BASE, "wer_pct": 7.0}), RULES, {"reports/metrics/dense_en.json": BASE})
    assert any(f.verdict == "improvement" and f.key == "wer_pct" for f in better)


def test_exact_rule_is_limited_to_its_files():
    """A pruned model's count (trained structure) may fall; a dense model's may not change at all."""
    pruned = compare(_diff({"params": 1000}, {"params": 850}, "reports/metrics/p1_prune.json"), RULES)
    assert [f.verdict for f in pruned] == ["improvement"]
    dense = compare(_diff({"params": 1000}, {"params": 900}), RULES)
    assert [f.verdict for f in dense] == ["regression"]


def test_trained_component_counts_are_listed_and_totals_guarded():
    old = {"params": 1000, "encoder_params": 400}
    moved = compare(_diff(old, {"params": 1020, "encoder_params": 460}, "reports/metrics/sgl_pruned_hi.json"), RULES)
    assert {f.key: f.verdict for f in moved} == {"params": "ok", "encoder_params": "changed"}
    grown = compare(_diff(old, {"params": 1200, "encoder_params": 400}, "reports/metrics/sgl_pruned_hi.json"), RULES)
    assert {f.key: f.verdict for f in grown}["params"] == "regression"
    dense = compare(_diff(old, {"params": 1000, "encoder_params": 401}), RULES)  # dense: still exact
    assert {f.key: f.verdict for f in dense}["encoder_params"] == "regression"


def test_info_rule_lists_but_never_fails():
    moved = compare(_diff({"wer_pct": 600.0}, {"wer_pct": 700.0}, "reports/metrics/p2_merge_raw.json"), RULES)
    assert [f.verdict for f in moved] == ["changed"]


def test_machines_line_names_both_sides():
    from asrcompress.report.regression import machines_line

    line = machines_line({"a.json": {"runtime_cpu_model": "CPU A", "runtime_cpu_kernels": "AVX2"}},
                         {"a.json": {"runtime_cpu_model": "CPU B"}, "b.json": {}})
    assert line == "machines: committed figures from CPU A (AVX2); reproduced on CPU B (kernels not recorded)"
    assert machines_line({}, {}).endswith("unknown")


def test_relative_wer_change_is_listed_but_its_wers_are_guarded():
    old = {"wer_pct": 6.0, "wer_rel_increase_pct": 20.0}
    moved = compare(_diff(old, {"wer_pct": 7.0, "wer_rel_increase_pct": 60.0}, "reports/metrics/p2_final.json"), RULES)
    assert {f.key: f.verdict for f in moved} == {"wer_pct": "ok", "wer_rel_increase_pct": "changed"}
    worse = compare(_diff(old, {"wer_pct": 12.0, "wer_rel_increase_pct": 140.0}, "reports/metrics/p2_final.json"), RULES)
    assert {f.key: f.verdict for f in worse}["wer_pct"] == "regression"


LOCK = "stages:\n  pretrain:\n    outs:\n    - path: data/models/pretrained\n      md5: {h}.dir\n"


def test_same_draw_reads_the_pretrained_model_hash_from_both_locks():
    from asrcompress.report.regression import same_draw

    assert same_draw(LOCK.format(h="aa"), LOCK.format(h="aa"))[0] is True
    same, line = same_draw(LOCK.format(h="aa"), LOCK.format(h="bb"))
    assert same is False and "another draw" in line
    assert same_draw("", LOCK.format(h="aa"))[0] is None
    assert same_draw(LOCK.format(h="aa"), "stages: {tokenizer: {}}")[0] is None


def test_another_draw_widens_wer_margins_only():
    """A different pre-trained model: a pruned WER 8 points up is a draw, 12 up still a regression;
    count rules are untouched."""
    tol = yaml.safe_load((ROOT / "reports/tolerances.yaml").read_text())
    margin = float(tol["other_draw"]["wer_max_rise"])
    path = "reports/metrics/sgl_pruned_hi.json"
    old = {"wer_pct": 16.0, "params": 1000}
    same = compare(_diff(old, {"wer_pct": 24.4, "params": 1000}, path), RULES)
    assert {f.key: f.verdict for f in same}["wer_pct"] == "regression"
    draw = compare(_diff(old, {"wer_pct": 24.4, "params": 1000}, path), RULES, draw_margin=margin)
    assert {f.key: f.verdict for f in draw}["wer_pct"] == "ok"
    worse = compare(_diff(old, {"wer_pct": 16.0 + margin + 2, "params": 1200}, path), RULES, draw_margin=margin)
    assert {f.key: f.verdict for f in worse} == {"wer_pct": "regression", "params": "regression"}
