"""Synthesised corpora in the common schema (train / dev / test ``DatasetDict``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from asrcompress.config import derive_seed
from asrcompress.data.audio import TARGET_SR, check_audio
from asrcompress.data.schema import corpus_features
from asrcompress.data.synth import draw_voice, synthesise
from asrcompress.data.text_gen import FRENCH_WORDS, make_sentences

SPLITS = ("train", "dev", "test")


def build_synthetic_corpus(language: str, sizes: Mapping[str, int], seed: int, synth: Mapping[str, Any],
                           max_seconds: float) -> tuple[DatasetDict, dict[str, Any]]:
    """Synthesise ``sizes[split]`` utterances per split; returns the corpus and its statistics.

    ``synth`` holds the voice ranges from params (``rate_wpm``, ``pitch``, ``gain``, ``noise_prob``,
    ``snr_db``). Clips longer than ``max_seconds`` (the model window) are dropped and counted.
    Each size must be an int >= 0 (0 = an empty split, still present with the schema's features);
    ``max_seconds`` must be positive. Raises ValueError naming ``sizes.<split>`` otherwise.
    """
    for split in SPLITS:
        n = sizes.get(split)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sizes.{split}: must be an int >= 0, got {n!r}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    sentences = make_sentences(language, sizes["train"], sizes["dev"], sizes["test"],
                               derive_seed(seed, "text", language))
    out: dict[str, Dataset] = {}
    stats: dict[str, Any] = {"language": language, "dropped_too_long": 0}
    for split in SPLITS:
        texts = getattr(sentences, split)
        rng = random.Random(derive_seed(seed, "voice", language, split))
        noise_rng = np.random.default_rng(derive_seed(seed, "noise", language, split))
        cols: dict[str, list] = {k: [] for k in corpus_features()}
        for i, text in enumerate(tqdm(texts, desc=f"synth {language}/{split}", mininterval=5)):
            utt_id = f"{language}-{split}-{i:05d}"
            voice = draw_voice(rng, tuple(synth["rate_wpm"]), tuple(synth["pitch"]), tuple(synth["gain"]),
                               float(synth["noise_prob"]), float(synth["snr_db"]))
            audio = check_audio(synthesise(text, language, voice, noise_rng, utt_id, FRENCH_WORDS),
                                TARGET_SR, utt_id)
            duration = audio.size / TARGET_SR
            if duration > max_seconds:
                stats["dropped_too_long"] += 1
                continue
            cols["id"].append(utt_id)
            cols["audio"].append({"array": audio, "sampling_rate": TARGET_SR})
            cols["text"].append(text)
            cols["language"].append(language)
            cols["speaker"].append(voice.speaker)
            cols["duration"].append(duration)
        out[split] = Dataset.from_dict(cols, features=corpus_features())
        durs = np.asarray(cols["duration"])
        stats[split] = {"utterances": len(durs), "hours": round(float(durs.sum()) / 3600, 4),
                        "mean_seconds": round(float(durs.mean()), 3) if durs.size else 0.0,
                        "max_seconds": round(float(durs.max()), 3) if durs.size else 0.0,
                        "speakers": len(set(cols["speaker"]))}
    train_words = {w for t in sentences.train for w in t.split()}
    held_words = {w for t in sentences.dev + sentences.test for w in t.split()}
    stats["vocabulary_train"] = len(train_words)
    stats["heldout_words_unseen_in_train"] = len(held_words - train_words)
    return DatasetDict(out), stats


def save_corpus(ds: DatasetDict, out_dir: str) -> None:
    """``ds.save_to_disk(out_dir)``, writing one (empty) data file for an empty split: by default
    ``datasets`` writes none, and loading the corpus back then fails with an IndexError. Non-empty
    splits are written exactly as ``save_to_disk`` writes them."""
    ds.save_to_disk(out_dir, num_shards={split: 1 for split in ds if ds[split].num_rows == 0})
