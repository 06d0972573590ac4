"""Two CPU processes (DDP over gloo) train a tiny Whisper like one process does with the same global batch.

The workers (``tests/_dist_worker.py``) are started the way a launcher (``accelerate launch`` /
``torchrun``) starts them: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment,
CUDA hidden. The one-process reference runs here. Both must give the same loss curve (LOSS_ATOL on
the logged, 5-decimal losses), the same learning-rate column (the schedule steps once per optimiser
step whatever the process count) and the same final weights (WEIGHT_ATOL); differences come only from
the order of floating-point sums (gradients summed over processes instead of over one batch).
The utterances have different lengths, so the processes hold different numbers of label tokens:
the loop's token weighting is what makes the curves agree.

A wall-clock TIMEOUT_S bounds the whole launch; a worker that fails or hangs gets both killed.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _dist_worker import STEPS, config, scale_loss
from conftest import OFFLINE_DIMS, make_offline_rows
from transformers import WhisperProcessor

from asrcompress.models.whisper import (
    build_model,
    load_pretrained,
)
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import train

WORLD = 2
TIMEOUT_S = 300
# measured: logged losses equal to all 5 decimals, final weights within 8e-7 (2 processes, 5 steps)
LOSS_ATOL = 2e-5     # logged losses (rounded to 5 decimals): two units of the last logged digit
WEIGHT_ATOL = 1e-5   # final weights
DIMS = OFFLINE_DIMS
WORKER = Path(__file__).with_name("_dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(work: Path) -> None:
    """Start WORLD worker processes; wait for all, killing every one if one fails or time runs out."""
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
               "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = (work / f"worker{rank}.log").open("w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(work)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    if codes != [0] * WORLD:
        tails = "\n".join(f"--- rank {r} (exit {c}) ---\n" + (work / f"worker{r}.log").read_text()[-3000:]
                          for r, c in enumerate(codes))
        pytest.fail(f"distributed workers failed or timed out after {TIMEOUT_S} s:\n{tails}")


def _train_one_process(work: Path, name: str, **kw: object) -> dict:
    model, processor = load_pretrained(work / "init")
    rows = torch.load(work / "rows.pt", weights_only=False)
    scale = torch.nn.Parameter(torch.zeros(1))
    summary = train(model, rows, WhisperCollator(processor, "en"), config(**kw), work / f"ck_{name}",
                    work / f"{name}.csv", extra_loss=scale_loss(scale), extra_params=[scale], desc=name)
    return {"weights": model.state_dict(), "scale": scale.detach().clone(), "summary": summary}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, offline_processor: WhisperProcessor) -> Path:
    """Initial model, processor and rows on disk; the one-process references; the two-process runs."""
    work = tmp_path_factory.mktemp("dist")
    processor = offline_processor
    rows = make_offline_rows()
    torch.manual_seed(0)
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    model.save_pretrained(work / "init")
    processor.save_pretrained(work / "init")
    torch.save(rows, work / "rows.pt")
    torch.save(_train_one_process(work, "ref"), work / "ref.pt")
    torch.save(_train_one_process(work, "ref_accum", grad_accum_steps=2, gradient_checkpointing=True),
               work / "ref_accum.pt")
    _launch(work)
    return work


def _curve(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("step", "loss", "extra_loss", "lr")}


def _assert_same_run(work: Path, name: str, ref: str = "ref") -> None:
    got, want = _curve(work / f"{name}.csv"), _curve(work / f"{ref}.csv")
    assert len(got["step"]) == len(want["step"]) == STEPS
    np.testing.assert_array_equal(got["lr"], want["lr"])  # one scheduler step per optimiser step
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose(got["extra_loss"], want["extra_loss"], rtol=0, atol=LOSS_ATOL)
    reference = torch.load(work / f"{ref}.pt")
    ranks = [torch.load(work / f"{name}_rank{r}.pt") for r in range(WORLD)]
    for r, result in enumerate(ranks):
        for key, value in reference["weights"].items():
            torch.testing.assert_close(result["weights"][key], value, rtol=0, atol=WEIGHT_ATOL,
                                       msg=lambda m, k=key, r=r: f"rank {r}, {k}: {m}")
        torch.testing.assert_close(result["scale"], reference["scale"], rtol=0, atol=WEIGHT_ATOL)
        assert result["summary"]["processes"] == WORLD
    for key, value in ranks[0]["weights"].items():  # DDP keeps the replicas identical
        assert torch.equal(ranks[1]["weights"][key], value), key


def test_two_processes_match_one_process(work: Path) -> None:
    _assert_same_run(work, "plain")


def test_accumulation_and_checkpointing_match_one_process(work: Path) -> None:
    _assert_same_run(work, "accum")  # 2 processes x 2 micro-batches of 1 item, activation checkpointing
    single, reference = torch.load(work / "ref_accum.pt"), torch.load(work / "ref.pt")
    for key, value in reference["weights"].items():  # 1 process x 2 micro-batches
        torch.testing.assert_close(single["weights"][key], value, rtol=0, atol=WEIGHT_ATOL)
    np.testing.assert_allclose(_curve(work / "ref_accum.csv")["loss"], _curve(work / "ref.csv")["loss"],
                               rtol=0, atol=LOSS_ATOL)


def test_interrupt_on_one_rank_stops_all_and_resumes(work: Path) -> None:
    for r in range(WORLD):
        assert torch.load(work / f"resume_rank{r}.pt")["summary"]["resumed_from"] == 3
    _assert_same_run(work, "resume")


def test_nan_on_one_rank_stops_every_rank(work: Path) -> None:
    for r in range(WORLD):
        assert "nan: step 0: loss is nan" in (work / f"nan_rank{r}.txt").read_text()
