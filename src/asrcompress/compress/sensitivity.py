"""Gradient and Fisher sensitivity of Whisper's components and layers (paper 3, step 1).

For calibration utterance ``n`` (batch size 1, as the authors' code) let ``g_n`` be the gradient of the
model's own teacher-forced cross-entropy on the reference transcript (the language/task prefix, the text
and EOT, mean over tokens; model in eval mode, no dropout). For a group ``G`` of weights (a component in
one layer):

* gradient score  ``score_grad(G)   = 1/N_grad   * sum_n sum_{i in G} |g_{n,i} * w_i|``
  (first-order Taylor estimate of the loss change from zeroing ``w_i``, taken per utterance so that
  gradients of opposite sign from different utterances do not cancel);
* Fisher score    ``score_fisher(G) = 1/N_fisher * sum_n sum_{i in G} g_{n,i}^2``
  (diagonal empirical Fisher information).

The first ``N_grad`` calibration utterances feed the gradient score and the first ``N_fisher`` the Fisher
score (code: 1000 and 500; both capped at the calibration set's size). Sums grow with the group's size, so
:func:`per_param` divides by ``n_params`` as well. Only prunable components are scored (``other`` is never
pruned). The tied token embedding and output projection are scored per use (see
:func:`asrcompress.compress.components.untied`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from asrcompress.compress.components import COMPONENTS, param_map, untied
from asrcompress.train.determinism import deterministic_algorithms

__all__ = [
    "calibration_split",
    "sensitivity_scores",
    "whisper_loss_fn",
    "per_param",
    "component_totals",
]


def calibration_split(rows: Sequence[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(calibration, evaluation): the first ``round(fraction * len(rows))`` rows (at least 1 if
    ``fraction > 0``) and the rest, in corpus order (code: first 10 % of the test split)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibration fraction {fraction} outside [0, 1)")
    n = int(math.floor(fraction * len(rows) + 0.5))
    if fraction > 0:
        n = max(1, n)
    if n >= len(rows):
        raise ValueError(f"calibration takes {n} of {len(rows)} rows: nothing left to evaluate on")
    return list(rows[:n]), list(rows[n:])


def whisper_loss_fn(processor: Any, language: str):
    """``loss_fn(model, row) -> scalar``: teacher-forced CE of one row with the project's collator
    (log-mel features; labels = language/task/no-timestamps prefix, text, EOT)."""
    from asrcompress.train.collate import WhisperCollator

    collate = WhisperCollator(processor, language=language)

    def loss_fn(model: nn.Module, row: dict) -> torch.Tensor:
        batch = collate([row])
        device = next(model.parameters()).device
        return model(input_features=batch["input_features"].to(device), labels=batch["labels"].to(device)).loss

    return loss_fn


def sensitivity_scores(model: nn.Module, rows: Sequence[dict], loss_fn, n_grad: int, n_fisher: int,
                       progress: bool = True) -> list[dict[str, Any]]:
    """Gradient and Fisher scores per (component, layer) over the first ``n_grad`` / ``n_fisher`` rows.

    ``loss_fn(model, row)`` gives one utterance's loss (:func:`whisper_loss_fn`). Returns tidy records
    ``{"component", "layer", "n_params", "n_tensors", "score_grad", "score_fisher", "n_grad",
    "n_fisher"}`` (``layer`` None for token embedding / output projection), in component then layer
    order. The model's weights, ``requires_grad`` flags, ``.grad`` fields and train/eval mode are left as
    they were.
    """
    n_grad, n_fisher = min(n_grad, len(rows)), min(n_fisher, len(rows))
    if n_grad < 1 or n_fisher < 1:
        raise ValueError("sensitivity needs at least one calibration row for each score")
    was_training = model.training
    model.eval()
    flags = {id(p): p.requires_grad for p in model.parameters()}
    try:
        with untied(model), deterministic_algorithms():
            infos = [i for i in param_map(model) if i.prunable]
            params = [model.get_parameter(i.name) for i in infos]
            for p in params:
                p.requires_grad_(True)
            device = params[0].device
            grad_acc = torch.zeros(len(params), dtype=torch.float64, device=device)
            fisher_acc = torch.zeros(len(params), dtype=torch.float64, device=device)
            zero = torch.zeros((), dtype=torch.float64, device=device)
            steps = max(n_grad, n_fisher)
            for n in tqdm(range(steps), desc="sensitivity", disable=not progress, mininterval=5):
                loss = loss_fn(model, rows[n])
                if not torch.isfinite(loss):
                    raise ValueError(f"calibration row {n}: loss is {loss.item()}")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                with torch.no_grad():  # sums stay on the device: no host sync per tensor
                    if n < n_grad:
                        grad_acc += torch.stack([zero if g is None else (g * p).abs().sum(dtype=torch.float64)
                                                 for g, p in zip(grads, params, strict=True)])
                    if n < n_fisher:
                        fisher_acc += torch.stack([zero if g is None else g.pow(2).sum(dtype=torch.float64)
                                                   for g in grads])
            grad_acc, fisher_acc = grad_acc.cpu(), fisher_acc.cpu()
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))
        model.train(was_training)
    groups: dict[tuple[str, int | None], dict[str, Any]] = {}
    for j, info in enumerate(infos):
        rec = groups.setdefault((info.component, info.layer), {
            "component": info.component, "layer": info.layer, "n_params": 0, "n_tensors": 0,
            "score_grad": 0.0, "score_fisher": 0.0, "n_grad": n_grad, "n_fisher": n_fisher})
        rec["n_params"] += info.numel
        rec["n_tensors"] += 1
        rec["score_grad"] += float(grad_acc[j]) / n_grad
        rec["score_fisher"] += float(fisher_acc[j]) / n_fisher
    order = {c: i for i, c in enumerate(COMPONENTS)}
    return sorted(groups.values(), key=lambda r: (order[r["component"]], -1 if r["layer"] is None else r["layer"]))


def per_param(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records with ``score_grad_per_param`` / ``score_fisher_per_param`` (score / n_params) added."""
    return [{**r, "score_grad_per_param": r["score_grad"] / r["n_params"],
             "score_fisher_per_param": r["score_fisher"] / r["n_params"]} for r in records]


def component_totals(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Scores summed over layers, one record per component, with per-parameter scores and ranks
    (``rank_grad``/``rank_fisher``: 1 = most sensitive per parameter), in component order."""
    totals: dict[str, dict[str, Any]] = {}
    for r in records:
        t = totals.setdefault(r["component"], {"component": r["component"], "n_params": 0,
                                               "score_grad": 0.0, "score_fisher": 0.0})
        t["n_params"] += r["n_params"]
        t["score_grad"] += r["score_grad"]
        t["score_fisher"] += r["score_fisher"]
    out = per_param(list(totals.values()))
    for key in ("grad", "fisher"):
        ranked = sorted(out, key=lambda t, k=key: -t[f"score_{k}_per_param"])
        for i, t in enumerate(ranked, 1):
            t[f"rank_{key}"] = i
    return out
