"""The CI reproduction's plan: every root stage once, each after the stages whose outputs it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrcompress.config import ParamError
from asrcompress.report.ci_repro import Step, forced_plan, plan_steps, side_by_side_groups

ROOT = Path(__file__).parents[1]


def test_plan_runs_every_root_stage_once_after_its_producers():
    from dvc.repo import Repo

    plan = forced_plan(ROOT)
    foundation, order = plan.foundation, plan.foundation + plan.rest
    with Repo(str(ROOT)) as repo:
        root = {s.addressing: s for s in repo.index.stages if Path(s.dvcfile.relpath).as_posix() == "dvc.yaml"}
    assert sorted(order) == sorted(root) and len(order) == len(set(order))
    assert all(a.startswith("measure_dense@") for a in foundation[-1:])
    assert {"prepare@en", "tokenizer", "pretrain", "finetune@whisper_hi"} <= set(foundation)
    assert not any(a.startswith(("p1", "p2", "p3", "p4", "report")) for a in foundation)
    reads = plan.reads
    assert reads.keys() == root.keys()
    assert reads["pretrain"] >= {"tokenizer", "prepare@en"} and reads["compare@p1_sgl_vs_imp_hi"] >= {"measure@p1_imp_hi", "measure@sgl_pruned_hi"}
    position = {a: i for i, a in enumerate(order)}
    for addr, srcs in reads.items():
        for src in srcs:
            assert position[src] < position[addr], f"{addr} reads the outputs of {src} before it runs"


def test_side_by_side_steps_group_only_independent_consecutive_members():
    order = ["prepare@en", "prepare@hi", "tokenizer", "train@a", "train@b", "eval@a", "train@c", "eval@b"]
    reads = {"tokenizer": {"prepare@en", "prepare@hi"}, "eval@a": {"train@a"}, "eval@b": {"train@b"}}
    steps = plan_steps(order, {"prepare", "train"}, reads)
    assert steps == [Step(("prepare@en", "prepare@hi"), True), Step(("tokenizer",)), Step(("train@a", "train@b"), True),
                     Step(("eval@a",)), Step(("train@c",), True), Step(("eval@b",))]
    assert [a for s in steps for a in s.stages] == order  # nothing lost, nothing reordered
    # a member reading another member's outputs waits for it
    chained = plan_steps(["train@a", "train@b"], {"train"}, {"train@b": {"train@a"}})
    assert chained == [Step(("train@a",), True), Step(("train@b",), True)]
    assert plan_steps(order, set(), reads) == [Step(tuple(order))]


def test_side_by_side_groups_come_from_params_and_must_name_foreach_stages():
    order = ["prepare@en", "tokenizer", "p4_compress@hubert"]
    assert side_by_side_groups({"ci": {"side_by_side": ["prepare", "p4_compress"]}}, order) == ["prepare", "p4_compress"]
    assert side_by_side_groups({}, order) == []
    with pytest.raises(ParamError, match="ci.side_by_side: 'p4_compres'"):
        side_by_side_groups({"ci": {"side_by_side": ["p4_compres"]}}, order)
    with pytest.raises(ParamError, match="'tokenizer' is not a foreach stage"):
        side_by_side_groups({"ci": {"side_by_side": ["tokenizer"]}}, order)


def test_committed_side_by_side_groups_are_independent_in_the_plan():
    from asrcompress.config import load_params

    plan = forced_plan(ROOT)
    groups = side_by_side_groups(load_params(ROOT / "params.yaml"), plan.foundation + plan.rest)
    reads = plan.reads
    steps = plan_steps(plan.rest, groups, reads)
    together = [s.stages for s in steps if s.side_by_side and len(s.stages) > 1]
    assert ("p4_train_ctc@wav2vec2", "p4_train_ctc@hubert") in together
    assert ("p4_compress@wav2vec2", "p4_compress@hubert") in together
    for stages in together:
        assert not any(reads[a] & set(stages) for a in stages)


def test_stage_seconds_clocks_each_stage_from_its_running_line_to_the_next():
    from asrcompress.report.ci_repro import stage_seconds

    ticks = iter([10.0, 12.5, 40.0])
    lines = ["Running stage 'prepare@en':\n", "> python stages/prepare.py en\n", "progress\n",
             "Running stage 'tokenizer':\n", "Updating lock file 'dvc.lock'\n", "Stage 'x' didn't change\n"]
    echoed: list[str] = []
    timed = stage_seconds(lines, clock=lambda: next(ticks), echo=echoed.append)
    assert timed == [("prepare@en", 2.5), ("tokenizer", 27.5)]
    assert echoed == lines
    assert stage_seconds([]) == []
