"""The synthesised corpora: text grammar, espeak-ng audio, the common schema, bad input."""

import random

import numpy as np
import pytest

from asrcompress.data.audio import AudioError, check_audio, load_audio, resample
from asrcompress.data.corpus import build_synthetic_corpus
from asrcompress.data.schema import corpus_features
from asrcompress.data.synth import SynthesisError, VoiceSettings, add_noise, draw_voice, synthesise
from asrcompress.data.text_gen import english_number, make_sentences, vocabulary

SYNTH = dict(rate_wpm=[140, 200], pitch=[30, 70], gain=[0.3, 1.0], noise_prob=0.5, snr_db=20)


@pytest.mark.parametrize("lang", ["en", "hi", "bm"])
def test_sentences_split_disjoint_and_vocabulary_large(lang):
    s = make_sentences(lang, 300, 40, 40, seed=3)
    assert len(s.train) == 300 and len(s.dev) == 40 and len(s.test) == 40
    assert not set(s.test) & set(s.train) and not set(s.dev) & set(s.train)
    assert len(vocabulary(lang)) >= 50
    # held-out sentences are new combinations of (mostly) training words
    train_words = {w for t in s.train for w in t.split()}
    test_words = [w for t in s.test for w in t.split()]
    assert np.mean([w in train_words for w in test_words]) > 0.95


def test_sentences_are_seeded():
    assert make_sentences("hi", 50, 5, 5, seed=1) == make_sentences("hi", 50, 5, 5, seed=1)
    assert make_sentences("hi", 50, 5, 5, seed=1) != make_sentences("hi", 50, 5, 5, seed=2)


def test_digits_appear_as_words_and_numerals():
    en = make_sentences("en", 400, 0, 0, seed=0).train
    assert any(any(c.isdigit() for c in t) for t in en)
    assert any("twenty" in t or "thirty" in t for t in en)
    hi = make_sentences("hi", 400, 0, 0, seed=0).train
    assert any(any("०" <= c <= "९" for c in t) for t in hi)
    assert english_number(105) == "one hundred and five" and english_number(23) == "twenty three"


def test_too_many_sentences_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct sentences"):
        make_sentences("en", 20000, 0, 0, seed=0, max_tries_factor=1)


@pytest.mark.parametrize("lang,text", [("en", "the red cat found 23 apples"), ("hi", "राम बाज़ार जाता है।"),
                                       ("bm", "muso ye malo san sugu la lundi")])
def test_synthesise_produces_speech_at_16k(lang, text):
    voice = VoiceSettings("f4", 170, 50, 50, 0.8, None)
    audio = synthesise(text, lang, voice, np.random.default_rng(0), "utt-1", frozenset({"lundi"}))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < audio.size / 16000 < 5.0
    assert np.isclose(np.abs(audio).max(), 0.8, atol=1e-3)
    # speech has energy in the voice band, not just DC
    spec = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / 16000)
    assert spec[(freqs > 100) & (freqs < 4000)].sum() > 0.5 * spec.sum()


def test_voice_variation_changes_audio_and_noise_respects_snr():
    rng = random.Random(0)
    v1 = draw_voice(rng, (140, 200), (30, 70), (0.3, 1.0), 0.0, 20)
    v2 = VoiceSettings(v1.variant, v1.rate_wpm + 40, v1.pitch, v1.pitch_range, v1.gain, None)
    a1 = synthesise("the quiet river", "en", v1, np.random.default_rng(0), "a")
    a2 = synthesise("the quiet river", "en", v2, np.random.default_rng(0), "b")
    assert a2.size < a1.size  # faster speech is shorter
    noisy = add_noise(a1, 10.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(a1**2) / np.mean((noisy - a1) ** 2))
    assert 9.5 < snr < 10.5


def test_empty_text_names_the_item():
    with pytest.raises(SynthesisError, match="utt-7: empty text"):
        synthesise("   ", "en", VoiceSettings("m1", 170, 50, 50, 0.5, None), np.random.default_rng(0), "utt-7")


def test_corpus_schema_and_stats():
    ds, stats = build_synthetic_corpus("bm", {"train": 12, "dev": 3, "test": 3}, 5, SYNTH, max_seconds=3.75)
    assert set(ds) == {"train", "dev", "test"}
    assert ds["train"].features == corpus_features()
    row = ds["test"][0]
    assert row["audio"]["sampling_rate"] == 16000 and row["language"] == "bm"
    assert abs(len(row["audio"]["array"]) / 16000 - row["duration"]) < 1e-3
    assert stats["train"]["utterances"] + stats["dropped_too_long"] >= 12
    again, _ = build_synthetic_corpus("bm", {"train": 12, "dev": 3, "test": 3}, 5, SYNTH, max_seconds=3.75)
    # same texts and voices; bit-identical audio across processes is checked below (espeak keeps
    # some state between calls inside one process)
    assert again["test"]["text"] == ds["test"]["text"] and again["test"]["speaker"] == ds["test"]["speaker"]


def test_audio_checks_name_the_item(tmp_path):
    with pytest.raises(AudioError, match="clip-9: sampling rate 22050"):
        check_audio(np.ones(22050, np.float32), 22050, "clip-9")
    with pytest.raises(AudioError, match="clip-9: audio is empty"):
        check_audio(np.zeros(0, np.float32), 16000, "clip-9")
    with pytest.raises(AudioError, match="NaN"):
        check_audio(np.full(1600, np.nan, np.float32), 16000, "clip-9")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match="broken.wav: cannot decode"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(empty)


def test_load_audio_resamples_a_file(tmp_path):
    import soundfile as sf

    t = np.arange(44100) / 44100
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 44100)
    audio = load_audio(tmp_path / "tone.wav")
    assert audio.size == 16000
    peak = np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / audio.size
    assert abs(peak - 440) < 2
    assert resample(audio, 16000, 16000) is audio or np.array_equal(resample(audio, 16000, 16000), audio)


def test_synthesis_is_reproducible_across_processes():
    import subprocess
    import sys

    code = ("import hashlib, numpy as np;"
            "from asrcompress.data.synth import synthesise, VoiceSettings;"
            "from asrcompress.data.synth import VOICE_VARIANTS;"
            "print([hashlib.md5(synthesise('क्या उसकी बहन river', 'hi', VoiceSettings(v, 170, 50, 50, 0.8, 20.0),"
            " np.random.default_rng(0), 'x').tobytes()).hexdigest() for v in VOICE_VARIANTS])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)}
    assert len(runs) == 1
