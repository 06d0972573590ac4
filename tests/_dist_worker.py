"""One process of the multi-process training test (``tests/test_distributed.py``); not a test itself.

Started once per rank with the environment a launcher sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); on a machine without CUDA the training loop puts the
processes on CPU with gloo. Runs the scenarios the test compares with one process:

* ``plain``: the global batch split over the processes, plus an extra parameter living outside the
  model (initialised differently per rank: the loop must broadcast rank 0's value) and an extra loss;
* ``accum``: the same with 2 accumulation steps per process and gradient checkpointing;
* ``resume``: ``plain`` interrupted by a signal on rank 1 only during step 3 (both processes must
  stop after step 3), then resumed from the checkpoint by a fresh model;
* ``nan``: a NaN extra loss on rank 1 only must stop both processes with a TrainingError.

Every rank writes ``<scenario>_rank<r>.pt`` (final weights, extra parameter, summary); rank 0's loop writes
``<scenario>.csv``. Usage: ``python tests/_dist_worker.py <work-dir>`` (the dir holds ``init/``,
the saved initial model + processor, and ``rows.pt``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from asrcompress.models.whisper import load_pretrained
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, TrainingError, train

STEPS = 5


def config(**kw: object) -> TrainConfig:
    """The configuration every scenario (and the one-process reference) uses."""
    return TrainConfig(**{**dict(max_steps=STEPS, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100,
                                 seed=7, num_threads=1), **kw})


def scale_loss(scale: torch.nn.Parameter):
    """An extra loss on a parameter outside the model: ``(scale - 0.5)^2``."""
    def fn(model: torch.nn.Module, batch: dict, outputs: object) -> torch.Tensor:
        return (scale - 0.5).pow(2).sum()
    return fn


def run(work: Path, name: str, cfg: TrainConfig, rank: int, after_step=None, extra=None) -> None:
    """Train the saved initial model under ``name``; save this rank's final weights and summary."""
    model, processor = load_pretrained(work / "init")
    rows = torch.load(work / "rows.pt", weights_only=False)
    scale = torch.nn.Parameter(torch.full((1,), float(rank) * 3.0))  # rank 0's value must win
    summary = train(model, rows, WhisperCollator(processor, "en"), cfg, work / f"ck_{name}", work / f"{name}.csv",
          extra_loss=extra or scale_loss(scale), after_step=after_step, extra_params=[scale], desc=name)
    torch.save({"weights": model.state_dict(), "scale": scale.detach().clone(), "summary": summary}, work / f"{name}_rank{rank}.pt")


def main(work: Path) -> None:
    rank = int(os.environ["RANK"])
    run(work, "plain", config(), rank)
    run(work, "accum", config(grad_accum_steps=2, gradient_checkpointing=True), rank)

    def interrupt_rank1(model: torch.nn.Module, step: int) -> None:  # Ctrl-C reaching rank 1 only
        if step == 2 and rank == 1:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        run(work, "resume", config(), rank, after_step=interrupt_rank1)
        raise AssertionError("the interrupted run did not stop")
    except KeyboardInterrupt:
        pass
    torch.manual_seed(123 + rank)
    run(work, "resume", config(), rank)

    def nan_on_rank1(model: torch.nn.Module, batch: dict, outputs: object) -> torch.Tensor:
        return torch.tensor(float("nan") if rank == 1 else 0.0)

    try:
        run(work, "nan", config(), rank, extra=nan_on_rank1)
        raise AssertionError("a NaN loss on rank 1 did not stop the run")
    except TrainingError as err:
        (work / f"nan_rank{rank}.txt").write_text(str(err))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
