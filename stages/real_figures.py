"""A real-track paper's figures: WER against non-zero parameters and against batch-1 latency of its
compressed real models (``real_variants`` entries) beside their dense references, a panel per corpus.

    python stages/real_figures.py <out-prefix> <real-variant-key> [<real-variant-key> ...]

Writes ``<out-prefix>_wer_vs_params.png`` and ``<out-prefix>_wer_vs_latency.png`` from
``reports/metrics/<key>.json`` (pipelines/p*_real/dvc.yaml).
"""

from __future__ import annotations

import sys

from asrcompress.config import get, load_params
from asrcompress.io import log, setup_logging
from asrcompress.report.figures import plot_real_variants


def main(prefix: str, *keys: str) -> None:
    setup_logging()
    cfg = load_params()
    panels = {key: get(cfg, f"real_variants.{key}.corpus", str) for key in keys}  # before any file is read
    written = plot_real_variants(".", panels, prefix)
    log.info("real_figures: %d variants -> %s", len(keys), ", ".join(map(str, written)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
