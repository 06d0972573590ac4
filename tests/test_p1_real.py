"""Paper 1 on the real Whisper base (pipelines/p1_real/dvc.yaml): the p1 stages read the params section
named by their last argument, train inside `<section>.train_window_s` (checked, naming the key) and save
models with their full window that reload; the pipeline's measure / compare entries match params.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import OFFLINE_DIMS, load_stage, make_offline_rows, make_tiny_whisper
from datasets import Dataset, DatasetDict
from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed
from asrcompress.config import ParamError
from asrcompress.models.whisper import build_feature_extractor, build_model, check_train_window, check_window

ROOT = Path(__file__).parents[1]
TRAIN = {"max_steps": 2, "batch_size": 2, "lr": 0.001, "warmup_steps": 0, "checkpoint_every": 10, "num_threads": 1}


def _params(tmp_path: Path, window: int | None) -> None:
    """params.yaml with the repository's p1_real section, shrunk: a 1-s training window of a 2-s model, a
    lambda that zeroes groups of the tiny model in two steps, and a `p1` section that would fail if read."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = cfg["p1_real"]
    section.update(corpus="tiny", train_window_s=window, sgl_train=TRAIN, recovery_train=TRAIN,
                   control_train=TRAIN, imp_train=TRAIN)
    section["sgl"].update(lambda_group_encoder=30.0, lambda_group_decoder=30.0)
    section["imp"]["rounds"] = 1
    cfg["p1"] = {"corpus": "no-such-corpus"}
    cfg["corpora"]["tiny"] = {**cfg["corpora"]["en"], "whisper_language": "en"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def chain_dir(tmp_path, monkeypatch, offline_processor):
    torch.manual_seed(0)
    processor = WhisperProcessor(feature_extractor=build_feature_extractor(2), tokenizer=offline_processor.tokenizer)
    model = build_model(OFFLINE_DIMS, processor.tokenizer, 2, "eager")
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    DatasetDict({"train": Dataset.from_list(make_offline_rows(4))}).save_to_disk(str(tmp_path / "corpus"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    return tmp_path


def test_chain_reads_its_section_trains_in_the_cut_window_and_saves_the_full_one(chain_dir):
    _params(chain_dir, 1)
    load_stage("p1_sgl").main("base", "corpus", "sgl", "sgl.csv", "sgl.json", "sgl.png", "p1_real")
    load_stage("p1_prune").main("sgl", "base", "corpus", "pruned", "prune.csv", "prune.json", "kw.png", "p1_real")
    load_stage("p1_imp").main("base", "corpus", "prune.json", "imp", "imp.csv", "imp.json", "p1_real")
    assert json.loads((chain_dir / "sgl.json").read_text())["zero_groups"] > 0  # p1_real's lambdas were used
    prune = json.loads((chain_dir / "prune.json").read_text())
    assert prune["train_window_s"] == 1 and prune["recovery"]["steps"] == 2 and prune["kept_widths"]
    assert prune["params"] < prune["params_dense"]
    features = torch.randn(1, 80, 200)  # a full 2-s window
    for out in ("sgl", "pruned", "imp"):
        model = load_compressed(chain_dir / out)
        assert model.config.max_source_positions == 100, out
        assert model.model.encoder.embed_positions.weight.shape[0] == 100, out
        check_window(WhisperProcessor.from_pretrained(chain_dir / out), model)
        logits = model(input_features=features, decoder_input_ids=torch.tensor([[1]])).logits
        assert torch.isfinite(logits).all(), out
    record = json.loads((chain_dir / "pruned/compression.json").read_text())
    assert record["extra"]["train_window_s"] == 1
    train_loss = [float(line.split(",")[1]) for line in (chain_dir / "sgl.csv").read_text().splitlines()[1:]]
    assert len(train_loss) == 2


@pytest.mark.parametrize("bad", [0, 3, 1.5, "2", True])
def test_window_param_is_checked_naming_the_key(bad):
    model = make_tiny_whisper(max_source_positions=100)  # a 2-s window
    section = {"train_window_s": bad}
    with pytest.raises(ParamError, match=r"p1_real\.train_window_s: must be an integer .* \[1, 2\]"):
        check_train_window(section, "p1_real", model)
    assert check_train_window({"train_window_s": 2}, "p1_real", model) == 2
    assert check_train_window({}, "p1", model) is None


def test_the_stage_refuses_a_window_longer_than_the_model_before_training(chain_dir):
    _params(chain_dir, 3)
    with pytest.raises(ParamError, match=r"p1_real\.train_window_s"):
        load_stage("p1_sgl").main("--control", "base", "corpus", "ft", "ft.csv", "ft.json", "ft.png", "p1_real")
    assert not (chain_dir / "ft").exists() and not (chain_dir / "ft.csv").exists()


def test_without_the_argument_the_stage_reads_p1_and_records_no_window(chain_dir):
    _params(chain_dir, 1)
    cfg = yaml.safe_load((chain_dir / "params.yaml").read_text())
    cfg["p1"] = {k: v for k, v in cfg["p1_real"].items() if k != "train_window_s"}  # the smoke schema
    cfg["p1_real"]["corpus"] = "no-such-corpus"  # would fail if read
    (chain_dir / "params.yaml").write_text(yaml.safe_dump(cfg))
    load_stage("p1_sgl").main("--control", "base", "corpus", "ft", "ft.csv", "ft.json", "ft.png")
    record = json.loads((chain_dir / "ft/compression.json").read_text())
    assert record["method"] == "dense_ft" and "train_window_s" not in record["method_params"]
    assert load_compressed(chain_dir / "ft").config.max_source_positions == 100
