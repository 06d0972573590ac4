"""pretrain: the multilingual base model every fine-tune starts from.

smoke: a tiny Whisper built from `whisper.dims` and trained from scratch on the training splits
of all corpora at once (our offline stand-in for a multilingual hub checkpoint), with a joint CTC loss
on the encoder (`pretrain_ctc.weight`; train/ctc_aux.py) so that it learns whatever the seed;
paper: the hub checkpoint itself (`whisper.source`), saved locally, no training.

    python stages/pretrain.py [--source-key KEY] <processor-dir> <out-dir> <loss-csv> <metrics-json> [<corpus-dir> ...]

``--source-key`` names another params key holding the hub id to save instead of `whisper.source`
(``p1.medium_source``: paper 1's whisper-medium chain, pipelines/p1_medium/dvc.yaml). That key must
name a hub checkpoint in the active profile: a second from-scratch base is not built.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import WhisperProcessor

from asrcompress.config import (
    CORPUS_SCHEMA,
    PRETRAIN_CTC_SCHEMA,
    ParamError,
    check,
    check_whisper,
    derive_seed,
    get,
    load_params,
)
from asrcompress.io import load_split, log, setup_logging, write_json
from asrcompress.models.whisper import build_model, check_window, load_pretrained
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.ctc_aux import EncoderCTCHead, ctc_aux_loss
from asrcompress.train.loop import TrainConfig, train
from asrcompress.train.save import save_trained


def main(*argv: str) -> None:
    source_key = "whisper.source"
    if argv[:1] == ("--source-key",):
        source_key, argv = argv[1], argv[2:]
    if len(argv) < 4:
        raise SystemExit(__doc__)
    processor_dir, out_dir, loss_csv, metrics_path, *corpus_dirs = argv
    setup_logging()
    cfg = load_params()
    source = get(cfg, source_key, (str, type(None)))
    if source is None or (source == "scratch" and source_key != "whisper.source"):
        raise ParamError(f"params.yaml: {source_key} is {source!r} in the {cfg['profile']} profile; this chain "
                         f"needs a hub checkpoint (it is part of the paper profile: make profile PROFILE=paper)")
    whisper = check_whisper(cfg)
    attn = whisper["attn_implementation"]
    if source == "scratch":  # every section the from-scratch run reads, before any work
        if not corpus_dirs:
            raise SystemExit("pretrain from scratch needs at least one <corpus-dir>\n" + (__doc__ or ""))
        corpora = {k: check(cfg, f"corpora.{k}", CORPUS_SCHEMA) for k in get(cfg, "corpora", dict)}
        tcfg = TrainConfig.from_params(get(cfg, "pretrain"), get(cfg, "seed", int), name="pretrain")
        ctc = check(cfg, "pretrain_ctc", PRETRAIN_CTC_SCHEMA)
    processor = WhisperProcessor.from_pretrained(processor_dir)
    if source != "scratch":
        if not PartialState().is_main_process:  # several launched processes: one saves
            return
        model, _ = load_pretrained(source, attn)
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        write_json(metrics_path, {"source": source, "steps": 0, "params": sum(p.numel() for p in model.parameters())})
        Path(loss_csv).parent.mkdir(parents=True, exist_ok=True)
        Path(loss_csv).write_text("step,loss,extra_loss,lr\n")
        log.info("pretrain: %s -> %s (hub checkpoint, not trained here)", source, out_dir)
        return
    # the initial weights derive from the one seed: without this two fresh runs start from
    # different models and no reproduced figure can be compared with a committed one
    torch.manual_seed(derive_seed(get(cfg, "seed", int), "whisper_init"))
    model = build_model(whisper["dims"], processor.tokenizer, whisper["chunk_length_s"], attn)
    check_window(processor, model)
    language_map = {c["language"]: c["whisper_language"] for c in corpora.values()}
    rows = [row for d in corpus_dirs for row in load_split(d, "train")]
    # joint CTC on the encoder (train/ctc_aux.py): without it the held-out WER depends on the seed
    ctc_weight = ctc["weight"]
    head = EncoderCTCHead(model.config.d_model, len(processor.tokenizer), set(processor.tokenizer.all_special_ids),
                          frame_stride=ctc["frame_stride"]) if ctc_weight > 0 else None
    summary = train(model, rows, WhisperCollator(processor, language_map=language_map,
                                                      max_target_positions=model.config.max_target_positions), tcfg,
                    ckpt_dir="checkpoints/pretrain", loss_log=loss_csv,
                    fingerprint={"dims": get(cfg, "whisper.dims", dict), "corpora": list(corpus_dirs),
                                 "ctc": get(cfg, "pretrain_ctc", dict)},
                    extra_loss=ctc_aux_loss(head, ctc_weight) if head is not None else None,
                    extra_params=list(head.parameters()) if head is not None else (), desc="pretrain")
    n_params = save_trained(model, processor, out_dir, metrics_path, summary, source=source,
                            train_utterances=len(rows), ctc_weight=ctc_weight)
    if n_params is not None:
        log.info("pretrain: %s (%d utts) -> %s, %.2f M params, final loss %.3f, %.0f s", ", ".join(corpus_dirs),
                 len(rows), out_dir, n_params / 1e6, summary["final_loss"], summary["train_seconds"])

if __name__ == "__main__":
    main(*sys.argv[1:])
