"""Batch builders: dataset rows (common schema) -> model inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from transformers import WhisperProcessor

from asrcompress.data.audio import check_row_audio
from asrcompress.models.whisper import label_ids


def processor_digest(processor: Any, **extra: Any) -> str:
    """A short hash of what turns rows into tensors: the tokenizer's vocabulary and the feature
    extractor's settings (plus ``extra``). A checkpoint trained with another tokenizer must not be
    resumed (train/loop.py compares it)."""
    tok = processor.tokenizer
    vocab = sorted(tok.get_vocab().items())
    fe = processor.feature_extractor.to_dict() if hasattr(processor.feature_extractor, "to_dict") else {}
    blob = json.dumps({"vocab": vocab, "features": fe, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WhisperCollator:
    """Log-mel features + decoder labels (language/task prefix, text, EOT; padding = -100).

    ``language`` overrides the row's own language code (e.g. the Bambara stand-in uses Whisper's
    ``sw`` token, as Whisper has no Bambara token); ``language_map`` maps row language codes to
    Whisper language tokens when a batch mixes languages (multilingual pre-training). Log-mel features are cached per row id after
    the first epoch (computing them costs about as much as a training step of the tiny model).

    Rows are refused with an error naming their id when the audio is not 1-D, empty, holds NaN /
    infinite samples or is longer than the feature extractor's window (``n_samples``), when the
    transcript is empty, and, given ``max_target_positions`` (the model's
    ``config.max_target_positions``), when the label sequence (prefix, text, EOT) is longer.
    """

    def __init__(self, processor: WhisperProcessor, language: str | None = None,
                 language_map: dict[str, str] | None = None, max_target_positions: int | None = None) -> None:
        self.processor = processor
        self.language = language
        self.language_map = language_map or {}
        self.max_samples = processor.feature_extractor.n_samples
        self.max_target_positions = max_target_positions
        self._features: dict[str, torch.Tensor] = {}

    def fingerprint(self) -> str:
        """Tokenizer, features and language choice: part of a training checkpoint's identity."""
        return processor_digest(self.processor, language=self.language, language_map=self.language_map)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        todo = [row for row in rows if row["id"] not in self._features]
        audio = []
        for row in todo:
            audio.append(check_row_audio(row["audio"]["array"], str(row["id"]), self.max_samples))
        if todo:
            new = self.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
            self._features.update({row["id"]: f for row, f in zip(todo, new, strict=True)})
        feats = torch.stack([self._features[row["id"]] for row in rows])
        tok = self.processor.tokenizer
        labels = []
        for row in rows:
            if not row["text"].strip():
                raise ValueError(f"{row['id']}: empty transcript in field 'text'")
            lang = self.language or self.language_map.get(row["language"], row["language"])
            ids = label_ids(tok, row["text"], lang)
            if self.max_target_positions is not None and len(ids) > self.max_target_positions:
                raise ValueError(f"{row['id']}: label sequence is {len(ids)} tokens (prefix, text, EOT), longer "
                                 f"than the model's max_target_positions = {self.max_target_positions}")
            labels.append(ids)
        width = max(len(x) for x in labels)
        lab = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            lab[i, :len(ids)] = torch.tensor(ids)
        return {"input_features": feats, "labels": lab}


class CTCCollator:
    """Raw 16 kHz waveforms (normalised per utterance, zero-padded) + attention mask + CTC character
    labels (``|`` between words; padding = -100) for wav2vec 2.0 / HuBERT ``*ForCTC`` models.

    Rows whose audio is not 1-D, empty or holds NaN / infinite samples, or whose transcript is
    empty, are refused with an error naming their id."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def fingerprint(self) -> str:
        """Character vocabulary and features: part of a training checkpoint's identity."""
        return processor_digest(self.processor)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from asrcompress.models.ctc import label_ids as ctc_label_ids

        audio = [check_row_audio(row["audio"]["array"], str(row["id"])) for row in rows]
        inputs = self.processor.feature_extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt",
                                                  return_attention_mask=True)
        labels = []
        for row in rows:
            if not row["text"].strip():
                raise ValueError(f"{row['id']}: empty transcript in field 'text'")
            labels.append(ctc_label_ids(self.processor.tokenizer, row["text"]))
        width = max(len(x) for x in labels)
        lab = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            lab[i, :len(ids)] = torch.tensor(ids)
        return {"input_values": inputs.input_values, "attention_mask": inputs.attention_mask, "labels": lab}
