"""The leaderboard (compress/board.py, report/leaderboard.py, pipelines/leaderboard): params checked before any
work, one measure entry per board entry and corpus, paired tests and Pareto fronts from what measure wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DELETE, load_stage, set_param

from asrcompress.compress.board import check_leaderboard_section, measure_entries
from asrcompress.config import ParamError
from asrcompress.report.leaderboard import board_rows, budget_group, budget_summary, pareto

ROOT = Path(__file__).resolve().parents[1]


def test_committed_leaderboard_params_pass_and_expand(committed_params):
    sec = check_leaderboard_section(committed_params)
    keys = measure_entries(committed_params)
    assert len(keys) == len(sec["entries"]) * len(sec["measure_on"])
    assert keys["lb_wanda_b30_real"] == {"model": "data/models/lb/wanda_b30", "corpus": "en_real",
                                         "reference": "base_en_real"}
    assert keys["lb_wanda_b30_synth"]["test_utterances"] == 100


@pytest.mark.parametrize(("path", "value", "match"), [
    (("entries", "wanda_b30", "budgte"), 0.3, r"leaderboard\.entries\.wanda_b30\.budgte"),
    (("entries", "wanda_b30", "calibration_tokens"), "many", r"leaderboard\.entries\.wanda_b30\.calibration_tokens"),
    (("entries", "int8", "method"), "asrcompress.compress.nosuch", r"leaderboard\.entries\.int8\.method: cannot import"),
    (("entries", "int8", "method"), "asrcompress.config", r"leaderboard\.entries\.int8\.method: .*no board_compress"),
    (("entries", "p3_b30", "sensitivity"), DELETE, r"leaderboard\.entries\.p3_b30\.sensitivity"),
    (("entries", "l1_b30", "label"), DELETE, r"leaderboard\.entries\.l1_b30\.label"),
    (("calibration", "split"), "test", r"leaderboard\.calibration\.split"),
    (("measure_on", "real", "corpus"), "nosuch", r"real_corpora\.nosuch"),
    (("imported", "p2_final", "measured"), DELETE, r"leaderboard\.imported\.p2_final\.measured"),
    (("imported", "p1_sgl_b30", "compress_record"), 3, r"leaderboard\.imported\.p1_sgl_b30\.compress_record"),
    (("collapsed_wer_pct",), "100", r"leaderboard\.collapsed_wer_pct"),
    (("collapsed_wer_pct",), -1.0, r"leaderboard\.collapsed_wer_pct"),
])
def test_a_bad_leaderboard_key_is_named(committed_params, path, value, match):
    set_param(committed_params, ("leaderboard", *path), value)
    with pytest.raises(ParamError, match=match):
        check_leaderboard_section(committed_params)


def test_every_entry_has_a_compress_and_a_measure_stage_on_every_corpus(committed_params):
    stages = yaml.safe_load((ROOT / "pipelines/leaderboard/dvc.yaml").read_text())["stages"]
    sec = committed_params["leaderboard"]
    assert stages["lb_compress"]["foreach"] == "${leaderboard.entries}"
    assert stages["lb_measure"]["foreach"] == "${leaderboard.entries}"
    cmds = " ".join(stages["lb_measure"]["do"]["cmd"])
    for where, spec in sec["measure_on"].items():
        assert f"lb_${{key}}_{where} " in cmds
        for f in (f"reports/metrics/{spec['reference']}.json", f"reports/hyps/{spec['reference']}.jsonl"):
            assert f in stages["lb_measure"]["do"]["deps"] and f in stages["leaderboard"]["deps"]
    for imp in sec["imported"].values():
        for key in imp["measured"].values():
            assert f"reports/metrics/{key}.json" in stages["leaderboard"]["deps"], key
            assert f"reports/hyps/{key}.jsonl" in stages["leaderboard"]["deps"], key
        records = imp.get("compress_record") or []
        for rec in [records] if isinstance(records, str) else records:  # a file, or under a folder dep
            assert any(rec == d or rec.startswith(d + "/") for d in stages["leaderboard"]["deps"]), rec


def _write_measure(root: Path, sub: str, key: str, params: int, nonzero: int, errors: list[int], **extra) -> None:
    metrics = {"params": params, "nonzero_params": nonzero, "checkpoint_mib": params / 2**18, "weights_mib": 1.0,
               "wer_pct": 100.0 * sum(errors) / (10 * len(errors)), "wer_ci_low_pct": 0.0, "wer_ci_high_pct": 99.0,
               **extra}
    (root / "reports" / sub / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "reports" / sub / "hyps").mkdir(parents=True, exist_ok=True)
    (root / "reports" / sub / "metrics" / f"{key}.json").write_text(json.dumps(metrics))
    (root / "reports" / sub / "hyps" / f"{key}.jsonl").write_text(
        "".join(json.dumps({"id": f"u{i}", "errors": e, "ref_words": 10}) + "\n" for i, e in enumerate(errors)))


def _board(tmp_path: Path) -> dict:
    cfg = {"leaderboard": {
        "measure_on": {"real": {"reference": "d_real", "corpus": "c1"}, "synth": {"reference": "d_synth", "corpus": "c2"}},
        "entries": {"small": {"label": "S"}, "zeros": {"label": "Z"}},
        "imported": {"paper": {"label": "P", "measured": {"real": "p_real", "synth": "p_synth"}}}}}
    _write_measure(tmp_path, "", "d_real", 1000, 1000, [1] * 20)
    _write_measure(tmp_path, "", "d_synth", 1000, 1000, [2] * 20)
    # "small": physically 30 % smaller, clearly worse on real speech, faster
    _write_measure(tmp_path, "leaderboard", "lb_small_real", 700, 700, [3] * 20, speedup_vs_reference=1.4)
    _write_measure(tmp_path, "leaderboard", "lb_small_synth", 700, 700, [2] * 20)
    # "zeros": 50 % zeros, same size on disk and speed as dense, a little worse: dominated by dense on both fronts
    _write_measure(tmp_path, "leaderboard", "lb_zeros_real", 1000, 500, [1] * 19 + [2], speedup_vs_reference=1.0)
    _write_measure(tmp_path, "leaderboard", "lb_zeros_synth", 1000, 500, [2] * 20)
    _write_measure(tmp_path, "", "p_real", 600, 600, [9] * 20, speedup_vs_reference=1.2, reference="d_real")
    _write_measure(tmp_path, "", "p_synth", 600, 600, [2] * 20)
    for name, cpu in (("small", 5.0), ("zeros", 1.0)):
        (tmp_path / "reports/leaderboard/compress").mkdir(parents=True, exist_ok=True)
        (tmp_path / "reports/leaderboard/compress" / f"{name}.json").write_text(json.dumps({"compress_cpu_s": cpu}))
    return cfg


def test_board_rows_pair_every_entry_with_dense_and_mark_the_fronts(tmp_path):
    cfg = _board(tmp_path)
    listed = board_rows(cfg, tmp_path, n_resamples=200, seed=0)
    pareto(listed)
    rows = {r["entry"]: r for r in listed}
    assert list(rows) == ["dense", "small", "zeros", "paper"]
    assert rows["small"]["removed_pct"] == pytest.approx(30.0) and rows["zeros"]["removed_pct"] == pytest.approx(50.0)
    assert rows["small"]["delta_real"] == pytest.approx(20.0) and rows["small"]["p_worse_real"] == 0.0
    assert rows["small"]["delta_synth"] == pytest.approx(0.0)
    assert rows["paper"]["delta_real"] == pytest.approx(80.0)
    assert rows["small"]["compress_cpu_s"] == 5.0 and rows["paper"]["compress_cpu_s"] is None
    assert rows["dense"]["pareto_bytes"] and rows["small"]["pareto_bytes"] and rows["paper"]["pareto_bytes"]
    assert not rows["zeros"]["pareto_bytes"] and not rows["zeros"]["pareto_speed"]
    assert rows["small"]["pareto_speed"] and not rows["paper"]["pareto_speed"]  # slower than small AND worse
    assert [budget_group(x)[:5] for x in (0.0, 30.0, 50.0)] == ["< 5 %", "~30 %", "~50 %"]


def test_an_imported_method_run_in_several_stages_adds_their_cpu_time(tmp_path):
    cfg = _board(tmp_path)
    for name, record in (("train", {"compress_cpu_s": 100.0}), ("prune", {"compress_cpu_s": 20.5}), ("old", {})):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    cfg["leaderboard"]["imported"]["paper"]["compress_record"] = ["train.json", "prune.json"]
    assert board_rows(cfg, tmp_path, n_resamples=10)[-1]["compress_cpu_s"] == pytest.approx(120.5)
    cfg["leaderboard"]["imported"]["paper"]["compress_record"] = "train.json"
    assert board_rows(cfg, tmp_path, n_resamples=10)[-1]["compress_cpu_s"] == pytest.approx(100.0)
    cfg["leaderboard"]["imported"]["paper"]["compress_record"] = ["train.json", "old.json"]  # one without the figure
    assert board_rows(cfg, tmp_path, n_resamples=10)[-1]["compress_cpu_s"] is None
    cfg["leaderboard"]["imported"]["paper"]["compress_record"] = ["train.json", 3]
    with pytest.raises(ValueError, match=r"leaderboard\.imported\.paper\.compress_record"):
        board_rows(cfg, tmp_path, n_resamples=10)


def test_a_missing_measurement_is_named(tmp_path):
    cfg = _board(tmp_path)
    (tmp_path / "reports/leaderboard/metrics/lb_zeros_synth.json").unlink()
    with pytest.raises(Exception, match="lb_zeros_synth.json"):
        board_rows(cfg, tmp_path)


def test_an_imported_entry_timed_against_another_model_is_refused(tmp_path):
    cfg = _board(tmp_path)
    _write_measure(tmp_path, "", "p_real", 600, 600, [9] * 20, speedup_vs_reference=1.2, reference="control")
    with pytest.raises(ValueError, match="timed against 'control'"):
        board_rows(cfg, tmp_path)


def test_pareto_keeps_only_undominated_rows():
    rows = [{"entry": "a", "wer_real": 10, "checkpoint_mib": 100, "speedup": 1.0},
            {"entry": "b", "wer_real": 12, "checkpoint_mib": 50, "speedup": 1.5},
            {"entry": "c", "wer_real": 13, "checkpoint_mib": 60, "speedup": 1.4},
            {"entry": "d", "wer_real": 10, "checkpoint_mib": 100, "speedup": None},
            {"entry": "e", "wer_real": 12.5, "checkpoint_mib": 49.8, "speedup": 1.0}]   # 0.4 % smaller than b: a tie
    pareto(rows)
    assert [r["entry"] for r in rows if r["pareto_bytes"]] == ["a", "b", "d"]  # a and d tie: neither beats
    assert [r["entry"] for r in rows if r["pareto_speed"]] == ["a", "b"]


def test_lb_compress_stage_refuses_an_unknown_entry_before_any_work(tmp_path, monkeypatch):
    stage = load_stage("lb_compress")
    monkeypatch.chdir(ROOT)
    with pytest.raises(ParamError, match=r"leaderboard\.entries\.nosuch: no such entry"):
        stage.main("nosuch", str(tmp_path / "m"), str(tmp_path / "r.json"))
    assert not (tmp_path / "m").exists()


def test_a_collapsed_entry_stays_in_the_table_but_off_the_fronts():
    rows = [{"entry": "dense", "source": "dense", "budget_group": "0", "wer_real": 10, "checkpoint_mib": 100,
             "speedup": 1.0},
            {"entry": "tiny", "source": "board", "budget_group": "~30 %", "wer_real": 100.0, "checkpoint_mib": 20,
             "speedup": 3.0},
            {"entry": "ok", "source": "board", "budget_group": "~30 %", "wer_real": 12, "checkpoint_mib": 60,
             "speedup": 1.5},
            {"entry": "gone", "source": "board", "budget_group": "~50 %", "wer_real": 400, "checkpoint_mib": 50,
             "speedup": 0.5}]
    pareto(rows)  # no threshold: the empty model is the smallest and fastest, so it is on both fronts
    assert rows[1]["pareto_bytes"] and rows[1]["pareto_speed"] and not rows[1]["collapsed"]
    pareto(rows, collapsed_wer=100.0)
    assert [r["collapsed"] for r in rows] == [False, True, False, True]
    assert [r["entry"] for r in rows if r["pareto_bytes"]] == ["dense", "ok"]
    assert [r["entry"] for r in rows if r["pareto_speed"]] == ["dense", "ok"]
    lines = budget_summary(rows)
    assert lines[0].startswith("- ~30 %: lowest WER ok (12.0 %); on a Pareto front: ok; collapsed: tiny")
    assert lines[1] == "- ~50 %: every entry collapsed; on a Pareto front: none; collapsed: gone"
