"""The CI reproduction: every stage of the root pipeline run again, the foundation timed on its own.

A plain ``dvc repro`` in a fresh clone skips a stage whose dependencies hash as in the committed
``dvc.lock`` and whose outputs are all committed files: with deterministic training the models come
out bit-identical, so the dense measurements, the p2 measurements and paper 3 would be skipped and
their committed metrics compared with themselves. Here every stage is forced, each exactly once,
in DVC's own dependency order:

1. the foundation (every stage ``measure_dense@dense_*`` needs: data, tokenizer, pre-training,
   fine-tuning, the dense Whisper measurements), timed: issue 3's <= 10 minutes;
2. everything else in the root ``dvc.yaml``, timed with it: the <= 30 minutes of the whole smoke run;
3. the regression check (:mod:`asrcompress.report.regression`); the times are printed after its
   table, at the end of the log: each stage's (from DVC's "Running stage" line to the next one,
   its output hashing and ``dvc.lock`` update included), the foundation's and the whole run's.

Side by side: the members of a ``foreach`` group named in ``ci.side_by_side`` (params.yaml) that
follow each other in the plan and read none of each other's outputs run at the same time, one
``dvc --wait-for-lock repro`` process each, at most one per core. DVC releases its repository lock
while a stage's command runs and takes it back to write ``dvc.lock``, so this is DVC's own
concurrency, not a bypass. Only groups whose members run on one thread each and report no latency
belong there (the corpus synthesis, paper 4's CTC training and compression): their figures are the
same computation as in a sequential run (their own wall-clock seconds aside), and every stage that
times a model runs alone.

    python -m asrcompress.report.ci_repro
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from asrcompress.config import ParamError, get, load_params
from asrcompress.report.regression import dvc_executable

# the dense Whisper references (`dense_<corpus>`); paper 4's dense CTC models, also `dense` entries
# (measure_dense@p4_*), are measured after their own training, with the rest
FOUNDATION_PREFIX = "measure_dense@dense_"


@dataclass(frozen=True)
class Step:
    """Stages run by one ``dvc repro`` (``side_by_side=False``, in order) or by one process each,
    at the same time (``side_by_side=True``)."""

    stages: tuple[str, ...]
    side_by_side: bool = False


@dataclass(frozen=True)
class Plan:
    """The root pipeline forced: ``foundation`` then ``rest`` (stage addresses in an order that runs
    every stage after the stages it depends on, DVC's ``plan_repro``) and, per stage, ``reads``: the
    root stages whose outputs it reads (DVC's stage graph, outputs inside dependency directories
    included)."""

    foundation: list[str]
    rest: list[str]
    reads: dict[str, set[str]]


def forced_plan(root: str | Path = ".") -> Plan:
    """The :class:`Plan` of the root ``dvc.yaml``, split at the foundation."""
    from dvc.repo import Repo
    from dvc.repo.graph import build_graph
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if Path(s.dvcfile.relpath).as_posix() == "dvc.yaml"]
        # the root stages' own graph: the pipelines/ files hang stages off them, which would change DVC's
        # depth-first order (and split ci.side_by_side groups) without changing what the root graph runs
        graph = get_active_graph(build_graph(stages))
        foundation = plan_repro(graph, [s for s in stages if s.addressing.startswith(FOUNDATION_PREFIX)])
        if not foundation:
            raise SystemExit(f"dvc.yaml: no {FOUNDATION_PREFIX}* stage; nothing to call the foundation")
        everything = plan_repro(graph, stages)
        seen = {s.addressing for s in foundation}
        names = {s.addressing for s in stages}
        reads = {s.addressing: {p.addressing for p in repo.index.graph.successors(s) if p.addressing in names}
                 for s in stages}
        return Plan([s.addressing for s in foundation],
                    measurements_late([s.addressing for s in everything if s.addressing not in seen], reads), reads)


def measurements_late(order: list[str], reads: dict[str, set[str]]) -> list[str]:
    """``order`` re-planned so that a measurement (``measure*`` / ``compare@``) runs only when no other
    stage can: each stage still after every stage of ``order`` it reads, ties kept in ``order``.
    DVC's depth-first order puts ``measure_dense@p4_<m>_dense`` right after ``p4_train_ctc@<m>``,
    between members of a group that runs side by side (``ci.side_by_side``)."""
    pos = {a: i for i, a in enumerate(order)}
    pending, done, out = list(order), set(), []
    while pending:
        ready = [a for a in pending if all(r in done or r not in pos for r in reads.get(a, ()))]
        pick = min(ready, key=lambda a: (a.startswith(("measure", "compare")), pos[a]))
        out.append(pick)
        done.add(pick)
        pending.remove(pick)
    return out


_RUNNING = re.compile(r"^Running stage '([^']+)':")


def stage_seconds(lines, clock=time.monotonic, echo=None) -> list[tuple[str, float]]:
    """[(stage, seconds)] from DVC's output lines, in the order run: each stage from its "Running
    stage" line to the next one or the end. ``echo`` gets every line as it arrives."""
    out: list[tuple[str, float]] = []
    current: tuple[str, float] | None = None
    for line in lines:
        if echo is not None:
            echo(line)
        m = _RUNNING.match(line)
        if m:
            now = clock()
            if current is not None:
                out.append((current[0], now - current[1]))
            current = (m.group(1), now)
    if current is not None:
        out.append((current[0], clock() - current[1]))
    return out


def group_of(address: str) -> str:
    """The ``foreach`` group of a stage address (``p4_compress@hubert`` -> ``p4_compress``)."""
    return address.split("@", 1)[0]


def plan_steps(order: Iterable[str], side_by_side: Collection[str],
               reads: Mapping[str, Collection[str]]) -> list[Step]:
    """``order`` cut into steps: a run of consecutive members of one ``side_by_side`` group, none
    reading another's outputs, is one side-by-side step; the stages between such runs are
    sequential steps."""
    steps: list[Step] = []
    for addr in order:
        group = group_of(addr) if "@" in addr and group_of(addr) in side_by_side else None
        last = steps[-1] if steps else None
        if group is not None:
            if (last is not None and last.side_by_side and group_of(last.stages[0]) == group
                    and not set(reads.get(addr, ())) & set(last.stages)):
                steps[-1] = Step((*last.stages, addr), True)
            else:
                steps.append(Step((addr,), True))
        elif last is not None and not last.side_by_side:
            steps[-1] = Step((*last.stages, addr))
        else:
            steps.append(Step((addr,)))
    return steps


def side_by_side_groups(cfg: Mapping[str, object], order: Collection[str]) -> list[str]:
    """``ci.side_by_side`` (a list of ``foreach`` stage names; default none), each checked to name a
    ``foreach`` group of the plan."""
    groups = get(cfg, "ci.side_by_side", list, [])
    known = {group_of(a) for a in order if "@" in a}
    for g in groups:
        if not isinstance(g, str) or g not in known:
            raise ParamError(f"params.yaml: ci.side_by_side: {g!r} is not a foreach stage of dvc.yaml; "
                             f"those are {sorted(known)}")
    return list(groups)


def _repro(stages: Iterable[str], tag: str = "") -> list[tuple[str, float]]:
    proc = subprocess.Popen([dvc_executable(), "--wait-for-lock", "repro", "--force", "--single-item", *stages],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    prefix = f"[{tag}] " if tag else ""
    timed = stage_seconds(proc.stdout, echo=lambda s: print(prefix + s, end="", flush=True))
    if proc.wait():
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return timed


def run_steps(steps: Iterable[Step], jobs: int) -> list[tuple[str, float, bool]]:
    """Run every step; returns (stage, seconds, ran side by side) in the order run."""
    timed: list[tuple[str, float, bool]] = []
    for step in steps:
        if step.side_by_side and len(step.stages) > 1:
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(step.stages)))) as pool:
                results = list(pool.map(lambda a: _repro([a], tag=a), step.stages))
            timed += [(a, sec, True) for r in results for a, sec in r]
        else:
            timed += [(a, sec, False) for a, sec in _repro(step.stages)]
    return timed


def main() -> int:
    plan = forced_plan()
    foundation, rest = plan.foundation, plan.rest
    groups = side_by_side_groups(load_params(), foundation + rest)
    cores = len(os.sched_getaffinity(0))
    t0 = time.time()
    timed = run_steps(plan_steps(foundation, groups, plan.reads), cores)
    t1 = time.time()
    timed += run_steps(plan_steps(rest, groups, plan.reads), cores)
    t2 = time.time()
    rc = subprocess.run([sys.executable, "-m", "asrcompress.report.regression"]).returncode
    print("seconds per stage (forced, in the order run; || = side by side with its group, ci.side_by_side):")
    for stage, sec, together in timed:
        print(f"  {sec:7.1f}  {'||' if together else '  '} {stage}")
    print(f"timing on {cores} cores, every stage forced: foundation ({len(foundation)} stages) {t1 - t0:.0f} s, "
          f"whole reproduction (smoke graph and real track) ({len(foundation) + len(rest)} stages) {t2 - t0:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
