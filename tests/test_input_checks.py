"""Bad inputs refused with an error that names the item (issue 17, items 4 and 5; issue 19, item 4)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import OFFLINE_DIMS, load_stage, make_offline_rows, make_tiny_whisper

from asrcompress.compress.components import ComponentError, tensor_ratios
from asrcompress.compress.p3_oneshot import plan_points, scale_config
from asrcompress.config import ParamError, load_params
from asrcompress.data.audio import AudioError, check_audio, load_audio
from asrcompress.data.corpus import build_synthetic_corpus
from asrcompress.data.schema import corpus_features
from asrcompress.inference import transcribe_whisper
from asrcompress.models.whisper import build_model
from asrcompress.train.collate import CTCCollator, WhisperCollator

SYNTH = dict(rate_wpm=[140, 200], pitch=[30, 70], gain=[0.3, 1.0], noise_prob=0.5, snr_db=20)

BAD_AUDIO = {
    "nan": np.array([0.1, np.nan, 0.2] * 100, np.float32),
    "inf": np.array([0.1, np.inf, 0.2] * 100, np.float32),
    "empty": np.zeros(0, np.float32),
    "stereo": np.full((2, 300), 0.1, np.float32),
}


def bad_rows(kind: str, window: int) -> list[dict]:
    rows = make_offline_rows(3)
    arr = np.full(window + 1, 0.1, np.float32) if kind == "too_long" else BAD_AUDIO[kind]
    rows[1] = {**rows[1], "id": "utt-bad", "audio": {"array": arr, "sampling_rate": 16000}}
    return rows


# ---------------------------------------------------------------------------------------------- item 4
@pytest.mark.parametrize("kind", [*BAD_AUDIO, "too_long"])
def test_whisper_collator_refuses_bad_audio_naming_the_row(offline_processor, kind):
    rows = bad_rows(kind, offline_processor.feature_extractor.n_samples)
    with pytest.raises(ValueError, match="utt-bad"):
        WhisperCollator(offline_processor, "en")(rows)


@pytest.mark.parametrize("kind", list(BAD_AUDIO))
def test_ctc_collator_refuses_bad_audio_naming_the_row(offline_processor, kind):
    from transformers import Wav2Vec2FeatureExtractor

    class Proc:  # only the feature extractor is reached before the audio check fails
        feature_extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        tokenizer = None

    with pytest.raises(ValueError, match="utt-bad"):
        CTCCollator(Proc())(bad_rows(kind, 16000))


def test_whisper_collator_refuses_labels_longer_than_the_decoder(offline_processor):
    rows = make_offline_rows(2)
    rows[1] = {**rows[1], "id": "utt-long-text", "text": " ".join([rows[1]["text"]] * 20)}
    WhisperCollator(offline_processor, "en")(rows[:1])  # a short transcript passes
    with pytest.raises(ValueError, match=r"utt-long-text: label sequence is \d+ tokens.*max_target_positions = 48"):
        WhisperCollator(offline_processor, "en", max_target_positions=48)(rows)


def test_whisper_collator_batches_unchanged_by_the_checks(offline_processor):
    rows = make_offline_rows(4)
    a = WhisperCollator(offline_processor, "en")(rows)
    b = WhisperCollator(offline_processor, "en", max_target_positions=48)(rows)
    assert all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y) -> bool:
    return x.shape == y.shape and bool((x == y).all())


@pytest.mark.parametrize("kind", [*BAD_AUDIO, "too_long"])
def test_transcribe_refuses_bad_audio_naming_the_row(offline_processor, kind):
    model = build_model(OFFLINE_DIMS, offline_processor.tokenizer, 1)
    rows = bad_rows(kind, offline_processor.feature_extractor.n_samples)
    with pytest.raises(AudioError, match="utt-bad"):
        transcribe_whisper(model, offline_processor, rows, "en", progress=False)


def wav_bytes(data: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, 16000, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_truncated_wav_is_refused_naming_the_file(tmp_path):
    raw = wav_bytes((0.5 * np.sin(np.arange(16000) / 10)).astype(np.float32))
    assert load_audio(raw).size == 16000  # the whole file passes
    for cut in (1, 2, 1000, len(raw) - 50):
        path = tmp_path / f"cut{cut}.wav"
        path.write_bytes(raw[:-cut])
        with pytest.raises(AudioError, match=rf"cut{cut}\.wav: truncated audio file"):
            load_audio(path)
        with pytest.raises(AudioError, match="clip-7: truncated"):
            load_audio(raw[:-cut], item="clip-7")


def test_unscaled_pcm_is_refused_naming_the_item(tmp_path):
    pcm = (10000 * np.sin(np.arange(1600) / 10)).astype(np.int16)
    with pytest.raises(AudioError, match="clip-3: audio has dtype int16"):
        check_audio(pcm, 16000, "clip-3")
    with pytest.raises(AudioError, match=r"clip-3: audio peak \d+ is beyond"):
        check_audio(pcm.astype(np.float32), 16000, "clip-3")
    assert check_audio(pcm.astype(np.float32) / 32768, 16000, "clip-3").dtype == np.float32
    path = tmp_path / "unscaled.wav"
    path.write_bytes(wav_bytes(pcm.astype(np.float32), subtype="FLOAT"))
    with pytest.raises(AudioError, match=r"unscaled\.wav: decoded samples reach \d+"):
        load_audio(path)


# ---------------------------------------------------------------------------------------------- item 5
def test_duplicate_yaml_keys_are_refused_at_any_depth(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: smoke\nseed: 1\nseed: 2\n")
    with pytest.raises(ParamError, match=r"duplicate key 'seed' \(lines 2 and 3\)"):
        load_params(path)
    path.write_text("profile: smoke\ntrain:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\nother:\n  lr: 1\n")
    with pytest.raises(ParamError, match=r"duplicate key 'lr' \(lines 3 and 5\)"):
        load_params(path)
    path.write_text("profile: smoke\nc: {sizes: {train: 1, train: 2}}\n")
    with pytest.raises(ParamError, match="duplicate key 'train'"):
        load_params(path)
    path.write_text("profile: smoke\na: &base {x: 1, y: 2}\nb:\n  <<: *base\n  x: 3\n")
    assert load_params(path)["b"] == {"x": 3, "y": 2}  # a merge key overridden is not a duplicate


def test_the_project_params_load_as_before():
    with open("params.yaml") as fh:
        raw = yaml.safe_load(fh)
    raw.pop("paper_overrides")
    assert load_params("params.yaml", profile="smoke") == {**raw, "profile": "smoke"}


def write_params(tmp_path, sizes: str, window: int = 4) -> None:
    text = (f"profile: smoke\nseed: 1\ncorpora:\n  en:\n    source: synth\n    language: en\n    whisper_language: en\n"
            f"    normalizer: english\n    sizes: {sizes}\n"
            f"whisper:\n  source: scratch\n  chunk_length_s: {window}\n  attn_implementation: sdpa\n"
            f"  dims: {{d_model: 8, encoder_layers: 1, decoder_layers: 1, attention_heads: 2, ffn_dim: 8, "
            f"max_target_positions: 8}}\nsynth: {SYNTH}\n")
    (tmp_path / "params.yaml").write_text(text)


@pytest.mark.parametrize("sizes,window,match", [
    ("{train: -1, dev: 1, test: 1}", 4, r"corpora\.en\.sizes\.train: must be >= 0 for a synthetic corpus, got -1"),
    ("{train: 1, dev: 1, test: -5}", 4, r"corpora\.en\.sizes\.test: must be >= 0"),
    ("{train: 1, dev: 1, test: 1.5}", 4, r"corpora\.en\.sizes\.test: must be int"),
    ("{train: 1, dev: 1, test: 1}", 0, r"whisper\.chunk_length_s: must be >= 1"),
    ("{train: 1, dev: 1, test: 1}", -2, r"whisper\.chunk_length_s: must be >= 1"),
])
def test_prepare_refuses_bad_sizes_and_window(tmp_path, monkeypatch, sizes, window, match):
    write_params(tmp_path, sizes, window)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=match):
        load_stage("prepare").main("en", str(tmp_path / "out"), str(tmp_path / "stats.json"))
    assert not (tmp_path / "out").exists()


def test_synthetic_corpus_refuses_bad_sizes():
    for sizes in ({"train": -1, "dev": 0, "test": 0}, {"train": 0, "dev": 0}, {"train": 0, "dev": 1.0, "test": 0}):
        with pytest.raises(ValueError, match=r"sizes\.(train|dev|test): must be an int >= 0"):
            build_synthetic_corpus("en", sizes, 1, SYNTH, max_seconds=3.75)
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        build_synthetic_corpus("en", {"train": 0, "dev": 0, "test": 1}, 1, SYNTH, max_seconds=-0.25)


def test_an_empty_split_is_written_and_loads_back(tmp_path, monkeypatch):
    from datasets import load_from_disk

    from asrcompress.data.corpus import save_corpus

    write_params(tmp_path, "{train: 0, dev: 0, test: 2}")
    monkeypatch.chdir(tmp_path)
    load_stage("prepare").main("en", str(tmp_path / "out"), str(tmp_path / "stats.json"))
    ds = load_from_disk(str(tmp_path / "out"))
    assert {s: ds[s].num_rows for s in ds} == {"train": 0, "dev": 0, "test": 2}
    assert ds["train"].features == ds["dev"].features == corpus_features()
    again = tmp_path / "again"
    save_corpus(ds, str(again))  # non-empty splits are written as save_to_disk writes them
    ds.save_to_disk(str(tmp_path / "plain"))
    assert (again / "test" / "data-00000-of-00001.arrow").read_bytes() == \
        (tmp_path / "plain" / "test" / "data-00000-of-00001.arrow").read_bytes()


def test_p3_per_layer_entry_for_a_missing_layer_is_refused():
    model = make_tiny_whisper()  # 2 encoder, 2 decoder layers
    tensor_ratios(model, {}, {"enc_ffn": {0: 0.3, "1": 0.2}, "dec_ffn": [0.25, 0.45, 0.30]})  # all exist
    for spec, key in (({5: 0.3}, "5"), ({"2": 0.3}, "2"), ({-1: 0.3}, "-1"), ({"last": 0.3}, "last")):
        with pytest.raises(ComponentError, match=rf"per_layer\.enc_ffn\.{key}: no such layer.*layers 0-1"):
            tensor_ratios(model, {}, {"enc_ffn": spec})
    with pytest.raises(ComponentError, match=r"per_layer\.dec_ffn\.7"):
        plan_points(model, {"enc_ffn": 0.5}, {"dec_ffn": {7: 0.2}}, dec_self_attn_ratios=[],
                    last_encoder_ratio=None)


def test_p3_compare_scale_beyond_a_ratio_of_one_is_refused():
    r, pl = scale_config({"enc_ffn": 0.5, "conv": 0.3}, {"dec_ffn": [0.25, 0.45]}, 2.0)
    assert r == {"enc_ffn": 1.0, "conv": 0.6} and pl == {"dec_ffn": [0.5, 0.9]}
    with pytest.raises(ValueError, match=r"p3\.compare_sparsities: scale 2\.5 takes ratios\.enc_ffn = 0\.5 to 1\.25"):
        scale_config({"enc_ffn": 0.5}, None, 2.5)
    with pytest.raises(ValueError, match=r"p3\.compare_sparsities: scale 2\.5 takes per_layer\.dec_ffn\[1\]"):
        scale_config({}, {"dec_ffn": [0.25, 0.45]}, 2.5)
    with pytest.raises(ValueError, match=r"p3\.compare_sparsities: scale -1\.0 must be >= 0"):
        scale_config({"enc_ffn": 0.5}, None, -1.0)


def test_prepare_keeps_minus_one_for_hub_corpora(tmp_path, monkeypatch):
    """The paper profile asks hub corpora for ``sizes: -1`` (= every item): not refused."""
    from datasets import Dataset

    import asrcompress.data.hub_loaders as hub

    class Stats:
        def to_dict(self) -> dict:
            return {}

    asked = []

    def fake(source, split, max_items=None):
        asked.append(max_items)
        return Dataset.from_dict({k: [] for k in corpus_features()}, features=corpus_features()), Stats()

    monkeypatch.setattr(hub, "load_corpus_with_stats", fake)
    write_params(tmp_path, "{train: -1, dev: -1, test: -1}")
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("source: synth", "source: librispeech_other"))
    monkeypatch.chdir(tmp_path)
    load_stage("prepare").main("en", str(tmp_path / "out"), str(tmp_path / "stats.json"))
    assert asked == [-1, -1, -1]
