"""A stage whose script draws with `asrcompress.report.figures` lists that module as a dependency, in the
root dvc.yaml and in every pipelines/*/dvc.yaml (before the fix p3r_sensitivity and p3r_prune did not: a
change to the plotting code left their figures stale)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIGURES = "src/asrcompress/report/figures.py"


def test_every_stage_drawing_figures_depends_on_the_plotting_module() -> None:
    drawing = {p.stem for p in (ROOT / "stages").glob("*.py")
               if re.search(r"^from asrcompress\.report\.figures import", p.read_text(), re.M)}
    assert {"p3_prune", "p3_sensitivity", "report"} <= drawing  # the check sees the stages it is about
    checked, missing = [], []
    for path in [ROOT / "dvc.yaml", *sorted(ROOT.glob("pipelines/*/dvc.yaml"))]:
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            body = stage.get("do", stage)
            script = re.search(r"stages/(\w+)\.py", str(body.get("cmd", "")))
            if script and script[1] in drawing:
                checked.append(f"{path.relative_to(ROOT)}:{name}")
                if FIGURES not in body.get("deps", []) and "src/asrcompress/report" not in body.get("deps", []):
                    missing.append(checked[-1])
    assert "pipelines/p3_real/dvc.yaml:p3r_prune" in checked and "dvc.yaml:p3_prune" in checked
    assert not missing, f"stages drawing with {FIGURES} without it in their deps: {missing}"
