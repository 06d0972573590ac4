"""p3_prune: sensitivity-aware one-shot magnitude pruning of Whisper, no fine-tuning (paper 3).

Evaluates, on the test split minus its calibration head (``p3.calibration_fraction``): the dense model,
the decoder self-attention sweep, the last-encoder-layers point, and the final component configuration
(scaled by ``p3.compare_scales``) against global / uniform magnitude pruning at the same sparsity.

    python stages/p3_prune.py <model-dir> <corpus-dir> <sweep-csv> <sweep-json> <hyps-jsonl> <plot-png> <metrics-json>

``p3.source`` (a hub id or path) replaces <model-dir> when set (paper profile: off-the-shelf whisper-small).
"""

from __future__ import annotations

import csv
import sys
from functools import partial
from pathlib import Path

import torch

from asrcompress.compress.components import tensor_ratios
from asrcompress.compress.p3_oneshot import headline_metrics, plan_points, plot_sweeps, run_points
from asrcompress.compress.sensitivity import calibration_split
from asrcompress.config import derive_seed, get, load_params
from asrcompress.inference import transcribe_whisper
from asrcompress.io import load_split, log, setup_logging, write_json, write_jsonl
from asrcompress.models.whisper import load_pretrained


def write_table(path: str, table: list[dict]) -> None:
    """The sweep table as CSV, the per-component sparsities as ``sparsity_<component>_pct`` columns."""
    rows = []
    for r in table:
        flat = {k: v for k, v in r.items() if k != "component_sparsity_pct"}
        flat.update({f"sparsity_{c}_pct": v for c, v in r["component_sparsity_pct"].items()})
        rows.append({k: ("" if v is None else v) for k, v in flat.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(model_dir: str, corpus_dir: str, csv_path: str, json_path: str, hyps_path: str, png_path: str,
         metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    model_key = get(cfg, "p3.model", str)
    corpus_key = get(cfg, f"models.{model_key}.corpus", str)
    language = get(cfg, f"corpora.{corpus_key}.whisper_language", str)
    normalizer = get(cfg, f"corpora.{corpus_key}.normalizer", str)
    torch.set_num_threads(get(cfg, "p3.num_threads", int))
    source = get(cfg, "p3.source", (str, type(None))) or model_dir
    model, processor = load_pretrained(source)
    model.to(get(cfg, "p3.device", str))
    calib, rows = calibration_split(load_split(corpus_dir, "test"), get(cfg, "p3.calibration_fraction", float))
    last = get(cfg, "p3.last_encoder", dict)
    points = plan_points(
        model, get(cfg, "p3.ratios", dict), get(cfg, "p3.per_layer", (dict, type(None))),
        dec_self_attn_ratios=get(cfg, "p3.dec_self_attn_sweep", list),
        last_encoder_ratio=get(last, "ratio", (float, type(None))),
        last_encoder_layers=get(last, "n_layers", (int, type(None))),
        last_encoder_components=get(last, "components", list),
        compare_scales=get(cfg, "p3.compare_scales", list), baselines=get(cfg, "p3.baselines", list))
    batch_size, max_new = get(cfg, "p3.batch_size", int), get(cfg, "p3.max_new_tokens", (int, type(None)))

    def decode(m: torch.nn.Module, rs: list[dict]) -> list[str]:
        return transcribe_whisper(m, processor, rs, language, batch_size, max_new_tokens=max_new, progress=False)[0]

    log.info("p3_prune: %s on %s/test[%d:] (%d utterances), %d points", source, corpus_dir, len(calib), len(rows),
             len(points))
    table, hyps = run_points(model, points, rows, decode, normalizer, get(cfg, "p3.bootstrap_resamples", int),
                             partial(derive_seed, get(cfg, "seed", int)), log=log.info)
    write_table(csv_path, table)
    tied = tensor_ratios(model, get(cfg, "p3.ratios", dict), get(cfg, "p3.per_layer", (dict, type(None))))[1]
    for t in tied:
        log.info("p3_prune: tied tensor %s (uses %s) asked %s -> pruned once at %.2f", t["tensor"],
                 sorted(t["uses"]), t["asked"], t["applied"])
    write_json(json_path, {"model": str(source), "calibration_utterances": len(calib),
                           "tied_in_final_config": tied, "points": table})
    write_jsonl(hyps_path, hyps)
    plot_sweeps(table, png_path, title=f"p3: {Path(str(source)).name}, {len(rows)} test utterances")
    metrics = headline_metrics(table)
    write_json(metrics_path, metrics)
    log.info("p3_prune: -> %s, %s, %s; dense %.2f%%, final config %.2f%% at %.1f%% sparsity", csv_path, png_path,
             metrics_path, metrics["dense_wer_pct"], metrics.get("component_x100_wer_pct", float("nan")),
             metrics.get("final_sparsity_pct", float("nan")))


if __name__ == "__main__":
    if len(sys.argv) != 8:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
