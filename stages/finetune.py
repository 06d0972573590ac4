"""finetune@<model>: fine-tune the base model on one corpus (the dense reference of every paper),
with checkpoint/resume and a per-step loss log.

smoke: from our multilingual base (`pretrain`); paper: from the hub checkpoint `pretrain` saved.

    python stages/finetune.py <model-key> <corpus-dir> <base-dir> <out-dir> <loss-csv> <metrics-json>
"""

from __future__ import annotations

import sys
from pathlib import Path

from asrcompress.config import CORPUS_SCHEMA, check, check_model_entry, check_whisper, get, load_params
from asrcompress.io import load_split, log, setup_logging
from asrcompress.models.whisper import load_pretrained
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train
from asrcompress.train.save import save_trained


def main(key: str, corpus_dir: str, base_dir: str, out_dir: str, loss_csv: str, metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    corpus_key = check_model_entry(cfg, key)["corpus"]
    language = check(cfg, f"corpora.{corpus_key}", CORPUS_SCHEMA)["whisper_language"]
    tcfg = TrainConfig.from_params(get(cfg, "train"), get(cfg, "seed", int), name="train")
    model, processor = load_pretrained(base_dir, check_whisper(cfg)["attn_implementation"])
    rows = load_split(corpus_dir, "train")
    collate = WhisperCollator(processor, language, max_target_positions=model.config.max_target_positions)
    summary = train(model, rows, collate, tcfg,
                    ckpt_dir=f"checkpoints/finetune/{Path(out_dir).name}", loss_log=loss_csv,
                    fingerprint={"model": key, "base": base_dir, "corpus": corpus_dir}, desc=f"finetune@{key}")
    n_params = save_trained(model, processor, out_dir, metrics_path, summary, train_utterances=len(rows))
    if n_params is not None:
        log.info("finetune@%s: %s + %s (%d utts) -> %s, %.2f M params, final loss %.3f, %.0f s", key, base_dir,
                 corpus_dir, len(rows), out_dir, n_params / 1e6, summary["final_loss"], summary["train_seconds"])

if __name__ == "__main__":
    main(*sys.argv[1:])
