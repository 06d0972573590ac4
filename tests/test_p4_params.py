"""The whole `p4` section is checked before any work (compress/self_pinching.check_p4_section)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from asrcompress.compress.self_pinching import check_p4_section
from asrcompress.config import ParamError


@pytest.fixture
def cfg(committed_params: dict[str, Any]) -> dict[str, Any]:
    return committed_params


def test_the_committed_section_passes(cfg) -> None:
    assert set(check_p4_section(cfg)["models"]) == {"wav2vec2", "hubert"}


@pytest.mark.parametrize(("path", "value", "message"), [
    (("dense_controll",), True, r"p4\.dense_controll: unknown key \(did you mean 'dense_control'\?\)"),
    (("attn_implementation",), "spda", r"p4\.attn_implementation: 'spda' is not one of"),
    (("models", "hubert", "kind"), "hubbert", r"p4\.models\.hubert\.kind: 'hubbert' is not one of"),
    (("models", "hubert", "corpus"), "fr", r"p4\.models\.hubert\.corpus: 'fr' is not a key of corpora"),
    (("models", "wav2vec2", "target_sparsity"), 1.5, r"p4\.models\.wav2vec2\.target_sparsity: must be < 1"),
    (("models", "wav2vec2", "sparsity"), 0.5, r"p4\.models\.wav2vec2\.sparsity: unknown key"),
    (("dims", "hidden_sise"), 64, r"p4\.dims\.hidden_sise: unknown key \(did you mean 'hidden_size'\?\)"),
    (("dims", "num_hidden_layers"), 0, r"p4\.dims\.num_hidden_layers: must be >= 1"),
    (("train", "max_steps"), 0, r"p4\.train\.max_steps: must be >= 1"),
    (("compress_train", "lr"), float("nan"), r"p4\.compress_train\.lr: must be a finite number"),
    (("gates", "taux"), 0.1, r"p4\.gates\.taux: unknown gate key"),
    (("gates", "tau"), -1.0, r"p4\.gates: GateConfig: tau, threshold_lr and weight_lr must be > 0"),
    (("structured", "gates", "target_sparsity"), 1.0, r"p4\.structured\.gates: GateConfig: target_sparsity"),
    (("structured", "enable"), True, r"p4\.structured\.enable: unknown key"),
])
def test_a_bad_key_is_named(cfg, path: tuple[str, ...], value: Any, message: str) -> None:
    node = cfg["p4"]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParamError, match=message):
        check_p4_section(cfg)


def test_both_p4_stages_check_the_section_first(cfg, tmp_path, monkeypatch) -> None:
    from conftest import load_stage

    cfg["p4"]["gates"]["taux"] = 0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=r"p4\.gates\.taux"):
        load_stage("p4_train_ctc").main("wav2vec2", "/nonexistent", "out", "loss.csv", "m.json")
    with pytest.raises(ParamError, match=r"p4\.gates\.taux"):
        load_stage("p4_compress").main("wav2vec2", "/nonexistent", "/nonexistent", "out", "rep", "m.json")
