"""The real-track pipelines (pipelines/*_real/dvc.yaml, pipelines/p1_en/dvc.yaml) agree with params.yaml: every `real_variants` entry is
measured by exactly one stage with the entry's model, corpus and reference (and depends on the reference's
model and metrics), every `real_comparisons` entry is compared by exactly one stage."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("dense", "real_dense", "real_dense_synth", "real_variants")


def _stages() -> list[tuple[str, str, dict]]:
    out = []
    for path in [*sorted(ROOT.glob("pipelines/*_real/dvc.yaml")), ROOT / "pipelines/p1_en/dvc.yaml"]:
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            out.append((path.parent.name, name, stage))
    return out


def test_every_real_variant_is_measured_once_as_params_say() -> None:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    seen: dict[str, str] = {}
    for pipeline, name, stage in _stages():
        if "stages/measure.py" not in stage.get("do", stage).get("cmd", ""):
            continue
        deps = stage["do"]["deps"]
        for key, item in stage["foreach"].items():
            assert key not in seen, f"{key} measured by {seen[key]} and {pipeline}:{name}"
            seen[key] = f"{pipeline}:{name}"
            entry = cfg["real_variants"][key]
            assert (item["model"], item["corpus"]) == (entry["model"], entry["corpus"]), key
            assert item["corpus"] in cfg[item["corpora"]], key
            assert item.get("reference") == entry.get("reference"), key
            if entry.get("reference"):
                ref = entry["reference"]
                section = next(s for s in SECTIONS if ref in (cfg.get(s) or {}))
                assert "reports/metrics/${item.reference}.json" in deps, key
                assert cfg[section][ref]["model"] in deps, f"{key}: the reference model is no dependency"
            else:
                assert not any("${item.reference}" in d for d in deps), key
    assert set(seen) == set(cfg["real_variants"])


def test_every_real_comparison_is_run_once_as_params_say() -> None:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    seen: dict[str, dict] = {}
    for _, _, stage in _stages():
        if "stages/compare.py" in stage.get("do", stage).get("cmd", ""):
            assert "real_comparisons" in stage["do"]["cmd"]
            for key, item in stage["foreach"].items():
                assert key not in seen
                seen[key] = item
    assert seen == cfg["real_comparisons"]


def test_paper_stages_of_a_real_pipeline_read_its_section() -> None:
    """A paper stage of pipelines/<p>_real reads `<p>_real` or a `<p>_real_<suffix>` section (p2_real_yo,
    p2_real_b50), which exists, and lists only that section's keys among its params."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    for pipeline, name, stage in _stages():
        if not pipeline.endswith("_real"):
            continue
        body = stage.get("do", stage)
        cmd = " ".join(str(body.get("cmd", "")).split())
        if re.search(r"stages/p\d_\w+\.py", cmd):
            found = re.search(rf" ({pipeline}(_[a-z0-9]+)?)( \$\{{key\}})?$", cmd)
            assert found, f"{pipeline}:{name}: {cmd[-40:]}"
            section = found.group(1)
            assert section in cfg, f"{pipeline}:{name}: no params section {section}"
            paper_params = [p for p in body.get("params", []) if re.match(r"p\d_real", str(p))]
            assert paper_params and all(str(p).split(".")[0] == section for p in paper_params), (name, paper_params)



def test_paper_1_in_english_reads_its_budget_sections() -> None:
    """pipelines/p1_en: every paper-1 stage reads `p1_en_<budget>` (or, for the one dense fine-tune, `p1_en_b30`)
    and lists only that section's keys among its params; each section is a full p1 section."""
    from asrcompress.compress.sgl import check_p1_section

    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "pipelines/p1_en/dvc.yaml").read_text())["stages"]
    budgets = set()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        cmd = " ".join(str(body["cmd"]).split())
        if "stages/p1_" not in cmd:
            continue
        items = stage.get("foreach") or [None]
        for item in items:
            section = cmd.rsplit(" ", 1)[1].replace("${item}", str(item))
            assert section.startswith("p1_en_") and section in cfg, (name, section)
            budgets.add(section)
            params = [str(p).replace("${item}", str(item)) for p in body["params"] if str(p).startswith("p1_en")]
            assert params and all(p.split(".")[0] == section for p in params), (name, params)
    assert budgets == {k for k in cfg if k.startswith("p1_en_")}
    for section in budgets:
        check_p1_section(cfg, section)
