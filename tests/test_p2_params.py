"""The whole `p2` / `p2_real` / `p2_real_yo` / `p2_real_b50` section is checked before any work
(compress/baldwhisper.check_p2_section)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from conftest import DELETE, PARAMS, set_param

from asrcompress.config import ParamError, load_params


@pytest.fixture
def cfg(committed_params: dict[str, Any]) -> dict[str, Any]:
    return committed_params


@pytest.mark.parametrize("profile", ["smoke", "paper"])
@pytest.mark.parametrize("section", ["p1", "p1_real", "p1_en_b30", "p1_en_b50", "p2", "p2_real", "p2_real_yo",
                                     "p2_real_b50"])
def test_every_p1_and_p2_section_passes_in_both_profiles(section: str, profile: str) -> None:
    """The committed params.yaml, each profile resolved as the stages see it (paper_overrides merged)."""
    from asrcompress.compress.baldwhisper import check_p2_section
    from asrcompress.compress.sgl import check_p1_section

    cfg = load_params(PARAMS, profile)
    out = (check_p1_section if section.startswith("p1") else check_p2_section)(cfg, section)
    assert out == cfg[section]  # the section as given
    if section == "p2":
        assert set(out["variants"]) == {"merge", "lowrank", "merge_raw", "control", "final"}
        assert out["train"]["max_steps"] == (2000 if profile == "paper" else 80)


@pytest.mark.parametrize(("section", "path", "value", "message"), [
    ("p2", ("merge", "simlarity"), "output", r"p2\.merge\.simlarity: unknown key \(did you mean 'similarity'\?\)"),
    ("p2", ("merge", "similarity"), "bogus", r"p2\.merge\.similarity: 'bogus' is not one of "
                                             r"\['output', 'pair_io', 'update'\]"),
    ("p2", ("merge", "n_pairs"), -1, r"p2\.merge\.n_pairs: must be >= 0, got -1"),
    ("p2", ("merge", "pairs"), [1, "2"], r"p2\.merge\.pairs: must be null or a list of decoder layer indices"),
    ("p2", ("merge", "pairs"), 1, r"p2\.merge\.pairs: must be list, got int"),
    ("p2_real", ("merge", "alpha"), [0.5, 0.5], r"p2_real\.merge\.alpha: must be a number or a list of 1 numbers"),
    ("p2", ("merge", "beta"), "half", r"p2\.merge\.beta: must be float/list, got str"),
    ("p2", ("merge", "alpha"), DELETE, r"missing key 'p2\.merge\.alpha'"),
    ("p2", ("lowrank", "rank_fraction"), 1.5, r"p2\.lowrank\.rank_fraction: must be a rank fraction in \(0, 1\]"),
    ("p2_real", ("lowrank", "rank_fraction"), 0, r"p2_real\.lowrank\.rank_fraction: must be a rank fraction"),
    ("p2_real_yo", ("lowrank", "sweep"), [0.25, 2], r"p2_real_yo\.lowrank\.sweep\[1\]: must be a rank fraction"),
    ("p2", ("lowrank", "scaling"), "half", r"p2\.lowrank\.scaling: 'half' is not one of \['diag', 'full', 'none'\]"),
    ("p2", ("lowrank", "damping"), -0.01, r"p2\.lowrank\.damping: must be >= 0"),
    ("p2", ("lowrank", "damping"), float("inf"), r"p2\.lowrank\.damping: must be a finite number"),
    ("p2", ("distill", "layers"), "last", r"p2\.distill\.layers: must be all, final or a list of student boundaries"),
    ("p2", ("distill", "layers"), [0, -1], r"p2\.distill\.layers: must be all, final or a list"),
    ("p2", ("distill", "loss"), "kl", r"p2\.distill\.loss: 'kl' is not one of \['cosine', 'mse', 'nmse'\]"),
    ("p2_real", ("distill", "weight"), -1, r"p2_real\.distill\.weight: must be >= 0"),
    ("p2", ("train", "max_stepz"), 5, r"p2\.train\.max_stepz: unknown key \(did you mean 'max_steps'\?\)"),
    ("p2_real_yo", ("train", "lr"), 0, r"p2_real_yo\.train\.lr: must be > 0"),
    ("p2", ("train",), DELETE, r"missing key 'p2\.train'"),
    ("p2", ("variants", "merge", "foo"), 1, r"p2\.variants\.merge\.foo: unknown key"),
    ("p2_real", ("variants", "final", "lr"), 0, r"p2_real\.variants\.final\.lr: must be > 0, got 0"),
    ("p2", ("variants", "merge_raw", "max_steps"), -1, r"p2\.variants\.merge_raw\.max_steps: must be >= 0"),
    ("p2", ("variants", "merge_raw", "max_steps"), None, r"p2\.variants\.merge_raw\.max_steps: must be a number"),
    ("p2_real_yo", ("variants", "dense_ft", "lr"), "1e-4", r"p2_real_yo\.variants\.dense_ft\.lr: must be float"),
    ("p2", ("variants", "final", "distill"), "yes", r"p2\.variants\.final\.distill: must be bool"),
    ("p2", ("variants", "control", "init"), DELETE, r"missing key 'p2\.variants\.control\.init'"),
    ("p2", ("reference",), "dense_xx", r"p2\.reference: 'dense_xx' is not a key of dense, real_dense"),
    ("p2", ("calib_utterances",), DELETE, r"missing key 'p2\.calib_utterances'"),
    ("p2", ("dev_utterance",), 8, r"p2\.dev_utterance: unknown key \(did you mean 'dev_utterances'\?\)"),
    ("p2_real", ("batch_size",), 0, r"p2_real\.batch_size: must be >= 1, got 0"),
    ("p2_real_yo", ("train_window_s",), 1.5, r"p2_real_yo\.train_window_s: must be int, got float"),
])
def test_a_bad_key_is_named(cfg, section: str, path: tuple[str, ...], value: Any, message: str) -> None:
    from asrcompress.compress.baldwhisper import check_p2_section

    set_param(cfg[section], path, value)
    with pytest.raises(ParamError, match=message):
        check_p2_section(cfg, section)


def test_what_the_recipe_accepts_passes(cfg) -> None:
    """Explicit pairs (their count sets the per-pair weights), a list of boundaries, and `max_steps: 0`
    (the surgery alone: recover() trains nothing, so the training section is not a TrainConfig then)."""
    from asrcompress.compress.baldwhisper import check_p2_section

    cfg["p2"]["merge"].update(pairs=[0, 2], alpha=[0.6, 0.4], beta=0.5)  # n_pairs (1) is unused with pairs
    check_p2_section(cfg, "p2")
    cfg["p2"]["distill"]["layers"] = [0, 1, "final"]
    cfg["p2"]["variants"]["merge"].update(max_steps=0, lr=1e-5)
    check_p2_section(cfg, "p2")
    cfg["p2"]["train"]["max_steps"] = 0  # every variant without its own max_steps: no training
    check_p2_section(cfg, "p2")
    cfg["p2"]["variants"]["control"]["max_steps"] = 5  # ... but this one trains, with the section's lr
    cfg["p2"]["train"]["lr"] = 0
    with pytest.raises(ParamError, match=r"p2\.train\.lr: must be > 0"):
        check_p2_section(cfg, "p2")
    cfg["p2"]["merge"]["alpha"] = [0.6]
    with pytest.raises(ParamError, match=r"p2\.merge\.alpha: must be a number or a list of 2 numbers"):
        check_p2_section(cfg, "p2")


@pytest.mark.parametrize(("section", "path", "value", "message"), [
    ("p2", ("merge", "simlarity"), "output", r"p2\.merge\.simlarity: unknown key"),
    ("p2", ("variants", "merge", "foo"), 1, r"p2\.variants\.merge\.foo: unknown key"),
    ("p2_real", ("variants", "final", "lr"), 0, r"p2_real\.variants\.final\.lr: must be > 0"),
    ("p2_real_yo", ("lowrank", "sweep"), [0.5, 1.5], r"p2_real_yo\.lowrank\.sweep\[1\]"),
])
def test_p2_compress_checks_the_whole_section_first(cfg, tmp_path, monkeypatch, section: str,
                                                    path: tuple[str, ...], value: Any, message: str) -> None:
    """A key of another variant, or one read only after calibration, stops the stage before any model or
    data is loaded (the paths do not exist)."""
    from conftest import load_stage

    set_param(cfg[section], path, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    variant = "control" if section != "p2_real_yo" else "dense_ft"
    with pytest.raises(ParamError, match=message):
        load_stage("p2_compress").main(variant, "/nonexistent", "/nonexistent", "/nonexistent", "out", "diag", section)
    assert not (tmp_path / "out").exists() and not (tmp_path / "diag").exists()
