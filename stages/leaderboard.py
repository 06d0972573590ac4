"""leaderboard: the board's table, CSV, DVC metrics and Pareto figures from what the measure suite wrote.

    python stages/leaderboard.py <table-md> <csv> <metrics-json> <fig-wer-vs-bytes> <fig-wer-vs-speed>

Rows: dense Whisper base, every ``leaderboard.entries`` entry (lb_compress / lb_measure), every
``leaderboard.imported`` entry (the papers' real pipelines), and the faster-whisper anchor
(``leaderboard.anchor``). Paired tests against dense are computed here from the hypotheses files
(report/leaderboard.py); nothing is re-measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asrcompress.compress.board import check_leaderboard_section
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import log, read_json, setup_logging, write_csv, write_json
from asrcompress.report.figures import plot_leaderboard
from asrcompress.report.leaderboard import COLUMNS, anchor_rows, board_rows, budget_summary, markdown, pareto


def main(md_path: str, csv_path: str, metrics_path: str, fig_bytes: str, fig_speed: str) -> None:
    setup_logging()
    cfg = load_params()
    sec = check_leaderboard_section(cfg)
    rows = board_rows(cfg, ".", get(cfg, "measure.bootstrap_resamples", int),
                      derive_seed(get(cfg, "seed", int), "leaderboard"))
    anchors = anchor_rows(read_json(sec["anchor"])) if sec.get("anchor") else []
    collapsed = sec.get("collapsed_wer_pct")
    pareto([*rows, *anchors], collapsed)
    wheres = {w: spec["corpus"] for w, spec in sec["measure_on"].items()}
    lines = ["# Leaderboard: every method on Whisper base, English", "",
             markdown(rows, anchors, wheres), "## Best per budget (real speech WER; Pareto = no row has both lower "
             "WER and fewer bytes / more speed"
             + (f"; collapsed = real-speech WER >= {collapsed:g} %, kept off the fronts)" if collapsed else ")"), "",
             *budget_summary(rows)]
    Path(md_path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text("\n".join(lines) + "\n")
    write_csv(csv_path, [*rows, *anchors], COLUMNS)
    write_json(metrics_path, {r["entry"]: {k: r[k] for k in ("removed_pct", "checkpoint_mib", "wer_real", "wer_synth",
                                                               "delta_real", "delta_synth", "speedup") if k in r}
                              for r in rows})
    plot_leaderboard(rows, anchors, wheres, fig_bytes, fig_speed)
    log.info("leaderboard: %d entries -> %s", len(rows), md_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
