"""params.yaml: both profiles resolve, errors name the key, the profile switch keeps comments."""

import shutil
from pathlib import Path

import pytest

from asrcompress.config import ParamError, deep_merge, derive_seed, get, load_params, set_profile

ROOT = Path(__file__).resolve().parents[1]


def test_both_profiles_resolve_with_the_same_keys():
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    paper = load_params(ROOT / "params.yaml", profile="paper")
    assert smoke["profile"] == "smoke" and paper["profile"] == "paper"
    assert set(smoke) == set(paper)
    assert paper["whisper"]["source"] == "openai/whisper-small"
    assert paper["corpora"]["hi"]["source"] == "common_voice_11_hi"
    # overrides only change what they name
    assert paper["corpora"]["hi"]["normalizer"] == smoke["corpora"]["hi"]["normalizer"] == "hindi"


def test_paper_corpora_are_registered_hub_specs():
    from asrcompress.data.hub_loaders import CORPORA

    paper = load_params(ROOT / "params.yaml", profile="paper")
    for key, corpus in paper["corpora"].items():
        assert corpus["source"] in CORPORA, key


def test_get_names_missing_and_mistyped_keys():
    cfg = {"train": {"lr": "fast", "steps": 3, "flag": True}}
    with pytest.raises(ParamError, match="missing key 'train.batch_size'"):
        get(cfg, "train.batch_size", int)
    with pytest.raises(ParamError, match="'train.lr' must be float, got str"):
        get(cfg, "train.lr", float)
    with pytest.raises(ParamError, match="'train.flag' must be int"):
        get(cfg, "train.flag", int)
    assert get(cfg, "train.steps", float) == 3.0
    assert get(cfg, "train.nope", int, default=5) == 5


def test_unknown_profile_and_bad_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: huge\n")
    with pytest.raises(ParamError, match="'profile' is 'huge'"):
        load_params(p)
    p.write_text("a: [1, 2\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(p)
    with pytest.raises(ParamError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_set_profile_rewrites_one_line(tmp_path):
    p = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", p)
    before = p.read_text()
    set_profile(p, "paper")
    after = p.read_text()
    assert load_params(p)["profile"] == "paper"
    assert [a for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b] == ["profile: smoke"]
    with pytest.raises(ParamError):
        set_profile(p, "tiny")


def test_deep_merge_and_seeds():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert derive_seed(1, "x") == derive_seed(1, "x") != derive_seed(1, "y")
