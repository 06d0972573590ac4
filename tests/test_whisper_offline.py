"""The offline Whisper: local tokenizer, generation config, generate(), save/reload, training loop."""

import os
import signal

import numpy as np
import pytest
import torch
from conftest import OFFLINE_DIMS, make_offline_rows

from asrcompress.inference import transcribe_whisper
from asrcompress.models.whisper import (
    build_model,
    check_window,
    label_ids,
    load_pretrained,
    train_bpe,
)
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, TrainingError, train

DIMS = OFFLINE_DIMS


@pytest.fixture
def processor(offline_processor):
    return offline_processor


@pytest.fixture
def rows():
    return make_offline_rows()


@pytest.mark.parametrize("text,lang", [("room 125 in the morning", "en"), ("नदी में अच्छा अख़बार है।", "hi"),
                                       ("n balima bɛna taa école bi", "sw")])
def test_tokenizer_round_trip_with_prefix(processor, text, lang):
    tok = processor.tokenizer
    ids = label_ids(tok, text, lang)
    assert ids[0] == tok.convert_tokens_to_ids(f"<|{lang}|>")
    assert ids[1] == tok.convert_tokens_to_ids("<|transcribe|>")
    assert ids[2] == tok.convert_tokens_to_ids("<|notimestamps|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_language_tokens_in_whisper_order(processor):
    tok = processor.tokenizer
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    assert tok.convert_tokens_to_ids("<|en|>") == sot + 1  # "en" is first in Whisper's LANGUAGES
    assert tok.convert_tokens_to_ids("<|hi|>") > sot


def test_bpe_needs_300_tokens():
    with pytest.raises(ValueError, match="vocab_size=200"):
        train_bpe(["a b c"], 200)


def test_generate_save_reload(processor, tmp_path):
    torch.manual_seed(0)
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=1).eval()
    check_window(processor, model)
    feats = processor.feature_extractor([np.ones(8000, np.float32) * 0.1], sampling_rate=16000,
                                        return_tensors="pt").input_features
    out = model.generate(feats, language="hi", task="transcribe", max_new_tokens=4)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, proc2 = load_pretrained(tmp_path)
    assert torch.equal(again.generate(feats, language="hi", task="transcribe", max_new_tokens=4), out)
    assert again.generation_config.lang_to_id["<|hi|>"] == processor.tokenizer.convert_tokens_to_ids("<|hi|>")
    assert proc2.tokenizer.decode(label_ids(proc2.tokenizer, "घर में", "hi"), skip_special_tokens=True) == "घर में"


def test_window_mismatch_is_an_error(processor):
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=2)
    with pytest.raises(ValueError, match="frames"):
        check_window(processor, model)


def test_collator_errors_name_item_and_field(processor, rows):
    collate = WhisperCollator(processor, "en")
    rows[1]["text"] = "  "
    with pytest.raises(ValueError, match="u1: empty transcript in field 'text'"):
        collate(rows[:2])
    rows[1]["text"] = "ok"
    rows[0]["audio"]["array"] = np.zeros(40000, np.float32)
    with pytest.raises(ValueError, match="u0: audio is 2.50 s, longer than"):
        WhisperCollator(processor, "en")(rows[:2])


def _cfg(**kw):
    return TrainConfig(**{**dict(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100,
                                 seed=7, num_threads=1), **kw})


def test_training_lowers_loss_and_transcribes(processor, rows, tmp_path):
    torch.manual_seed(0)
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    summary = train(model, rows, WhisperCollator(processor, "en"), _cfg(max_steps=40), tmp_path / "ck",
                    tmp_path / "loss.csv")
    losses = np.loadtxt(tmp_path / "loss.csv", delimiter=",", skiprows=1, usecols=1)
    assert summary["steps"] == 40 and len(losses) == 40
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()
    hyps, lengths = transcribe_whisper(model, processor, rows[:3], "en", batch_size=2, max_new_tokens=8,
                                       progress=False)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps) and all(n >= 1 for n in lengths)
    # length-sorted batching returns the same results in the input order, one by one or batched
    some = [{**r, "audio": {**r["audio"], "array": np.asarray(r["audio"]["array"])[: len(r["audio"]["array"]) - 800 * (4 - k)]}}
            for k, r in enumerate(rows[:5])]  # five lengths, shortest first: sorting reorders
    one_by_one = [transcribe_whisper(model, processor, [r], "en", batch_size=1, max_new_tokens=8,
                                     progress=False, sort_by_length=False) for r in some]
    sorted_batched = transcribe_whisper(model, processor, some, "en", batch_size=2, max_new_tokens=8, progress=False)
    assert sorted_batched[0] == [h[0] for h, _ in one_by_one]
    assert sorted_batched[1] == [n[0] for _, n in one_by_one]


def test_interrupted_training_resumes_to_the_same_weights(processor, rows, tmp_path):
    collate = WhisperCollator(processor, "en")
    torch.manual_seed(0)
    straight = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    train(straight, rows, collate, _cfg(), tmp_path / "a", tmp_path / "a.csv")

    def stop_at_3(model, step):  # Ctrl-C arriving during step 3
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    torch.manual_seed(0)
    resumed = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, rows, collate, _cfg(), tmp_path / "b", tmp_path / "b.csv", after_step=stop_at_3)
    torch.manual_seed(0)  # a fresh process builds the same starting model; the checkpoint continues it
    resumed = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    summary = train(resumed, rows, collate, _cfg(), tmp_path / "b", tmp_path / "b.csv")
    assert summary["resumed_from"] == 3
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert len(np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)) == 6


def test_checkpoint_from_other_data_or_tokenizer_is_not_resumed(processor, rows, tmp_path):
    """Same config and paths, but a regenerated corpus, another language token or another starting model:
    start fresh."""
    collate = WhisperCollator(processor, "en")

    def stop_at_3(model, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    def run(rows_, collate_, **kw):
        torch.manual_seed(0)
        model = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
        return train(model, rows_, collate_, _cfg(), tmp_path / "ck", tmp_path / "l.csv", **kw)

    with pytest.raises(KeyboardInterrupt):
        run(rows, collate, after_step=stop_at_3)
    other_text = [{**r, "text": r["text"] + " x"} if i == 0 else r for i, r in enumerate(rows)]
    assert run(other_text, collate)["resumed_from"] == 0          # the corpus changed
    with pytest.raises(KeyboardInterrupt):
        run(rows, collate, after_step=stop_at_3)
    assert run(rows, WhisperCollator(processor, "hi"))["resumed_from"] == 0  # the labels changed
    with pytest.raises(KeyboardInterrupt):
        run(rows, collate, after_step=stop_at_3)
    torch.manual_seed(1)  # another base model (e.g. a retrained pretrain) with the same config and paths
    other_base = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    assert train(other_base, rows, collate, _cfg(), tmp_path / "ck", tmp_path / "l.csv")["resumed_from"] == 0
    with pytest.raises(KeyboardInterrupt):
        run(rows, collate, after_step=stop_at_3)
    assert run(rows, WhisperCollator(processor, "en"))["resumed_from"] == 3  # the same: resumed


def test_nan_loss_stops_with_the_step(processor, rows, tmp_path):
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    with pytest.raises(TrainingError, match="step 0: loss is nan"):
        train(model, rows, WhisperCollator(processor, "en"), _cfg(), tmp_path / "c", tmp_path / "c.csv",
              extra_loss=lambda m, b, o: torch.tensor(float("nan")))


def test_bad_train_params_are_named():
    with pytest.raises(ValueError, match=r"train\.learning_rate: unknown key"):
        TrainConfig.from_params({"max_steps": 3, "batch_size": 2, "lr": 0.1, "learning_rate": 1}, 0)
    with pytest.raises(ValueError, match="train.lr|'lr' must be float"):
        TrainConfig.from_params({"max_steps": 3, "batch_size": 2, "lr": "fast"}, 0)
