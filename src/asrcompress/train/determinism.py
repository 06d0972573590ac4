"""Bit-reproducible backward passes.

Measured here (2 CPU threads, the same machine, same seed, same data, ten training steps of the tiny
Whisper): three separate processes ended with three different weight digests; with torch's
deterministic algorithms switched on, all three were identical, at the same step time. Some CPU
backward kernels accumulate in an order set by thread scheduling; deterministic mode picks kernels
whose order is fixed. One thread is also deterministic, but slower.

:func:`deterministic_algorithms` switches the mode on for a block and restores the caller's setting
afterwards. On a GPU it also sets ``CUBLAS_WORKSPACE_CONFIG`` (when unset) and turns off cuDNN
autotuning, which deterministic cuBLAS / cuDNN need. Ops with no deterministic kernel warn rather
than fail (``warn_only``), so a paper-scale run never stops for it.

torch's ``fill_uninitialized_memory`` (on by default with deterministic mode: every ``torch.empty``
is filled with NaN, a debugging aid that catches a kernel reading memory nobody wrote) stays off
here: it cost 820 fills per training step of the tiny Whisper, 11 % of its CPU time (torch
profiler), and the same weights come out with it off (the digest test in tests/test_determinism.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.utils.deterministic


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(enabled, warn_only=True)``."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    if enabled:
        # read by cuBLAS when its handle is created; must be set before the first GPU matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
