"""Issue 19: a newcomer adds a corpus, a variant or a model without rebuilding the world.

On a scratch copy of the project's DVC files (dvc.yaml, pipelines/, params.yaml, dvc.lock, stages/,
src/, reports/) in tmp_path, never on the working repository (whose lock may be mid-update):

* adding a corpus under `corpora` or `real_corpora` puts only that corpus's own stage out of date
  (before the fix, `pretrain` depended on the whole `corpora` section: 28 stages reran);
* re-measuring a variant (new figures in its metrics file) puts `report` out of date, and every
  `variants` entry's metrics file is a declared dependency of `report`;
* the project's default DVC remote (.dvc/config) takes a `dvc push` and gives it back on `dvc pull`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))

from report import undeclared_variant_metrics  # noqa: E402

dvc_repo = pytest.importorskip("dvc.repo")
from dvc.dependency.param import ParamsDependency  # noqa: E402

Repo = dvc_repo.Repo

NEW_ENTRY = {
    "corpora": ("xx", "    source: synth\n    language: xx\n    whisper_language: en\n    normalizer: english\n"
                      "    sizes: {train: 0, dev: 0, test: 50}\n"),
    "real_corpora": ("xx_real", "    dir: ../shared/realspeech/xx\n    language: en\n    whisper_language: en\n"
                                "    normalizer: english\n    splits: null\n    speaker_from_id: none\n"),
}
OWN_STAGE = {"corpora": "prepare@xx", "real_corpora": "prepare_real@xx_real"}


def _scratch(tmp_path: Path, *extra: str) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, root / name)
    for name in ("stages", "src", "pipelines", *extra):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    Repo.init(str(root), no_scm=True)
    return root


def _param_stale(root: Path) -> tuple[set[str], set[str]]:
    """Stages whose params deps differ from dvc.lock (or that have no lock entry), and those plus
    every stage downstream of them (what `dvc repro` would rerun)."""
    with contextlib.chdir(root), Repo(str(root)) as repo:  # addresses relative to the scratch root
        direct = {st.addressing for st in repo.index.stages
                  if any(isinstance(d, ParamsDependency) and d.status() for d in st.deps)}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_addr = {s.addressing: s for s in graph.nodes}
        rerun = set(direct)
        for addr in direct:
            rerun |= {s.addressing for s in nx.ancestors(graph, by_addr[addr])}
    return direct, rerun


@pytest.mark.parametrize("section", ["corpora", "real_corpora"])
def test_a_new_corpus_puts_only_its_own_stage_out_of_date(tmp_path: Path, section: str) -> None:
    root = _scratch(tmp_path)
    params = root / "params.yaml"
    text = params.read_text()
    # the working lock may already be behind some stages: compare with the same copy before the change
    direct0, rerun0 = _param_stale(root)
    key, body = NEW_ENTRY[section]
    assert f"\n{section}:\n" in text
    params.write_text(text.replace(f"\n{section}:\n", f"\n{section}:\n  {key}:\n{body}", 1))
    assert key in yaml.safe_load(params.read_text())[section]
    direct1, rerun1 = _param_stale(root)
    assert direct1 - direct0 == {OWN_STAGE[section]}
    assert rerun1 - rerun0 == {OWN_STAGE[section]}


def test_every_variant_metrics_file_is_a_report_dep() -> None:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "variants" in stage["params"]
    assert undeclared_variant_metrics(list(params.get("variants") or {}), ROOT / "dvc.yaml") == []
    # the references of the variants, and every metrics file the reported-vs-reproduced tables read
    # (except paper 1's medium chain: a separate, paper-only pipeline file)
    wanted = {f"reports/metrics/{v['reference']}.json" for v in (params.get("variants") or {}).values()}
    for reported in (ROOT / "reports/reported").glob("*.yaml"):
        for row in yaml.safe_load(reported.read_text()).get("rows", []):
            if isinstance(row, dict) and isinstance(row.get("ours"), dict) and "metrics" in row["ours"]:
                wanted.add(row["ours"]["metrics"])
    wanted.discard("reports/metrics/sgl_pruned_hi_medium.json")
    assert wanted - set(stage["deps"]) == set()


def test_an_undeclared_variant_is_named(tmp_path: Path) -> None:
    assert undeclared_variant_metrics(["sgl_pruned_hi", "my_new_variant"], ROOT / "dvc.yaml") == [
        "reports/metrics/my_new_variant.json"]


def test_remeasuring_a_variant_puts_report_out_of_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _scratch(tmp_path, "reports")
    monkeypatch.chdir(root)  # stage addresses relative to the scratch root
    variant = next(iter(yaml.safe_load((root / "params.yaml").read_text())["variants"]))
    with Repo(str(root)) as repo:
        repo.commit("report", force=True)  # the scratch lock now matches the copied files exactly
        assert repo.status(targets=["report"]) == {}
    metrics = root / f"reports/metrics/{variant}.json"
    data = json.loads(metrics.read_text())
    data["wer_pct"] = float(data.get("wer_pct", 0.0)) + 1.0  # a new measurement, new figures
    metrics.write_text(json.dumps(data, indent=2))
    with Repo(str(root)) as repo:
        status = repo.status(targets=["report"])
    changed = [c for entry in status["report"] for c in (entry.get("changed deps") or {}).items()]
    assert (f"reports/metrics/{variant}.json", "modified") in changed, status


def test_default_remote_takes_a_push_and_gives_it_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    Repo.init(str(root))
    shutil.copy2(ROOT / ".dvc/config", root / ".dvc/config")
    (root / "model.bin").write_bytes(b"trained weights" * 100)
    with Repo(str(root)) as repo:
        assert repo.config["core"]["remote"] == "shared"
        repo.add("model.bin")
        assert repo.push() == 1
    remote = tmp_path / "asrcompress-dvc-remote"  # beside the checkout, outside it
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))
    (root / "model.bin").unlink()
    shutil.rmtree(root / ".dvc/cache")
    with Repo(str(root)) as repo:
        repo.pull()
    assert (root / "model.bin").read_bytes() == b"trained weights" * 100
