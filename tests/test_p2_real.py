"""Paper 2 on the real Whisper base (pipelines/p2_real/dvc.yaml): stages/p2_compress.py with the `p2_real`
section, the training window param, and distillation with student and teacher on a cut encoder window."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import OFFLINE_DIMS, load_stage, make_offline_rows, make_tiny_whisper
from transformers import WhisperProcessor

from asrcompress.compress import baldwhisper as bw
from asrcompress.compress.checkpoint import load_compressed
from asrcompress.config import ParamError
from asrcompress.models.whisper import build_feature_extractor, build_model, check_train_window

TRAIN = {"max_steps": 2, "batch_size": 2, "lr": 0.001, "warmup_steps": 0, "checkpoint_every": 2, "num_threads": 1}
SECTION = {"reference": "base_en_synth", "calib_utterances": 4, "dev_utterances": 2, "batch_size": 2,
           "train_window_s": 1,
           "merge": {"n_pairs": 1, "similarity": "output", "pairs": None, "alpha": 0.5, "beta": 0.5},
           "lowrank": {"rank_fraction": 0.25, "scaling": "full", "damping": 0.01, "sweep": [0.25, 1.0]},
           "distill": {"layers": "all", "loss": "nmse", "weight": 1.0}, "train": TRAIN,
           "variants": {"final": {"init": "dense", "merge": True, "lowrank": True, "distill": True}}}


@pytest.fixture
def project(tmp_path, monkeypatch, offline_processor):
    """A scratch project: a 2 s-window offline Whisper (2 decoder layers) as teacher and init, a corpus
    of 0.75 s clips, and a params.yaml with only `p2_real` (no `p2`)."""
    from datasets import Dataset, DatasetDict

    torch.manual_seed(0)
    processor = WhisperProcessor(feature_extractor=build_feature_extractor(2), tokenizer=offline_processor.tokenizer)
    model = build_model({**OFFLINE_DIMS, "decoder_layers": 2}, processor.tokenizer, 2, "eager")
    model.save_pretrained(tmp_path / "dense")
    processor.save_pretrained(tmp_path / "dense")
    rows = [{**r, "audio": {"array": r["audio"]["array"].tolist(), "sampling_rate": 16000}}
            for r in make_offline_rows(6)]
    DatasetDict({"train": Dataset.from_list(rows), "dev": Dataset.from_list(rows[:2])}).save_to_disk(
        str(tmp_path / "corpus"))
    cfg = {"seed": 7, "corpora": {"en": {"whisper_language": "en"}},
           "real_dense_synth": {"base_en_synth": {"model": "dense", "corpus": "en"}}, "p2_real": SECTION}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_p2_compress_reads_the_given_section_and_saves_the_full_window(project):
    """The stage reads `p2_real` (params.yaml has no `p2`); student and teacher run on the cut 1 s window
    (a teacher left at 2 s refuses the 1 s features); the model is saved with its own 2 s window and reloads."""
    dense = load_compressed(project / "dense")
    load_stage("p2_compress").main("final", "dense", "dense", "corpus", "out", "diag", "p2_real")
    record = json.loads((project / "diag/compress.json").read_text())
    assert record["train_window_s"] == 1 and record["train"]["steps"] == 2 and record["distill"]["pairs"]
    assert "train_left_out_window" not in record  # every clip fits: the record is what it was before the counts
    assert record["structure"]["decoder_layers"] == 1 and record["structure"]["embedding_rank"] == 8
    saved = json.loads((project / "out/compression.json").read_text())
    assert saved["method_params"]["train_window_s"] == 1
    model = load_compressed(project / "out")
    assert model.config.max_source_positions == 100  # the full 2 s window
    assert torch.equal(model.model.encoder.embed_positions.weight, dense.model.encoder.embed_positions.weight)
    assert not torch.equal(model.model.encoder.layers[0].fc1.weight, dense.model.encoder.layers[0].fc1.weight)
    assert WhisperProcessor.from_pretrained(project / "out").feature_extractor.nb_max_frames == 200
    with torch.no_grad():
        out = model(input_features=torch.zeros(1, 80, 200), decoder_input_ids=torch.tensor([[1]]))
    assert out.logits.shape[:2] == (1, 1)


@pytest.mark.parametrize("bad", [0, 2, "1", True, 1.5])
def test_train_window_must_be_an_int_within_the_model_window(bad):
    model = make_tiny_whisper()  # 50 positions: a 1 s window
    with pytest.raises(ParamError, match=r"p2_real\.train_window_s: must be an integer number of seconds in \[1, 1\]"):
        check_train_window({"train_window_s": bad}, "p2_real", model)
    assert check_train_window({"train_window_s": 1}, "p2_real", model) == 1
    assert check_train_window({}, "p2", model) is None and check_train_window({"train_window_s": None}, "p2", model) is None


def test_reference_corpus_looks_in_dense_and_the_real_references():
    cfg = {"corpora": {"bm": {"whisper_language": "sw"}, "en": {"whisper_language": "en"}},
           "real_corpora": {"yo_real": {"whisper_language": "yo"}},
           "dense": {"dense_bm": {"corpus": "bm"}}, "real_dense": {"base_yo_real": {"corpus": "yo_real"}},
           "real_dense_synth": {"base_en_synth": {"corpus": "en"}},
           "p2": {"reference": "dense_bm"}, "a": {"reference": "base_yo_real"}, "b": {"reference": "base_en_synth"},
           "c": {"reference": "nope"}}
    assert bw.reference_corpus(cfg, "p2") == ("bm", "sw")
    assert bw.reference_corpus(cfg, "a") == ("yo_real", "yo")
    assert bw.reference_corpus(cfg, "b") == ("en", "en")
    with pytest.raises(ParamError, match=r"c\.reference: 'nope' is not a key of dense, real_dense"):
        bw.reference_corpus(cfg, "c")


def test_p2_compress_leaves_out_clips_longer_than_the_window_and_takes_the_variant_lr(project, monkeypatch):
    """Clips longer than the 1 s training window are left out of training and of the dev loss (counted in
    compress.json), not cut; a variant's own `lr` and `max_steps` override the section's `train`."""
    from datasets import Dataset, DatasetDict

    from asrcompress.models.whisper import rows_in_window

    rows = make_offline_rows(6)
    for row in rows[:2]:  # 1.5 s: inside the model's 2 s window, outside the 1 s training window
        row["audio"]["array"] = row["audio"]["array"][:8000].repeat(3)
    kept, dropped = rows_in_window(rows, 1)
    assert [r["id"] for r in kept] == [r["id"] for r in rows[2:]] and dropped == [r["id"] for r in rows[:2]]
    assert rows_in_window(rows, None) == (rows, [])
    listed = [{**r, "audio": {"array": r["audio"]["array"].tolist(), "sampling_rate": 16000}} for r in rows]
    DatasetDict({"train": Dataset.from_list(listed), "dev": Dataset.from_list(listed[:3])}).save_to_disk(
        str(project / "corpus2"))
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    cfg["p2_real"]["variants"]["ft"] = {"init": "dense", "merge": False, "lowrank": False, "distill": False,
                                        "max_steps": 3, "lr": 1e-9}
    (project / "params.yaml").write_text(yaml.safe_dump(cfg))
    load_stage("p2_compress").main("ft", "dense", "dense", "corpus2", "out", "diag", "p2_real")
    record = json.loads((project / "diag/compress.json").read_text())
    assert (record["train_utterances"], record["train_left_out_window"], record["dev_left_out_window"]) == (4, 2, 2)
    assert record["train"]["steps"] == 3
    dense, trained = load_compressed(project / "dense"), load_compressed(project / "out")
    moved = max((a - b).abs().max().item() for a, b in zip(dense.state_dict().values(), trained.state_dict().values(), strict=True))
    assert 0 < moved < 1e-6  # lr 1e-9, not the section's 1e-3 (whose Adam steps move weights by ~1e-3)
