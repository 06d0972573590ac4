"""Paper 1's whisper-medium chain (pipelines/p1_medium/dvc.yaml): wired into the root graph, its base
stage saves the hub checkpoint `p1.medium_source` names (paper) and refuses in smoke, and its table
holds exactly the medium rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import networkx as nx
import pytest
import yaml
from conftest import OFFLINE_DIMS, load_stage

from asrcompress.config import ParamError
from asrcompress.report.tables import build_table

ROOT = Path(__file__).parents[1]
MEDIUM = "pipelines/p1_medium/dvc.yaml"


@pytest.fixture(scope="module")
def index():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        yield repo.index


def test_medium_chain_hangs_off_the_root_pipeline_and_never_touches_its_outputs(index):
    stages = {s.addressing: s for s in index.stages}
    medium = {a: s for a, s in stages.items() if a.startswith(MEDIUM + ":")}
    assert sorted(a.split(":")[1] for a in medium) == sorted(
        ["p1m_base", "p1m_finetune", "p1m_sgl", "p1m_dense_ft", "p1m_prune", "p1m_imp", "p1m_measure_dense",
         *(f"p1m_measure@{k}" for k in ("sgl_pruned_hi_medium", "p1_dense_ft_hi_medium", "p1_imp_hi_medium")),
         *(f"p1m_compare@p1_sgl_vs_{k}_hi_medium" for k in ("dense_ft", "imp")), "p1m_table"])
    root_outs = {str(Path(o.fs_path).relative_to(ROOT)) for a, s in stages.items() if a not in medium for o in s.outs}
    for addr, stage in medium.items():
        assert Path(stage.wdir) == ROOT, f"{addr}: runs from the repository root"
        for out in stage.outs:
            rel = str(Path(out.fs_path).relative_to(ROOT))
            assert "medium" in rel and rel not in root_outs, f"{addr}: output {rel} would clash with the small chain"
        for dep in stage.deps:  # every dependency is a tracked source file or some stage's output
            rel = Path(dep.fs_path).relative_to(ROOT)
            produced = any(str(rel) == o or str(rel).startswith(o + "/") for o in root_outs) or any(
                str(rel) == str(Path(o.fs_path).relative_to(ROOT)) for s in medium.values() for o in s.outs)
            assert produced or (ROOT / rel).exists(), f"{addr}: dependency {rel} exists nowhere"
        script = stage.cmd.split("stages/")[1].split()[0]
        assert (ROOT / "stages" / script).is_file(), f"{addr}: {script}"
    graph = index.graph
    table = stages[f"{MEDIUM}:p1m_table"]
    upstream = {s.addressing for s in nx.descendants(graph, table)}  # DVC's edges point at dependencies
    assert {"prepare@hi", "tokenizer"} <= upstream
    assert {f"{MEDIUM}:{n}" for n in ("p1m_base", "p1m_finetune", "p1m_sgl", "p1m_prune", "p1m_measure_dense",
                                       "p1m_measure@sgl_pruned_hi_medium")} <= upstream
    for baseline, trained in (("dense_ft", "p1m_dense_ft"), ("imp", "p1m_imp")):  # the controls hang off their compare
        compare = stages[f"{MEDIUM}:p1m_compare@p1_sgl_vs_{baseline}_hi_medium"]
        assert {f"{MEDIUM}:{trained}", f"{MEDIUM}:p1m_measure@p1_{baseline}_hi_medium",
                f"{MEDIUM}:p1m_measure@sgl_pruned_hi_medium"} <= {s.addressing for s in nx.descendants(graph, compare)}
    assert not any(a.startswith(MEDIUM) for a in {s.addressing for s in nx.descendants(
        graph, stages["report"])}), "the root report must not need the paper-only chain"


def _params(tmp_path: Path, profile: str, medium_source: str | None) -> None:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["profile"] = profile
    cfg["paper_overrides"]["p1"]["medium_source"] = medium_source
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))


def test_base_stage_refuses_in_smoke_naming_the_key(tmp_path, monkeypatch, offline_processor):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    _params(tmp_path, "smoke", "openai/whisper-medium")
    offline_processor.save_pretrained(tmp_path / "proc")
    with pytest.raises(ParamError, match=r"p1\.medium_source is None in the smoke profile"):
        load_stage("pretrain").main("--source-key", "p1.medium_source", "proc", "out", "l.csv", "m.json")
    assert not (tmp_path / "out").exists()


def test_base_stage_saves_the_checkpoint_the_key_names(tmp_path, monkeypatch, offline_processor):
    from asrcompress.models.whisper import build_model, load_pretrained

    hub = tmp_path / "hub-medium"  # stands in for openai/whisper-medium (no hub here)
    model = build_model(OFFLINE_DIMS, offline_processor.tokenizer, 1, "eager")
    model.save_pretrained(hub)
    offline_processor.save_pretrained(hub)
    offline_processor.save_pretrained(tmp_path / "proc")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    _params(tmp_path, "paper", str(hub))
    load_stage("pretrain").main("--source-key", "p1.medium_source", "proc", "base", "l.csv", "m.json")
    reloaded, _ = load_pretrained(tmp_path / "base", "eager")
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in reloaded.parameters()) == n
    assert json.loads((tmp_path / "m.json").read_text()) == {"source": str(hub), "steps": 0, "params": n}


def test_medium_table_holds_the_medium_rows_only(tmp_path):
    shutil.copytree(ROOT / "reports/reported", tmp_path / "reports/reported")
    path = "reports/metrics/sgl_pruned_hi_medium.json"
    _, rows = build_table(tmp_path / "reports/reported/p1.yaml", tmp_path, "paper", only_metrics=path)
    assert [r["id"] for r in rows] == ["medium_params", "medium_memory", "medium_flops", "medium_wer"]
    assert all(r["status"] == f"not run ({path} missing)" for r in rows)
    (tmp_path / "reports/metrics").mkdir()
    (tmp_path / path).write_text(json.dumps({
        "params_reduction_pct": 29.0, "peak_rss_delta_mib_reduction_pct": 30.0,
        "gmacs_utterance_ref_lengths_reduction_pct": 17.0, "wer_delta_abs": -0.2,
        "paired_delta_ci_low_pct": -1.0, "paired_delta_ci_high_pct": -0.1}))
    _, rows = build_table(tmp_path / "reports/reported/p1.yaml", tmp_path, "paper", only_metrics=path)
    assert [r["status"] for r in rows] == ["matches", "differs", "matches", "matches"]
    _, rows = build_table(tmp_path / "reports/reported/p1.yaml", tmp_path, "smoke", only_metrics=path)
    assert all(r["status"].startswith("not comparable in smoke") for r in rows)
