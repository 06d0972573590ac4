"""Four memory measures; each result key names its definition.

- ``weights_mib``: bytes of all parameters AND buffers at their stored dtype (numel x
  element size), shared/tied tensors once, plus the packed int8 linears (1 byte a weight + float32 row
  scales and bias). What the model needs in memory before any input.
- ``checkpoint_mib``: bytes of the files of a saved model directory on disk.
- ``peak_rss_mib`` / ``peak_rss_delta_mib``: peak resident set size of a separate Python
  process (``memory_probe``) that loads the model and runs a workload, read by that process
  itself from its ``VmHWM`` (``/proc/self/status``) at the end; the delta subtracts the RSS
  measured after the imports (torch, transformers) and before loading the model, so it is
  weights + activations + allocator/runtime overhead of this model. Not the child's
  ``ru_maxrss`` from ``wait4``: on Linux that starts at the high-water mark of the process
  that spawned it (the kernel carries the pre-exec memory's peak across fork and exec), so it
  grew with the measuring stage's own memory. ``peak_rss_polled_mib`` is a cross-check the
  parent samples every ``poll_s`` (it can miss short spikes).
- ``cuda_peak_mib``: ``torch.cuda.max_memory_allocated`` over the workload (tensors only, not
  the CUDA context or the caching allocator's reserve); only on a CUDA device.
A paper's "memory" is usually one of the last two, which fall far less than the parameter count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from asrcompress.measure.params import unique_named_tensors
from asrcompress.measure.proc_status import own_peak_rss, proc_status_kib  # noqa: F401 (re-exported)

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
    from asrcompress.compress.int8_dynamic import packed_weight, quantized_linears

    packed = 0
    for _, m in quantized_linears(model):  # int8 linears: 1 byte a weight + the row scales and the bias
        q, scale, bias = packed_weight(m)
        packed += q.numel() * q.element_size() + scale.numel() * 4 + (0 if bias is None else bias.numel() * 4)
    return packed + sum(t.numel() * t.element_size() for name, t in unique_named_tensors(model, buffers=True)
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
    """Run ``argv`` as a child process and report its own peak memory.

    If the child prints a JSON object as its last stdout line (``memory_probe`` does), its keys
    are the result: ``memory_probe`` reports ``peak_rss_mib`` (its own ``VmHWM`` at the end, see
    ``own_peak_rss``), ``baseline_rss_mib`` and ``peak_rss_delta_mib`` = their difference.
    For a child that reports no ``peak_rss_mib``, it is the largest ``VmHWM`` of
    ``/proc/<pid>/status`` the parent sampled every ``poll_s`` (``peak_rss_source`` =
    ``"polled VmHWM"``: a lower bound that misses growth in the last interval before exit).
    Always added: ``peak_rss_polled_mib``, the max of the sampled RSS (psutil).
    The child's ``ru_maxrss`` from ``wait4`` is not used: on Linux it starts at this (parent)
    process's high-water mark, so it measured the caller rather than the child.
    Raises RuntimeError if the child fails.
    Typical ``argv``: ``[sys.executable, "-m", "asrcompress.measure.memory_probe", MODEL_DIR, ...]``.
    """
    import subprocess

    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        ps, polled, polled_hwm_kib, t0 = psutil.Process(proc.pid), 0, 0, time.monotonic()
        while proc.poll() is None:
            try:
                polled = max(polled, ps.memory_info().rss)
            except psutil.Error:
                pass
            polled_hwm_kib = max(polled_hwm_kib, proc_status_kib(proc.pid).get("VmHWM", 0))
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{argv}: no result after {timeout_s} s")
            time.sleep(poll_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}:\n{stderr[-3000:]}")
    result: dict = {}
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    if "peak_rss_mib" not in result and polled_hwm_kib:
        result["peak_rss_mib"], result["peak_rss_source"] = polled_hwm_kib / 1024, "polled VmHWM"
        if "baseline_rss_mib" in result:
            result["peak_rss_delta_mib"] = result["peak_rss_mib"] - result["baseline_rss_mib"]
    result["peak_rss_polled_mib"] = polled / MIB
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
