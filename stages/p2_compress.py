"""p2_compress@<variant>: BaldWhisper compression of the dense Bambara Whisper (paper 2).

    python stages/p2_compress.py <variant> <init-dir> <teacher-dir> <corpus-dir> <out-dir> <diag-dir> [section]

``section`` (default ``p2``) is the params section read: ``p2_real`` for OpenAI's Whisper base
(pipelines/p2_real/dvc.yaml), whose ``train_window_s`` cuts the encoder window of the student and the
teacher for calibration, dev losses and training (``models.whisper.encoder_window``); the model is saved
with its own window.

A variant (``p2.variants.<variant>``) starts from ``init-dir`` (the dense model, or an earlier variant) and
applies ``compress/baldwhisper.py``'s steps: decoder layer merging (``merge: true``), the activation-aware
low-rank embedding (``lowrank: true``), then recovery training (feature distillation towards the dense
``teacher-dir`` when ``distill: true``; ``max_steps: 0`` keeps the surgery alone). The model is saved with
``save_compressed`` to ``out-dir`` (measured by ``measure@p2_<variant>``); ``diag-dir`` gets
``similarity.csv`` (every adjacent pair), ``rank_error.csv`` (plain vs activation-aware error per rank),
``loss.csv`` (training) and ``compress.json`` (what was done, the structure, the teacher-forced dev loss
before/after each step).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperProcessor

from asrcompress.compress import baldwhisper as bw
from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.surgery import num_parameters
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_csv, write_json
from asrcompress.models.whisper import check_train_window, encoder_window, rows_in_window
from asrcompress.train.collate import WhisperCollator


def main(variant: str, init_dir: str, teacher_dir: str, corpus_dir: str, out_dir: str, diag_dir: str,
         section: str = "p2") -> None:
    setup_logging()
    cfg = load_params()
    p2 = bw.check_p2_section(cfg, section)  # the whole section, before any work
    spec = get(p2, f"variants.{variant}", dict)
    seed = get(cfg, "seed", int)
    _, language = bw.reference_corpus(cfg, section)
    torch.set_num_threads(get(p2, "train.num_threads", int))
    diag = Path(diag_dir)
    processor = WhisperProcessor.from_pretrained(teacher_dir)
    model = load_compressed(init_dir)
    window = check_train_window(p2, section, model)
    with encoder_window(model, processor, window) as proc:
        record = compress(model, variant, spec, p2, section, seed, proc, language, init_dir, teacher_dir,
                          corpus_dir, diag, processor, window)
    record.update({"params": num_parameters(model), "structure": bw.structure_summary(model),
                   "compress_cpu_s": time.process_time()})  # the whole stage, all threads (init's own not included)
    kept = {k: p2[k] for k in ("merge", "lowrank", "distill", "train_window_s") if k in p2}
    save_compressed(model, out_dir, "p2_baldwhisper", {"variant": spec, **kept},
                    extra={k: record[k] for k in ("merge", "lowrank", "distill") if k in record})
    processor.save_pretrained(out_dir)
    write_json(diag / "compress.json", record)
    log.info("p2_compress@%s: %s -> %s | params %.3f M -> %.3f M, dev loss %.3f (init) / %.3f (before training) "
             "/ %.3f (after %d steps)", variant, init_dir, out_dir, record["params_init"] / 1e6,
             record["params"] / 1e6, record["dev_loss_init"], record["dev_loss_before_training"],
             record["dev_loss_after_training"], record["train"]["steps"])


def compress(model: torch.nn.Module, variant: str, spec: dict[str, Any], p2: dict[str, Any], section: str,
             seed: int, proc: WhisperProcessor, language: str, init_dir: str, teacher_dir: str, corpus_dir: str,
             diag: Path, full_processor: WhisperProcessor, window: int | None) -> dict[str, Any]:
    """The recipe's steps on ``model`` (inside its training window; ``proc`` pads to it): the record."""
    collate = WhisperCollator(proc, language, max_target_positions=model.config.max_target_positions)
    train_rows, dropped = rows_in_window(load_split(corpus_dir, "train"), window)
    dev_rows, dev_dropped = rows_in_window(load_split(corpus_dir, "dev"), window)
    if dropped or dev_dropped:
        log.warning("p2_compress@%s: %d train / %d dev utterances longer than the %s s training window left out",
                    variant, len(dropped), len(dev_dropped), window)
    rng = np.random.default_rng(derive_seed(seed, section, "calibration"))
    calib_idx = rng.choice(len(train_rows), size=min(get(p2, "calib_utterances", int), len(train_rows)), replace=False)
    size = get(p2, "batch_size", int)
    calib = bw.batches([train_rows[int(i)] for i in calib_idx], collate, size)
    dev = bw.batches(dev_rows[:get(p2, "dev_utterances", int)], collate, size)
    record: dict[str, Any] = {"variant": variant, "init": init_dir, "params_init": num_parameters(model),
                              "dev_loss_init": bw.dev_loss(model, dev), **({"train_window_s": window} if window else {}),
                              **({"train_utterances": len(train_rows), "train_left_out_window": len(dropped),
                                  "dev_left_out_window": len(dev_dropped)} if dropped or dev_dropped else {})}
    if get(spec, "merge", bool):
        record["merge"], similarity = bw.merge_step(model, p2, calib)
        write_csv(diag / "similarity.csv", similarity)
        record["dev_loss_after_merge"] = bw.dev_loss(model, dev)
        log.info("p2_compress@%s: merged decoder pairs %s (%s similarity)", variant,
                 [r["origin"] for r in record["merge"]["merged"]], record["merge"]["criterion"])
    if get(spec, "lowrank", bool):
        info, sweep = bw.lowrank_step(model, p2, calib)
        record["lowrank"] = info
        write_csv(diag / "rank_error.csv", sweep)
        record["dev_loss_after_lowrank"] = bw.dev_loss(model, dev)
        log.info("p2_compress@%s: embedding rank %d/%d (%s scaling), activation-weighted error %.4f", variant,
                 info["rank"], info["full_rank"], info["scaling"], info["act_rel_err"])
    record["dev_loss_before_training"] = record.get("dev_loss_after_lowrank", record.get(  # the same eval pass
        "dev_loss_after_merge", record["dev_loss_init"]))
    record.update(bw.recover(model, variant, spec, p2, derive_seed(seed, section, variant), train_rows, collate,
                             teacher_dir, init_dir, diag / "loss.csv", section, full_processor, window))
    record["dev_loss_after_training"] = bw.dev_loss(model, dev)
    return record


if __name__ == "__main__":
    main(*sys.argv[1:])
