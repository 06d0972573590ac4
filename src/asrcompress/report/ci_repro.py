"""The CI reproduction: every stage of the root pipeline run again, the foundation timed on its own.

A plain ``dvc repro`` in a fresh clone skips a stage whose dependencies hash as in the committed
``dvc.lock`` and whose outputs are all committed files: with deterministic training the models come
out bit-identical, so the dense measurements, the p2 measurements and paper 3 would be skipped and
their committed metrics compared with themselves. Here every stage is forced, each exactly once,
in DVC's own dependency order:

1. the foundation (every stage ``measure_dense@*`` needs: data, tokenizer, pre-training,
   fine-tuning, the dense measurements), timed: issue 3's <= 10 minutes;
2. everything else in the root ``dvc.yaml``, timed with it: the <= 30 minutes of the whole smoke run;
3. the regression check (:mod:`asrcompress.report.regression`); the times are printed after its
   table, at the end of the log.

    python -m asrcompress.report.ci_repro
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from asrcompress.report.regression import dvc_executable

FOUNDATION_PREFIX = "measure_dense@"


def forced_plan(root: str | Path = ".") -> tuple[list[str], list[str]]:
    """(foundation, rest): the root pipeline's stage addresses in an order that runs every stage after
    the stages it depends on (DVC's ``plan_repro``), split at the foundation."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if Path(s.dvcfile.relpath).as_posix() == "dvc.yaml"]
        graph = get_active_graph(repo.index.graph)
        foundation = plan_repro(graph, [s for s in stages if s.addressing.startswith(FOUNDATION_PREFIX)])
        if not foundation:
            raise SystemExit(f"dvc.yaml: no {FOUNDATION_PREFIX}* stage; nothing to call the foundation")
        everything = plan_repro(graph, stages)
        seen = {s.addressing for s in foundation}
        return [s.addressing for s in foundation], [s.addressing for s in everything if s.addressing not in seen]


def _repro(stages: list[str]) -> None:
    subprocess.run([dvc_executable(), "repro", "--force", "--single-item", *stages], check=True)


def main() -> int:
    foundation, rest = forced_plan()
    t0 = time.time()
    _repro(foundation)
    t1 = time.time()
    _repro(rest)
    t2 = time.time()
    rc = subprocess.run([sys.executable, "-m", "asrcompress.report.regression"]).returncode
    cores = len(os.sched_getaffinity(0))
    print(f"timing on {cores} cores, every stage forced: foundation ({len(foundation)} stages) {t1 - t0:.0f} s, "
          f"whole smoke reproduction ({len(foundation) + len(rest)} stages) {t2 - t0:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
