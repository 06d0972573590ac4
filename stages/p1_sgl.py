"""p1_sgl: fine-tune the dense Whisper with the Sparse Group LASSO regulariser (paper 1, step 1).

    python stages/p1_sgl.py [--control] <dense-model-dir> <corpus-dir> <out-model-dir> <loss-csv> \
        <metrics-json> <hist-png> [<params-section>]

Reads ``p1.corpus``, ``p1.sgl`` (lambdas, kinds, mode) and ``p1.sgl_train`` (a ``train``-style section).
Writes the regularised model (``save_compressed``, method ``sgl``; same shapes as the dense one) with
its processor, the per-step loss CSV (``extra_loss`` = the SGL penalty, logged), the share of column
groups driven to exactly zero, and a histogram of group norms before / after.

``<params-section>`` (default ``p1``): ``p1_real`` runs it on the real Whisper base (pipelines/p1_real),
training inside the cut encoder window ``<section>.train_window_s`` (``models.whisper.encoder_window``;
the model is saved with its own window).

``--control``: the same fine-tuning without the regulariser, for ``p1.control_train`` steps (set it to
the SGL path's total, SGL + recovery): the dense model trained as long as the compressed one, so that
a WER difference is not just extra training (method ``dense_ft``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.masks import sparsity_report
from asrcompress.compress.sgl import (
    SGLConfig,
    check_p1_section,
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
from asrcompress.models.whisper import check_train_window, encoder_window
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train


def main(*argv: str) -> None:
    control = argv[:1] == ("--control",)
    args = argv[1:] if control else argv
    dense_dir, corpus_dir, out_dir, loss_csv, metrics_path, fig_path = args[:6]
    section = args[6] if len(args) == 7 else "p1"
    setup_logging()
    cfg = load_params()
    p1 = check_p1_section(cfg, section)  # the whole section, before any work
    language = get(cfg, f"corpora.{get(p1, 'corpus', str)}.whisper_language", str)
    sgl = SGLConfig.from_params(get(p1, "sgl", dict))
    if control:  # no penalty: every lambda 0 (kinds kept, so the same groups are reported)
        sgl = SGLConfig(l1_kinds=sgl.l1_kinds, group_kinds=sgl.group_kinds, mode=sgl.mode)
    name = f"{section}_dense_ft" if control else f"{section}_sgl"  # p1_sgl, p1_real_sgl, ...
    train_key = "control_train" if control else "sgl_train"
    tcfg = TrainConfig.from_params(get(p1, train_key, dict), derive_seed(get(cfg, "seed", int), "p1", "sgl"),
                                   name=f"{section}.{train_key}")
    model = load_compressed(dense_dir).train()
    window = check_train_window(p1, section, model)
    window_record = {"train_window_s": window} if window else {}  # the smoke p1 records stay as they were
    processor = WhisperProcessor.from_pretrained(dense_dir)
    plot_kinds = sgl.group_kinds or sgl.l1_kinds
    norms_before = group_norms(model, plot_kinds)
    penalty_before = float(sgl_penalty(model, sgl))

    extra_loss, after_step = (None, None) if control else sgl_hooks(sgl, lr_at(tcfg))
    rows = load_split(corpus_dir, "train")
    with encoder_window(model, processor, window) as proc:  # None: the model's own window
        collate = WhisperCollator(proc, language, max_target_positions=model.config.max_target_positions)
        summary = train(model, rows, collate, tcfg, ckpt_dir=f"checkpoints/{Path(out_dir).name}",
                        loss_log=loss_csv, extra_loss=extra_loss, after_step=after_step, desc=name,
                        fingerprint={"stage": name, "dense": dense_dir, "sgl": asdict(sgl), "window_s": window})

    what = "plain fine-tuning (control)" if control else "SGL"
    plot_group_norm_histograms(norms_before, group_norms(model, plot_kinds), fig_path,
                               title=f"column-group norms before / after {tcfg.max_steps} steps of {what}")
    save_compressed(model, out_dir, "dense_ft" if control else "sgl",
                    method_params={**asdict(sgl), "train": asdict(tcfg), **window_record})
    processor.save_pretrained(out_dir)
    zeros = zero_group_report(model)
    sparsity = sparsity_report(model, target_filter())
    metrics = {**summary, "penalty_before": penalty_before, "penalty_after": float(sgl_penalty(model, sgl)),
               "target_weight_sparsity_pct": 100.0 * sparsity["sparsity"], **zeros,
               "compress_cpu_s": time.process_time()}  # the whole stage, load included
    write_json(metrics_path, metrics)
    log.info("%s: %s -> %s | %d steps, loss %.3f, zero groups %.1f%% (fc2 %.1f%%, out_proj %.1f%%), "
             "%d/%d FFN neurons and %d/%d heads zero, block-weight sparsity %.1f%%, %.0f s", name, dense_dir, out_dir,
             tcfg.max_steps, summary["final_loss"], zeros["zero_groups_pct"], zeros.get("zero_groups_pct_fc2", 0.0),
             zeros.get("zero_groups_pct_out_proj", 0.0), zeros["zero_ffn_neurons"], zeros["ffn_neurons"],
             zeros["zero_heads"], zeros["heads"], metrics["target_weight_sparsity_pct"], summary["train_seconds"])


if __name__ == "__main__":
    if len(sys.argv) - (sys.argv[1:2] == ["--control"]) not in (7, 8):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
