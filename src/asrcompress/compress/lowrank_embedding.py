"""BaldWhisper step 2 ("head shearing"): activation-aware low-rank factorisation of Whisper's tied token
embedding / output projection ``W`` (vocab x d_model).

The logits are ``z = W h`` with ``h`` the decoder's final (layer-normed) hidden state. Replacing ``W`` by
``W'`` changes them by ``(W - W') h``, whose mean squared norm over calibration tokens is

    E ||(W - W') h||^2 = tr((W - W') C (W - W')^T) = ||(W - W') S||_F^2,   C = E[h h^T] = S S^T.

Plain SVD minimises ``||W - W'||_F`` instead, as if every direction of ``h`` were equally likely. The
activation-aware factorisation takes the SVD of ``W S``, keeps rank ``r`` and undoes the scaling:
``W S ~ A B0`` (``surgery.svd_factors``, square-root split of the singular values), ``B = B0 S^-1``, so
``W' = A B`` is the rank-``r`` matrix with the smallest activation-weighted error (Eckart-Young applied to
``W S``; the same idea as ASVD / SVD-LLM's whitening). ``S`` is the symmetric square root of ``C`` (``full``),
``sqrt(diag C)`` (``diag``, ASVD-style per-channel scaling) or the identity (``none`` = plain SVD).
``C`` is damped, ``C + damping * mean(eig C) * I``, so ``S`` is invertible; errors are always measured with
the undamped ``C``.

The factors are installed with ``surgery.factorize_embedding``: the embedding lookup becomes ``A[ids] B``
and the logits ``(h B^T) A^T``, one pair of parameters shared by both (the tie is kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.layer_merge import valid_token_mask
from asrcompress.compress.surgery import LowRankEmbedding, SurgeryError, factorize_embedding, svd_factors

__all__ = [
    "SCALINGS",
    "embedding_weight",
    "rank_for_fraction",
    "logit_input_moment",
    "activation_scale",
    "activation_aware_factors",
    "reconstruction_errors",
    "rank_error_sweep",
    "factorize_activation_aware",
]

SCALINGS = ("full", "diag", "none")


def embedding_weight(model: nn.Module) -> Tensor:
    """The (vocab x d_model) token embedding of a Whisper model (``A @ B`` if already factorised)."""
    emb = model.model.decoder.embed_tokens
    return emb.full_weight().detach() if isinstance(emb, LowRankEmbedding) else emb.weight.detach()


def rank_for_fraction(fraction: float, vocab: int, d_model: int) -> int:
    """Rank for ``fraction`` of ``min(vocab, d_model)`` (the convention of ``surgery.structure_fractions``):
    nearest integer, halves up, at least 1, at most the full rank."""
    full = min(vocab, d_model)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"rank fraction must be in (0, 1], got {fraction}")
    return max(1, min(full, math.floor(fraction * full + 0.5)))


@torch.no_grad()
def logit_input_moment(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> tuple[Tensor, int]:
    """Second moment ``C = E[h h^T]`` (float64, d_model x d_model) of the hidden states ``h`` entering the
    output projection, over the real target tokens of teacher-forced calibration ``batches``
    (``input_features`` + ``labels``). Returns ``(C, number of tokens)``."""
    d = model.config.d_model
    acc = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    seen: dict[str, Tensor] = {}

    def grab(_module: nn.Module, args: tuple) -> None:
        seen["h"] = args[0].detach()

    was_training = model.training
    model.eval()
    handle = model.proj_out.register_forward_pre_hook(grab)
    try:
        for batch in batches:
            model(input_features=batch["input_features"], labels=batch["labels"])
            h = seen["h"][valid_token_mask(batch)].to(torch.float64).cpu()
            acc += h.T @ h
            count += h.shape[0]
    finally:
        handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("logit_input_moment: calibration batches hold no target token")
    return acc / count, count


def activation_scale(C: Tensor, mode: str = "full", damping: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(S, S^-1)`` in float64 for a second-moment matrix ``C``: ``full`` = symmetric square root of the
    damped ``C``, ``diag`` = ``sqrt`` of its damped diagonal, ``none`` = identity (plain SVD)."""
    if mode not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {mode!r}")
    C = C.to(torch.float64)
    d = C.shape[0]
    if mode == "none":
        eye = torch.eye(d, dtype=torch.float64)
        return eye, eye.clone()
    if mode == "diag":
        diag = C.diagonal().clamp_min(0)
        diag = diag + damping * diag.mean().clamp_min(1e-12)
        return torch.diag(diag.sqrt()), torch.diag(diag.rsqrt())
    evals, evecs = torch.linalg.eigh((C + C.T) / 2)
    evals = evals.clamp_min(0)
    evals = evals + damping * evals.mean().clamp_min(1e-12)
    return (evecs * evals.sqrt()) @ evecs.T, (evecs * evals.rsqrt()) @ evecs.T


def activation_aware_factors(W: Tensor, rank: int, S: Tensor, S_inv: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, B)`` with ``A @ B`` the rank-``rank`` approximation of ``W`` minimising ``||(W - A B) S||_F``:
    ``svd_factors(W S, rank)`` then ``B = B0 S^-1``. Computed in float64, returned in ``W``'s dtype."""
    A, B0 = svd_factors(W.detach().to(torch.float64) @ S, rank)
    return A.to(W.dtype).contiguous(), (B0 @ S_inv).to(W.dtype).contiguous()


def reconstruction_errors(W: Tensor, W_hat: Tensor, C: Tensor) -> dict[str, float]:
    """Relative errors of ``W_hat`` against ``W``: ``weight_rel_err`` = ||W - W_hat||_F / ||W||_F and
    ``act_rel_err`` = sqrt(tr(E C E^T) / tr(W C W^T)) with E = W - W_hat, i.e. the RMS change of the logits
    over the calibration tokens relative to the RMS logit."""
    W64, E = W.to(torch.float64), (W - W_hat).to(torch.float64)
    C = C.to(torch.float64)
    weight = float(E.norm() / W64.norm())
    act = float(((E @ C) * E).sum().clamp_min(0) / ((W64 @ C) * W64).sum()) ** 0.5
    return {"weight_rel_err": weight, "act_rel_err": act}


def rank_error_sweep(W: Tensor, C: Tensor, ranks: Sequence[int], mode: str = "full",
                     damping: float = 0.01) -> list[dict[str, Any]]:
    """Reconstruction error per rank, plain SVD vs activation-aware (``mode``), both measured in weight
    space and activation-weighted (see :func:`reconstruction_errors`). One record per rank with ``rank``,
    ``rank_fraction`` (of min(vocab, d_model)), ``embedding_params`` (rank x (vocab + d_model)),
    ``plain_weight_rel_err``, ``plain_act_rel_err``, ``aware_weight_rel_err``, ``aware_act_rel_err``."""
    vocab, d = W.shape
    S, S_inv = activation_scale(C, mode, damping)
    eye = torch.eye(d, dtype=torch.float64)
    top = max(int(r) for r in ranks)
    # one SVD per scaling: the rank-r factors are the first r columns of A and rows of B of the top rank
    factors = {name: activation_aware_factors(W.to(torch.float64), top, s, s_inv)
               for name, (s, s_inv) in (("plain", (eye, eye)), ("aware", (S, S_inv)))}
    out = []
    for r in (int(r) for r in ranks):
        rec: dict[str, Any] = {"rank": r, "rank_fraction": r / min(vocab, d), "embedding_params": r * (vocab + d)}
        for name, (A, B) in factors.items():
            errs = reconstruction_errors(W, A[:, :r] @ B[:r], C)
            rec.update({f"{name}_{k}": v for k, v in errs.items()})
        out.append(rec)
    return out


def factorize_activation_aware(model: nn.Module, rank: int, C: Tensor, mode: str = "full",
                               damping: float = 0.01) -> dict[str, Any]:
    """Replace the tied embedding / output projection of a Whisper ``model`` by its activation-aware
    rank-``rank`` factorisation (tie kept). Returns the rank, the parameter counts of the embedding before
    and after, and the installed factors' errors (:func:`reconstruction_errors`)."""
    W = embedding_weight(model)
    vocab, d = W.shape
    if not 1 <= rank <= min(vocab, d):
        raise SurgeryError(f"decoder embedding: rank {rank} out of range 1..{min(vocab, d)}")
    S, S_inv = activation_scale(C, mode, damping)
    A, B = activation_aware_factors(W, rank, S, S_inv)
    errs = reconstruction_errors(W, A.to(torch.float64) @ B.to(torch.float64), C)
    factorize_embedding(model, A, B)
    return {"rank": int(rank), "scaling": mode, "damping": float(damping),
            "embedding_params_dense": vocab * d, "embedding_params_lowrank": rank * (vocab + d), **errs}
