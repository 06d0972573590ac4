"""tokenizer: the Whisper processor (feature extractor + tokenizer) shared by every model.

smoke: a byte-level BPE trained on all corpora's training text with Whisper's special tokens;
paper: the checkpoint's own processor, by hub id.

    python stages/tokenizer.py <out-dir> <corpus-dir> [<corpus-dir> ...]
"""

from __future__ import annotations

import sys

from transformers import WhisperProcessor

from asrcompress.config import TOKENIZER_SCHEMA, check, check_whisper, load_params
from asrcompress.io import log, setup_logging
from asrcompress.models.whisper import build_feature_extractor, build_tokenizer, resolve_source, train_bpe


def main(out_dir: str, *corpus_dirs: str) -> None:
    setup_logging()
    cfg = load_params()
    whisper = check_whisper(cfg)
    source = whisper["source"]
    if source == "scratch":
        vocab_size = check(cfg, "tokenizer", TOKENIZER_SCHEMA)["vocab_size"]
        from datasets import load_from_disk

        texts = [t for d in corpus_dirs for t in load_from_disk(d)["train"]["text"]]
        vocab, merges = train_bpe(texts, vocab_size)
        tok = build_tokenizer(vocab, merges)
        fe = build_feature_extractor(whisper["chunk_length_s"])
        processor = WhisperProcessor(feature_extractor=fe, tokenizer=tok)
    else:
        processor = WhisperProcessor.from_pretrained(resolve_source(source))
    processor.save_pretrained(out_dir)
    log.info("tokenizer: %s -> %s (vocab %d incl. specials)", source, out_dir, len(processor.tokenizer))


if __name__ == "__main__":
    main(*sys.argv[1:])
