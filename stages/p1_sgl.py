"""p1_sgl: fine-tune the dense Whisper with the Sparse Group LASSO regulariser (paper 1, step 1).

    python stages/p1_sgl.py <dense-model-dir> <corpus-dir> <out-model-dir> <loss-csv> <metrics-json> <hist-png>

Reads ``p1.corpus``, ``p1.sgl`` (lambdas, kinds, mode) and ``p1.sgl_train`` (a ``train``-style section).
Writes the regularised model (``save_compressed``, method ``sgl``; same shapes as the dense one) with
its processor, the per-step loss CSV (``extra_loss`` = the SGL penalty, logged), the share of column
groups driven to exactly zero, and a histogram of group norms before / after.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.masks import sparsity_report
from asrcompress.compress.sgl import (
    SGLConfig,
    group_norms,
    lr_at,
    plot_group_norm_histograms,
    sgl_hooks,
    sgl_penalty,
    target_filter,
    zero_group_report,
)
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train


def main(dense_dir: str, corpus_dir: str, out_dir: str, loss_csv: str, metrics_path: str, fig_path: str) -> None:
    setup_logging()
    cfg = load_params()
    p1 = get(cfg, "p1", dict)
    language = get(cfg, f"corpora.{get(p1, 'corpus', str)}.whisper_language", str)
    sgl = SGLConfig.from_params(get(p1, "sgl", dict))
    tcfg = TrainConfig.from_params(get(p1, "sgl_train", dict), derive_seed(get(cfg, "seed", int), "p1", "sgl"))
    model = load_compressed(dense_dir).train()
    processor = WhisperProcessor.from_pretrained(dense_dir)
    plot_kinds = sgl.group_kinds or sgl.l1_kinds
    norms_before = group_norms(model, plot_kinds)
    penalty_before = float(sgl_penalty(model, sgl))

    extra_loss, after_step = sgl_hooks(sgl, lr_at(tcfg))
    rows = load_split(corpus_dir, "train")
    summary = train(model, rows, WhisperCollator(processor, language), tcfg, ckpt_dir="checkpoints/p1_sgl",
                    loss_log=loss_csv, fingerprint={"stage": "p1_sgl", "dense": dense_dir, "sgl": asdict(sgl)},
                    extra_loss=extra_loss, after_step=after_step, desc="p1_sgl")

    plot_group_norm_histograms(norms_before, group_norms(model, plot_kinds), fig_path,
                               title=f"SGL column-group norms before / after {tcfg.max_steps} steps")
    save_compressed(model, out_dir, "sgl", method_params={**asdict(sgl), "train": asdict(tcfg)})
    processor.save_pretrained(out_dir)
    zeros = zero_group_report(model)
    sparsity = sparsity_report(model, target_filter())
    metrics = {**summary, "penalty_before": penalty_before, "penalty_after": float(sgl_penalty(model, sgl)),
               "target_weight_sparsity_pct": 100.0 * sparsity["sparsity"], **zeros}
    write_json(metrics_path, metrics)
    log.info("p1_sgl: %s -> %s | %d steps, loss %.3f, zero groups %.1f%% (fc2 %.1f%%, out_proj %.1f%%), "
             "%d/%d FFN neurons and %d/%d heads zero, block-weight sparsity %.1f%%, %.0f s", dense_dir, out_dir,
             tcfg.max_steps, summary["final_loss"], zeros["zero_groups_pct"], zeros.get("zero_groups_pct_fc2", 0.0),
             zeros.get("zero_groups_pct_out_proj", 0.0), zeros["zero_ffn_neurons"], zeros["ffn_neurons"],
             zeros["zero_heads"], zeros["heads"], metrics["target_weight_sparsity_pct"], summary["train_seconds"])


if __name__ == "__main__":
    main(*sys.argv[1:])
