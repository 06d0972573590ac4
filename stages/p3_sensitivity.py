"""p3_sensitivity: gradient and Fisher sensitivity of Whisper's components and layers (paper 3, step 1).

Calibration = the first ``p3.calibration_fraction`` of the test split (the rest is p3_prune's evaluation
set); per-utterance gradients (batch size 1) of the teacher-forced loss on the reference transcript.

    python stages/p3_sensitivity.py <model-dir> <corpus-dir> <scores-csv> <scores-json> <heatmap-png> <metrics-json>
        [<params-section>]

``<params-section>`` (default ``p3``): ``p3_real`` runs it on the real Whisper base (pipelines/p3_real).

``p3.source`` (a hub id or path) replaces <model-dir> when set (paper profile: off-the-shelf whisper-small).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from asrcompress.compress.p3_oneshot import p3_data
from asrcompress.compress.sensitivity import (
    component_totals,
    per_param,
    sensitivity_scores,
    whisper_loss_fn,
)
from asrcompress.config import get, load_params
from asrcompress.io import log, setup_logging, write_csv, write_json
from asrcompress.models.whisper import load_pretrained
from asrcompress.report.figures import plot_p3_sensitivity


def main(model_dir: str, corpus_dir: str, csv_path: str, json_path: str, png_path: str, metrics_path: str,
         section: str = "p3") -> None:
    setup_logging()
    cfg = load_params()
    data = p3_data(cfg, section, corpus_dir)
    calib, language = data.calibration, data.language
    torch.set_num_threads(get(cfg, f"{section}.num_threads", int))
    source = get(cfg, f"{section}.source", (str, type(None))) or model_dir
    model, processor = load_pretrained(source)
    model.to(get(cfg, f"{section}.device", str))
    t0 = time.time()
    records = sensitivity_scores(model, calib, whisper_loss_fn(processor, language),
                                 get(cfg, f"{section}.n_grad", int), get(cfg, f"{section}.n_fisher", int))
    seconds = time.time() - t0
    records = per_param(records)
    totals = component_totals(records)
    write_csv(csv_path, records)
    write_json(json_path, {"model": str(source), "calibration_utterances": len(calib),
                           "calibration_from": data.calibration_from, "per_layer": records,
                           "per_component": totals})
    plot_p3_sensitivity(records, png_path, title=f"p3 sensitivity: {Path(str(source)).name}, "
                                          f"{records[0]['n_grad']}/{records[0]['n_fisher']} calibration utts")
    by_fisher = sorted(totals, key=lambda t: t["rank_fisher"])
    by_grad = sorted(totals, key=lambda t: t["rank_grad"])
    metrics = {"calibration_utterances": len(calib), "n_grad": records[0]["n_grad"],
               "n_fisher": records[0]["n_fisher"], "seconds": round(seconds, 2),
               "most_sensitive_fisher": by_fisher[0]["component"], "least_sensitive_fisher": by_fisher[-1]["component"],
               "most_sensitive_grad": by_grad[0]["component"], "least_sensitive_grad": by_grad[-1]["component"],
               **{f"{t['component']}_fisher_per_param": t["score_fisher_per_param"] for t in totals},
               **{f"{t['component']}_grad_per_param": t["score_grad_per_param"] for t in totals}}
    write_json(metrics_path, metrics)
    log.info("p3_sensitivity: %s on %s -> %s, %s (%.1fs); per parameter, most/least sensitive: "
             "Fisher %s/%s, gradient %s/%s", source, data.calibration_from, csv_path, png_path, seconds,
             metrics["most_sensitive_fisher"], metrics["least_sensitive_fisher"], metrics["most_sensitive_grad"],
             metrics["least_sensitive_grad"])


if __name__ == "__main__":
    if len(sys.argv) not in (7, 8):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
