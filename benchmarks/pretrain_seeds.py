"""How robust is the smoke pre-training? The `pretrain` recipe of params.yaml, from several seeds, with
the English test WER measured along the way.

For each seed: the tiny Whisper is built from `whisper.dims` with that seed (as `stages/pretrain.py`
does with `seed`), trained on the training splits of all corpora in `data/corpora` with the
`pretrain` and `pretrain_ctc` params (or the overrides below), and greedy-decoded on the English
test split every EVAL_EVERY steps (WER after the English normaliser). Nothing is saved. Needs the
`prepare` and `tokenizer` stages' outputs (`dvc repro tokenizer`).

Run: ``python benchmarks/pretrain_seeds.py [--seeds 1234 1 2] [--steps N] [--ctc-weight W]
[--frame-stride S] [--threads T] [--eval-every K]``. One seed of the default recipe takes about
5 min on 2 cores; run seeds in parallel with ``--threads 1`` (one process per core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch
from transformers import WhisperProcessor

from asrcompress.config import derive_seed, get, load_params
from asrcompress.inference import transcribe_whisper
from asrcompress.io import load_split
from asrcompress.measure.wer import score
from asrcompress.models.whisper import build_model
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.ctc_aux import EncoderCTCHead, ctc_aux_loss
from asrcompress.train.loop import TrainConfig, train


def run_seed(seed: int, cfg: dict, steps: int | None, ctc_weight: float, stride: int, threads: int | None,
             eval_every: int) -> list[dict]:
    processor = WhisperProcessor.from_pretrained("data/processor")
    torch.manual_seed(derive_seed(seed, "whisper_init"))
    model = build_model(get(cfg, "whisper.dims", dict), processor.tokenizer, get(cfg, "whisper.chunk_length_s", int),
                        get(cfg, "whisper.attn_implementation", str))
    tok = processor.tokenizer
    head = EncoderCTCHead(model.config.d_model, len(tok), set(tok.all_special_ids), stride) if ctc_weight > 0 else None
    corpora = get(cfg, "corpora", dict)
    language_map = {get(c, "language", str): get(c, "whisper_language", str) for c in corpora.values()}
    rows = [r for key in corpora for r in load_split(f"data/corpora/{key}", "train")]
    test = load_split("data/corpora/en", "test")
    tcfg = TrainConfig.from_params(get(cfg, "pretrain", dict), seed)
    tcfg = dataclasses.replace(tcfg, max_steps=steps or tcfg.max_steps, num_threads=threads or tcfg.num_threads,
                               checkpoint_every=10**9)
    curve: list[dict] = []
    t0 = time.time()

    def evaluate(m: torch.nn.Module, step: int) -> None:
        if (step + 1) % eval_every and step + 1 != tcfg.max_steps:
            return
        hyps, _ = transcribe_whisper(m, processor, test, "en", batch_size=32, progress=False)
        wer = score([r["text"] for r in test], hyps, "english", n_resamples=200, seed=seed)
        curve.append({"seed": seed, "step": step + 1, "wer_pct": round(wer["wer_pct"], 1),
                      "ci": [round(wer["wer_ci_low_pct"], 1), round(wer["wer_ci_high_pct"], 1)],
                      "seconds": round(time.time() - t0)})
        print(json.dumps(curve[-1]), flush=True)
        m.train()

    with tempfile.TemporaryDirectory() as tmp:
        train(model, rows, WhisperCollator(processor, language_map=language_map), tcfg, f"{tmp}/ck", f"{tmp}/loss.csv",
              extra_loss=ctc_aux_loss(head, ctc_weight) if head is not None else None,
              extra_params=list(head.parameters()) if head is not None else (), after_step=evaluate,
              desc=f"seed {seed}")
    return curve


def main() -> None:
    cfg = load_params()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[get(cfg, "seed", int), 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override pretrain.max_steps")
    ap.add_argument("--ctc-weight", type=float, default=get(cfg, "pretrain_ctc.weight", float))
    ap.add_argument("--frame-stride", type=int, default=get(cfg, "pretrain_ctc.frame_stride", int))
    ap.add_argument("--threads", type=int, default=None, help="override pretrain.num_threads")
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()
    finals = []
    for seed in args.seeds:
        curve = run_seed(seed, cfg, args.steps, args.ctc_weight, args.frame_stride, args.threads, args.eval_every)
        finals.append(curve[-1])
    print(f"\nrecipe: steps {args.steps or get(cfg, 'pretrain.max_steps', int)}, ctc weight {args.ctc_weight}, "
          f"frame stride {args.frame_stride}")
    print("seed    final English test WER %  (95 % CI)")
    for f in finals:
        print(f"{f['seed']:<7} {f['wer_pct']:>6.1f}  ({f['ci'][0]:.1f}-{f['ci'][1]:.1f})")
    wers = [f["wer_pct"] for f in finals]
    print(f"spread: {min(wers):.1f}-{max(wers):.1f} (max - min {max(wers) - min(wers):.1f} points)")


if __name__ == "__main__":
    main()
