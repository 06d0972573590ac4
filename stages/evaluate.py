"""evaluate@<model>: greedy-decode a model on its corpus's test split; WER/CER with bootstrap CI.

Raw hypotheses go to a JSONL file (normalised only when scored, so they can be re-scored).

    python stages/evaluate.py <model-key> <model-dir> <corpus-dir> <hyps-jsonl> <metrics-json>
"""

from __future__ import annotations

import sys
import time

import torch

from asrcompress.config import derive_seed, get, load_params
from asrcompress.inference import transcribe_whisper
from asrcompress.io import load_split, log, setup_logging, write_json, write_jsonl
from asrcompress.measure.wer import score
from asrcompress.models.whisper import load_pretrained


def main(key: str, model_dir: str, corpus_dir: str, hyps_path: str, metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    corpus_key = get(cfg, f"models.{key}.corpus", str)
    language = get(cfg, f"corpora.{corpus_key}.whisper_language", str)
    normalizer = get(cfg, f"corpora.{corpus_key}.normalizer", str)
    torch.set_num_threads(get(cfg, "evaluate.num_threads", int))
    model, processor = load_pretrained(model_dir)
    rows = load_split(corpus_dir, "test")
    t0 = time.time()
    hyps, lengths = transcribe_whisper(model, processor, rows, language, get(cfg, "evaluate.batch_size", int))
    decode_s = time.time() - t0
    refs = [r["text"] for r in rows]
    write_jsonl(hyps_path, ({"id": r["id"], "ref": r["text"], "hyp": h, "tokens": n}
                            for r, h, n in zip(rows, hyps, lengths, strict=True)))
    metrics = score(refs, hyps, normalizer, n_resamples=get(cfg, "evaluate.bootstrap_resamples", int),
                    seed=derive_seed(get(cfg, "seed", int), "bootstrap", key))
    audio_s = sum(r["duration"] for r in rows)
    metrics.update({"test_utterances": len(rows), "decode_seconds": round(decode_s, 2),
                    "rtfx_batched": round(audio_s / decode_s, 2)})
    write_json(metrics_path, metrics)
    log.info("evaluate@%s: %s on %s/test -> WER %.2f%% [%s], CER %.2f%%", key, model_dir, corpus_dir,
             metrics["wer_pct"], metrics.get("wer_ci95_pct"), metrics["cer_pct"])


if __name__ == "__main__":
    main(*sys.argv[1:])
