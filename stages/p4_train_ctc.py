"""p4_train_ctc@<model>: train the dense CTC model of paper 4 (wav2vec 2.0 or HuBERT) on one corpus —
from scratch with the fast conv front-end in smoke, from the hub checkpoint in paper — with the
project's training loop (checkpoint/resume, per-step loss log). The character vocabulary is read off
the training text; model and processor are saved together.

    python stages/p4_train_ctc.py <model-key> <corpus-dir> <out-dir> <loss-csv> <metrics-json>
"""

from __future__ import annotations

import sys

import torch

from asrcompress.compress.self_pinching import check_p4_section
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json
from asrcompress.measure.params import count_params
from asrcompress.models.ctc import build_model, build_processor, build_vocab, save_pretrained
from asrcompress.train.collate import CTCCollator
from asrcompress.train.loop import TrainConfig, train


def main(key: str, corpus_dir: str, out_dir: str, loss_csv: str, metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    check_p4_section(cfg)  # the whole section, before any work
    spec = get(cfg, f"p4.models.{key}", dict)
    kind, source = get(spec, "kind", str), get(spec, "source", str)
    dims = get(cfg, "p4.dims", dict)
    rows = load_split(corpus_dir, "train")
    processor = build_processor(build_vocab(r["text"] for r in rows))
    torch.manual_seed(derive_seed(get(cfg, "seed", int), "p4_init", key))  # the initial weights
    model = build_model(kind, source, processor, dims, get(cfg, "p4.attn_implementation", str))
    tcfg = TrainConfig.from_params(get(cfg, "p4.train", dict), get(cfg, "seed", int), name="p4.train")
    fingerprint = {"model": key, "kind": kind, "source": source, "dims": dims,
                   "vocab": processor.tokenizer.get_vocab()}
    summary = train(model, rows, CTCCollator(processor), tcfg, ckpt_dir=f"checkpoints/p4_train/{key}",
                    loss_log=loss_csv, fingerprint=fingerprint, desc=f"p4_train_ctc@{key}")
    save_pretrained(model, processor, out_dir)
    params = count_params(model)
    steps_run = max(1, tcfg.max_steps - summary["resumed_from"])
    write_json(metrics_path, {**summary, "train_utterances": len(rows),
                              "vocab_size": len(processor.tokenizer),
                              "params": params["params"], "params_m": params["params_m"],
                              "seconds_per_step": round(summary["train_seconds"] / steps_run, 3)})
    log.info("p4_train_ctc@%s: %s (%d utts) -> %s, %s from %s, %.3f M params, final loss %.3f, %.0f s", key,
             corpus_dir, len(rows), out_dir, kind, source, params["params_m"], summary["final_loss"],
             summary["train_seconds"])


if __name__ == "__main__":
    main(*sys.argv[1:])
