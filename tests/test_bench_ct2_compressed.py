"""Pure helpers of benchmarks/bench_ct2_compressed.py (no model, no engine)."""

from __future__ import annotations

import pytest
from conftest import load_stage

bench = load_stage("bench_ct2_compressed", "benchmarks")


@pytest.mark.parametrize("target", [2, 11, 41, 200])
def test_budget_finds_the_max_new_tokens_that_makes_the_target(target: int) -> None:
    made = lambda k: (4 + k) // 2  # noqa: E731  (what CTranslate2 4.8 does with end-of-text suppressed)
    k = bench.budget_for(made, target)
    assert made(k) == target


def test_budget_returns_the_closest_when_none_hits() -> None:
    made = lambda k: min(30, 2 * (k // 2))  # noqa: E731  (even counts only, and at most 30)
    assert bench.budget_for(made, 7) in (6, 7, 8, 9) and abs(made(bench.budget_for(made, 7)) - 7) == 1
    assert made(bench.budget_for(made, 50)) == 30
    assert bench.budget_for(lambda k: (4 + k) // 2, 1) == 1  # 1 token is out of reach: the closest budget


def test_options_follow_the_capability_report() -> None:
    cap = {"needs": ["expand_embedding"]}
    assert bench.options_for(cap, strict=False) == {"pad_heads": False, "expand_embedding": True}
    assert bench.options_for(cap, strict=True) is None
    assert bench.options_for({"needs": []}, strict=True) == {"pad_heads": False, "expand_embedding": False}
    assert bench.held_as({"pad_heads": True, "expand_embedding": True}) == "heads padded + embedding multiplied out"
    assert bench.held_as({"pad_heads": False}) == "as is"
