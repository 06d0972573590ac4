"""A paper's table for a chain outside the root pipeline.

    python stages/paper_table.py <reported-yaml> <metrics-json | all> <out-md> <out-csv> [real]

``<metrics-json>``: only the rows that metrics file answers (pipelines/p1_medium/dvc.yaml: the
whisper-medium rows of reports/reported/p1.yaml beside reports/metrics/sgl_pruned_hi_medium.json);
``all``: every row. ``real``: with the real Whisper base column (the rows' ``real`` mappings;
pipelines/p*_real/dvc.yaml write reports/real/p*/table.md). The root `report` stage builds the
smoke tables.
"""

from __future__ import annotations

import sys

from asrcompress.config import load_params
from asrcompress.io import log, setup_logging
from asrcompress.report.tables import build_table, write_table


def main(reported_yaml: str, metrics_path: str, md_path: str, csv_path: str, column: str = "") -> None:
    setup_logging()
    if column not in ("", "real"):
        raise SystemExit(f"paper_table: the optional last argument is 'real', got {column!r}")
    profile = load_params()["profile"]
    data, rows = build_table(reported_yaml, ".", profile, only_metrics=None if metrics_path == "all" else metrics_path,
                             real=column == "real")
    if not rows:
        raise SystemExit(f"{reported_yaml}: no row takes its figure from {metrics_path}")
    write_table(data, rows, md_path, csv_path)
    log.info("paper_table: %s + %s -> %s (%d rows)", reported_yaml, metrics_path, md_path, len(rows))


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
