"""Real corpora for the ``paper`` profile, converted to the common schema.

The ``smoke`` profile synthesises its speech; the ``paper`` profile loads the papers' corpora by
hub id through this module. Each corpus is described by a :class:`CorpusSpec` (hub id, config,
split mapping, column mapping, language, licence) in the :data:`CORPORA` registry, whose keys are
the ``corpora.<key>.source`` names of ``params.yaml``. :func:`load_corpus` turns one of our splits
(``train`` / ``dev`` / ``test``) into a ``datasets.Dataset`` with exactly the features of
:func:`corpus_features` (``id``, ``audio`` {16 kHz float32 array, sampling rate}, ``text`` as given,
``language``, ``speaker``, ``duration``).

Without ``source=`` the hub is asked (``datasets.load_dataset(hub_id, config, split=...)``); with
it, a local ``Dataset`` / ``DatasetDict`` that has the hub's column names is used instead (tests,
offline copies). Audio is never decoded by ``datasets`` (its decoder needs torchcodec): the audio
column is cast to ``Audio(decode=False)`` and each item's bytes or path is decoded by
:func:`asrcompress.data.audio.load_audio` (soundfile; downmix; any rate -> 16 kHz).

Item policy, applied in this order to every row:

1. transcript equal to one of the spec's ``ignore_texts`` (TED-LIUM's
   ``ignore_time_segment_in_scoring``): dropped, counted as ``dropped_ignored``; never an error.
2. empty or whitespace-only transcript: :class:`CorpusError` naming the item id and the ``text``
   field, unless ``drop_bad=True`` (dropped, counted as ``dropped_empty_text``).
3. audio that cannot be decoded, is missing, silent, non-finite or shorter than 0.05 s:
   :class:`~asrcompress.data.audio.AudioError` naming the item, unless ``drop_bad=True``
   (dropped, counted as ``dropped_bad_audio``).
4. duration outside ``[min_seconds, max_seconds]``: dropped, counted as ``dropped_too_short`` /
   ``dropped_too_long``; never an error (Whisper sees at most a 30 s window).

Duplicate ids after conversion are an error. The counts come back as a :class:`LoadStats` from
:func:`load_corpus_with_stats`; :func:`load_corpus` returns the dataset alone and logs them.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

import datasets
from datasets import Audio, Dataset, DatasetDict, concatenate_datasets

from asrcompress.data.audio import TARGET_SR, AudioError, load_audio
from asrcompress.data.schema import corpus_features

__all__ = [
    "CORPORA", "SPLITS", "CorpusError", "CorpusSpec", "HeldOut", "LoadStats", "common_voice_source",
    "corpus_features", "get_spec", "load_corpus", "load_corpus_with_stats", "load_raw_split",
    "convert_split",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
UNKNOWN_SPEAKER = "unknown"
_MAX_EXAMPLE_IDS = 10  # ids kept per drop reason in LoadStats.dropped_examples


class CorpusError(ValueError):
    """A corpus that cannot be converted: unknown spec or split, missing column, bad item, duplicate id."""


# ------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class HeldOut:
    """A deterministic share of a hub split, chosen by hashing one column's value.

    Rows whose salted SHA-1 of ``str(row[column])`` falls below ``fraction`` are held out. Hashing
    a speaker column makes the share speaker-disjoint; hashing the transcript keeps identical
    sentences on one side. The choice depends only on the value, never on row order.
    """

    column: str
    fraction: float
    salt: str = "asrcompress-dev"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"HeldOut.fraction must be in (0, 1), got {self.fraction}")

    def contains(self, value: Any) -> bool:
        """True when a row with this column value belongs to the held-out share."""
        digest = hashlib.sha1(f"{self.salt}\x00{value}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction


@dataclass(frozen=True)
class CorpusSpec:
    """How one hub corpus maps onto our splits and the common schema.

    ``splits`` maps our split names to hub split expressions (``"train+validation"`` is allowed);
    ``split_configs`` overrides ``config`` for single splits. With ``dev_held_out`` set, ``dev``
    is the held-out share of its hub split and ``train`` (which must read the same hub split) is
    the rest. Column fields name the HUB's columns: ``text_column`` -> ``text``,
    ``speaker_column`` -> ``speaker`` (``None``: ``"unknown"``), ``id_column`` -> ``id``
    (``None``: ``"<name>-<split>-<row index>"``; ``id_from_path``: the file stem of that column's
    value). ``verify`` says what a user with hub access must still check.
    """

    name: str
    hub_id: str
    config: str | None
    splits: Mapping[str, str]
    text_column: str
    language: str
    licence: str
    description: str
    speaker_column: str | None = None
    id_column: str | None = None
    id_from_path: bool = False
    audio_column: str = "audio"
    split_configs: Mapping[str, str] = field(default_factory=dict)
    dev_held_out: HeldOut | None = None
    ignore_texts: tuple[str, ...] = ()
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    verify: str = ""

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"CorpusSpec {self.name!r}: no hub split given for {missing}")
        if self.dev_held_out is not None and (
                self.hub_split("train") != self.hub_split("dev")
                or self.hub_config("train") != self.hub_config("dev")):
            raise ValueError(f"CorpusSpec {self.name!r}: dev_held_out needs train and dev to read the "
                             "same hub config and split")

    def hub_config(self, split: str) -> str | None:
        """The hub config (subset) read for our ``split``."""
        return self.split_configs.get(split, self.config)

    def hub_split(self, split: str) -> str:
        """The hub split expression read for our ``split`` (before any held-out selection)."""
        if split not in SPLITS:
            raise CorpusError(f"{self.name}: unknown split {split!r}; expected one of {SPLITS}")
        return self.splits[split]

    def column_mapping(self) -> dict[str, str]:
        """Our field -> how it is obtained from the hub row (for reports and docs)."""
        if self.id_column is None:
            id_rule = f"'{self.name}-<split>-<row index>'"
        else:
            id_rule = f"stem of {self.id_column}" if self.id_from_path else self.id_column
        return {"id": id_rule, "audio": f"{self.audio_column} (decoded, mono, {TARGET_SR} Hz)",
                "text": self.text_column, "speaker": self.speaker_column or f"'{UNKNOWN_SPEAKER}'",
                "language": f"'{self.language}'", "duration": "len(audio) / 16000"}


def _spec_list(*specs: CorpusSpec) -> dict[str, CorpusSpec]:
    return {s.name: s for s in specs}


CORPORA: dict[str, CorpusSpec] = _spec_list(
    CorpusSpec(
        name="common_voice_11_hi",
        hub_id="mozilla-foundation/common_voice_11_0",
        config="hi",
        splits={"train": "train+validation", "dev": "train+validation", "test": "test"},
        dev_held_out=HeldOut(column="client_id", fraction=0.1),
        text_column="sentence",
        speaker_column="client_id",
        id_column="path",
        id_from_path=True,
        language="hi",
        licence="CC0-1.0 (the hub copy was gated: accept the terms, log in)",
        description=("Common Voice 11.0 Hindi, read speech, 48 kHz MP3. Paper 1 trains on train+validation "
                     "(about 6.5 k clips) and tests on test (about 2.9 k). Our dev is a speaker-disjoint "
                     "10 % of train+validation (hash of client_id), removed from our train, so train "
                     "holds about 90 % of the paper's training data."),
        verify=("The hub copy used a loading script (refused by datasets >= 4) and was reported removed "
                "from the hub in late 2025 (now distributed by Mozilla Data Collective). Pass a "
                "parquet revision in load_kwargs, or a local copy: source=common_voice_source(<release "
                "dir>/hi)."),
    ),
    CorpusSpec(
        name="librispeech_clean",
        hub_id="openslr/librispeech_asr",
        config="clean",
        splits={"train": "train.100", "dev": "validation", "test": "test"},
        text_column="text",
        speaker_column="speaker_id",
        id_column="id",
        language="en",
        licence="CC-BY-4.0",
        description=("LibriSpeech clean: train-clean-100 (paper 4's fine-tuning set), dev-clean, "
                     "test-clean; read audiobooks, 16 kHz FLAC, upper-case transcripts."),
        verify="Config and split names follow the hub's parquet layout (clean: train.100/validation/test).",
    ),
    CorpusSpec(
        name="librispeech_other",
        hub_id="openslr/librispeech_asr",
        config="other",
        splits={"train": "train.100", "dev": "validation", "test": "test"},
        split_configs={"train": "clean"},
        text_column="text",
        speaker_column="speaker_id",
        id_column="id",
        language="en",
        licence="CC-BY-4.0",
        description=("LibriSpeech other for evaluation (paper 3 reports test-other): dev-other and "
                     "test-other. The 'other' config has only train.500, so training reads "
                     "train-clean-100 from the 'clean' config (100 h instead of a 500 h download)."),
        verify="Config and split names follow the hub's parquet layout (other: train.500/validation/test).",
    ),
    CorpusSpec(
        name="tedlium3",
        hub_id="LIUM/tedlium",
        config="release3",
        splits={"train": "train", "dev": "validation", "test": "test"},
        text_column="text",
        speaker_column="speaker_id",
        id_column="id",
        ignore_texts=("ignore_time_segment_in_scoring",),
        language="en",
        licence="CC BY-NC-ND 3.0 (non-commercial, no derivatives)",
        description=("TED-LIUM release 3: segmented TED talks, 16 kHz, lower-case transcripts with "
                     "<unk> and split contractions. Segments transcribed "
                     "ignore_time_segment_in_scoring are dropped (they are excluded from scoring)."),
        verify=("The hub copy uses a loading script (refused by datasets >= 4): pass a parquet revision "
                "in load_kwargs or a local copy with these columns (audio, text, speaker_id, gender, "
                "file, id)."),
    ),
    CorpusSpec(
        name="bambara",
        hub_id="RobotsMali/jeli-asr",
        config="jeli-asr",
        splits={"train": "train", "dev": "train", "test": "test"},
        dev_held_out=HeldOut(column="text", fraction=0.05),
        text_column="text",
        speaker_column=None,
        id_column=None,
        language="bm",
        licence="CC-BY-4.0 (per the hub card)",
        description=("Jeli-ASR from RobotsMali: about 33 h of Bambara speech (griot narrations, street "
                     "interviews, read speech), close to paper 2's 32 h; transcripts may code-switch "
                     "with French. The hub has train and test only: our dev is 5 % of train chosen by "
                     "hashing the transcript (identical sentences stay on one side)."),
        verify=("UNVERIFIED here (no hub access): the hub id, the config name 'jeli-asr', the split "
                "names and the transcript column 'text' must be checked; no speaker or id column is "
                "assumed. Each is one field of this spec."),
    ),
)


def get_spec(name: str) -> CorpusSpec:
    """The registered spec called ``name`` (a ``corpora.<key>.source`` value of params.yaml)."""
    try:
        return CORPORA[name]
    except KeyError:
        raise CorpusError(f"unknown corpus spec {name!r}; registered: {sorted(CORPORA)}") from None


# ------------------------------------------------------------------------------------------- stats
@dataclass
class LoadStats:
    """What happened to the rows of one split (counts; ``seconds`` of kept audio)."""

    corpus: str
    split: str
    hub_id: str
    config: str | None
    hub_split: str
    rows_read: int = 0
    kept: int = 0
    seconds: float = 0.0
    dropped_ignored: int = 0
    dropped_empty_text: int = 0
    dropped_bad_audio: int = 0
    dropped_too_short: int = 0
    dropped_too_long: int = 0
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dropped_bad(self) -> int:
        """Items dropped because ``drop_bad=True`` (empty transcript or unusable audio)."""
        return self.dropped_empty_text + self.dropped_bad_audio

    def drop(self, reason: str, item_id: str) -> None:
        """Count one dropped item under ``dropped_<reason>`` and keep a few example ids."""
        attr = f"dropped_{reason}"
        setattr(self, attr, getattr(self, attr) + 1)
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLE_IDS:
            examples.append(item_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``hours`` and ``dropped_bad`` added."""
        out = asdict(self)
        out["hours"] = round(self.seconds / 3600, 4)
        out["dropped_bad"] = self.dropped_bad
        return out


# --------------------------------------------------------------------------------------- raw data
def _resolve_source(source: Dataset | DatasetDict, spec: CorpusSpec, split: str) -> Dataset:
    """The local stand-in for the hub split: a Dataset as is, or the DatasetDict entries named."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        expr = spec.hub_split(split)
        names = [p.strip() for p in expr.split("+")]
        missing = [n for n in names if n not in source]
        if missing:
            raise CorpusError(f"{spec.name}/{split}: local source lacks hub split(s) {missing} of "
                              f"{expr!r}; it has {sorted(source)} (slices like 'test[:10%]' are hub-only)")
        parts = [source[n] for n in names]
        return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    raise TypeError(f"source must be a datasets.Dataset or DatasetDict, got {type(source).__name__}")


def _check_columns(raw: Dataset, spec: CorpusSpec, split: str) -> None:
    needed = [spec.audio_column, spec.text_column, spec.speaker_column, spec.id_column,
              spec.dev_held_out.column if spec.dev_held_out and split in ("train", "dev") else None]
    missing = sorted({c for c in needed if c is not None and c not in raw.column_names})
    if missing:
        raise CorpusError(f"{spec.name}/{split}: data lacks column(s) {missing}; it has {raw.column_names}. "
                          f"Fix the column mapping in CORPORA[{spec.name!r}] (asrcompress.data.hub_loaders).")


def load_raw_split(spec: CorpusSpec, split: str, *,
                   source: Dataset | DatasetDict | None = None) -> Dataset:
    """Our ``split`` of ``spec`` with the hub's columns: fetched (or taken from ``source``),
    held-out selection applied, audio column cast to ``Audio(decode=False)``."""
    hub_split = spec.hub_split(split)
    if source is None:
        raw = datasets.load_dataset(spec.hub_id, spec.hub_config(split), split=hub_split,
                                    **dict(spec.load_kwargs))
    else:
        raw = _resolve_source(source, spec, split)
    if not isinstance(raw, Dataset):
        raise CorpusError(f"{spec.name}/{split}: expected a Dataset for split {hub_split!r}, "
                          f"got {type(raw).__name__}")
    _check_columns(raw, spec, split)
    held = spec.dev_held_out
    if held is not None and split in ("train", "dev"):
        in_dev = [held.contains(v) for v in raw[held.column]]
        raw = raw.select([i for i, d in enumerate(in_dev) if d == (split == "dev")])
    return raw.cast_column(spec.audio_column, Audio(decode=False))


# ------------------------------------------------------------------------------------- conversion
def _item_id(spec: CorpusSpec, split: str, value: Any, index: int) -> str:
    if spec.id_column is None:
        return f"{spec.name}-{split}-{index:07d}"
    if value is None or not str(value).strip():
        raise CorpusError(f"{spec.name}/{split} row {index}: id column {spec.id_column!r} is empty")
    return PurePath(str(value)).stem if spec.id_from_path else str(value)


def convert_split(raw: Dataset, spec: CorpusSpec, split: str, *, max_items: int | None = None,
                  min_seconds: float = 0.0, max_seconds: float | None = 30.0,
                  drop_bad: bool = False) -> tuple[Dataset, LoadStats]:
    """Convert ``raw`` (hub columns, audio not decoded) to the common schema; see the module doc
    for the item policy. ``max_items`` keeps only the first N rows before any dropping
    (``None`` or negative: all)."""
    stats = LoadStats(corpus=spec.name, split=split, hub_id=spec.hub_id, config=spec.hub_config(split),
                      hub_split=spec.hub_split(split))
    if max_items is not None and max_items >= 0 and max_items < len(raw):
        raw = raw.select(range(max_items))
    stats.rows_read = len(raw)
    features = corpus_features()
    ignore = {t.strip() for t in spec.ignore_texts}
    where = f"{spec.name}/{split}"

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in features}
        for j, index in enumerate(indices):
            item_id = _item_id(spec, split, batch[spec.id_column][j] if spec.id_column else None, index)
            text = batch[spec.text_column][j]
            if text is not None and str(text).strip() in ignore:
                stats.drop("ignored", item_id)
                continue
            if text is None or not str(text).strip():
                if drop_bad:
                    stats.drop("empty_text", item_id)
                    continue
                raise CorpusError(f"{where} item {item_id!r}: field 'text' (hub column "
                                  f"{spec.text_column!r}) is empty; pass drop_bad=True to drop such items")
            audio = batch[spec.audio_column][j] or {}
            encoded = audio.get("bytes") or audio.get("path")
            try:
                if not encoded:
                    raise AudioError(f"{where} item {item_id!r}: no audio bytes or path")
                wave = load_audio(encoded, item=f"{where} item {item_id!r}")
            except AudioError:
                if drop_bad:
                    stats.drop("bad_audio", item_id)
                    continue
                raise
            seconds = wave.size / TARGET_SR
            if seconds < min_seconds:
                stats.drop("too_short", item_id)
                continue
            if max_seconds is not None and seconds > max_seconds:
                stats.drop("too_long", item_id)
                continue
            speaker = batch[spec.speaker_column][j] if spec.speaker_column else None
            out["id"].append(item_id)
            out["audio"].append({"array": wave, "sampling_rate": TARGET_SR})
            out["text"].append(str(text))
            out["language"].append(spec.language)
            out["speaker"].append(UNKNOWN_SPEAKER if speaker is None or str(speaker) == "" else str(speaker))
            out["duration"].append(seconds)
            stats.kept += 1
            stats.seconds += seconds
        return out

    if len(raw) == 0:  # map() over no rows would also drop the declared features
        return Dataset.from_dict({k: [] for k in features}, features=features), stats
    ds = raw.map(convert, batched=True, batch_size=32, with_indices=True, remove_columns=raw.column_names,
                 features=features, writer_batch_size=100, load_from_cache_file=False,
                 desc=f"convert {where}")
    dupes = [i for i, n in Counter(ds["id"]).items() if n > 1]
    if dupes:
        raise CorpusError(f"{where}: {len(dupes)} duplicate id(s), e.g. {dupes[:5]}; "
                          f"check the id column of CORPORA[{spec.name!r}]")
    return ds, stats


# -------------------------------------------------------------------------------------- entry points
def load_corpus_with_stats(spec_name: str | CorpusSpec, split: str, *,
                           source: Dataset | DatasetDict | None = None, max_items: int | None = None,
                           min_seconds: float = 0.0, max_seconds: float | None = 30.0,
                           drop_bad: bool = False) -> tuple[Dataset, LoadStats]:
    """Load our ``split`` of a registered corpus (or of a spec object) in the common schema.

    Returns the dataset and a :class:`LoadStats` with the kept and dropped counts. Arguments as in
    :func:`load_corpus`.
    """
    spec = spec_name if isinstance(spec_name, CorpusSpec) else get_spec(spec_name)
    raw = load_raw_split(spec, split, source=source)
    return convert_split(raw, spec, split, max_items=max_items, min_seconds=min_seconds,
                         max_seconds=max_seconds, drop_bad=drop_bad)


def load_corpus(spec_name: str | CorpusSpec, split: str, *, source: Dataset | DatasetDict | None = None,
                max_items: int | None = None, min_seconds: float = 0.0, max_seconds: float | None = 30.0,
                drop_bad: bool = False) -> Dataset:
    """Load our ``split`` (train / dev / test) of a corpus in the common schema.

    ``spec_name``: a :data:`CORPORA` key, or a :class:`CorpusSpec` (e.g. a registered one with a
    field fixed by ``dataclasses.replace``). ``source``: a local ``Dataset`` (the hub split itself)
    or ``DatasetDict`` (keyed by hub split names) with the hub's columns, used instead of the hub
    (it stands for the data of every config the spec reads: ``split_configs`` are not applied).
    ``max_items``: read only the first N rows (``None``/negative: all). Clips outside
    ``[min_seconds, max_seconds]`` are dropped. ``drop_bad``: drop empty-transcript and
    unusable-audio items instead of raising. Use :func:`load_corpus_with_stats` for the counts.
    """
    ds, stats = load_corpus_with_stats(spec_name, split, source=source, max_items=max_items,
                                       min_seconds=min_seconds, max_seconds=max_seconds, drop_bad=drop_bad)
    log.info("load %s/%s: %s %s/%s -> %d utterances, %.2f h (dropped: %d ignored, %d bad, %d out of range)",
             stats.corpus, split, stats.hub_id, stats.config, stats.hub_split, stats.kept,
             stats.seconds / 3600, stats.dropped_ignored, stats.dropped_bad,
             stats.dropped_too_short + stats.dropped_too_long)
    return ds


# ------------------------------------------------------------------------------ local Common Voice
_CV_TSV = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv", "other": "other.tsv",
           "invalidated": "invalidated.tsv", "validated": "validated.tsv"}


def common_voice_source(language_dir: str | os.PathLike,
                        splits: tuple[str, ...] = ("train", "validation", "test")) -> DatasetDict:
    """A ``source=`` for ``common_voice_11_hi`` from an extracted Common Voice release.

    ``language_dir`` holds ``train.tsv``, ``dev.tsv``, ``test.tsv`` ... and ``clips/``. Returns a
    ``DatasetDict`` keyed by the hub's split names (``dev.tsv`` -> ``validation``) with the TSV
    columns as strings (``accents`` renamed ``accent`` as on the hub) and ``audio`` = the clip's path.
    """
    root = Path(language_dir)
    out = {}
    for split in splits:
        tsv = root / _CV_TSV[split]
        if not tsv.is_file():
            raise CorpusError(f"Common Voice: {tsv} not found")
        with tsv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows:
            raise CorpusError(f"Common Voice: {tsv} has no rows")
        cols: dict[str, list] = {("accent" if k == "accents" else k): [r[k] or "" for r in rows] for k in rows[0]}
        cols["audio"] = [str(root / "clips" / r["path"]) for r in rows]
        out[split] = Dataset.from_dict(cols)
    return DatasetDict(out)
