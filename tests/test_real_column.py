"""The real Whisper base column of a paper table (report/tables.py, stages/paper_table.py ... real)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import load_stage

from asrcompress.report.tables import build_table, write_table

REPORTED = {
    "paper": "px", "title": "T",
    "rows": [
        {"id": "gain", "source": "abstract", "setting": {"m": "small"}, "quantity": "WER change", "kind": "relative",
         "reported": -2.38, "tolerance": 1.0, "unit": "pts",
         "ours": {"metrics": "smoke.json", "key": "d"},
         "real": {"metrics": "real.json", "key": "d", "ci": ["lo", "hi"], "p_worse": "p"}},
        {"id": "near0", "source": "abstract", "setting": {"m": "small"}, "quantity": "WER change", "kind": "qualitative",
         "reported": "near 0", "ours": {"metrics": "smoke.json", "key": "d"},
         "real": {"metrics": "real.json", "key": "d"},
         "check": {"near_zero": {"ci_low": "lo", "ci_high": "hi", "p_worse": "p", "tolerance": 1.0}}},
        {"id": "dense", "source": "derived", "setting": {"m": "small"}, "quantity": "WER", "kind": "absolute",
         "reported": 11.6, "tolerance": 1.0, "comparable_in": ["paper"], "reason": "synthetic",
         "ours": {"metrics": "smoke.json", "key": "w"},
         "real": {"metrics": "real.json", "key": "w", "reason": "another model size"}},
        {"id": "speed", "source": "abstract", "setting": {"m": "small"}, "quantity": "speed-up", "kind": "relative",
         "reported": 2.15, "tolerance": 0.3, "unit": "x", "ours": {"metrics": "smoke.json", "key": "w"},
         "real": {"metrics": "real.json", "key": "s", "ci": ["s_lo", "s_hi"]}},
        {"id": "no_real", "source": "abstract", "setting": {"m": "small"}, "quantity": "x", "kind": "absolute",
         "reported": 1.0, "ours": {"metrics": "smoke.json", "key": "w"}},
    ],
}


def _tree(tmp_path: Path, real: dict) -> Path:
    (tmp_path / "px.yaml").write_text(yaml.safe_dump(REPORTED))
    (tmp_path / "smoke.json").write_text(json.dumps({"d": -2.0, "w": 5.0}))
    (tmp_path / "real.json").write_text(json.dumps(real))
    return tmp_path


def test_real_column_is_judged_by_the_rows_own_rule(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"d": 1.58, "lo": 0.42, "hi": 2.75, "p": 0.005, "w": 11.41, "s": 1.255, "s_lo": 1.222,
                            "s_hi": 1.278})
    _, rows = build_table(root / "px.yaml", root, "smoke", real=True)
    by_id = {r["id"]: r for r in rows}
    assert (by_id["gain"]["status"], by_id["gain"]["real"], by_id["gain"]["real_status"]) == ("matches", 1.58, "differs")
    assert "real: +1.58 [+0.42, +2.75], p(worse) = 0.005" in by_id["gain"]["note"]
    assert by_id["near0"]["real_status"] == "differs"  # significant degradation on the real model
    assert "real: 1.25 [1.22, 1.28]" in by_id["speed"]["note"] and by_id["speed"]["real_status"] == "differs"
    assert by_id["dense"]["status"].startswith("not comparable in smoke")  # the smoke column keeps its rule
    assert by_id["dense"]["real_status"] == "shown, not judged: another model size"
    assert by_id["no_real"]["real_status"] == "no real figure" and by_id["no_real"]["real"] is None
    # the same rows without the real column: the root report's tables are unchanged by it
    _, smoke_only = build_table(root / "px.yaml", root, "smoke")
    assert all(r["real"] is None and r["real_status"] == "" for r in smoke_only)


def test_a_real_near_zero_that_holds_matches_and_a_missing_file_is_not_run(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"d": 0.1, "lo": -0.6, "hi": 0.8, "p": 0.4, "w": 11.0})
    _, rows = build_table(root / "px.yaml", root, "smoke", real=True)
    assert {r["id"]: r["real_status"] for r in rows}["near0"] == "matches"
    (root / "real.json").unlink()
    _, rows = build_table(root / "px.yaml", root, "smoke", real=True)
    assert {r["id"]: r["real_status"] for r in rows}["gain"].startswith("not run (real.json missing)")


def test_paper_table_stage_writes_the_real_column(tmp_path: Path, monkeypatch) -> None:
    root = _tree(tmp_path, {"d": 1.58, "lo": 0.42, "hi": 2.75, "p": 0.005, "w": 11.41})
    (root / "params.yaml").write_text("profile: smoke\n")
    monkeypatch.chdir(root)
    load_stage("paper_table").main("px.yaml", "all", "t.md", "t.csv", "real")
    md = (root / "t.md").read_text()
    assert "| real | real_status |" in md and "Real Whisper base column, status counts: differs: 2" in md
    data, rows = build_table(root / "px.yaml", root, "smoke")
    write_table(data, rows, root / "s.md", root / "s.csv")
    assert "real_status" not in (root / "s.md").read_text()  # smoke tables: no real column
