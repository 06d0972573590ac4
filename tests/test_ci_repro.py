"""The CI reproduction's plan: every root stage once, each after the stages whose outputs it reads."""

from __future__ import annotations

from pathlib import Path

from asrcompress.report.ci_repro import forced_plan

ROOT = Path(__file__).parents[1]


def test_plan_runs_every_root_stage_once_after_its_producers():
    from dvc.repo import Repo

    foundation, rest = forced_plan(ROOT)
    order = foundation + rest
    with Repo(str(ROOT)) as repo:
        root = {s.addressing: s for s in repo.index.stages if Path(s.dvcfile.relpath).as_posix() == "dvc.yaml"}
    assert sorted(order) == sorted(root) and len(order) == len(set(order))
    assert all(a.startswith("measure_dense@") for a in foundation[-1:])
    assert {"prepare@en", "tokenizer", "pretrain", "finetune@whisper_hi"} <= set(foundation)
    assert not any(a.startswith(("p1", "p2", "p3", "p4", "report")) for a in foundation)
    producer = {Path(o.fs_path): a for a, s in root.items() for o in s.outs}
    position = {a: i for i, a in enumerate(order)}
    for addr, stage in root.items():
        for dep in stage.deps:
            path = Path(dep.fs_path)
            src = next((producer[p] for p in (path, *path.parents) if p in producer), None)
            if src is not None and src != addr:
                assert position[src] < position[addr], f"{addr} reads {path} before {src} writes it"
