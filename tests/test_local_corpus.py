"""The local recordings loader: tiny corpora written here with soundfile, plus 3 real utterances."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrcompress.data.audio import TARGET_SR, AudioError
from asrcompress.data.local_corpus import CorpusError, load_local_corpus
from asrcompress.data.schema import corpus_features

REAL_TEST_OTHER = Path(__file__).resolve().parents[2] / "shared" / "realspeech" / "en_librispeech_test_other"

# id -> (seconds, sampling rate, channels, format); texts are raw (case, punctuation kept)
CLIPS: dict[str, tuple[float, int, int, str]] = {
    "spk1-001": (0.50, 16_000, 1, "flac"),
    "spk1-002": (0.40, 16_000, 1, "wav"),
    "spk2-001": (0.60, 44_100, 1, "flac"),
    "spk2-002": (0.30, 16_000, 2, "wav"),
    "spk3-001": (0.25, 16_000, 1, "flac"),
}
TEXTS = {
    "spk1-001": "Hello, World!",
    "spk1-002": "  two spaces before",
    "spk2-001": "UPPER case text",
    "spk2-002": "naïve café",
    "spk3-001": "the end.",
}


def _clip(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.01 * rng.standard_normal(t.size)
    return np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono


def write_clip(path: Path, seconds: float, sr: int = TARGET_SR, channels: int = 1, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _clip(seconds, sr, channels, seed).astype(np.float32), sr)


def make_corpus(root: Path, clips: Mapping[str, tuple[float, int, int, str]] = CLIPS,
                texts: Mapping[str, str] | None = TEXTS, manifest: list[dict[str, str]] | None = None) -> Path:
    """``root/audio/<id>.<fmt>``, ``transcripts.tsv`` (unless ``texts`` is None), optional manifest."""
    for k, (item_id, (seconds, sr, channels, fmt)) in enumerate(clips.items()):
        write_clip(root / "audio" / f"{item_id}.{fmt}", seconds, sr, channels, seed=k)
    if texts is not None:
        (root / "transcripts.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in texts.items()), encoding="utf-8")
    if manifest is not None:
        header = list(manifest[0])
        lines = ["\t".join(header)] + ["\t".join(row[h] for h in header) for row in manifest]
        (root / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def manifest_rows(clips: Mapping[str, tuple[float, int, int, str]] = CLIPS, **extra: Mapping[str, str]
                  ) -> list[dict[str, str]]:
    rows = [{"id": i, "file": f"audio/{i}.{fmt}", "duration_s": f"{s:.3f}", "orig_sr": str(sr)}
            for i, (s, sr, _, fmt) in clips.items()]
    for col, values in extra.items():
        for row in rows:
            row[col] = values[row["id"]]
    return rows


def many_clips(n: int) -> tuple[dict[str, tuple[float, int, int, str]], dict[str, str]]:
    clips = {f"s{k % 3}-{k:03d}": (0.1, TARGET_SR, 1, "flac") for k in range(n)}
    return clips, {i: f"utterance {i}" for i in clips}


# --------------------------------------------------------------------------------------- happy path
def test_happy_path_rows_features_durations_speakers(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "corpus")
    ds, stats = load_local_corpus(root, language="en", speaker_from_id="dash")
    assert list(ds) == ["test"]
    test = ds["test"]
    assert test.features == corpus_features()
    assert list(test["id"]) == sorted(CLIPS)
    rows = {r["id"]: r for r in test}
    for item_id, (seconds, _, _, _) in CLIPS.items():
        row = rows[item_id]
        assert row["text"] == TEXTS[item_id]  # raw: case, punctuation, leading spaces kept
        assert row["language"] == "en"
        assert row["speaker"] == item_id.split("-")[0]
        assert row["audio"]["sampling_rate"] == TARGET_SR
        assert len(row["audio"]["array"]) == round(seconds * TARGET_SR)
        assert row["duration"] == pytest.approx(seconds, abs=1e-3)
    assert stats["counts"] == {"test": 5}
    assert stats["utterances"] == 5
    assert stats["seconds"] == pytest.approx(sum(c[0] for c in CLIPS.values()), abs=1e-2)
    assert stats["test"]["speakers"] == 3
    assert stats["resampled"] == 1 and stats["resampled_from_hz"] == {"44100": 1}
    assert stats["downmixed"] == 1 and stats["downmixed_from_channels"] == {"2": 1}
    assert stats["directory"] == str(root.resolve())
    assert stats["has_manifest"] is False


def test_resampled_clip_keeps_its_pitch(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", clips={"a-1": (0.5, 44_100, 1, "flac")}, texts={"a-1": "x"})
    wave = np.asarray(load_local_corpus(root, language="en")[0]["test"][0]["audio"]["array"])
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * TARGET_SR / wave.size
    assert peak_hz == pytest.approx(220, abs=4)


def test_manifest_speaker_column_and_durations(tmp_path: Path) -> None:
    speakers = {i: f"reader{k % 2}" for k, i in enumerate(CLIPS)}
    root = make_corpus(tmp_path / "c", manifest=manifest_rows(speaker=speakers))
    ds, stats = load_local_corpus(root, language="fr", speaker_from_id="dash")
    assert dict(zip(list(ds["test"]["id"]), list(ds["test"]["speaker"]), strict=True)) == speakers
    assert stats["has_manifest"] is True and stats["speakers"] == 2


def test_speaker_unknown_without_manifest_column(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", manifest=manifest_rows())
    ds, _ = load_local_corpus(root, language="en")
    assert set(ds["test"]["speaker"]) == {"unknown"}


def test_max_items_takes_first_sorted_ids(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c")
    ds, stats = load_local_corpus(root, language="en", max_items=2)
    assert list(ds["test"]["id"]) == sorted(CLIPS)[:2]
    assert stats["items_available"] == 5 and stats["items_loaded"] == 2


# ------------------------------------------------------------------------------------------- splits
def test_seeded_splits_deterministic_disjoint_covering(tmp_path: Path) -> None:
    clips, texts = many_clips(20)
    root = make_corpus(tmp_path / "c", clips=clips, texts=texts)
    spec = {"train": 0.6, "dev": 0.2, "test": 0.2}
    a, stats = load_local_corpus(root, language="en", splits=spec, seed=3)
    b, _ = load_local_corpus(root, language="en", splits=spec, seed=3)
    c, _ = load_local_corpus(root, language="en", splits=spec, seed=4)
    assert list(a) == ["train", "dev", "test"]
    assert stats["counts"] == {"train": 12, "dev": 4, "test": 4} and stats["unassigned"] == 0
    ids = {s: list(a[s]["id"]) for s in a}
    assert ids == {s: list(b[s]["id"]) for s in b}
    assert ids != {s: list(c[s]["id"]) for s in c}
    assert all(ids[s] == sorted(ids[s]) for s in ids)
    assert set(ids["train"]).isdisjoint(ids["dev"]) and set(ids["train"]).isdisjoint(ids["test"])
    assert set(ids["dev"]).isdisjoint(ids["test"])
    assert sorted(ids["train"] + ids["dev"] + ids["test"]) == sorted(clips)
    for s in a:
        assert a[s].features == corpus_features()


def test_split_counts_rest_and_uneven_fractions(tmp_path: Path) -> None:
    clips, texts = many_clips(7)
    root = make_corpus(tmp_path / "c", clips=clips, texts=texts)
    _, stats = load_local_corpus(root, language="en", splits={"train": "rest", "dev": 2, "test": "1"})
    assert stats["counts"] == {"train": 4, "dev": 2, "test": 1}
    _, stats = load_local_corpus(root, language="en", splits={"train": 0.8, "dev": 0.1, "test": 0.1})
    assert stats["counts"] == {"train": 5, "dev": 1, "test": 1}  # largest remainders: 5.6, 0.7, 0.7
    _, stats = load_local_corpus(root, language="en", splits={"dev": 2, "test": "50%"})
    assert stats["counts"] == {"dev": 2, "test": 4} and stats["unassigned"] == 1


def test_empty_split_exists_with_features(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c")
    ds, stats = load_local_corpus(root, language="en", splits={"train": 1.0, "dev": 0.0, "test": 0})
    assert list(ds) == ["train", "dev", "test"]
    assert len(ds["train"]) == 5
    for split in ("dev", "test"):
        assert len(ds[split]) == 0
        assert ds[split].features == corpus_features()
        assert list(ds[split]["id"]) == []
        assert stats[split]["utterances"] == 0 and stats[split]["seconds"] == 0.0


def test_max_items_zero_gives_empty_splits(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c")
    ds, stats = load_local_corpus(root, language="en", max_items=0)
    assert len(ds["test"]) == 0 and ds["test"].features == corpus_features()


# ---------------------------------------------------------------------------------------- unlabelled
def test_unlabelled_with_manifest_only(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", texts=None, manifest=manifest_rows())
    ds, stats = load_local_corpus(root, language="en", labelled=False, speaker_from_id="dash")
    assert list(ds["test"]["id"]) == sorted(CLIPS)
    assert set(ds["test"]["text"]) == {""}
    assert stats["labelled"] is False and stats["resampled"] == 1


def test_unlabelled_ids_from_file_stems(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", texts=None)
    ds, _ = load_local_corpus(root, language="en", labelled=False, splits={"train": 0.6, "test": 0.4})
    assert sorted(list(ds["train"]["id"]) + list(ds["test"]["id"])) == sorted(CLIPS)
    assert set(ds["train"]["text"]) == {""}


# -------------------------------------------------------------------------------------------- errors
def _raises(root: Path, *fragments: str, exc: type[Exception] = CorpusError, **kwargs) -> None:
    kwargs.setdefault("language", "en")
    with pytest.raises(exc) as info:
        load_local_corpus(root, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    for frag in (str(root), *fragments):
        assert frag in msg, f"{frag!r} not in {msg!r}"


def test_error_missing_directory_says_layout(tmp_path: Path) -> None:
    _raises(tmp_path / "nowhere", "not found", "audio/<id>.flac", "transcripts.tsv")


def test_error_no_audio_folder(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    _raises(tmp_path / "c", "no 'audio/' folder")


def test_error_no_audio_files(tmp_path: Path) -> None:
    (tmp_path / "c" / "audio").mkdir(parents=True)
    _raises(tmp_path / "c", "no audio files")


def test_error_transcripts_missing_when_labelled(tmp_path: Path) -> None:
    _raises(make_corpus(tmp_path / "c", texts=None), "transcripts.tsv not found", "labelled=False")


@pytest.mark.parametrize("line, fragment", [
    ("spk1-001 no tab here", "line 2: no tab"),
    ("spk1-001\t   ", "line 2: empty text for id 'spk1-001'"),
    ("spk1-002\tagain", "line 2: duplicate id 'spk1-002'"),
])
def test_error_bad_transcript_line(tmp_path: Path, line: str, fragment: str) -> None:
    root = make_corpus(tmp_path / "c", texts=None)
    rest = [f"{i}\t{t}" for i, t in TEXTS.items() if i != "spk1-001"]
    (root / "transcripts.tsv").write_text("\n".join([rest[0], line, *rest[1:]]) + "\n", encoding="utf-8")
    _raises(root, "transcripts.tsv", fragment)


def test_error_transcript_without_audio(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", texts={**TEXTS, "ghost-001": "boo"})
    _raises(root, "have no audio file", "ghost-001")


def test_error_audio_without_transcript(tmp_path: Path) -> None:
    texts = {i: t for i, t in TEXTS.items() if i != "spk2-001"}
    _raises(make_corpus(tmp_path / "c", texts=texts), "no transcript", "spk2-001.flac", "spk2-001")


def test_error_duplicate_audio_stems(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c")
    write_clip(root / "audio" / "spk1-001.wav", 0.2)
    _raises(root, "duplicate id 'spk1-001'", "spk1-001.flac", "spk1-001.wav")


def test_error_duplicate_manifest_id(tmp_path: Path) -> None:
    rows = manifest_rows()
    _raises(make_corpus(tmp_path / "c", manifest=[*rows, rows[0]]), "manifest.tsv line 7",
            "duplicate id 'spk1-001'")


def test_error_manifest_file_missing(tmp_path: Path) -> None:
    rows = manifest_rows()
    rows[1]["file"] = "audio/elsewhere.flac"
    _raises(make_corpus(tmp_path / "c", manifest=rows), "manifest.tsv line 3", "audio/elsewhere.flac",
            "spk1-002")


def test_error_audio_not_in_manifest(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", manifest=manifest_rows()[1:])
    _raises(root, "not listed in manifest.tsv", "spk1-001.flac")


def test_error_manifest_duration_disagrees(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", manifest=manifest_rows())
    write_clip(root / "audio" / "spk2-002.wav", 0.1, channels=2)  # "truncated" from 0.3 s
    _raises(root, "audio/spk2-002.wav", "spk2-002", "duration_s 0.300", "truncated")


@pytest.mark.parametrize("kind, fragment", [
    ("garbage", "cannot decode"),
    ("empty", "empty or shorter"),
    ("silent", "silent"),
    ("nan", "NaN"),
])
def test_error_unusable_audio_names_file(tmp_path: Path, kind: str, fragment: str) -> None:
    root = make_corpus(tmp_path / "c")
    bad = root / "audio" / "spk3-001.flac"
    bad.unlink()
    bad = bad.with_suffix(".wav")
    if kind == "garbage":
        bad.write_bytes(b"this is not audio at all" * 20)
    else:
        wave = {"empty": np.zeros(0), "silent": np.zeros(4000),
                "nan": np.where(np.arange(4000) == 7, np.nan, 0.1)}[kind]
        sf.write(bad, wave.astype(np.float32), TARGET_SR, subtype="FLOAT")
    _raises(root, "audio/spk3-001.wav", "spk3-001", fragment, exc=AudioError)


@pytest.mark.parametrize("splits, fragment", [
    ({"train": 0.8, "test": 0.3}, "sum to"),
    ({"train": 4, "test": 2}, "ask for 6 items but only 5"),
    ({"train": 1.5}, "not in [0, 1]"),
    ({"train": -1}, "negative"),
    ({"train": "most"}, "expected a fraction"),
    ({"train": "rest", "test": "rest"}, "both 'rest'"),
    ({}, "splits is empty"),
])
def test_error_bad_splits(tmp_path: Path, splits: dict, fragment: str) -> None:
    _raises(make_corpus(tmp_path / "c"), fragment, splits=splits)


def test_error_speaker_from_dash_without_dash(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "c", clips={"nodash": (0.2, TARGET_SR, 1, "flac")}, texts={"nodash": "x"})
    _raises(root, "'nodash'", "speaker_from_id='dash'", speaker_from_id="dash")
    _raises(root, "speaker_from_id must be", speaker_from_id="underscore")


# -------------------------------------------------------------------------------------------- real data
def test_real_librispeech_test_other_three_items() -> None:
    if not REAL_TEST_OTHER.is_dir():
        pytest.skip(f"real recordings not available: {REAL_TEST_OTHER} is absent (see shared/realspeech)")
    start = time.perf_counter()
    ds, stats = load_local_corpus(REAL_TEST_OTHER, language="en", max_items=3, speaker_from_id="dash")
    elapsed = time.perf_counter() - start
    print(f"real 3-item load: {elapsed:.2f} s")
    test = ds["test"]
    assert len(test) == 3 and test.features == corpus_features()
    assert stats["items_available"] == 100 and stats["resampled"] == 0 and stats["downmixed"] == 0
    assert list(test["id"]) == sorted(test["id"]) and test[0]["id"] == "ls_1688-142285-0000"
    assert set(test["speaker"]) == {"ls_1688"}
    assert test[0]["text"].startswith("THERE'S IRON THEY SAY")
    assert all(1.0 < d < 35.0 for d in test["duration"])
    assert elapsed < 30
