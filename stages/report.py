"""report: every paper's table (reported vs reproduced), the all-variants table, the cross-paper
figures (WER vs parameters / FLOPs, speed-up bars), paper 4's gate figures and the index ``reports/README.md``.

    python stages/report.py p1 p2 p3 p4
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from asrcompress.config import ParamError, get, load_params
from asrcompress.io import log, setup_logging
from asrcompress.report.figures import plot_p4_compression, write_all
from asrcompress.report.tables import build_table, write_index, write_table


def undeclared_variant_metrics(variants: list[str], dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """The metrics files of `variants` this stage reads but dvc.yaml does not list as its deps: DVC
    would not rerun the report after re-measuring them (issue 19, item 2)."""
    deps = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]["report"]["deps"]
    return [f"reports/metrics/{key}.json" for key in variants if f"reports/metrics/{key}.json" not in deps]


def main(*papers: str) -> None:
    setup_logging()
    cfg = load_params()
    variants = list(get(cfg, "variants", (dict, type(None)), default=None) or {})
    absent = [p for p in papers if not Path(f"reports/reported/{p}.yaml").is_file()]
    if not papers or absent:
        raise ParamError(f"report: no reports/reported/<paper>.yaml for {absent or 'no paper given'} "
                         "(dvc.yaml report cmd: python stages/report.py p1 p2 ...)")
    # the top-level entries: those DVC fans out (paper_overrides.variants are paper 1's medium chain,
    # measured in pipelines/p1_medium/dvc.yaml, not a dependency of this stage)
    top_level = yaml.safe_load(Path("params.yaml").read_text()).get("variants") or {}
    missing = undeclared_variant_metrics(list(top_level))
    if missing:
        raise SystemExit(f"dvc.yaml: the report stage reads {', '.join(missing)} (params.yaml `variants`) but does "
                         "not list it under its deps; add it there, or the report goes stale when it is re-measured")
    profile = cfg["profile"]
    built = []
    for paper in papers:
        data, rows = build_table(f"reports/reported/{paper}.yaml", ".", profile)
        write_table(data, rows, f"reports/tables/{paper}.md", f"reports/tables/{paper}.csv")
        built.append((data, rows))
        log.info("report@%s: reports/reported/%s.yaml + metrics -> reports/tables/%s.md (%d rows)",
                 paper, paper, paper, len(rows))
    for path in write_all(".", list(papers), variants):
        log.info("report: %s", path)
    for key in (cfg["p4"]["models"] if "p4" in papers else []):  # p4_compress's traces
        for path in plot_p4_compression(f"reports/p4/{key}", "reports/figures"):
            log.info("report: %s", path)
    write_index(built, "reports/README.md")


if __name__ == "__main__":
    main(*sys.argv[1:])
