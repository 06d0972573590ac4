"""Greedy transcription of a dataset split (raw hypotheses; normalisation happens at scoring).

:func:`transcribe` is the one decoding entry point: Whisper ``generate`` (:func:`transcribe_whisper`)
or greedy CTC for wav2vec 2.0 / HuBERT (``models.ctc.ctc_decode``), chosen by
``model.config.model_type``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from asrcompress.data.audio import check_row_audio


def prompt_kwargs(model: torch.nn.Module, language: str) -> dict[str, str]:
    """``generate`` arguments that select the language and the transcribe task; none for an
    English-only Whisper (``is_multilingual`` false), whose prompt has no language or task token."""
    if getattr(model.generation_config, "is_multilingual", True) is False:
        if language != "en":
            raise ValueError(f"an English-only Whisper cannot transcribe language {language!r}")
        return {}
    return {"language": language, "task": "transcribe"}


@torch.inference_mode()
def transcribe_whisper(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]],
                       language: str, batch_size: int = 16, max_new_tokens: int | None = None,
                       progress: bool = True, sort_by_length: bool = True) -> tuple[list[str], list[int]]:
    """Greedy-decode every row on the model's device; returns (hypotheses, number of generated tokens
    per row), in the order of ``rows``.

    With ``sort_by_length`` batches are formed from utterances of similar length (longest first), so
    a batch's decoding is not held up by one long transcript and a GPU's memory peak shows early;
    the results are put back in the input order.

    Every row's audio is checked first: one that is not 1-D, empty, holds NaN / infinite samples or
    is longer than the feature extractor's window (``n_samples``, which would keep only its first
    window) raises :class:`~asrcompress.data.audio.AudioError` naming the row's ``id``.
    """
    window = processor.feature_extractor.n_samples
    arrays = [check_row_audio(row["audio"]["array"], str(row.get("id", f"row {i}")), window)
              for i, row in enumerate(rows)]
    model.eval()
    order = list(range(len(rows)))
    if sort_by_length:
        order.sort(key=lambda i: -arrays[i].size)
    hyps: list[str] = [""] * len(rows)
    lengths: list[int] = [0] * len(rows)
    eot = model.generation_config.eos_token_id
    for start in tqdm(range(0, len(rows), batch_size), desc="decode", disable=not progress, mininterval=5):
        idx = order[start:start + batch_size]
        audio = [arrays[i] for i in idx]
        feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        out = model.generate(feats.to(model.device, model.dtype), **prompt_kwargs(model, language),
                             num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        for i, text, seq in zip(idx, processor.tokenizer.batch_decode(seqs, skip_special_tokens=True),
                                seqs.tolist(), strict=True):
            hyps[i] = text.strip()
            lengths[i] = sum(1 for t in seq if t != eot) + 1  # tokens incl. the final EOT
    return hyps, lengths


CTC_MODEL_TYPES = ("wav2vec2", "hubert")


def transcribe(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]], language: str,
               batch_size: int = 16, max_new_tokens: int | None = None,
               progress: bool = True) -> tuple[list[str], list[int]]:
    """Greedy-decode every row; returns (hypotheses, tokens per row) in the order of ``rows``.

    Whisper: ``generate`` with the language / transcribe prompt, tokens = generated tokens incl. the
    final EOT. wav2vec2 / HuBERT: greedy CTC, tokens = emitted labels (``language`` and
    ``max_new_tokens`` do not apply: a CTC model emits at most one label per frame)."""
    kind = model.config.model_type
    if kind == "whisper":
        return transcribe_whisper(model, processor, rows, language, batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress)
    if kind in CTC_MODEL_TYPES:
        from asrcompress.models.ctc import ctc_decode

        return ctc_decode(model, processor, rows, batch_size)
    raise ValueError(f"transcribe: no decoder for model type {kind!r} (whisper, {', '.join(CTC_MODEL_TYPES)})")
