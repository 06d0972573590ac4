"""A process's own memory figures from ``/proc/<pid>/status``, without importing torch (so that a
benchmark child running another runtime, e.g. CTranslate2, can report its peak without torch's
own ~190 MiB in it)."""

from __future__ import annotations

import sys
from pathlib import Path

MIB = 2**20


def proc_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...) in KiB; ``{}``
    where there is no such file (not Linux, or the process is gone or a zombie has no ``Vm*``)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0])
    return out


def own_peak_rss() -> tuple[float, str]:
    """This process's peak RSS in MiB and where it comes from: ``VmHWM`` of ``/proc/self/status``
    (Linux; a fresh ``mm`` after exec, so only this program's own memory) or, elsewhere,
    ``ru_maxrss`` of ``getrusage(RUSAGE_SELF)`` (which on Linux would include the parent's
    high-water mark at the time it spawned this process)."""
    hwm = proc_status_kib().get("VmHWM")
    if hwm is not None:
        return hwm / 1024, "VmHWM"
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss / MIB if sys.platform == "darwin" else maxrss / 1024), "ru_maxrss"
