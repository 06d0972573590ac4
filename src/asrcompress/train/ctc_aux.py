"""Auxiliary CTC loss on the Whisper encoder, for training a tiny Whisper from scratch.

An attention encoder-decoder trained from scratch on a few thousand utterances first learns the
decoder's language model and only later (or, for an unlucky initialisation, hardly at all) learns to
align the decoder's cross-attention with the audio: the loss sits on a plateau and the held-out WER
depends on the seed. A CTC head on the encoder output, trained jointly (loss = CE + w * CTC, the
joint CTC-attention recipe of Kim, Hori & Watanabe, ICASSP 2017), forces monotonic alignment into the
encoder from the first steps. The head lives outside the model: it is optimised and checkpointed with
the run (``train(..., extra_params=...)``) and dropped afterwards, so the saved model is a plain
``WhisperForConditionalGeneration``.

CTC targets are the text tokens of the decoder labels (language / task / no-timestamps / end-of-text
tokens and padding removed); the blank is one extra class after the tokenizer's vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class EncoderCTCHead(nn.Module):
    """A linear CTC classifier over the encoder's last hidden state: ``vocab_size`` token classes
    plus a blank (index ``vocab_size``). ``frame_stride`` > 1 averages that many consecutive encoder
    frames first (fewer CTC frames: a cheaper head and loss; a 4 s window still has 100 frames at 2)."""

    def __init__(self, d_model: int, vocab_size: int, special_ids: list[int] | set[int],
                 frame_stride: int = 1) -> None:
        super().__init__()
        if frame_stride < 1:
            raise ValueError(f"pretrain_ctc.frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = frame_stride
        self.proj = nn.Linear(d_model, vocab_size + 1)
        self.blank = vocab_size
        is_text = torch.ones(vocab_size, dtype=torch.bool)
        is_text[sorted(i for i in special_ids if 0 <= i < vocab_size)] = False
        self.register_buffer("is_text", is_text, persistent=False)

    def targets(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concatenated text-token targets, per-row target lengths) from decoder labels."""
        keep = (labels >= 0) & self.is_text[labels.clamp(min=0)]
        return labels[keep], keep.sum(dim=1)

    def loss(self, encoder_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss per target token (``ctc_loss`` ``mean`` reduction); every frame of the padded
        window is an input frame (Whisper pads each clip to its window)."""
        if self.frame_stride > 1:
            encoder_hidden = nn.functional.avg_pool1d(encoder_hidden.transpose(1, 2), self.frame_stride,
                                                      ceil_mode=True).transpose(1, 2)
        log_probs = self.proj(encoder_hidden).float().log_softmax(-1).transpose(0, 1)  # T, B, C
        flat, lengths = self.targets(labels)
        frames = torch.full((labels.shape[0],), log_probs.shape[0], dtype=torch.long)
        return nn.functional.ctc_loss(log_probs, flat.cpu(), frames, lengths.cpu(), blank=self.blank,
                                      zero_infinity=True)


def ctc_aux_loss(head: EncoderCTCHead, weight: float) -> Callable[[nn.Module, dict, Any], torch.Tensor]:
    """``extra_loss`` for :func:`asrcompress.train.loop.train`: ``weight`` x the encoder CTC loss."""
    if weight <= 0:
        raise ValueError(f"pretrain_ctc.weight must be > 0 to build the loss, got {weight}")

    def extra_loss(model: nn.Module, batch: dict, outputs: Any) -> torch.Tensor:
        hidden = outputs.encoder_last_hidden_state
        if head.proj.weight.device != hidden.device:
            head.to(hidden.device)
        return weight * head.loss(hidden, batch["labels"])
    return extra_loss
