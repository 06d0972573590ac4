"""Greedy transcription of a dataset split (raw hypotheses; normalisation happens at scoring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.inference_mode()
def transcribe_whisper(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]],
                       language: str, batch_size: int = 16, max_new_tokens: int | None = None,
                       progress: bool = True) -> tuple[list[str], list[int]]:
    """Greedy-decode every row; returns (hypotheses, number of generated tokens per row)."""
    model.eval()
    hyps: list[str] = []
    lengths: list[int] = []
    eot = model.generation_config.eos_token_id
    for start in tqdm(range(0, len(rows), batch_size), desc="decode", disable=not progress, mininterval=5):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        audio = [np.asarray(r["audio"]["array"], dtype=np.float32) for r in batch]
        feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        out = model.generate(feats.to(model.device), language=language, task="transcribe", num_beams=1,
                             do_sample=False, max_new_tokens=max_new_tokens)
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        hyps.extend(processor.tokenizer.batch_decode(seqs, skip_special_tokens=True))
        for seq in seqs.tolist():
            lengths.append(sum(1 for t in seq if t != eot) + 1)  # tokens incl. the final EOT
    return [h.strip() for h in hyps], lengths
