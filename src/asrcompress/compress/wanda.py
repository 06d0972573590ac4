"""Activation-aware one-shot pruning (Wanda: Sun et al. 2023, "A simple and effective pruning approach for
large language models"), applied to Whisper. None of the four papers compares against it.

Score of weight ``W[i, j]`` of a linear layer: ``|W[i, j]| * ||x_j||_2``, where ``||x_j||`` is the L2 norm of
input feature ``j`` over every calibration token (frames for the encoder, tokens for the decoder). Within
each output row ``i`` the ``round(s * in_features)`` lowest-scoring weights are zeroed (Wanda's per-output
comparison group), the same fraction ``s`` in every row of every pruned layer. No weight update, no
fine-tuning.

Calibration is unlabelled audio: the dense model transcribes it greedily and its own tokens are the
decoder inputs of the calibration pass (no transcript is read). Pruned: every ``nn.Linear`` of the
encoder and decoder layers and the output projection, whose weight is the tied token embedding (its
inputs are the decoder's final hidden states; the embedding lookup then reads the same pruned rows).
Not pruned: the convolutional front-end, LayerNorms, positional embeddings, biases.

Masked weights are zeros (:mod:`asrcompress.compress.masks`): sparsity, not fewer parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrcompress.compress.magnitude import n_to_prune
from asrcompress.compress.masks import apply_masks, make_permanent
from asrcompress.config import Spec

#: leaderboard entry keys of this method (besides method, model, label, budget)
BOARD_KEYS = {"calibration_tokens": Spec(int, required=False, min=1)}

__all__ = ["BOARD_KEYS", "linear_inputs", "input_norms", "wanda_masks", "pool_numel", "board_compress"]


def linear_inputs(model: nn.Module) -> dict[str, nn.Linear]:
    """``{canonical weight name: linear}`` of the prunable linears; a weight shared by several modules
    (the tied output projection) appears once, under its first parameter name."""
    canonical = {}
    for n, p in model.named_parameters():
        canonical.setdefault(id(p), n)
    out: dict[str, nn.Linear] = {}
    for _, m in model.named_modules():
        if type(m) is nn.Linear:
            out.setdefault(canonical[id(m.weight)], m)
    if not out:
        raise ValueError("wanda: the model has no nn.Linear")
    return out


def pool_numel(model: nn.Module) -> int:
    """Elements of the weights Wanda prunes (each shared tensor once)."""
    return sum(m.weight.numel() for m in linear_inputs(model).values())


@torch.inference_mode()
def input_norms(model: nn.Module, features: Sequence[Tensor], decoder_ids: Sequence[Tensor]) -> dict[str, Tensor]:
    """``{weight name: ||x_j||_2 over all calibration tokens}`` (float64, length ``in_features``) of every
    prunable linear, from teacher-forced forwards of ``features[b]`` (batch x mels x frames) with
    ``decoder_ids[b]`` (batch x tokens)."""
    if len(features) != len(decoder_ids) or not features:
        raise ValueError(f"wanda: {len(features)} feature batches for {len(decoder_ids)} token batches")
    linears = linear_inputs(model)
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    hooks = []
    for n, m in linears.items():
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor, n: str = n) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[n] += (x * x).sum(0)
        hooks.append(m.register_forward_hook(hook))
    try:
        model.eval()
        for f, ids in zip(features, decoder_ids, strict=True):
            model(input_features=f, decoder_input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {n: s.sqrt() for n, s in sums.items()}


@torch.no_grad()
def wanda_masks(model: nn.Module, norms: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Keep-masks dropping, in every output row of every prunable linear, the ``n_to_prune(sparsity, in)``
    weights of lowest ``|W| * ||x||`` (ties: lower column first)."""
    masks = {}
    for n, m in linear_inputs(model).items():
        if n not in norms or norms[n].shape != (m.in_features,):
            raise ValueError(f"wanda: no input norms of size {m.in_features} for {n}")
        k = n_to_prune(sparsity, m.in_features)
        if k == 0:
            continue
        score = m.weight.detach().abs().double() * norms[n][None, :]
        drop = torch.argsort(score, dim=1, stable=True)[:, :k]
        keep = torch.ones_like(m.weight, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        masks[n] = keep
    return masks


def board_compress(model: nn.Module, entry: Mapping[str, Any], inputs: Any) -> dict[str, Any]:
    """Leaderboard method ``wanda``: entry keys ``budget`` (share of ALL parameters to zero; the per-row
    sparsity over the pruned pool is scaled up to reach it) and ``calibration_tokens`` (decoding cap of the
    pseudo-transcripts). ``inputs``: a :class:`~asrcompress.compress.board.BoardInputs`."""
    from asrcompress.compress.board import pool_sparsity, total_params
    from asrcompress.inference import prompt_kwargs

    rows = inputs.calibration_rows
    cap = int(entry.get("calibration_tokens", 64))
    feats, ids = [], []
    for start in range(0, len(rows), 8):  # the dense model's own greedy tokens: no transcript is read
        batch = rows[start:start + 8]
        f = inputs.processor.feature_extractor([np.asarray(r["audio"]["array"], dtype=np.float32) for r in batch],
                                               sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            seq = model.generate(f, **prompt_kwargs(model, inputs.language), num_beams=1, do_sample=False,
                                 max_new_tokens=cap)
        seq = seq if isinstance(seq, Tensor) else seq.sequences
        feats.append(f)
        ids.append(seq[:, :-1] if seq.shape[1] > 1 else seq)
    norms = input_norms(model, feats, ids)
    pool = pool_numel(model)
    s = pool_sparsity(total_params(model), pool, entry.get("budget"), inputs.where)
    masks = wanda_masks(model, norms, s)
    apply_masks(model, masks)
    make_permanent(model)
    return {"pool_params": pool, "pool_sparsity": s, "calibration_utterances": len(rows),
            "calibration_tokens": int(sum(int(t.numel()) for t in ids))}
