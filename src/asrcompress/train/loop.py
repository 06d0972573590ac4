"""One training loop for every fine-tuning in the project (plain, SGL-regularised, distillation,
gate training), for seq2seq (Whisper) and CTC models alike.

* Runs under Hugging Face Accelerate: the same code on CPU, one GPU, or several processes (DDP,
  started by ``accelerate launch`` / ``torchrun``; on a machine without CUDA the processes talk
  over gloo). The smoke profile is one CPU process.
* One *step* is one optimiser step on one *global batch* of ``batch_size`` items:
  ``batch_indices(n, batch_size, step, seed)``. Process ``rank`` of ``world`` takes
  ``idx[rank::world]`` and splits it into ``grad_accum_steps`` micro-batches (forward/backward
  one at a time, gradients accumulated, synchronised across processes only after the last). The
  model's loss is weighted by each micro-batch's share of the global batch's loss units (label
  tokens for a seq2seq model, utterances for a per-utterance mean, e.g. CTC ``mean``), so the
  gradient of a step is the gradient of the global batch whatever the number of processes and
  accumulation steps: the loss curve depends on ``batch_size``, not on the hardware layout (up to
  floating-point summation order). ``batch_size`` must be at least processes x accumulation steps.
* The logged loss of a step is the global batch's loss (reduced over processes); the extra loss
  is its mean over processes and micro-batches. Only the main process writes the loss CSV and the
  checkpoint's ``trainer_state.json``; every process saves its own RNG state with it.
* Deterministic: torch's deterministic kernels by default (``deterministic``; with 2 CPU threads
  a run is otherwise not bit-reproducible from one process to the next). The batch order derives
  from the seed (epoch ``e`` uses permutation ``rng(seed, e)``), so a resumed run sees exactly the
  batches an uninterrupted run would; torch's RNG (dropout) is seeded per process (rank 0 with
  ``seed``, rank r with a seed derived from it).
* Checkpoints every ``checkpoint_every`` steps (and on Ctrl-C / SIGTERM) into ``ckpt_dir``, with the
  run's identity (:func:`run_identity`: the config, the caller's run description, the model's config and
  attention implementation, the source code of ``asrcompress.train``, the training rows including their
  audio samples, the collator, the starting weights); a second call with the same identity resumes (with
  any number of processes; ``ckpt_dir`` must be on storage every process sees). A checkpoint of another
  run, or one whose ``trainer_state.json`` is missing or unreadable, is reported (naming what differs, or
  the file) and removed, and the run starts fresh. A run that reaches ``max_steps`` removes its
  checkpoint, so a finished run never stands in for a later one. The decision to stop on a signal is taken
  jointly at the end of a step, so all processes stop after the same step.
* A checkpoint is saved atomically (written to ``<ckpt_dir>.tmp``, the old one renamed to
  ``<ckpt_dir>.old``, the new one renamed in, the old one deleted); a start after a crash in between
  recovers the newest complete one and says so. While a run trains, the main process holds an exclusive
  lock (``fcntl.flock``) on ``<ckpt_dir>.lock`` (holding its pid): a second run on the same directory
  stops at once with an error naming the directory and the holder's pid.
* Loss per step goes to a CSV (a DVC plots file) with step, loss, extra loss, learning rate.
* A NaN or infinite loss stops the run with an error naming the step (on every process, before the
  optimiser step); the last checkpoint is kept.
* ``mixed_precision`` ("bf16" / "fp16", for a GPU) runs the forward under autocast with fp32 master
  weights (fp16 with a gradient scaler; a step the scaler skips does not advance the LR schedule);
  ``gradient_checkpointing`` recomputes activations in the backward (non-reentrant, DDP-safe).

Methods plug in through ``extra_loss(model, batch, outputs) -> Tensor`` (added to the model's own
loss, computed per micro-batch on each process) and ``after_step(model, step)`` (e.g. a proximal
step or re-applying masks; it runs on every process after the optimiser step and must change the
weights identically on each).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from asrcompress.config import ParamError, Spec, check_section, derive_seed
from asrcompress.train.determinism import deterministic_algorithms

MIXED_PRECISION = ("no", "bf16", "fp16")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad data); the message says where."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int                       # optimiser steps
    batch_size: int                      # global batch: items per optimiser step over all processes
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    num_threads: int = 2
    mixed_precision: str = "no"          # "no" | "bf16" | "fp16" (GPU)
    grad_accum_steps: int = 1            # micro-batches per process per step (memory, not maths)
    gradient_checkpointing: bool = False
    deterministic: bool = True           # torch's deterministic kernels (train/determinism.py)

    def __post_init__(self) -> None:  # a config built in code gets the same bounds as one from params
        if self.checkpoint_every < 1 or not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig: checkpoint_every must be >= 1 and grad_clip finite and >= 0 "
                             f"(0 = no clipping), got {self.checkpoint_every} and {self.grad_clip}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any], seed: int, name: str = "train") -> TrainConfig:
        """The config of the training section ``name`` of params.yaml (a dotted path: ``"train"``,
        ``"p1.sgl_train"``), checked before any work: a :class:`~asrcompress.config.ParamError` naming
        ``name.key`` for an unknown, missing, mistyped, non-finite or out-of-range key."""
        values = check_section(section, name, TRAIN_SCHEMA)
        if values["lr"] <= 0:
            raise ParamError(f"params.yaml: {name}.lr: must be > 0, got {values['lr']!r}")
        return cls(seed=seed, **{k: v for k, v in values.items() if v is not None})


#: The keys of every training section (``pretrain``, ``train``, ``p1.sgl_train``, ``p4.train`` ...).
#: ``grad_clip: 0`` switches clipping off; ``checkpoint_every`` >= 1 (set it to ``max_steps`` for one
#: checkpoint at the end: a finished run removes its checkpoint anyway).
TRAIN_SCHEMA: dict[str, Spec] = {
    "max_steps": Spec(int, min=1), "batch_size": Spec(int, min=1), "lr": Spec(float),
    "warmup_steps": Spec(int, required=False, min=0), "weight_decay": Spec(float, required=False, min=0),
    "grad_clip": Spec(float, required=False, min=0), "checkpoint_every": Spec(int, required=False, min=1),
    "num_threads": Spec(int, required=False, min=1),
    "mixed_precision": Spec(str, required=False, choices=MIXED_PRECISION),
    "grad_accum_steps": Spec(int, required=False, min=1),
    "gradient_checkpointing": Spec(bool, required=False), "deterministic": Spec(bool, required=False),
}


Collate = Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimiser step: linear warm-up, then cosine decay to 10 %."""

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


def micro_batches(idx: np.ndarray, rank: int, world: int, accum: int) -> list[np.ndarray]:
    """Process ``rank``'s share ``idx[rank::world]`` of a global batch, split into ``accum``
    contiguous micro-batches (sizes differ by at most one)."""
    return list(np.array_split(idx[rank::world], accum))


def loss_units(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int | None:
    """How many units the model's own loss on ``batch`` is a mean over, or None if it is a sum.

    Seq2seq (Whisper): cross-entropy averaged over label tokens (``labels != -100``). CTC with
    ``ctc_loss_reduction="sum"``: a sum over utterances (None). Anything else (CTC ``mean``, which
    averages length-normalised utterance losses): a mean over the batch's items.
    """
    config = getattr(model, "config", None)
    labels = batch.get("labels")
    if labels is not None and getattr(config, "is_encoder_decoder", False):
        return int((labels != -100).sum())
    if getattr(config, "ctc_loss_reduction", None) == "sum":
        return None
    first = labels if labels is not None else next(iter(batch.values()))
    return int(first.shape[0])


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "extra_loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)


def set_activation_checkpointing(model: torch.nn.Module, enable: bool) -> None:
    """Switch (non-reentrant) activation checkpointing on or off, across transformers' renames."""
    if enable:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _is_checkpointing(model: torch.nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def make_accelerator(mixed_precision: str = "no", cpu: bool | None = None) -> Any:
    """The Accelerator every training run uses (also used by ``benchmarks/bench_train_throughput.py``).

    * ``cpu=None``: Accelerate's device choice (CUDA if there is one), except that several processes
      without CUDA are forced onto CPU (gloo), as ``accelerate launch --cpu`` would; ``cpu=True``: CPU;
    * accumulation is done by :func:`train` itself (``GradientAccumulationPlugin(num_steps=1)``, so an
      ``accelerate config`` value or ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` cannot rescale losses);
    * the LR scheduler is stepped explicitly once per optimiser step (Accelerate would otherwise step
      a prepared scheduler ``num_processes`` times per step);
    * DDP with ``find_unused_parameters=True`` (CTC models leave ``masked_spec_embed`` unused when no
      span is masked; gates may be unused), as the transformers Trainer does.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin

    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {mixed_precision!r}")
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs: dict[str, Any] = {}
    if cpu or (cpu is None and several and not torch.cuda.is_available()):
        kwargs["cpu"] = True
    return Accelerator(mixed_precision=mixed_precision,
                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)], **kwargs)


@torch.no_grad()
def weights_digest(model: torch.nn.Module, extra_params: Sequence[torch.nn.Parameter] = ()) -> str:
    """A short hash of the starting weights (every parameter and buffer, by name, plus ``extra_params``).

    Part of a checkpoint's identity: the same stage re-run on a changed base model (a retrained
    pretrain, another dense model) must start from that model, not resume the old run's checkpoint.
    """
    h = hashlib.sha256()
    tensors = list(model.state_dict().items()) + [(f"extra.{i}", p) for i, p in enumerate(extra_params)]
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """A short hash of the training rows: ids, texts, audio lengths and sampling rates, the samples of every
    audio array (as float32 bytes) and any other array or tensor field (name, dtype, shape, bytes).

    Streamed row by row (no concatenation): a regenerated corpus with other audio (e.g. another noise
    level) has another digest even when its ids, texts and lengths are the same.
    """
    h = hashlib.sha256()
    for row in rows:
        audio = row.get("audio")
        array = audio.get("array") if isinstance(audio, Mapping) else None
        rate = audio.get("sampling_rate") if isinstance(audio, Mapping) else None
        n = len(array) if array is not None else None
        h.update(json.dumps([row.get("id"), row.get("text"), n, rate], default=str).encode())
        if array is not None:
            samples = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array
            h.update(np.ascontiguousarray(samples, dtype=np.float32).reshape(-1).view(np.uint8))
        for key in sorted(k for k in row if isinstance(row[k], np.ndarray | torch.Tensor)):
            value = row[key]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            h.update(json.dumps([key, str(value.dtype), list(value.shape)]).encode())
            h.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    return h.hexdigest()[:16]


def code_digest() -> str:
    """A short hash of the source files of the ``asrcompress.train`` package (names and contents): a
    checkpoint written by other training code is not resumed."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def model_config_digest(model: torch.nn.Module) -> str:
    """A short hash of the model's class, attention implementation and full config (e.g. another
    ``attn_implementation`` or dropout is another run)."""
    config = getattr(model, "config", None)
    try:
        text = config.to_json_string(use_diff=False) if config is not None else ""
    except (TypeError, ValueError, AttributeError):
        text = repr(config)
    attn = getattr(config, "_attn_implementation", None)
    h = hashlib.sha256(json.dumps([type(model).__qualname__, str(attn)]).encode())
    h.update(text.encode())
    return h.hexdigest()[:16]


def run_identity(model_config: str, dataset: Sequence[Mapping[str, Any]], collate: Collate,
                 cfg: TrainConfig, fingerprint: Mapping[str, Any] | None, init_digest: str) -> dict[str, Any]:
    """What a checkpoint must share to be resumed (as JSON would store it): the training config, the
    caller's run description, the model's config (``model_config``, a :func:`model_config_digest`), the code of
    ``asrcompress.train`` (:func:`code_digest`), the starting weights, the training rows
    (:func:`data_digest`) and the collator's tokenizer/features (its ``fingerprint()``)."""
    fp = getattr(collate, "fingerprint", None)
    stamp = {"train": asdict(cfg), "run": dict(fingerprint or {}), "model": model_config,
             "code": code_digest(), "init": init_digest, "n_items": len(dataset), "data": data_digest(dataset),
             "collate": fp() if callable(fp) else None}
    return json.loads(json.dumps(stamp))


# which part of the run each identity key describes (for the "differs in" message)
_IDENTITY_PARTS = {"train": "config", "run": "config", "model": "config", "code": "code", "n_items": "data",
                   "data": "data", "collate": "data", "init": "start weights"}
STATE_FILE = "trainer_state.json"


def identity_differences(saved: Any, stamp: Mapping[str, Any]) -> list[str]:
    """The parts (config / code / data / start weights) in which a saved identity differs from ``stamp``."""
    if not isinstance(saved, Mapping):
        return ["everything (no identity recorded)"]
    parts = [_IDENTITY_PARTS.get(k, k) for k in sorted(set(saved) | set(stamp)) if saved.get(k) != stamp.get(k)]
    order = ["config", "code", "data", "start weights"]
    return sorted(set(parts), key=lambda p: (order.index(p) if p in order else len(order), p))


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def read_trainer_state(state_file: Path) -> dict[str, Any] | None:
    """The parsed ``trainer_state.json`` (None when it is missing, truncated or lacks a step number)."""
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
        return None
    return saved


def recover_interrupted_save(ckpt_dir: Path, log: Callable[[str], None], desc: str = "train") -> None:
    """Repair what a crash during an atomic checkpoint save leaves behind, saying what it did.

    Without ``ckpt_dir``, the complete new checkpoint ``<ckpt_dir>.tmp`` (the save was interrupted after the
    old one was renamed aside), else the previous one ``<ckpt_dir>.old``, becomes ``ckpt_dir``; any other
    ``.tmp`` / ``.old`` leftover (an incomplete new one, a replaced old one) is deleted.
    """
    tmp, old = _sibling(ckpt_dir, ".tmp"), _sibling(ckpt_dir, ".old")
    if not ckpt_dir.exists():
        for candidate, what in ((tmp, "new"), (old, "previous")):
            if candidate.is_dir() and read_trainer_state(candidate / STATE_FILE) is not None:
                candidate.rename(ckpt_dir)
                log(f"{desc}: recovered the {what} checkpoint {candidate} left by an interrupted save "
                    f"(now {ckpt_dir})")
                break
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
            log(f"{desc}: removed {leftover}, left over from an interrupted checkpoint save")


def remove_checkpoint(ckpt_dir: Path) -> None:
    """Delete a checkpoint directory, its ``trainer_state.json`` first (so that a crash half-way leaves a
    directory that is never resumed)."""
    with contextlib.suppress(FileNotFoundError):
        (ckpt_dir / STATE_FILE).unlink()
    shutil.rmtree(ckpt_dir, ignore_errors=True)


@contextlib.contextmanager
def checkpoint_lock(ckpt_dir: Path, desc: str = "train") -> Any:
    """Hold an exclusive ``fcntl.flock`` on ``<ckpt_dir>.lock`` (which records this process's pid); a
    :class:`TrainingError` naming the directory and the holder's pid if another run holds it."""
    path = _sibling(ckpt_dir, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise TrainingError(f"{desc}: checkpoint directory {ckpt_dir} is in use by another training run "
                            f"(pid {holder}, lock {path}); wait for it to end or give this run another "
                            f"checkpoint directory") from err
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield path
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def train(model: torch.nn.Module, dataset: Sequence[dict[str, Any]], collate: Collate, cfg: TrainConfig,
          ckpt_dir: str | Path, loss_log: str | Path, fingerprint: dict[str, Any] | None = None,
          extra_loss: Callable[[torch.nn.Module, dict, Any], torch.Tensor] | None = None,
          after_step: Callable[[torch.nn.Module, int], None] | None = None,
          extra_params: Sequence[torch.nn.Parameter] = (), desc: str = "train") -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.max_steps`` optimiser steps; returns a summary dict
    (``steps``, ``resumed_from``, ``final_loss``, ``train_seconds``, ``processes``), the same on
    every process.

    ``extra_params`` (e.g. learnable gate thresholds living outside the model) are optimised too;
    they are checkpointed with the run and, with several processes, broadcast from rank 0 at the start
    and their gradients averaged like the model's. With ``cfg.deterministic`` the run uses torch's
    deterministic kernels (the caller's setting is restored afterwards). A run that reaches ``max_steps``
    removes its checkpoint (only an interrupted run leaves one); a :class:`TrainingError` if another run
    holds ``ckpt_dir``'s lock.
    """
    with deterministic_algorithms(cfg.deterministic), contextlib.ExitStack() as stack:
        return _train(model, dataset, collate, cfg, ckpt_dir, loss_log, fingerprint, extra_loss, after_step,
                      extra_params, desc, stack)


def _train(model: torch.nn.Module, dataset: Sequence[dict[str, Any]], collate: Collate, cfg: TrainConfig,
           ckpt_dir: str | Path, loss_log: str | Path, fingerprint: dict[str, Any] | None,
           extra_loss: Callable[[torch.nn.Module, dict, Any], torch.Tensor] | None,
           after_step: Callable[[torch.nn.Module, int], None] | None,
           extra_params: Sequence[torch.nn.Parameter], desc: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    accelerator = make_accelerator(cfg.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.set_num_threads(cfg.num_threads)  # after the Accelerator: multi-CPU start-up sets its own
    torch.manual_seed(cfg.seed if rank == 0 else derive_seed(cfg.seed, "train-rank", str(rank)))
    accum = cfg.grad_accum_steps
    if min(len(dataset), cfg.batch_size) < world * accum:
        raise ValueError(f"{desc}: a global batch of {min(len(dataset), cfg.batch_size)} item(s) cannot be split "
                         f"over {world} process(es) x {accum} accumulation step(s); raise train.batch_size "
                         f"or lower the process count / train.grad_accum_steps")
    config_digest = model_config_digest(model)  # before activation checkpointing or wrapping touch it
    checkpointing_set = cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable") \
        and not _is_checkpointing(model)
    if checkpointing_set:
        set_activation_checkpointing(model, True)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    in_model = {id(p) for p in model.parameters()}
    outside = [p for p in extra_params if id(p) not in in_model]  # not seen by DDP: synced here
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if outside:  # saved with the checkpoint (the optimiser state alone would not restore their values)
        accelerator.register_for_checkpointing(torch.nn.ParameterList(outside))
    if world > 1:
        for p in outside:
            torch.distributed.broadcast(p.data, src=0)
    # the starting weights as every process holds them now (DDP broadcast rank 0's model, and the
    # outside parameters were broadcast just above), before a checkpoint or a step changes them
    init_digest = weights_digest(accelerator.unwrap_model(model), extra_params)

    ckpt_dir, loss_log = Path(ckpt_dir), Path(loss_log)
    # what a checkpoint must share to be resumed (run_identity); anything else starts fresh
    stamp = run_identity(config_digest, dataset, collate, cfg, fingerprint, init_digest)
    lock_error: TrainingError | None = None
    if accelerator.is_main_process:  # one lock per run, taken by its main process
        try:
            stack.enter_context(checkpoint_lock(ckpt_dir, desc))
        except TrainingError as err:
            lock_error = err
    if world > 1:
        failed = accelerator.gather(torch.tensor([float(lock_error is not None)], device=accelerator.device))
        if lock_error is None and float(failed.sum()) > 0:
            lock_error = TrainingError(f"{desc}: checkpoint directory {ckpt_dir} is in use by another training run")
    if lock_error is not None:
        raise lock_error
    state_file = ckpt_dir / STATE_FILE
    if accelerator.is_main_process:  # repair, then keep only a checkpoint of this very run
        recover_interrupted_save(ckpt_dir, accelerator.print, desc)
        if ckpt_dir.exists():
            saved = read_trainer_state(state_file)
            if saved is None:
                accelerator.print(f"{desc}: {state_file} is missing, truncated or corrupt: starting fresh "
                                  f"(removing {ckpt_dir})")
                remove_checkpoint(ckpt_dir)
            elif saved.get("fingerprint") != stamp:
                differs = " / ".join(identity_differences(saved.get("fingerprint"), stamp))
                accelerator.print(f"{desc}: checkpoint in {ckpt_dir} is for another run (differs in: {differs}): "
                                  f"starting fresh (removing it)")
                remove_checkpoint(ckpt_dir)
    accelerator.wait_for_everyone()
    start, rows = 0, []
    saved = read_trainer_state(state_file) if state_file.is_file() else None
    if saved is not None and saved.get("fingerprint") == stamp:
        accelerator.load_state(str(ckpt_dir / "state"))
        start, rows = int(saved["step"]), saved["log"]
        accelerator.print(f"{desc}: resuming from step {start} ({ckpt_dir})")
    if world > 1:
        starts = accelerator.gather(torch.tensor([start], device=accelerator.device)).tolist()
        if len(set(starts)) != 1:
            raise TrainingError(f"{desc}: processes disagree on the step to resume from ({starts}); is "
                                f"{ckpt_dir} on storage that every process sees?")

    def save(step: int) -> None:
        # every process saves its RNG state; the main one writes weights, optimiser, scheduler, log.
        # Atomic: the new checkpoint is complete in .tmp (trainer_state.json written last) before the old
        # one is renamed aside to .old; recover_interrupted_save repairs a crash in between.
        tmp, old = _sibling(ckpt_dir, ".tmp"), _sibling(ckpt_dir, ".old")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "state"))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            part = tmp / (STATE_FILE + ".part")
            part.write_text(json.dumps({"step": step, "fingerprint": stamp, "log": rows}))
            part.replace(tmp / STATE_FILE)
            if ckpt_dir.exists():
                shutil.rmtree(old, ignore_errors=True)
                ckpt_dir.rename(old)
            tmp.rename(ckpt_dir)
            shutil.rmtree(old, ignore_errors=True)
            _write_log(loss_log, rows)
        accelerator.wait_for_everyone()  # nobody reads ckpt_dir before it is complete

    interrupted = {"flag": False}

    def on_signal(signum, frame):  # Ctrl-C / SIGTERM: finish this step, checkpoint, stop
        if interrupted["flag"]:  # a second Ctrl-C stops at once (the last checkpoint stays)
            raise KeyboardInterrupt
        interrupted["flag"] = True

    def stop_now() -> bool:  # the joint decision: any process interrupted -> all stop after this step
        if world == 1:
            return interrupted["flag"]
        flag = torch.tensor([1.0 if interrupted["flag"] else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc=desc,
               disable=not accelerator.is_main_process, mininterval=5)
    step = start
    try:
        model.train()
        for step in bar:
            idx = batch_indices(len(dataset), cfg.batch_size, step, cfg.seed)
            batches = [collate([dataset[int(i)] for i in part]) for part in micro_batches(idx, rank, world, accum)]
            units = [loss_units(accelerator.unwrap_model(model), b) for b in batches]
            total_units = float(sum(u or 0 for u in units))
            if world > 1:
                total_units = accelerator.reduce(torch.tensor([total_units], dtype=torch.float64,
                                                              device=accelerator.device), "sum").item()
            logged = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss, extra
            has_extra = False
            for j, cpu_batch in enumerate(batches):
                batch = {k: v.to(accelerator.device) for k, v in cpu_batch.items()}
                # share of the global batch's loss (1 for a summed loss)
                share = 1.0 if units[j] is None else units[j] / max(total_units, 1.0)
                sync = accelerator.no_sync(model) if j < accum - 1 else contextlib.nullcontext()
                with sync:
                    outputs = model(**batch)
                    loss = outputs.loss
                    extra = extra_loss(accelerator.unwrap_model(model), batch, outputs) if extra_loss else None
                    # DDP averages over processes and micro-batches add up: weight to the global mean
                    weight = world * share
                    target = loss * weight if weight != 1.0 else loss
                    if extra is not None:
                        target = target + (extra / accum if accum != 1 else extra)
                    accelerator.backward(target)
                    del outputs, target  # free the logits before the next micro-batch's forward
                logged[0] += loss.detach().to(torch.float64) * share
                if extra is not None:
                    has_extra = True
                    logged[1] += extra.detach().to(logged.device, torch.float64) / (accum * world)
            if world > 1:
                logged = accelerator.reduce(logged, "sum")
                for p in outside:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            step_loss, step_extra = logged.tolist()
            if not math.isfinite(step_loss + step_extra):
                raise TrainingError(f"{desc}: step {step}: loss is {step_loss + step_extra} (model loss "
                                    f"{step_loss}, lr {scheduler.get_last_lr()[0]:.3g}); last good "
                                    f"checkpoint kept in {ckpt_dir}")
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skipped an overflowing step
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(accelerator.unwrap_model(model), step)
            rows.append({"step": step + 1, "loss": round(step_loss, 5),
                         "extra_loss": round(step_extra, 6) if has_extra else 0.0,
                         "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
            stop = stop_now()
            if ((step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps) or stop:
                save(step + 1)  # the last step needs none: a finished run removes its checkpoint
            if stop:
                accelerator.print(f"{desc}: interrupted after step {step + 1}; checkpoint saved in "
                                  f"{ckpt_dir}, run again to resume")
                raise KeyboardInterrupt
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # finished: its checkpoint must never stand in for a later run
        remove_checkpoint(ckpt_dir)
        _write_log(loss_log, rows)
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # drop the autocast forward
    if checkpointing_set:
        set_activation_checkpointing(model, False)
    model.eval()
    return {"steps": cfg.max_steps, "resumed_from": start, "final_loss": rows[-1]["loss"] if rows else None,
            "train_seconds": round(time.time() - t0, 1), "processes": world}
