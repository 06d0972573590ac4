"""p3_prune: sensitivity-aware one-shot magnitude pruning of Whisper, no fine-tuning (paper 3).

Evaluates, on the test split minus its calibration head (``p3.calibration_fraction``): the dense model,
the decoder self-attention sweep, the last-encoder-layers point, and at every ``p3.compare_sparsities``
the ratios derived from p3_sensitivity's scores (``p3.allocation``), the paper's fixed whisper-small ratios
scaled to the same sparsity, and global / uniform magnitude pruning at the same pruned-weight count.

    python stages/p3_prune.py <model-dir> <corpus-dir> <sensitivity-json> <sweep-csv> <sweep-json> <hyps-jsonl>
        <plot-png> <metrics-json> [<params-section> [<evaluate-key>]]

``<params-section>`` (default ``p3``): ``p3_real`` runs it on the real Whisper base (pipelines/p3_real),
once per ``p3_real.evaluate`` entry (``<evaluate-key>``: the corpus scored, and how many test utterances).

``p3.source`` (a hub id or path) replaces <model-dir> when set (paper profile: off-the-shelf whisper-small).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

from asrcompress.compress.allocation import AllocationRule
from asrcompress.compress.components import tensor_ratios
from asrcompress.compress.p3_oneshot import headline_metrics, p3_data, plan_points
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import log, read_json, setup_logging, write_csv, write_json, write_jsonl
from asrcompress.measure.masked_sweep import run_points
from asrcompress.models.whisper import load_pretrained
from asrcompress.report.figures import plot_p3_sweeps


def write_table(path: str, table: list[dict]) -> None:
    """The sweep table as CSV, the per-component sparsities as ``sparsity_<component>_pct`` columns."""
    rows = []
    for r in table:
        flat = {k: v for k, v in r.items() if k != "component_sparsity_pct"}
        flat.update({f"sparsity_{c}_pct": v for c, v in r["component_sparsity_pct"].items()})
        rows.append(flat)
    write_csv(path, rows)


def main(model_dir: str, corpus_dir: str, sensitivity_path: str, csv_path: str, json_path: str, hyps_path: str,
         png_path: str, metrics_path: str, section: str = "p3", evaluate: str | None = None) -> None:
    setup_logging()
    cfg = load_params()
    alloc = get(cfg, f"{section}.allocation", dict)
    rule = AllocationRule(score=get(alloc, "score", str), by_layer=get(alloc, "by_layer", bool),
                          min_ratio=get(alloc, "min_ratio", float), max_ratio=get(alloc, "max_ratio", float),
                          power=get(alloc, "power", float))
    targets = get(cfg, f"{section}.compare_sparsities", list)
    data = p3_data(cfg, section, corpus_dir, evaluate)
    language, normalizer, calib, rows = data.language, data.normalizer, data.calibration, data.evaluation
    torch.set_num_threads(get(cfg, f"{section}.num_threads", int))
    source = get(cfg, f"{section}.source", (str, type(None))) or model_dir
    model, processor = load_pretrained(source)
    model.to(get(cfg, f"{section}.device", str))
    sensitivity = read_json(sensitivity_path)
    last = get(cfg, f"{section}.last_encoder", dict)
    points = plan_points(
        model, get(cfg, f"{section}.ratios", dict), get(cfg, f"{section}.per_layer", (dict, type(None))),
        dec_self_attn_ratios=get(cfg, f"{section}.dec_self_attn_sweep", list),
        last_encoder_ratio=get(last, "ratio", (float, type(None))),
        last_encoder_layers=get(last, "n_layers", (int, type(None))),
        last_encoder_components=get(last, "components", list),
        compare_sparsities=targets, sensitivity=sensitivity["per_layer"], rule=rule,
        baselines=get(cfg, f"{section}.baselines", list))
    log.info("p3_prune: %s on %s/test (%d utterances; calibration %s), %d points; allocation from %s (%s)", source,
             corpus_dir, len(rows), data.calibration_from, len(points), sensitivity_path, rule)
    table, hyps = run_points(model, processor, points, rows, language, normalizer,
                             get(cfg, f"{section}.bootstrap_resamples", int), partial(derive_seed, get(cfg, "seed", int)),
                             batch_size=get(cfg, f"{section}.batch_size", int),
                             max_new_tokens=get(cfg, f"{section}.max_new_tokens", (int, type(None))), log=log.info)
    write_table(csv_path, table)
    tied = tensor_ratios(model, get(cfg, f"{section}.ratios", dict), get(cfg, f"{section}.per_layer", (dict, type(None))))[1]
    for t in tied:
        log.info("p3_prune: tied tensor %s (uses %s) asked %s -> pruned once at %.2f", t["tensor"],
                 sorted(t["uses"]), t["asked"], t["applied"])
    allocations = {p.key: {"ratios": p.ratios, "per_layer": p.per_layer, "scale": p.scale}
                   for p in points if p.method in ("sensitivity", "paper")}
    write_json(json_path, {"model": str(source), "calibration_utterances": len(calib),
                           "calibration_from": data.calibration_from, "evaluation_utterances": len(rows),
                           "sensitivity": sensitivity_path, "allocation_rule": vars(rule),
                           "tied_in_final_config": tied, "ratios": allocations, "points": table})
    write_jsonl(hyps_path, hyps)
    plot_p3_sweeps(table, png_path, title=f"p3: {Path(str(source)).name}, {len(rows)} test utterances")
    final = f"sensitivity_s{round(100 * max(targets))}"
    metrics = headline_metrics(table, final)
    write_json(metrics_path, metrics)
    log.info("p3_prune: -> %s, %s, %s; dense %.2f%%, %s %.2f%% (%.1f%% of all parameters zero)", csv_path, png_path,
             metrics_path, metrics["dense_wer_pct"], final, metrics.get(f"{final}_wer_pct", float("nan")),
             metrics.get("final_sparsity_pct", float("nan")))


if __name__ == "__main__":
    if len(sys.argv) not in (9, 10, 11):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
