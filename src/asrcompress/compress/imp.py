"""Iterative Magnitude Pruning (IMP), paper 1's baseline.

``rounds`` times: raise the sparsity of the selected weights to the round's level with **global**
magnitude pruning (:func:`asrcompress.compress.magnitude.global_magnitude_masks`: one ``|w|`` threshold
over every selected tensor), store the masks (:func:`asrcompress.compress.masks.apply_masks`; a mask
combines with the earlier ones), then fine-tune with the masks re-applied after every optimiser step
(``after_step`` = :func:`asrcompress.compress.masks.reapply_masks`).

Schedule (:func:`imp_schedule`): ``geometric`` (classic IMP: every round prunes the same fraction of
the weights still alive, ``s_r = 1 - (1 - target)^(r / R)``) or ``linear`` (``s_r = target r / R``).
Both end exactly at ``target``. Weights pruned in an earlier round are zero, hence the smallest, so
each round's global count includes them and the final sparsity of the selection is exactly
``n_to_prune(target, selected entries) / selected entries``.

The result is a masked dense model: sparsity, not fewer parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from asrcompress.compress.magnitude import ParamFilter, global_magnitude_masks
from asrcompress.compress.masks import apply_masks, sparsity_report

__all__ = ["SCHEDULES", "imp_schedule", "run_imp"]

SCHEDULES = ("geometric", "linear")


def imp_schedule(target: float, rounds: int, schedule: str = "geometric") -> list[float]:
    """Cumulative sparsity after each of ``rounds`` rounds, ending at ``target``."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"IMP target sparsity must be in [0, 1), got {target}")
    if rounds < 1:
        raise ValueError(f"IMP needs at least one round, got {rounds}")
    if schedule == "geometric":
        levels = [1.0 - (1.0 - target) ** (r / rounds) for r in range(1, rounds + 1)]
    elif schedule == "linear":
        levels = [target * r / rounds for r in range(1, rounds + 1)]
    else:
        raise ValueError(f"unknown IMP schedule {schedule!r}; known: {list(SCHEDULES)}")
    levels[-1] = target  # no float drift at the end
    return levels


def run_imp(model: nn.Module, target: float, rounds: int, param_filter: ParamFilter,
            finetune: Callable[[nn.Module, int], Any] | None = None,
            schedule: str = "geometric") -> list[dict[str, Any]]:
    """IMP in place. ``finetune(model, round)`` trains the masked model (it must re-apply the masks
    after each step, e.g. ``after_step=lambda m, s: reapply_masks(m)``); None prunes without training
    (one-shot at each level). Returns one record per round: ``round``, ``level`` (asked sparsity),
    ``sparsity`` (measured over the selected weights after pruning), ``zero``, ``total`` and the
    fine-tune's return value as ``train``."""
    history = []
    for r, level in enumerate(imp_schedule(target, rounds, schedule)):
        apply_masks(model, global_magnitude_masks(model, level, param_filter))
        rep = sparsity_report(model, param_filter)
        rec: dict[str, Any] = {"round": r, "level": level, "sparsity": rep["sparsity"],
                               "zero": rep["zero"], "total": rep["total"]}
        if finetune is not None:
            rec["train"] = finetune(model, r)
            rec["sparsity_after_train"] = sparsity_report(model, param_filter)["sparsity"]
        history.append(rec)
    return history
