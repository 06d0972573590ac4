"""p1_imp: Iterative Magnitude Pruning baseline of paper 1, matched to the SGL model's sparsity.

    python stages/p1_imp.py <dense-model-dir> <corpus-dir> <prune-metrics-json> <out-model-dir> <loss-csv> \
        <metrics-json> [<params-section>]

Reads ``p1.corpus``, ``p1.imp`` (``target_sparsity``: a number or ``match`` = ``imp_target_sparsity`` from the p1_prune
metrics, i.e. the same number of non-zero parameters as the SGL + two-pass model; ``rounds``;
``schedule``) and ``p1.imp_train`` (a ``train``-style section, used for every round). The output is a
masked dense model (``save_compressed``, method ``imp``): sparsity, not fewer parameters. IMP prunes
the weights of every transformer-block linear (``fc1``, ``fc2``, ``q/k/v/out_proj``) with one global
magnitude threshold. ``<params-section>`` (default ``p1``): ``p1_real`` on the real Whisper base, every round
fine-tuned inside the cut encoder window ``<section>.train_window_s``.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.imp import run_imp
from asrcompress.compress.masks import make_permanent, reapply_masks
from asrcompress.compress.sgl import check_p1_section, target_filter
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, read_json, setup_logging, write_json
from asrcompress.measure.params import count_params, percent_reduction
from asrcompress.models.whisper import check_train_window, encoder_window
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train


def _merge_logs(paths: list[Path], out: str) -> None:
    """One loss CSV over all rounds: global ``step``, ``round``, then the loop's columns."""
    rows, offset = [], 0
    for r, path in enumerate(paths):
        part = list(csv.DictReader(path.open()))
        rows += [{**row, "step": int(row["step"]) + offset, "round": r} for row in part]
        offset += len(part)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "round", "loss", "extra_loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)


def main(dense_dir: str, corpus_dir: str, prune_metrics: str, out_dir: str, loss_csv: str,
         metrics_path: str, section: str = "p1") -> None:
    setup_logging()
    cfg = load_params()
    p1 = check_p1_section(cfg, section)  # the whole section, before any work
    language = get(cfg, f"corpora.{get(p1, 'corpus', str)}.whisper_language", str)
    target = get(p1, "imp.target_sparsity", (float, str))
    if target == "match":
        target = float(read_json(prune_metrics)["imp_target_sparsity"])
    rounds, schedule = get(p1, "imp.rounds", int), get(p1, "imp.schedule", str)
    ckpt = Path("checkpoints") / Path(out_dir).name  # one per chain (p1_imp, p1_imp_medium)
    seed = get(cfg, "seed", int)
    model = load_compressed(dense_dir)
    window = check_train_window(p1, section, model)
    window_record = {"train_window_s": window} if window else {}  # the smoke p1 records stay as they were
    processor = WhisperProcessor.from_pretrained(dense_dir)
    dense = count_params(model)
    rows = load_split(corpus_dir, "train")
    keep = target_filter()  # every block linear's weight (fc1, fc2, q/k/v/out_proj), as the match assumes
    logs: list[Path] = []

    def finetune(m, r: int) -> dict:
        tcfg = TrainConfig.from_params(get(p1, "imp_train", dict), derive_seed(seed, "p1", "imp", str(r)),
                                       name=f"{section}.imp_train")
        logs.append(ckpt / f"round{r}_loss.csv")
        return train(m, rows, collate, tcfg, ckpt_dir=ckpt / f"round{r}", loss_log=logs[-1],
                     fingerprint={"stage": "p1_imp", "dense": dense_dir, "target": target, "rounds": rounds,
                                  "schedule": schedule, "round": r, "window_s": window},
                     after_step=lambda mm, step: reapply_masks(mm), desc=f"p1_imp round {r + 1}/{rounds}")

    with encoder_window(model, processor, window) as proc:  # None: the model's own window
        collate = WhisperCollator(proc, language, max_target_positions=model.config.max_target_positions)
        history = run_imp(model, target, rounds, keep, finetune, schedule)
    _merge_logs(logs, loss_csv)
    make_permanent(model)
    save_compressed(model, out_dir, "imp", method_params={"target_sparsity": target, "rounds": rounds,
                                                         "schedule": schedule, "train": get(p1, "imp_train", dict),
                                                         **window_record})
    processor.save_pretrained(out_dir)
    final = count_params(model)
    metrics = {"target_sparsity": target, "rounds": history, "params": final["params"],
               "nonzero_params": final["nonzero_params"],
               "nonzero_params_reduction_pct": percent_reduction(final["nonzero_params"], dense["nonzero_params"]),
               "block_weight_sparsity_pct": 100.0 * history[-1]["sparsity"],
               "train_seconds": sum(h["train"]["train_seconds"] for h in history), **window_record,
               "compress_cpu_s": time.process_time()}
    write_json(metrics_path, metrics)
    log.info("%s_imp: %s -> %s | %d rounds to %.1f%% block sparsity, non-zero params -%.1f%%, loss %.3f, %.0f s",
             section, dense_dir, out_dir, rounds, metrics["block_weight_sparsity_pct"],
             metrics["nonzero_params_reduction_pct"], history[-1]["train"]["final_loss"], metrics["train_seconds"])


if __name__ == "__main__":
    main(*sys.argv[1:])
