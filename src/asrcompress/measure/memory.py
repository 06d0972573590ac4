"""Four memory measures; each result key names its definition.

- ``weights_mib``: bytes of all parameters AND buffers at their stored dtype (numel x
  element size), shared/tied tensors once. What the model needs in memory before any input.
- ``checkpoint_mib``: bytes of the files of a saved model directory on disk.
- ``peak_rss_mib`` / ``peak_rss_delta_mib``: peak resident set size of a separate Python
  process (``memory_probe``) that loads the model and runs a workload; the delta subtracts the
  RSS measured after the imports (torch, transformers) and before loading the model, so it is
  weights + activations + allocator/runtime overhead of this model. ``peak_rss_polled_mib`` is
  a psutil cross-check sampled every ``poll_s`` (it can miss short spikes).
- ``cuda_peak_mib``: ``torch.cuda.max_memory_allocated`` over the workload (tensors only, not
  the CUDA context or the caching allocator's reserve); only on a CUDA device.
A paper's "memory" is usually one of the last two, which fall far less than the parameter count.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from asrcompress.measure.params import unique_named_tensors

MIB = 2**20


def _is_mask(model: nn.Module, name: str) -> bool:
    """A pruning mask buffer: ``compress.masks`` (``asrc_mask__*``) or torch prune (``<p>_mask`` + ``<p>_orig``)."""
    mod_name, _, attr = name.rpartition(".")
    if attr.startswith("asrc_mask__"):
        return True
    owner = model.get_submodule(mod_name) if mod_name else model
    return attr.endswith("_mask") and hasattr(owner, attr[:-5] + "_orig")


def weight_bytes(model: nn.Module, include_masks: bool = False) -> int:
    """Bytes of parameters + buffers at their stored dtype; tied/shared tensors counted once.
    Pruning-mask buffers (bookkeeping of masked sparsity, not model state) are left out unless
    ``include_masks``: a masked model then weighs what the dense one does."""
    return sum(t.numel() * t.element_size() for name, t in unique_named_tensors(model, buffers=True)
               if include_masks or not _is_mask(model, name))


def dir_size_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path`` (or of ``path`` itself if a file).
    Symlinks are followed (DVC may link cache files into the workspace)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.is_dir():
        raise FileNotFoundError(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def memory_metrics(model: nn.Module, checkpoint_dir: str | os.PathLike | None = None) -> dict:
    """``weight_bytes``/``weights_mib`` and, given a directory, ``checkpoint_bytes``/``checkpoint_mib``."""
    out: dict = {"weight_bytes": weight_bytes(model)}
    out["weights_mib"] = out["weight_bytes"] / MIB
    if checkpoint_dir is not None:
        out["checkpoint_bytes"] = dir_size_bytes(checkpoint_dir)
        out["checkpoint_mib"] = out["checkpoint_bytes"] / MIB
    return out


def peak_rss_subprocess(argv: list[str], timeout_s: float | None = 600, poll_s: float = 0.02,
                        env: dict | None = None) -> dict:
    """Run ``argv`` as a child process and report its peak memory.

    ``peak_rss_mib``: the child's ru_maxrss from ``os.wait4`` (kernel high-water mark of the
    whole process, imports included). ``peak_rss_polled_mib``: max of psutil RSS samples.
    If the child prints a JSON object as its last stdout line (``memory_probe`` does), its keys
    are merged in, and with its ``baseline_rss_mib`` the result gets ``peak_rss_delta_mib`` =
    ``peak_rss_mib - baseline_rss_mib``. Raises RuntimeError if the child fails.
    Typical ``argv``: ``[sys.executable, "-m", "asrcompress.measure.memory_probe", MODEL_DIR, ...]``.
    """
    import subprocess

    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        ps, polled, t0 = psutil.Process(proc.pid), 0, time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            try:
                polled = max(polled, ps.memory_info().rss)
            except psutil.Error:
                pass
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                proc.kill()
                os.waitpid(proc.pid, 0)
                proc.returncode = -9
                raise RuntimeError(f"{argv}: no result after {timeout_s} s")
            time.sleep(poll_s)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}:\n{stderr[-3000:]}")
    maxrss_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    result: dict = {"peak_rss_mib": maxrss_kib / 1024, "peak_rss_polled_mib": polled / MIB}
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if lines:
        reported = json.loads(lines[-1])
        result = {**reported, **result}
        if "baseline_rss_mib" in reported:
            result["peak_rss_delta_mib"] = result["peak_rss_mib"] - reported["baseline_rss_mib"]
    return result


def cuda_peak_mib(fn: Callable[[], object], device: int | None = None) -> float | None:
    """``torch.cuda.max_memory_allocated`` (MiB) while running ``fn()``; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB
