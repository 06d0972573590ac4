"""encoder_window: a Whisper fine-tuned on a cut encoder window is saved with its original window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import OFFLINE_DIMS, make_offline_rows
from transformers import WhisperProcessor

from asrcompress.models.whisper import build_feature_extractor, build_model, check_window, encoder_window
from asrcompress.train.collate import WhisperCollator


@pytest.fixture
def two_second(offline_processor):
    torch.manual_seed(0)
    processor = WhisperProcessor(feature_extractor=build_feature_extractor(2), tokenizer=offline_processor.tokenizer)
    return build_model(OFFLINE_DIMS, processor.tokenizer, 2, "eager"), processor


def test_cut_window_trains_and_restores_exactly(two_second) -> None:
    model, processor = two_second
    full = model.model.encoder.embed_positions.weight.detach().clone()
    assert model.config.max_source_positions == 100
    with encoder_window(model, processor, 1) as cut:
        assert cut.feature_extractor.nb_max_frames == 100 and model.config.max_source_positions == 50
        assert processor.feature_extractor.nb_max_frames == 200  # the caller's processor is untouched
        batch = WhisperCollator(cut, "en")(make_offline_rows(2))
        assert batch["input_features"].shape[-1] == 100
        model.train()
        model(**batch).loss.backward()
        assert model.model.encoder.embed_positions.weight.grad is None  # a fixed table: never trained
        too_long = [{"id": "long", "text": "a b", "language": "en",
                     "audio": {"array": np.zeros(24000, np.float32), "sampling_rate": 16000}}]
        with pytest.raises(ValueError, match="long"):
            WhisperCollator(cut, "en")(too_long)
    assert model.config.max_source_positions == 100
    assert torch.equal(model.model.encoder.embed_positions.weight, full)
    check_window(processor, model)
    out = model.eval()(input_features=torch.zeros(1, 80, 200), decoder_input_ids=torch.tensor([[1]]))
    assert out.logits.shape[:2] == (1, 1)


def test_a_window_longer_than_the_model_is_refused(two_second) -> None:
    model, processor = two_second
    with pytest.raises(ValueError, match="longer than the model's 2 s"), encoder_window(model, processor, 4):
        pass
    with encoder_window(model, processor, None) as same:
        assert same is processor
    assert model.config.max_source_positions == 100
