"""The paper profile's corpus loaders, offline: tiny local datasets with each hub's column names.

Adding a hub corpus spec to ``asrcompress.data.hub_loaders.CORPORA``: the tests run over every spec and
need one fixture entry, ``BUILDERS[<spec name>]``, a function ``(texts, audios=None) -> (rows, ids,
speakers, sampling_rate)`` returning a few rows in the hub's own column layout (see ``ls_rows``). Until
it exists each per-spec test fails saying so. ``TEXTS[<name>]`` (transcripts in the corpus's script) is
optional (default: ``DEFAULT_TEXTS``). The hub location each split is read from is checked against the
spec itself; ``EXPECTED_HUB_CALLS`` only pins the existing specs' locations, so a new spec needs no entry
there.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from datasets import Dataset, DatasetDict

from asrcompress.data import hub_loaders
from asrcompress.data.audio import TARGET_SR, AudioError
from asrcompress.data.hub_loaders import (
    CORPORA,
    CorpusError,
    CorpusSpec,
    common_voice_source,
    corpus_features,
    get_spec,
    load_corpus,
    load_corpus_with_stats,
)

MP3_OK = "MP3" in sf.available_formats()
CV_FORMAT = "MP3" if MP3_OK else "FLAC"
FREQS = (300.0, 440.0, 700.0)  # one sine per row; each must survive resampling


def sine(freq: float, sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    wave = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encode(wave: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


def peak_hz(wave: np.ndarray, sr: int = TARGET_SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sr)[np.argmax(spec)])


# Each builder returns (hub-format rows, expected per-row id, speaker, sampling rate, seconds).
def cv_rows(texts, audios=None):
    n = len(texts)
    paths = [f"common_voice_hi_{100 + i}.{CV_FORMAT.lower()}" for i in range(n)]
    audios = audios or [encode(sine(FREQS[i % 3], 48_000, 0.8 + 0.1 * i), 48_000, CV_FORMAT) for i in range(n)]
    rows = {"client_id": [f"c{i % 2}" * 8 for i in range(n)], "path": paths,
            "audio": [{"bytes": a, "path": p} for a, p in zip(audios, paths, strict=True)], "sentence": texts,
            "up_votes": [2] * n, "down_votes": [0] * n, "age": ["twenties"] * n, "gender": ["male"] * n,
            "accent": [""] * n, "locale": ["hi"] * n, "segment": [""] * n}
    return rows, [p.rsplit(".", 1)[0] for p in paths], rows["client_id"], 48_000


def ls_rows(texts, audios=None):
    n = len(texts)
    ids = [f"{1272 + i}-128104-{i:04d}" for i in range(n)]
    audios = audios or [encode(sine(FREQS[i % 3], 16_000, 0.8 + 0.1 * i), 16_000, "FLAC") for i in range(n)]
    rows = {"file": [f"{i}.flac" for i in ids], "audio": [{"bytes": a, "path": f"{i}.flac"} for a, i in zip(audios, ids, strict=True)],
            "text": texts, "speaker_id": [1272 + i for i in range(n)], "chapter_id": [128104] * n, "id": ids}
    return rows, ids, [str(1272 + i) for i in range(n)], 16_000


def ted_rows(texts, audios=None):
    n = len(texts)
    ids = [f"AaronHuey_2010X-{i:03d}" for i in range(n)]
    audios = audios or [encode(sine(FREQS[i % 3], 16_000, 0.8 + 0.1 * i), 16_000, "WAV") for i in range(n)]
    rows = {"audio": [{"bytes": a, "path": f"{i}.wav"} for a, i in zip(audios, ids, strict=True)], "text": texts,
            "speaker_id": ["AaronHuey_2010X"] * n, "gender": ["male"] * n, "file": ["AaronHuey_2010X.sph"] * n,
            "id": ids}
    return rows, ids, ["AaronHuey_2010X"] * n, 16_000


def bm_rows(texts, audios=None):
    n = len(texts)  # 44.1 kHz stereo: exercises downmixing and a non-integer-ratio resampling
    audios = audios or [encode(sine(FREQS[i % 3], 44_100, 0.8 + 0.1 * i, channels=2), 44_100, "WAV") for i in range(n)]
    rows = {"audio": [{"bytes": a, "path": f"seg_{i}.wav"} for i, a in enumerate(audios)], "text": texts,
            "duration": [0.8 + 0.1 * i for i in range(n)]}
    return rows, None, ["unknown"] * n, 44_100


BUILDERS = {"common_voice_11_hi": cv_rows, "librispeech_clean": ls_rows, "librispeech_other": ls_rows,
            "tedlium3": ted_rows, "bambara": bm_rows}
TEXTS = {"common_voice_11_hi": ["नमस्ते दुनिया", "यह एक परीक्षण है।", "  भारत  "],
         "librispeech_clean": ["HELLO WORLD", "IT'S A TEST", "THIRD ONE"],
         "librispeech_other": ["HELLO WORLD", "IT'S A TEST", "THIRD ONE"],
         "tedlium3": ["hello world", "it 's a <unk> test", "third one"],
         "bambara": ["i ni ce", "n bɛ taa so", "awɔ merci"]}


DEFAULT_TEXTS = ["hello world", "it is a test", "third one"]


def fixture(name: str):
    """The row builder and transcripts of spec ``name``; a spec without a builder fails naming what to add."""
    if name not in BUILDERS:
        spec = CORPORA[name]
        columns = [c for c in (spec.audio_column, spec.text_column, spec.speaker_column, spec.id_column) if c]
        pytest.fail(f"corpus spec {name!r} (hub_loaders.CORPORA) has no test fixture: add BUILDERS[{name!r}] to "
                    f"tests/test_hub_loaders.py, a function (texts, audios=None) -> (rows, ids, speakers, sr) "
                    f"building rows with the hub's columns {columns} (see ls_rows and the module docstring); "
                    f"TEXTS[{name!r}] is optional", pytrace=False)
    return BUILDERS[name], TEXTS.get(name, DEFAULT_TEXTS)


def test_registry_covers_all_corpora_and_params():
    missing, stale = sorted(set(CORPORA) - set(BUILDERS)), sorted(set(BUILDERS) - set(CORPORA))
    assert not missing, f"add BUILDERS entries (module docstring) for the corpus specs {missing}"
    assert not stale, f"BUILDERS entries {stale} name no corpus spec in hub_loaders.CORPORA: remove them"
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    for key, entry in params["paper_overrides"]["corpora"].items():
        assert entry["source"] in CORPORA, f"paper corpus {key}: {entry['source']} is not a registered spec"
    for spec in CORPORA.values():
        assert spec.description and spec.licence and "http" not in spec.description
        assert set(spec.column_mapping()) == set(corpus_features())
    assert "verif" in get_spec("bambara").verify.lower()
    with pytest.raises(CorpusError, match="unknown corpus spec 'nope'"):
        get_spec("nope")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_schema_resampling_and_mapping(name):
    build, texts = fixture(name)
    rows, ids, speakers, sr = build(texts)
    ds, stats = load_corpus_with_stats(name, "test", source=Dataset.from_dict(rows))
    assert ds.features == corpus_features()
    assert ds.column_names == list(corpus_features())
    assert len(ds) == 3 and stats.kept == 3 and stats.rows_read == 3 and stats.dropped_bad == 0
    assert ds["text"] == texts  # as given, not normalised or stripped
    assert ds["speaker"] == speakers
    assert ds["language"] == [CORPORA[name].language] * 3
    assert ds["id"] == (ids or [f"{name}-test-{i:07d}" for i in range(3)])
    for i, row in enumerate(ds.with_format("numpy")):
        wave = row["audio"]["array"]
        assert row["audio"]["sampling_rate"] == TARGET_SR and wave.dtype == np.float32 and wave.ndim == 1
        seconds = 0.8 + 0.1 * i
        assert wave.size == pytest.approx(seconds * TARGET_SR, rel=0.02 if CV_FORMAT == "MP3" else 0.002)
        assert row["duration"] == pytest.approx(wave.size / TARGET_SR, abs=1e-4)
        assert peak_hz(wave) == pytest.approx(FREQS[i], abs=3.0)
    assert stats.seconds == pytest.approx(sum(ds["duration"]), rel=1e-4)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corrupt_audio_names_the_item(name):
    build, texts = fixture(name)
    rows, ids, _, _ = build(texts)
    rows["audio"][1] = {"bytes": b"this is not audio", "path": "broken"}
    item = (ids or [f"{name}-test-{i:07d}" for i in range(3)])[1]
    with pytest.raises(AudioError, match=item):
        load_corpus(name, "test", source=Dataset.from_dict(rows))
    ds, stats = load_corpus_with_stats(name, "test", source=Dataset.from_dict(rows), drop_bad=True)
    assert len(ds) == 2 and item not in ds["id"]
    assert stats.dropped_bad_audio == 1 and stats.dropped_bad == 1 and stats.dropped_examples["bad_audio"] == [item]


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("bad_text", ["", "   \t"])
def test_empty_transcript_is_an_error_unless_dropped(name, bad_text):
    build, texts = fixture(name)
    texts = list(texts)
    texts[2] = bad_text
    rows, ids, _, _ = build(texts)
    item = (ids or [f"{name}-test-{i:07d}" for i in range(3)])[2]
    with pytest.raises(CorpusError, match=rf"{item}.*field 'text'"):
        load_corpus(name, "test", source=Dataset.from_dict(rows))
    ds, stats = load_corpus_with_stats(name, "test", source=Dataset.from_dict(rows), drop_bad=True)
    assert ds["id"] == (ids or [f"{name}-test-{i:07d}" for i in range(3)])[:2]
    assert stats.dropped_empty_text == 1 and stats.to_dict()["dropped_bad"] == 1


def test_tedlium_ignore_segments_are_dropped_not_errors():
    texts = ["hello world", "ignore_time_segment_in_scoring", "third one"]
    rows, ids, _, _ = ted_rows(texts)
    ds, stats = load_corpus_with_stats("tedlium3", "train", source=Dataset.from_dict(rows))
    assert ds["id"] == [ids[0], ids[2]] and "ignore_time_segment_in_scoring" not in ds["text"]
    assert stats.dropped_ignored == 1 and stats.dropped_bad == 0 and stats.kept == 2


def test_duration_limits_and_max_items():
    rows, ids, _, _ = ls_rows(["A", "B", "C"])  # 0.8, 0.9, 1.0 s
    ds, stats = load_corpus_with_stats("librispeech_clean", "train", source=Dataset.from_dict(rows),
                                       min_seconds=0.85, max_seconds=0.95)
    assert ds["id"] == [ids[1]] and stats.dropped_too_short == 1 and stats.dropped_too_long == 1
    empty, stats = load_corpus_with_stats("librispeech_clean", "train", source=Dataset.from_dict(rows),
                                          max_seconds=0.5)
    assert len(empty) == 0 and empty.features == corpus_features() and stats.dropped_too_long == 3
    ds = load_corpus("librispeech_clean", "train", source=Dataset.from_dict(rows), max_items=2)
    assert ds["id"] == ids[:2]
    assert len(load_corpus("librispeech_clean", "train", source=Dataset.from_dict(rows), max_items=-1)) == 3


def test_held_out_dev_is_speaker_disjoint_and_complements_train():
    n = 24
    audio = encode(sine(440.0, 48_000, 0.3), 48_000, CV_FORMAT)
    rows, _, _, _ = cv_rows([f"वाक्य {i}" for i in range(n)], audios=[audio] * n)
    rows["client_id"] = [f"speaker{i % 12}" for i in range(n)]
    source = DatasetDict({"train": Dataset.from_dict({k: v[:16] for k, v in rows.items()}),
                          "validation": Dataset.from_dict({k: v[16:] for k, v in rows.items()})})
    train = load_corpus("common_voice_11_hi", "train", source=source)
    dev = load_corpus("common_voice_11_hi", "dev", source=source)
    assert len(train) + len(dev) == n and not set(train["id"]) & set(dev["id"])
    assert not set(train["speaker"]) & set(dev["speaker"])
    held = get_spec("common_voice_11_hi").dev_held_out
    assert all(held.contains(s) for s in dev["speaker"]) and not any(held.contains(s) for s in train["speaker"])
    with pytest.raises(CorpusError, match=r"lacks hub split\(s\) \['test'\]"):
        load_corpus("common_voice_11_hi", "test", source=source)


def test_missing_column_points_at_the_spec_and_fix_is_one_field():
    rows, _, _, _ = bm_rows(TEXTS["bambara"])
    rows["transcription"] = rows.pop("text")
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['text'\].*CORPORA\['bambara'\]"):
        load_corpus("bambara", "test", source=Dataset.from_dict(rows))
    fixed = dataclasses.replace(get_spec("bambara"), text_column="transcription")
    assert load_corpus(fixed, "test", source=Dataset.from_dict(rows))["text"] == TEXTS["bambara"]


def test_duplicate_ids_are_an_error():
    rows, _, _, _ = ls_rows(["A", "B"])
    rows["id"] = ["same", "same"]
    with pytest.raises(CorpusError, match="duplicate id"):
        load_corpus("librispeech_clean", "test", source=Dataset.from_dict(rows))


def hub_calls(name: str) -> list[tuple[str, str | None, str]]:
    """What the loader must ask ``datasets.load_dataset`` for our train, dev and test splits, per the spec."""
    spec = CORPORA[name]
    return [(spec.hub_id, spec.hub_config(s), spec.hub_split(s)) for s in ("train", "dev", "test")]


EXPECTED_HUB_CALLS = {  # the existing specs' hub locations, pinned (a new spec needs no entry)
    "common_voice_11_hi": {"train": ("mozilla-foundation/common_voice_11_0", "hi", "train+validation"),
                           "dev": ("mozilla-foundation/common_voice_11_0", "hi", "train+validation"),
                           "test": ("mozilla-foundation/common_voice_11_0", "hi", "test")},
    "librispeech_clean": {"train": ("openslr/librispeech_asr", "clean", "train.100"),
                          "dev": ("openslr/librispeech_asr", "clean", "validation"),
                          "test": ("openslr/librispeech_asr", "clean", "test")},
    "librispeech_other": {"train": ("openslr/librispeech_asr", "clean", "train.100"),
                          "dev": ("openslr/librispeech_asr", "other", "validation"),
                          "test": ("openslr/librispeech_asr", "other", "test")},
    "tedlium3": {"train": ("LIUM/tedlium", "release3", "train"), "dev": ("LIUM/tedlium", "release3", "validation"),
                 "test": ("LIUM/tedlium", "release3", "test")},
    "bambara": {"train": ("RobotsMali/jeli-asr", "jeli-asr", "train"),
                "dev": ("RobotsMali/jeli-asr", "jeli-asr", "train"),
                "test": ("RobotsMali/jeli-asr", "jeli-asr", "test")},
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_without_source_the_hub_is_asked_for_the_right_split(name, monkeypatch):
    audio = encode(sine(440.0, 16_000, 0.2), 16_000, "WAV")
    build, _ = fixture(name)
    calls = []

    def fake_load_dataset(path, config=None, split=None, **kwargs):
        calls.append((path, config, split))
        rows, _, _, _ = build([f"text {i}" for i in range(6)], audios=[audio] * 6)
        return Dataset.from_dict(rows)

    monkeypatch.setattr(hub_loaders.datasets, "load_dataset", fake_load_dataset)
    sizes = {}
    for split in ("train", "dev", "test"):
        sizes[split] = len(load_corpus(name, split))
    assert calls == hub_calls(name)
    assert sizes["test"] == 6
    if CORPORA[name].dev_held_out is not None:
        assert sizes["train"] + sizes["dev"] == 6
    else:
        assert sizes["train"] == sizes["dev"] == 6


@pytest.mark.parametrize("name", sorted(EXPECTED_HUB_CALLS))
def test_existing_specs_read_their_pinned_hub_locations(name):
    assert hub_calls(name) == [EXPECTED_HUB_CALLS[name][s] for s in ("train", "dev", "test")]


def test_common_voice_release_directory_as_source(tmp_path):
    (tmp_path / "clips").mkdir()
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    for tsv, offset in (("train.tsv", 0), ("dev.tsv", 10), ("test.tsv", 20)):
        lines = [header]
        for i in range(2):
            clip = f"common_voice_hi_{offset + i}.{CV_FORMAT.lower()}"
            sf.write(tmp_path / "clips" / clip, sine(440.0, 48_000, 0.4), 48_000, format=CV_FORMAT)
            lines.append(f"spk{offset + i}\t{clip}\t\"उद्धरण\" वाक्य {i}\t2\t0\t\t\t\thi\t\n")
        (tmp_path / tsv).write_text("".join(lines), encoding="utf-8")
    source = common_voice_source(tmp_path)
    assert set(source) == {"train", "validation", "test"} and "accent" in source["train"].column_names
    test = load_corpus("common_voice_11_hi", "test", source=source)
    assert test["id"] == ["common_voice_hi_20", "common_voice_hi_21"]
    assert test["text"] == ['"उद्धरण" वाक्य 0', '"उद्धरण" वाक्य 1']
    train = load_corpus("common_voice_11_hi", "train", source=source)
    dev = load_corpus("common_voice_11_hi", "dev", source=source)
    assert len(train) + len(dev) == 4


def test_spec_validation():
    spec = get_spec("librispeech_clean")
    with pytest.raises(ValueError, match="same hub config and split"):
        dataclasses.replace(spec, dev_held_out=get_spec("bambara").dev_held_out)
    with pytest.raises(ValueError, match="no hub split"):
        CorpusSpec(name="x", hub_id="x/y", config=None, splits={"train": "train"}, text_column="t",
                   language="en", licence="-", description="-")
    with pytest.raises(CorpusError, match="unknown split 'valid'"):
        load_corpus("librispeech_clean", "valid", source=Dataset.from_dict(ls_rows(["A"])[0]))
