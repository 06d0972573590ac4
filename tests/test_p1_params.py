"""The whole `p1` / `p1_real` section is checked before any work (compress/sgl.check_p1_section)."""

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
@pytest.mark.parametrize("section", ["p1", "p1_real"])
def test_the_committed_sections_pass_in_both_profiles(section: str, profile: str) -> None:
    from asrcompress.compress.sgl import check_p1_section

    cfg = load_params(PARAMS, profile)
    out = check_p1_section(cfg, section)
    assert out["corpus"] == "hi" and out["sgl"] is cfg[section]["sgl"]  # the section as given, not a copy
    if profile == "paper" and section == "p1":  # paper_overrides.p1 deep-merged into the checked section
        assert out["sgl_train"]["max_steps"] == 4000 and out["sgl_train"]["batch_size"] == 16


@pytest.mark.parametrize(("section", "path", "value", "message"), [
    ("p1", ("medium_sorce",), None, r"p1\.medium_sorce: unknown key \(did you mean 'medium_source'\?\)"),
    ("p1", ("prune", "pass1_kk"), 1.0, r"p1\.prune\.pass1_kk: unknown key \(did you mean 'pass1_k'\?\)"),
    ("p1_real", ("prune", "pass1_k"), -1, r"p1_real\.prune\.pass1_k: must be >= 0, got -1"),
    ("p1", ("prune", "pass2_statistic"), "max", r"p1\.prune\.pass2_statistic: 'max' is not one of"),
    ("p1", ("prune", "zero_tol"), float("nan"), r"p1\.prune\.zero_tol: must be a finite number"),
    ("p1", ("prune", "min_keep"), 1.5, r"p1\.prune\.min_keep: must be int, got float"),
    ("p1", ("prune", "prune_heads"), "yes", r"p1\.prune\.prune_heads: must be bool"),
    ("p1_real", ("prune", "pass2_kinds"), ["fc1", "fc3"], r"p1_real\.prune\.pass2_kinds\[1\]: 'fc3' is not one of"),
    ("p1", ("prune", "zero_tol"), DELETE, r"missing key 'p1\.prune\.zero_tol'"),
    ("p1", ("sgl", "lambda_l1_encoder"), "0.05", r"p1\.sgl\.lambda_l1_encoder: must be float, got str"),
    ("p1_real", ("sgl", "lambda_group_decoder"), -0.1, r"p1_real\.sgl\.lambda_group_decoder: must be >= 0"),
    ("p1", ("sgl", "group_kinds"), ["fc2", "out_projj"], r"p1\.sgl\.group_kinds\[1\]: 'out_projj' is not one of"),
    ("p1", ("sgl", "mode"), "prox", r"p1\.sgl\.mode: 'prox' is not one of \['penalty', 'proximal'\]"),
    ("p1", ("sgl", "lambda_l1"), 0.1, r"p1\.sgl\.lambda_l1: unknown key"),
    ("p1", ("sgl",), DELETE, r"missing key 'p1\.sgl'"),
    ("p1", ("imp", "target_sparsity"), "matched", r"p1\.imp\.target_sparsity: must be 'match' or a number in \[0, 1\)"),
    ("p1_real", ("imp", "target_sparsity"), 1.0, r"p1_real\.imp\.target_sparsity: must be 'match' or a number"),
    ("p1", ("imp", "rounds"), 0, r"p1\.imp\.rounds: must be >= 1, got 0"),
    ("p1", ("imp", "schedule"), "cubic", r"p1\.imp\.schedule: 'cubic' is not one of \['geometric', 'linear'\]"),
    ("p1", ("imp", "rounds"), DELETE, r"missing key 'p1\.imp\.rounds'"),
    ("p1", ("sgl_train", "max_steps"), 0, r"p1\.sgl_train\.max_steps: must be >= 1, got 0"),
    ("p1_real", ("recovery_train", "lr"), 0, r"p1_real\.recovery_train\.lr: must be > 0"),
    ("p1", ("control_train", "max_step"), 9, r"p1\.control_train\.max_step: unknown key \(did you mean 'max_steps'\?\)"),
    ("p1_real", ("imp_train", "batch_size"), "4", r"p1_real\.imp_train\.batch_size: must be int"),
    ("p1", ("imp_train",), DELETE, r"missing key 'p1\.imp_train'"),
    ("p1", ("corpus",), "hindi", r"p1\.corpus: 'hindi' is not a key of corpora"),
    ("p1", ("model",), 3, r"p1\.model: must be str, got int"),
    ("p1_real", ("train_window_s",), 0, r"p1_real\.train_window_s: must be >= 1, got 0"),
    ("p1_real", ("train_window_s",), "4", r"p1_real\.train_window_s: must be int"),
])
def test_a_bad_key_is_named(cfg, section: str, path: tuple[str, ...], value: Any, message: str) -> None:
    from asrcompress.compress.sgl import check_p1_section

    set_param(cfg[section], path, value)
    with pytest.raises(ParamError, match=message):
        check_p1_section(cfg, section)


def test_recovery_may_be_null_and_the_window_absent(cfg) -> None:
    from asrcompress.compress.sgl import check_p1_section

    cfg["p1_real"]["recovery_train"] = None
    del cfg["p1_real"]["train_window_s"]
    assert check_p1_section(cfg, "p1_real")["recovery_train"] is None
    cfg["p1"]["imp"]["target_sparsity"] = 0  # a number in [0, 1) instead of match
    check_p1_section(cfg, "p1")


@pytest.mark.parametrize(("stage", "section", "path", "value", "message"), [
    ("p1_sgl", "p1", ("sgl", "lambda_l1_encodr"), 0.1, r"p1\.sgl\.lambda_l1_encodr: unknown key"),
    ("p1_sgl --control", "p1_real", ("imp", "shedule"), "linear", r"p1_real\.imp\.shedule: unknown key"),
    ("p1_prune", "p1", ("prune", "pass1_kk"), 2.0, r"p1\.prune\.pass1_kk: unknown key"),
    ("p1_prune", "p1_real", ("prune", "pass1_k"), -1, r"p1_real\.prune\.pass1_k: must be >= 0"),
    ("p1_imp", "p1", ("imp", "rounds"), 0, r"p1\.imp\.rounds: must be >= 1"),
    ("p1_imp", "p1_real", ("imp_train", "lr"), 0, r"p1_real\.imp_train\.lr: must be > 0"),
])
def test_every_p1_stage_checks_the_whole_section_first(cfg, tmp_path, monkeypatch, stage: str, section: str,
                                                      path: tuple[str, ...], value: Any, message: str) -> None:
    """A key the stage itself never reads, or reads only later, stops it before any model is loaded
    (the model and corpus paths do not exist)."""
    from conftest import load_stage

    set_param(cfg[section], path, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    name, *flags = stage.split()
    args = {"p1_sgl": ("/nonexistent", "/nonexistent", "out", "loss.csv", "m.json", "fig.png"),
            "p1_prune": ("/nonexistent", "/nonexistent", "/nonexistent", "out", "loss.csv", "m.json", "fig.png"),
            "p1_imp": ("/nonexistent", "/nonexistent", "/nonexistent", "out", "loss.csv", "m.json")}[name]
    with pytest.raises(ParamError, match=message):
        load_stage(name).main(*flags, *args, section)
    assert not (tmp_path / "out").exists()
