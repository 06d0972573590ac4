"""measure@<key> params: every key the stage reads is checked up front, errors name `section.key`."""

import copy
from pathlib import Path
from typing import Any

import pytest

from asrcompress.config import ParamError, Spec, check_section, load_params
from asrcompress.measure.suite import MEASURE_SCHEMA, validate_measure_params

ROOT = Path(__file__).resolve().parents[1]
MEASURE_SECTIONS = ("dense", "variants", "real_dense", "real_dense_synth", "real_variants")


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    return load_params(ROOT / "params.yaml", profile="smoke")


@pytest.fixture
def cfg(params: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(params)


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_committed_params_validate_for_every_entry(profile: str) -> None:
    cfg = load_params(ROOT / "params.yaml", profile=profile)
    n = 0
    for section in MEASURE_SECTIONS:
        for key in cfg.get(section) or {}:
            mcfg, variant, corpora = validate_measure_params(cfg, section, key)
            assert variant["corpus"] in cfg[corpora]
            assert mcfg["batch_size"] >= 1
            n += 1
    assert n >= 8


def test_real_track_merges_real_measure(cfg: dict[str, Any]) -> None:
    mcfg, _, corpora = validate_measure_params(cfg, "real_dense", "base_en_real")
    assert corpora == "real_corpora"
    assert mcfg["latency_utterances"] == cfg["real_measure"]["latency_utterances"]
    assert mcfg["bootstrap_resamples"] == cfg["measure"]["bootstrap_resamples"]  # not overridden: kept
    assert "max_new_tokens" not in cfg["measure"] and mcfg["max_new_tokens"] == cfg["real_measure"]["max_new_tokens"]


def test_real_variants_merge_real_measure_then_their_own(cfg: dict[str, Any]) -> None:
    cfg["real_variants"] = {"x": {"model": "m", "corpus": "en_real", "reference": "base_en_real"},
                            "y": {"model": "m", "corpus": "en", "reference": "base_en_synth", "test_utterances": 100}}
    cfg["real_variants_measure"] = {"latency_repeats": 5, "fixed_repeats": 7}
    mcfg, _, _ = validate_measure_params(cfg, "real_variants", "x")
    assert (mcfg["latency_repeats"], mcfg["fixed_repeats"]) == (5, 7)
    assert mcfg["latency_utterances"] == cfg["real_measure"]["latency_utterances"]
    assert mcfg["max_new_tokens"] == cfg["real_measure"]["max_new_tokens"]
    validate_measure_params(cfg, "real_variants", "y")  # a real_dense_synth reference is accepted
    dense, _, _ = validate_measure_params(cfg, "real_dense", "base_en_real")  # dense real: not overridden
    assert dense["latency_repeats"] == cfg["real_measure"]["latency_repeats"]
    cfg["real_variants"]["z"] = {"model": "m", "corpus": "en_real", "reference": "x"}  # a real control as reference
    validate_measure_params(cfg, "real_variants", "z")
    cfg["variants"]["sgl_pruned_hi"]["reference"] = "x"  # ... never for a smoke variant
    with pytest.raises(ParamError, match=r"variants\.sgl_pruned_hi\.reference: 'x' is not a key of dense or real_dense"):
        validate_measure_params(cfg, "variants", "sgl_pruned_hi")
    cfg["real_variants"]["z"]["reference"] = "z"
    with pytest.raises(ParamError, match=r"real_variants\.z\.reference: an entry cannot be its own reference"):
        validate_measure_params(cfg, "real_variants", "z")
    cfg["real_variants_measure"]["fixed_repeats"] = -1
    with pytest.raises(ParamError, match=r"real_variants_measure\.fixed_repeats: must be >= 0"):
        validate_measure_params(cfg, "real_variants", "x")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("batch_size", -4, r"measure\.batch_size: must be >= 1, got -4"),
    ("latency_utterances", 0, r"measure\.latency_utterances: must be >= 1, got 0"),
    ("num_threads", True, r"measure\.num_threads: must be int, got bool"),
    ("bootstrap_resamples", 10.0, r"measure\.bootstrap_resamples: must be int, got float"),
    ("device", "gpu", r"measure\.device: 'gpu' is not cpu, cuda or cuda:N"),
])
def test_bad_measure_values_name_the_key(cfg: dict[str, Any], key: str, value: Any, message: str) -> None:
    cfg["measure"][key] = value
    with pytest.raises(ParamError, match=message):
        validate_measure_params(cfg, "dense", "dense_en")


def test_cuda_devices_accepted(cfg: dict[str, Any]) -> None:
    for device in ("cuda", "cuda:1"):
        cfg["measure"]["device"] = device
        assert validate_measure_params(cfg, "dense", "dense_en")[0]["device"] == device


def test_measure_typo_suggests_the_known_key(cfg: dict[str, Any]) -> None:
    cfg["measure"]["devcie"] = cfg["measure"].pop("device")
    with pytest.raises(ParamError, match=r"measure\.devcie: unknown key \(did you mean 'device'\?\)"):
        validate_measure_params(cfg, "dense", "dense_en")


def test_missing_measure_key(cfg: dict[str, Any]) -> None:
    del cfg["measure"]["rss_utterances"]
    with pytest.raises(ParamError, match=r"missing key 'measure\.rss_utterances'"):
        validate_measure_params(cfg, "dense", "dense_en")


def test_real_measure_keys_are_named_as_real_measure(cfg: dict[str, Any]) -> None:
    cfg["real_measure"]["latency_utterances"] = 0
    validate_measure_params(cfg, "dense", "dense_en")  # only the real track reads real_measure
    with pytest.raises(ParamError, match=r"real_measure\.latency_utterances: must be >= 1, got 0"):
        validate_measure_params(cfg, "real_dense", "base_en_real")


def test_variant_typo_and_bad_reference(cfg: dict[str, Any]) -> None:
    cfg["variants"]["x"] = {"model": "m", "corpus": "hi", "refrence": "dense_hi"}
    with pytest.raises(ParamError, match=r"variants\.x\.refrence: unknown key \(did you mean 'reference'\?\)"):
        validate_measure_params(cfg, "variants", "x")
    cfg["variants"]["x"] = {"model": "m", "corpus": "hi", "reference": "dense_xx"}
    with pytest.raises(ParamError, match=r"variants\.x\.reference: 'dense_xx' is not a key of dense or real_dense"):
        validate_measure_params(cfg, "variants", "x")
    cfg["variants"]["x"] = {"corpus": "hi"}
    with pytest.raises(ParamError, match=r"missing key 'variants\.x\.model'"):
        validate_measure_params(cfg, "variants", "x")
    cfg["variants"]["x"] = {"model": "m", "corpus": "xx"}
    with pytest.raises(ParamError, match=r"variants\.x\.corpus: 'xx' is not a key of corpora or real_corpora"):
        validate_measure_params(cfg, "variants", "x")
    cfg["variants"]["x"] = {"model": "m", "corpus": "hi", "real_scale": "whisper-smal"}
    with pytest.raises(ParamError, match=r"variants\.x\.real_scale: 'whisper-smal' is not one of"):
        validate_measure_params(cfg, "variants", "x")


def test_unknown_normalizer_names_the_corpus_key(cfg: dict[str, Any]) -> None:
    cfg["corpora"]["en"]["normalizer"] = "englsh"
    with pytest.raises(ParamError, match=r"corpora\.en\.normalizer: unknown normalizer 'englsh'"):
        validate_measure_params(cfg, "dense", "dense_en")
    cfg["real_corpora"]["hi_real"]["normalizer"] = "hindu"
    with pytest.raises(ParamError, match=r"real_corpora\.hi_real\.normalizer: unknown normalizer 'hindu'"):
        validate_measure_params(cfg, "real_dense", "base_hi_real")


def test_check_section_generic() -> None:
    schema = {"lr": Spec(float, min=0), "opt": Spec(str, required=False, choices={"adam", "sgd"})}
    assert check_section({"lr": 1}, "train", schema) == {"lr": 1.0}
    with pytest.raises(ParamError, match=r"train\.opt: 'rms' is not one of \['adam', 'sgd'\]"):
        check_section({"lr": 1, "opt": "rms"}, "train", schema)
    with pytest.raises(ParamError, match=r"train: must be a mapping"):
        check_section([1], "train", schema)
    with pytest.raises(ParamError, match=r"train\.zzz: unknown key; known: \['lr', 'opt'\]"):
        check_section({"lr": 1, "zzz": 0}, "train", schema)
    assert set(MEASURE_SCHEMA) >= {"batch_size", "device", "latency_utterances"}


def test_test_utterances_is_a_positive_int(cfg: dict[str, Any]) -> None:
    _, variant, _ = validate_measure_params(cfg, "real_dense_synth", "base_en_synth")
    assert variant["test_utterances"] == 100
    bad = copy.deepcopy(cfg)
    bad["real_dense_synth"]["base_en_synth"]["test_utterances"] = 0
    with pytest.raises(ParamError, match=r"real_dense_synth\.base_en_synth\.test_utterances: must be >= 1"):
        validate_measure_params(bad, "real_dense_synth", "base_en_synth")
