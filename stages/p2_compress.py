"""p2_compress@<variant>: BaldWhisper compression of the dense Bambara Whisper (paper 2).

    python stages/p2_compress.py <variant> <init-dir> <teacher-dir> <corpus-dir> <out-dir> <diag-dir>

A variant (``p2.variants.<variant>``) starts from ``init-dir`` (the dense model, or an earlier variant) and
applies, in order: decoder layer merging (``merge: true``; pairs chosen by calibration similarity), the
activation-aware low-rank embedding (``lowrank: true``), then recovery training with the shared loop,
with feature distillation towards the dense ``teacher-dir`` when ``distill: true``. The model is saved
with ``save_compressed`` to ``out-dir``; ``diag-dir`` gets the diagnostics: ``similarity.csv`` (every
adjacent pair), ``rank_error.csv`` (plain vs activation-aware error per rank), ``loss.csv`` (training)
and ``compress.json`` (what was done, teacher-forced dev loss before/after each step). A variant may set
its own ``max_steps`` (default ``p2.train.max_steps``); ``max_steps: 0`` keeps the surgery alone (no recovery).
"""

from __future__ import annotations

import contextlib
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.distill import FeatureDistillation
from asrcompress.compress.layer_merge import merge_most_similar, valid_token_mask
from asrcompress.compress.lowrank_embedding import (
    embedding_weight,
    factorize_activation_aware,
    logit_input_moment,
    rank_error_sweep,
    rank_for_fraction,
)
from asrcompress.compress.surgery import num_parameters
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
                         for r in rows)


def _batches(rows: list[dict[str, Any]], collate: WhisperCollator, size: int) -> list[dict[str, torch.Tensor]]:
    return [collate(rows[i:i + size]) for i in range(0, len(rows), size)]


@torch.no_grad()
def _dev_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Teacher-forced cross-entropy per target token (nats) over ``batches``."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int(valid_token_mask(batch).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count


def _merge(model: torch.nn.Module, p2: dict[str, Any], calib: list, diag: Path) -> dict[str, Any]:
    m = get(p2, "merge", dict)
    result = merge_most_similar(model, calib, get(m, "n_pairs", int), get(m, "similarity", str),
                                m["alpha"], m["beta"], m.get("pairs"))
    _write_csv(diag / "similarity.csv", result["similarity"])
    return {"criterion": result["criterion"], "merged": result["merged"]}


def _lowrank(model: torch.nn.Module, p2: dict[str, Any], calib: list, diag: Path) -> dict[str, Any]:
    lr = get(p2, "lowrank", dict)
    scaling, damping = get(lr, "scaling", str), get(lr, "damping", float)
    C, n_tokens = logit_input_moment(model, calib)
    W = embedding_weight(model)
    ranks = sorted({rank_for_fraction(float(f), *W.shape) for f in get(lr, "sweep", list)})
    # the error curve always compares plain SVD with an activation-aware scaling (full if plain is installed)
    _write_csv(diag / "rank_error.csv", rank_error_sweep(W, C, ranks, "full" if scaling == "none" else scaling,
                                                         damping))
    rank = rank_for_fraction(get(lr, "rank_fraction", float), *W.shape)
    info = factorize_activation_aware(model, rank, C, scaling, damping)
    return {**info, "full_rank": min(W.shape), "calibration_tokens": n_tokens}


def _recover(model: torch.nn.Module, variant: str, spec: dict[str, Any], p2: dict[str, Any], seed: int,
             rows: list[dict[str, Any]], collate: WhisperCollator, teacher_dir: str, init_dir: str, diag: Path
             ) -> dict[str, Any]:
    """Recovery training with the shared loop (+ feature distillation); ``max_steps: 0`` skips it."""
    section = {**get(p2, "train", dict), **({"max_steps": spec["max_steps"]} if "max_steps" in spec else {})}
    if int(section["max_steps"]) == 0:
        return {"train": {"steps": 0}}
    tcfg = TrainConfig.from_params(section, derive_seed(seed, "p2", variant))
    out: dict[str, Any] = {}
    kd = None
    if get(spec, "distill", bool):
        d = get(p2, "distill", dict)
        kd = FeatureDistillation(load_compressed(teacher_dir), model, d["layers"], get(d, "loss", str),
                                 get(d, "weight", float))
        out["distill"] = kd.describe()
    fingerprint = {"variant": variant, "spec": spec, "init": init_dir, "calib_utterances": p2["calib_utterances"],
                   **{k: p2[k] for k in ("merge", "lowrank", "distill")}}
    with kd if kd is not None else contextlib.nullcontext():
        out["train"] = train(model, rows, collate, tcfg, ckpt_dir=f"checkpoints/p2/{variant}",
                             loss_log=diag / "loss.csv", fingerprint=fingerprint, extra_loss=kd,
                             desc=f"p2_compress@{variant}")
    return out


def main(variant: str, init_dir: str, teacher_dir: str, corpus_dir: str, out_dir: str, diag_dir: str) -> None:
    setup_logging()
    cfg = load_params()
    p2 = get(cfg, "p2", dict)
    spec = get(p2, f"variants.{variant}", dict)
    seed = get(cfg, "seed", int)
    corpus = get(cfg, f"dense.{get(p2, 'reference', str)}.corpus", str)
    language = get(cfg, f"corpora.{corpus}.whisper_language", str)
    torch.set_num_threads(get(p2, "train.num_threads", int))
    diag = Path(diag_dir)
    processor = WhisperProcessor.from_pretrained(teacher_dir)
    model = load_compressed(init_dir)
    collate = WhisperCollator(processor, language, max_target_positions=model.config.max_target_positions)
    train_rows = load_split(corpus_dir, "train")
    rng = np.random.default_rng(derive_seed(seed, "p2", "calibration"))
    calib_idx = rng.choice(len(train_rows), size=min(get(p2, "calib_utterances", int), len(train_rows)), replace=False)
    size = get(p2, "batch_size", int)
    calib = _batches([train_rows[int(i)] for i in calib_idx], collate, size)
    dev = _batches(load_split(corpus_dir, "dev")[:get(p2, "dev_utterances", int)], collate, size)
    record: dict[str, Any] = {"variant": variant, "init": init_dir, "params_init": num_parameters(model),
                              "dev_loss_init": _dev_loss(model, dev)}
    if get(spec, "merge", bool):
        record["merge"] = _merge(model, p2, calib, diag)
        record["dev_loss_after_merge"] = _dev_loss(model, dev)
        log.info("p2_compress@%s: merged decoder pairs %s (%s similarity)", variant,
                 [r["origin"] for r in record["merge"]["merged"]], record["merge"]["criterion"])
    if get(spec, "lowrank", bool):
        record["lowrank"] = info = _lowrank(model, p2, calib, diag)
        record["dev_loss_after_lowrank"] = _dev_loss(model, dev)
        log.info("p2_compress@%s: embedding rank %d/%d (%s scaling), activation-weighted error %.4f", variant,
                 info["rank"], info["full_rank"], info["scaling"], info["act_rel_err"])
    record["dev_loss_before_training"] = _dev_loss(model, dev)
    record.update(_recover(model, variant, spec, p2, seed, train_rows, collate, teacher_dir, init_dir, diag))
    record.update({"dev_loss_after_training": _dev_loss(model, dev), "params": num_parameters(model)})
    save_compressed(model, out_dir, "p2_baldwhisper", {"variant": spec, **{k: p2[k] for k in ("merge", "lowrank",
                    "distill")}}, extra={k: record[k] for k in ("merge", "lowrank", "distill") if k in record})
    processor.save_pretrained(out_dir)
    write_json(diag / "compress.json", record)
    log.info("p2_compress@%s: %s -> %s | params %.3f M -> %.3f M, dev loss %.3f (init) / %.3f (before training) "
             "/ %.3f (after %d steps)", variant, init_dir, out_dir, record["params_init"] / 1e6,
             record["params"] / 1e6, record["dev_loss_init"], record["dev_loss_before_training"],
             record["dev_loss_after_training"], record["train"]["steps"])


if __name__ == "__main__":
    main(*sys.argv[1:])
