"""One training loop for every fine-tuning in the project (plain, SGL-regularised, distillation,
gate training), for seq2seq (Whisper) and CTC models alike.

* Runs under Hugging Face Accelerate: the same code on CPU, one GPU, or several processes (DDP);
  the smoke profile is one CPU process.
* Deterministic batch order derived from the seed: epoch ``e`` uses permutation ``rng(seed, e)``,
  so a resumed run sees exactly the batches an uninterrupted run would.
* Checkpoints every ``checkpoint_every`` steps (and on Ctrl-C / SIGTERM) into ``ckpt_dir``, with a
  fingerprint of the run's config; a second call with the same fingerprint resumes.
* Loss per step goes to a CSV (a DVC plots file) with step, loss, extra loss, learning rate.
* A NaN or infinite loss stops the run with an error naming the step; the last checkpoint is kept.

Methods plug in through ``extra_loss(model, batch, outputs) -> Tensor`` (added to the model's own
loss) and ``after_step(model, step)`` (e.g. a proximal step or re-applying masks).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from asrcompress.config import derive_seed


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad data); the message says where."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    num_threads: int = 2
    mixed_precision: str = "no"          # "no" | "bf16" | "fp16" (GPU)
    grad_accum_steps: int = 1
    gradient_checkpointing: bool = False

    @classmethod
    def from_params(cls, section: dict[str, Any], seed: int) -> TrainConfig:
        from asrcompress.config import get

        known = set(cls.__dataclass_fields__) - {"seed"}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"params.yaml: unknown training key(s) {sorted(unknown)}; known: {sorted(known)}")
        types = {"max_steps": int, "batch_size": int, "lr": float, "warmup_steps": int,
                 "weight_decay": float, "grad_clip": float, "checkpoint_every": int, "num_threads": int,
                 "mixed_precision": str, "grad_accum_steps": int, "gradient_checkpointing": bool}
        values = {k: get(section, k, types[k]) for k in section}
        cfg = cls(seed=seed, **values)
        if cfg.max_steps <= 0 or cfg.batch_size <= 0 or cfg.lr <= 0:
            raise ValueError("params.yaml: train.max_steps, train.batch_size and train.lr must be > 0")
        return cfg


Collate = Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def fn(step: int) -> float:  # linear warm-up then cosine decay to 10 %
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The dataset indices of global batch ``step`` (deterministic; epochs reshuffle)."""
    per_epoch = max(1, n_items // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng(derive_seed(seed, "epoch", str(epoch))).permutation(n_items)
    return perm[pos * batch_size:(pos + 1) * batch_size]


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "extra_loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)


def train(model: torch.nn.Module, dataset: Sequence[dict[str, Any]], collate: Collate, cfg: TrainConfig,
          ckpt_dir: str | Path, loss_log: str | Path, fingerprint: dict[str, Any] | None = None,
          extra_loss: Callable[[torch.nn.Module, dict, Any], torch.Tensor] | None = None,
          after_step: Callable[[torch.nn.Module, int], None] | None = None,
          extra_params: Sequence[torch.nn.Parameter] = (), desc: str = "train") -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.max_steps`` optimiser steps; returns a summary dict.

    ``extra_params`` (e.g. learnable gate thresholds living outside the model) are optimised too.
    """
    from accelerate import Accelerator

    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum_steps)
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    ckpt_dir, loss_log = Path(ckpt_dir), Path(loss_log)
    stamp = {"train": asdict(cfg), "run": fingerprint or {}, "n_items": len(dataset)}
    start, rows = 0, []
    state_file = ckpt_dir / "trainer_state.json"
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        if saved.get("fingerprint") == json.loads(json.dumps(stamp)):
            accelerator.load_state(str(ckpt_dir / "state"))
            start, rows = int(saved["step"]), saved["log"]
            accelerator.print(f"{desc}: resuming from step {start} ({ckpt_dir})")
        else:
            accelerator.print(f"{desc}: checkpoint in {ckpt_dir} is from another config; starting fresh")

    def save(step: int) -> None:
        if not accelerator.is_main_process:
            return
        tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        accelerator.save_state(str(tmp / "state"))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "fingerprint": stamp, "log": rows}))
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        tmp.rename(ckpt_dir)
        _write_log(loss_log, rows)

    interrupted = {"flag": False}

    def on_signal(signum, frame):  # Ctrl-C / SIGTERM: finish this step, checkpoint, stop
        if interrupted["flag"]:  # a second Ctrl-C stops at once (the last checkpoint stays)
            raise KeyboardInterrupt
        interrupted["flag"] = True

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    world, rank = accelerator.num_processes, accelerator.process_index
    t0 = time.time()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc=desc,
               disable=not accelerator.is_main_process, mininterval=5)
    step = start
    try:
        model.train()
        for step in bar:
            idx = batch_indices(len(dataset), cfg.batch_size, step, cfg.seed)[rank::world]
            batch = {k: v.to(accelerator.device) for k, v in collate([dataset[int(i)] for i in idx]).items()}
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                extra = extra_loss(accelerator.unwrap_model(model), batch, outputs) if extra_loss else None
                total = loss + extra if extra is not None else loss
                if not torch.isfinite(total):
                    raise TrainingError(f"{desc}: step {step}: loss is {total.item()} (model loss "
                                        f"{loss.item()}, lr {scheduler.get_last_lr()[0]:.3g}); last good "
                                        f"checkpoint kept in {ckpt_dir}")
                accelerator.backward(total)
                if cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(accelerator.unwrap_model(model), step)
            rows.append({"step": step + 1, "loss": round(loss.item(), 5),
                         "extra_loss": round(extra.item(), 6) if extra is not None else 0.0,
                         "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if (step + 1) % cfg.checkpoint_every == 0 or interrupted["flag"]:
                save(step + 1)
            if interrupted["flag"]:
                accelerator.print(f"{desc}: interrupted after step {step + 1}; checkpoint saved in "
                                  f"{ckpt_dir}, run again to resume")
                raise KeyboardInterrupt
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    save(cfg.max_steps)
    _write_log(loss_log, rows)
    model = accelerator.unwrap_model(model)
    model.eval()
    return {"steps": cfg.max_steps, "resumed_from": start, "final_loss": rows[-1]["loss"] if rows else None,
            "train_seconds": round(time.time() - t0, 1), "processes": world}
