"""report: every paper's table (reported vs reproduced), the all-variants table, the cross-paper
figures (WER vs parameters / FLOPs, speed-up bars) and the index ``reports/README.md``.

    python stages/report.py p1 p2 p3 p4
"""

from __future__ import annotations

import sys

from asrcompress.config import load_params
from asrcompress.io import log, setup_logging
from asrcompress.report.figures import write_all
from asrcompress.report.tables import build_table, write_index, write_table


def main(*papers: str) -> None:
    setup_logging()
    cfg = load_params()
    profile = cfg["profile"]
    built = []
    for paper in papers:
        data, rows = build_table(f"reports/reported/{paper}.yaml", ".", profile)
        write_table(data, rows, f"reports/tables/{paper}.md", f"reports/tables/{paper}.csv")
        built.append((data, rows))
        log.info("report@%s: reports/reported/%s.yaml + metrics -> reports/tables/%s.md (%d rows)",
                 paper, paper, paper, len(rows))
    for path in write_all(".", list(papers), list(cfg.get("variants") or {})):
        log.info("report: %s", path)
    write_index(built, "reports/README.md")


if __name__ == "__main__":
    main(*sys.argv[1:])
