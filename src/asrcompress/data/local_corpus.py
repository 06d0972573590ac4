"""A local directory of real recordings, converted to the common corpus schema.

The directory (e.g. ``../shared/realspeech/en_librispeech_test_other``, or a user's own
recordings) has this layout::

    <dir>/audio/<id>.flac        one file per utterance (flac, wav, ... anything soundfile reads)
    <dir>/transcripts.tsv        "<id><TAB><text>" per line, no header (not needed with labelled=False)
    <dir>/manifest.tsv           optional; tab-separated with a header row that has an ``id`` column and
                                 optionally ``file`` (path relative to <dir>, e.g. audio/<id>.flac),
                                 ``duration_s`` (checked against the decoded audio) and ``speaker``

:func:`load_local_corpus` returns a ``DatasetDict`` whose splits have exactly the features of
:func:`~asrcompress.data.schema.corpus_features` (``id``, ``audio`` {16 kHz float32 array, sampling
rate}, ``text`` as written in transcripts.tsv, ``language``, ``speaker``, ``duration`` in seconds)
and a JSON-ready statistics dict.

Items: the manifest's ids when there is a manifest, else the stems of the files in ``audio/``.
Audio is decoded by :func:`~asrcompress.data.audio.load_audio` (soundfile, downmix to mono, any
rate -> 16 kHz; undecodable, empty, silent or non-finite audio is an
:class:`~asrcompress.data.audio.AudioError` naming the file); resampled and downmixed files are
counted in the statistics with their original rates and channel counts.

Nothing is dropped silently: every inconsistency is a :class:`CorpusError` (a ``ValueError``)
naming the directory and the file, line or id -- a missing directory or ``audio/`` folder, a
transcripts line without a tab or with empty text, a transcript without audio, audio without a
transcript, duplicate ids, a manifest row naming a missing file, an audio file the manifest does
not list, and a manifest ``duration_s`` more than :data:`DURATION_TOLERANCE_S` away from the
decoded duration (a truncated file).

Splits: ``splits=None`` puts everything in a single ``test`` split (an evaluation-only corpus);
otherwise each split gets a fraction (float), a count (int) or ``"rest"`` of the items, assigned
by a seeded shuffle of the sorted ids (same seed, same split). Every named split exists, an empty
one as an empty ``Dataset`` with the schema's features.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, DatasetDict

from asrcompress.data.audio import TARGET_SR, load_audio
from asrcompress.data.hub_loaders import UNKNOWN_SPEAKER, CorpusError
from asrcompress.data.schema import corpus_features

__all__ = ["DURATION_TOLERANCE_S", "EXPECTED_LAYOUT", "CorpusError", "load_local_corpus"]

log = logging.getLogger(__name__)

AUDIO_DIR = "audio"
TRANSCRIPTS = "transcripts.tsv"
MANIFEST = "manifest.tsv"
DURATION_TOLERANCE_S = 0.1
SPEAKER_FROM_ID = ("none", "dash")
REST = "rest"
EXPECTED_LAYOUT = (
    "expected layout: <dir>/audio/<id>.flac (or .wav, any format soundfile reads), "
    "<dir>/transcripts.tsv ('<id><TAB><text>' per line, no header; not needed with labelled=False), "
    "optional <dir>/manifest.tsv (tab-separated with a header: id, file, duration_s, speaker, ...)"
)
_RESERVED_STATS_KEYS = {
    "directory", "language", "labelled", "seed", "max_items", "items_available", "items_loaded",
    "unassigned", "counts", "utterances", "seconds", "hours", "speakers", "resampled",
    "resampled_from_hz", "downmixed", "downmixed_from_channels", "has_manifest",
}


@dataclass(frozen=True)
class _Item:
    id: str
    path: Path
    text: str
    speaker: str
    manifest_duration: float | None


# ------------------------------------------------------------------------------------------ reading
def _check_directory(root: Path) -> Path:
    if not root.is_dir():
        raise CorpusError(f"local corpus {root}: directory not found; {EXPECTED_LAYOUT}")
    audio_dir = root / AUDIO_DIR
    if not audio_dir.is_dir():
        raise CorpusError(f"local corpus {root}: no '{AUDIO_DIR}/' folder; {EXPECTED_LAYOUT}")
    return audio_dir


def _audio_files(root: Path, audio_dir: Path) -> dict[str, Path]:
    """id (file stem) -> path for every non-hidden file directly in ``audio/``."""
    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise CorpusError(f"local corpus {root}: duplicate id {path.stem!r}: audio files "
                              f"{by_stem[path.stem].name} and {path.name} in {AUDIO_DIR}/")
        by_stem[path.stem] = path
    return by_stem


def _read_lines(root: Path, path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise CorpusError(f"local corpus {root}: {path.name} is not UTF-8 ({exc})") from exc


def _read_transcripts(root: Path) -> dict[str, str]:
    """id -> raw text from transcripts.tsv (blank lines skipped; the text is kept as written)."""
    path = root / TRANSCRIPTS
    if not path.is_file():
        raise CorpusError(f"local corpus {root}: {TRANSCRIPTS} not found (pass labelled=False for "
                          f"audio without transcripts); {EXPECTED_LAYOUT}")
    texts: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(root, path), start=1):
        if not line.strip():
            continue
        where = f"local corpus {root}: {TRANSCRIPTS} line {lineno}"
        if "\t" not in line:
            raise CorpusError(f"{where}: no tab between id and text ({line[:60]!r}); "
                              "expected '<id><TAB><text>'")
        item_id, text = line.split("\t", 1)
        item_id = item_id.strip()
        if not item_id:
            raise CorpusError(f"{where}: empty id")
        if not text.strip():
            raise CorpusError(f"{where}: empty text for id {item_id!r}")
        if item_id in texts:
            raise CorpusError(f"{where}: duplicate id {item_id!r}")
        texts[item_id] = text
    return texts


def _read_manifest(root: Path) -> list[dict[str, str]] | None:
    """The manifest's rows (header -> cell), or ``None`` when there is no manifest."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    lines = [ln for ln in _read_lines(root, path) if ln.strip()]
    if not lines:
        raise CorpusError(f"local corpus {root}: {MANIFEST} is empty (it needs a header row with 'id')")
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = reader.fieldnames or []
    if "id" not in header:
        raise CorpusError(f"local corpus {root}: {MANIFEST} header {header} has no 'id' column")
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise CorpusError(f"local corpus {root}: {MANIFEST} line {lineno}: expected {len(header)} "
                              f"tab-separated fields ({header})")
        row["_line"] = str(lineno)
        rows.append(row)
    return rows


def _speaker(root: Path, item_id: str, manifest_speaker: str | None, speaker_from_id: str) -> str:
    if manifest_speaker:
        return manifest_speaker
    if speaker_from_id == "dash":
        if "-" not in item_id:
            raise CorpusError(f"local corpus {root}: id {item_id!r} has no '-' to take the speaker "
                              "from (speaker_from_id='dash'); use speaker_from_id='none' or a "
                              f"'speaker' column in {MANIFEST}")
        return item_id.split("-", 1)[0]
    return UNKNOWN_SPEAKER


def _collect_items(root: Path, audio_dir: Path, *, labelled: bool, speaker_from_id: str) -> list[_Item]:
    """Cross-check audio/, manifest.tsv and transcripts.tsv; the items sorted by id."""
    files = _audio_files(root, audio_dir)
    manifest = _read_manifest(root)
    entries: dict[str, tuple[Path, str | None, float | None]] = {}  # id -> (path, speaker, duration)
    if manifest is None:
        for item_id, path in files.items():
            entries[item_id] = (path, None, None)
    else:
        listed: set[Path] = set()
        for row in manifest:
            where = f"local corpus {root}: {MANIFEST} line {row['_line']}"
            item_id = row["id"].strip()
            if not item_id:
                raise CorpusError(f"{where}: empty id")
            if item_id in entries:
                raise CorpusError(f"{where}: duplicate id {item_id!r}")
            file = (row.get("file") or "").strip()
            if file:
                path = root / file
                if not path.is_file() and (audio_dir / file).is_file():
                    path = audio_dir / file  # a bare file name, relative to audio/
                if not path.is_file():
                    raise CorpusError(f"{where}: file {file!r} of id {item_id!r} not found (looked for "
                                      f"{root / file})")
            elif item_id in files:
                path = files[item_id]
            else:
                raise CorpusError(f"{where}: id {item_id!r} has no audio file in {audio_dir} "
                                  f"(and no 'file' column value)")
            duration = None
            if (row.get("duration_s") or "").strip():
                try:
                    duration = float(row["duration_s"])
                except ValueError:
                    raise CorpusError(f"{where}: duration_s {row['duration_s']!r} of id {item_id!r} is "
                                      "not a number") from None
            entries[item_id] = (path, (row.get("speaker") or "").strip() or None, duration)
            listed.add(path.resolve())
        unlisted = [p.name for p in files.values() if p.resolve() not in listed]
        if unlisted:
            raise CorpusError(f"local corpus {root}: {len(unlisted)} audio file(s) in {AUDIO_DIR}/ not "
                              f"listed in {MANIFEST}, e.g. {unlisted[:5]}; add them or remove them")
    if not entries:
        raise CorpusError(f"local corpus {root}: no audio files in {audio_dir}; {EXPECTED_LAYOUT}")

    texts: dict[str, str] = {}
    if labelled:
        texts = _read_transcripts(root)
        no_audio = sorted(set(texts) - set(entries))
        if no_audio:
            source = MANIFEST if manifest is not None else f"{AUDIO_DIR}/"
            raise CorpusError(f"local corpus {root}: {len(no_audio)} transcript id(s) in {TRANSCRIPTS} "
                              f"have no audio file (not in {source}), e.g. {no_audio[:5]}")
        no_text = sorted(set(entries) - set(texts))
        if no_text:
            examples = [entries[i][0].name for i in no_text[:5]]
            raise CorpusError(f"local corpus {root}: {len(no_text)} audio file(s) have no transcript in "
                              f"{TRANSCRIPTS}, e.g. {examples} (ids {no_text[:5]}); pass labelled=False "
                              "for audio without transcripts")
    return [_Item(id=i, path=entries[i][0], text=texts.get(i, ""),
                  speaker=_speaker(root, i, entries[i][1], speaker_from_id),
                  manifest_duration=entries[i][2])
            for i in sorted(entries)]


# ------------------------------------------------------------------------------------------- splits
def _split_sizes(splits: Mapping[str, int | float | str], n: int, root: Path) -> dict[str, int]:
    """Resolve fractions / counts / "rest" (at most one) to item counts summing to at most ``n``."""
    if not splits:
        raise CorpusError(f"local corpus {root}: splits is empty; pass None for a single test split")
    counts: dict[str, int] = {}
    fractions: dict[str, float] = {}
    rest: str | None = None
    for name, spec in splits.items():
        if not isinstance(name, str) or not name or name in _RESERVED_STATS_KEYS:
            raise CorpusError(f"local corpus {root}: invalid split name {name!r}")
        value: Any = spec
        if isinstance(value, str):
            text = value.strip().lower()
            if text == REST:
                if rest is not None:
                    raise CorpusError(f"local corpus {root}: splits {rest!r} and {name!r} are both 'rest'")
                rest = name
                continue
            try:
                value = float(text[:-1]) / 100 if text.endswith("%") else (
                    int(text) if text.lstrip("+").isdigit() else float(text))
            except ValueError:
                raise CorpusError(f"local corpus {root}: split {name!r} = {spec!r}: expected a fraction, "
                                  "a count, 'NN%' or 'rest'") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CorpusError(f"local corpus {root}: split {name!r} = {spec!r}: expected a fraction (float), "
                              "a count (int), 'NN%' or 'rest'")
        if isinstance(value, int):
            if value < 0:
                raise CorpusError(f"local corpus {root}: split {name!r} has a negative count {value}")
            counts[name] = value
        else:
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise CorpusError(f"local corpus {root}: split {name!r} fraction {value} is not in [0, 1] "
                                  "(give counts as integers)")
            fractions[name] = value
    total_fraction = sum(fractions.values())
    if total_fraction > 1.0 + 1e-6:
        raise CorpusError(f"local corpus {root}: split fractions {fractions} sum to {total_fraction:.4f} > 1")
    # largest-remainder rounding: fractions that sum to 1 cover all n items exactly
    exact = {k: f * n for k, f in fractions.items()}
    sizes = {k: math.floor(v) for k, v in exact.items()}
    target = min(n, round(total_fraction * n))
    by_remainder = sorted(exact, key=lambda k: exact[k] - sizes[k], reverse=True)
    for k in by_remainder[:max(0, target - sum(sizes.values()))]:
        sizes[k] += 1
    sizes.update(counts)
    used = sum(sizes.values())
    if used > n:
        raise CorpusError(f"local corpus {root}: splits {dict(splits)} ask for {used} items but only {n} "
                          "are loaded (check max_items)")
    if rest is not None:
        sizes[rest] = n - used
    return {name: sizes[name] for name in splits}


def _assign(ids: list[str], splits: Mapping[str, int | float | str] | None, seed: int,
            root: Path) -> tuple[dict[str, list[str]], int]:
    """Split name -> its ids (sorted), and how many ids no split took."""
    if splits is None:
        return {"test": list(ids)}, 0
    sizes = _split_sizes(splits, len(ids), root)
    order = sorted(ids)
    random.Random(f"asrcompress-local-split:{seed}").shuffle(order)
    out: dict[str, list[str]] = {}
    start = 0
    for name, size in sizes.items():
        out[name] = sorted(order[start:start + size])
        start += size
    return out, len(ids) - start


# ----------------------------------------------------------------------------------------- loading
def _empty_columns() -> dict[str, list]:
    return {k: [] for k in corpus_features()}


def load_local_corpus(directory: str | os.PathLike, *, language: str,
                      splits: Mapping[str, int | float | str] | None = None, seed: int = 0,
                      labelled: bool = True, max_items: int | None = None,
                      speaker_from_id: str = "none") -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Load a local recordings directory (layout in the module doc) in the common schema.

    ``language``: written to every row. ``splits``: ``None`` -> one ``test`` split with every item;
    else split name -> fraction (float in [0, 1]), count (int), ``"NN%"`` or ``"rest"``, filled in
    the mapping's order from a shuffle of the sorted ids seeded by ``seed`` (rows inside a split
    are sorted by id; items no split takes are left out and counted as ``unassigned``).
    ``labelled=False``: no transcripts.tsv needed, ``text`` is ``""``. ``max_items``: keep only the
    first N sorted ids before splitting (``None`` or negative: all); only those are decoded.
    ``speaker_from_id``: speaker when the manifest has no ``speaker`` value -- ``"none"``
    (``"unknown"``) or ``"dash"`` (the id up to its first ``-``, as LibriSpeech's ``1688-142285-0000``).

    Returns the ``DatasetDict`` and the statistics: per split ``utterances``, ``seconds``, ``hours``,
    ``mean_seconds``, ``max_seconds``, ``speakers``; in all ``counts``, ``utterances``, ``seconds``,
    ``resampled`` / ``resampled_from_hz`` ({rate: files}), ``downmixed`` /
    ``downmixed_from_channels`` ({channels: files}), ``directory``.
    Raises :class:`CorpusError` (or :class:`~asrcompress.data.audio.AudioError` for unusable audio),
    naming the directory and the file or id.
    """
    import soundfile as sf

    root = Path(directory)
    if not isinstance(language, str) or not language.strip():
        raise CorpusError(f"local corpus {root}: language must be a non-empty string, got {language!r}")
    if speaker_from_id not in SPEAKER_FROM_ID:
        raise CorpusError(f"local corpus {root}: speaker_from_id must be one of {SPEAKER_FROM_ID}, "
                          f"got {speaker_from_id!r}")
    audio_dir = _check_directory(root)
    items = _collect_items(root, audio_dir, labelled=labelled, speaker_from_id=speaker_from_id)
    available = len(items)
    if max_items is not None and 0 <= max_items < len(items):
        items = items[:max_items]
    by_id = {it.id: it for it in items}
    assignment, unassigned = _assign(list(by_id), splits, seed, root)

    features = corpus_features()
    resampled_from: Counter[int] = Counter()
    downmixed_from: Counter[int] = Counter()
    stats: dict[str, Any] = {
        "directory": str(root.resolve()), "language": language, "labelled": labelled, "seed": seed,
        "max_items": max_items, "has_manifest": (root / MANIFEST).is_file(), "items_available": available,
        "items_loaded": len(items), "unassigned": unassigned,
    }
    out: dict[str, Dataset] = {}
    for split, ids in assignment.items():
        cols = _empty_columns()
        for item_id in ids:
            item = by_id[item_id]
            rel = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
            name = f"local corpus {root}: {rel} (id {item_id!r})"
            wave = load_audio(item.path, item=name)  # AudioError naming the file when unusable
            info = sf.info(str(item.path))
            if info.samplerate != TARGET_SR:
                resampled_from[int(info.samplerate)] += 1
            if info.channels != 1:
                downmixed_from[int(info.channels)] += 1
            seconds = wave.size / TARGET_SR
            if item.manifest_duration is not None and abs(seconds - item.manifest_duration) > DURATION_TOLERANCE_S:
                raise CorpusError(f"{name}: decoded duration {seconds:.3f} s differs from {MANIFEST}'s "
                                  f"duration_s {item.manifest_duration:.3f} s by more than "
                                  f"{DURATION_TOLERANCE_S} s (truncated or replaced file?)")
            cols["id"].append(item_id)
            cols["audio"].append({"array": wave, "sampling_rate": TARGET_SR})
            cols["text"].append(item.text)
            cols["language"].append(language)
            cols["speaker"].append(item.speaker)
            cols["duration"].append(seconds)
        out[split] = Dataset.from_dict(cols, features=features)
        durs = np.asarray(cols["duration"], dtype=np.float64)
        stats[split] = {"utterances": len(ids), "seconds": round(float(durs.sum()), 3),
                        "hours": round(float(durs.sum()) / 3600, 4),
                        "mean_seconds": round(float(durs.mean()), 3) if durs.size else 0.0,
                        "max_seconds": round(float(durs.max()), 3) if durs.size else 0.0,
                        "speakers": len(set(cols["speaker"]))}
    total = sum(stats[s]["seconds"] for s in out)
    stats.update({
        "counts": {s: stats[s]["utterances"] for s in out},
        "utterances": sum(stats[s]["utterances"] for s in out),
        "seconds": round(total, 3), "hours": round(total / 3600, 4),
        "speakers": len({by_id[i].speaker for ids in assignment.values() for i in ids}),
        "resampled": sum(resampled_from.values()),
        "resampled_from_hz": {str(k): v for k, v in sorted(resampled_from.items())},
        "downmixed": sum(downmixed_from.values()),
        "downmixed_from_channels": {str(k): v for k, v in sorted(downmixed_from.items())},
    })
    log.info("local corpus %s (%s): %s utterances, %.2f h, %d resampled, %d downmixed, %d unassigned",
             root, language, stats["counts"], stats["hours"], stats["resampled"], stats["downmixed"],
             unassigned)
    return DatasetDict(out), stats
