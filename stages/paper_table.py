"""A paper's table restricted to the rows one metrics file answers (a chain outside the root pipeline).

    python stages/paper_table.py <reported-yaml> <metrics-json> <out-md> <out-csv>

Used by pipelines/p1_medium/dvc.yaml: the whisper-medium rows of reports/reported/p1.yaml beside
reports/metrics/sgl_pruned_hi_medium.json. The root `report` stage builds the full tables.
"""

from __future__ import annotations

import sys

from asrcompress.config import load_params
from asrcompress.io import log, setup_logging
from asrcompress.report.tables import build_table, write_table


def main(reported_yaml: str, metrics_path: str, md_path: str, csv_path: str) -> None:
    setup_logging()
    profile = load_params()["profile"]
    data, rows = build_table(reported_yaml, ".", profile, only_metrics=metrics_path)
    if not rows:
        raise SystemExit(f"{reported_yaml}: no row takes its figure from {metrics_path}")
    write_table(data, rows, md_path, csv_path)
    log.info("paper_table: %s + %s -> %s (%d rows)", reported_yaml, metrics_path, md_path, len(rows))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
