"""Peak RSS is the child's own: it does not move when the measuring parent holds 1 GiB more.

On Linux a child's ``ru_maxrss`` (``wait4``/``getrusage``) starts at its parent's high-water
mark, since the kernel carries the pre-exec memory's peak across fork and exec; a figure taken
from it grows with the measuring process (issue 16). These tests measure the same children
before and after the parent touches 1 GiB.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_ctc

from asrcompress.measure.memory import MIB, peak_rss_subprocess

BALLAST_MIB = 1024
MARGIN_MIB = 64  # run-to-run noise of a child's peak is a few MiB; the leak was the full 1 GiB


def _self_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the leak and VmHWM are Linux's")
def test_peak_rss_ignores_parent_high_water_mark(tmp_path):
    make_tiny_ctc("wav2vec2").save_pretrained(tmp_path)
    probe = [sys.executable, "-m", "asrcompress.measure.memory_probe", str(tmp_path), "--seconds", "1"]
    # a child that reports nothing: its peak comes from the parent's polling of its VmHWM
    plain = [sys.executable, "-c", "import time; b = b'x' * (200 * 2**20); time.sleep(0.5)"]

    before = {"probe": peak_rss_subprocess(probe), "plain": peak_rss_subprocess(plain)}
    ballast = np.ones(BALLAST_MIB * MIB // 8)  # np.ones writes every page: resident, not just mapped
    try:
        parent_hwm = _self_hwm_mib()
        assert parent_hwm > BALLAST_MIB
        after = {"probe": peak_rss_subprocess(probe), "plain": peak_rss_subprocess(plain)}
    finally:
        del ballast

    for name in ("probe", "plain"):
        b, a = before[name]["peak_rss_mib"], after[name]["peak_rss_mib"]
        assert abs(a - b) < MARGIN_MIB, (name, b, a, parent_hwm)
        assert a < parent_hwm - BALLAST_MIB / 2, (name, a, parent_hwm)
    assert 200 <= before["plain"]["peak_rss_mib"] < 200 + 100  # the 200 MiB bytes object + python
    p0, p1 = before["probe"], after["probe"]
    assert p0["baseline_rss_mib"] <= p0["peak_rss_mib"]
    assert abs(p1["peak_rss_delta_mib"] - p0["peak_rss_delta_mib"]) < MARGIN_MIB
    assert 0 <= p1["peak_rss_delta_mib"] < 500
