"""Weight-adaptive two-pass pruning (paper 1's second step; its exact rule is not public).

The rule implemented here, every knob a param (``p1.prune``):

**Pass 1 (structured, physical).** For every removable unit set — the FFN neurons of a layer (norm of
neuron ``j`` = L2 norm of column ``j`` of ``fc2``, the weights that read it) and the heads of an
attention module (norm of head ``h`` = Frobenius norm of its ``head_dim`` column block of
``out_proj``) — compute the units' norms ``n`` and

* remove every unit with ``n <= zero_tol`` (0 by default: exactly zero, e.g. driven there by SGL; its
  removal does not change the model's output);
* compute a statistic of the remaining (non-zero) norms of *that* set and remove units with
  ``n < threshold``, where ``threshold`` = :func:`adaptive_threshold` ``(statistic, k)``:
  ``mean_std`` -> ``mean - k * std``; ``median`` -> ``k * median``; ``mean`` -> ``k * mean``
  (std is the population std). ``k`` is ``pass1_k``; a ``mean_std`` threshold with ``k`` large enough
  removes nothing but the zero units;
* keep at least ``min_keep`` units per set (the largest norms).

The removals are carried out by :mod:`asrcompress.compress.surgery` (``prune_ffn_neurons``,
``prune_heads``): fewer parameters and FLOPs.

**Pass 2 (unstructured, masks).** In every remaining linear of ``pass2_kinds``, the magnitudes of the
non-zero weights give a per-matrix threshold (same statistics, ``pass2_statistic`` and ``pass2_k``);
weights below it, and weights already zero, are masked (:func:`asrcompress.compress.masks.apply_masks`).
This is sparsity: reported as such, never as fewer parameters.

Statistics are computed per matrix (per unit set), so the thresholds adapt to each matrix's own scale:
this is the "weight-statistics aware" part of the method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.masks import apply_masks
from asrcompress.compress.sgl import ALL_KINDS, find_linears, structural_units
from asrcompress.compress.surgery import prune_ffn_neurons, prune_heads, structure_of

__all__ = [
    "STATISTICS",
    "TwoPassRule",
    "adaptive_threshold",
    "select_units",
    "plan_pass1",
    "apply_pass1",
    "pass2_masks",
    "two_pass_prune",
    "kept_widths",
    "plot_kept_widths",
]

STATISTICS = ("mean_std", "median", "mean")


def adaptive_threshold(values: Tensor, statistic: str, k: float) -> float:
    """The threshold of a distribution of non-negative ``values``: ``mean_std`` = mean - k std
    (population std), ``median`` = k median (lower median for an even count, torch's convention),
    ``mean`` = k mean. ``-inf`` for an empty tensor (nothing falls below it)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {list(STATISTICS)}")
    v = values.detach().double().reshape(-1)
    if v.numel() == 0:
        return -math.inf
    if statistic == "mean_std":
        return float(v.mean() - k * v.std(unbiased=False))
    if statistic == "median":
        return float(k * v.median())
    return float(k * v.mean())


@dataclass(frozen=True)
class TwoPassRule:
    """Knobs of the two-pass rule (see the module docstring)."""

    pass1_statistic: str = "mean_std"
    pass1_k: float = 1.5
    pass2_statistic: str = "mean_std"
    pass2_k: float = 1.0
    zero_tol: float = 0.0
    min_keep: int = 0
    prune_ffn: bool = True
    prune_heads: bool = True
    pass2_kinds: tuple[str, ...] = ALL_KINDS

    def __post_init__(self) -> None:
        for key in ("pass1_statistic", "pass2_statistic"):
            if getattr(self, key) not in STATISTICS:
                raise ValueError(f"{key} must be one of {STATISTICS}, got {getattr(self, key)!r}")
        if self.min_keep < 0 or self.zero_tol < 0:
            raise ValueError("min_keep and zero_tol must be >= 0")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TwoPassRule:
        """From the ``p1.prune`` params section (keys as the fields; ``pass2_kinds`` a list; a
        an empty ``pass2_kinds`` disables pass 2)."""
        from asrcompress.config import get

        return cls(pass1_statistic=get(section, "pass1_statistic", str), pass1_k=get(section, "pass1_k", float),
                   pass2_statistic=get(section, "pass2_statistic", str),
                   pass2_k=get(section, "pass2_k", float),
                   zero_tol=get(section, "zero_tol", float, 0.0), min_keep=get(section, "min_keep", int, 0),
                   prune_ffn=get(section, "prune_ffn", bool, True),
                   prune_heads=get(section, "prune_heads", bool, True),
                   pass2_kinds=tuple(get(section, "pass2_kinds", list)))


def select_units(norms: Tensor, statistic: str, k: float, zero_tol: float = 0.0, min_keep: int = 0
                 ) -> tuple[list[int], float]:
    """Pass 1 on one unit set: ``(sorted indices to remove, threshold)``. Units with norm <= ``zero_tol``
    go; the threshold is the statistic of the other norms; at least ``min_keep`` units (largest
    norms) stay."""
    norms = norms.detach().double().reshape(-1)
    zero = norms <= zero_tol
    thr = adaptive_threshold(norms[~zero], statistic, k)
    remove = zero | (norms < thr)
    n_keep = int((~remove).sum())
    if n_keep < min_keep:
        for i in torch.argsort(norms, descending=True, stable=True)[: min(min_keep, norms.numel())].tolist():
            remove[i] = False
    return sorted(remove.nonzero().reshape(-1).tolist()), thr


def plan_pass1(model: nn.Module, rule: TwoPassRule) -> list[dict[str, Any]]:
    """Pass 1 decisions, one record per unit set: ``stack``, ``layer``, ``what`` (``ffn``/``self``/
    ``cross``), ``units`` (count before), ``zero`` (exactly-zero units), ``threshold``, ``remove``
    (current indices)."""
    plan = []
    for stack, layer, what, norms in structural_units(model):
        if (what == "ffn" and not rule.prune_ffn) or (what != "ffn" and not rule.prune_heads):
            continue
        remove, thr = select_units(norms, rule.pass1_statistic, rule.pass1_k, rule.zero_tol, rule.min_keep)
        plan.append({"stack": stack, "layer": layer, "what": what, "units": int(norms.numel()),
                     "zero": int((norms <= rule.zero_tol).sum()), "threshold": thr, "remove": remove})
    return plan


def apply_pass1(model: nn.Module, plan: list[dict[str, Any]]) -> None:
    """Carry out a pass-1 plan with the surgery core (in place)."""
    for rec in plan:
        if not rec["remove"]:
            continue
        if rec["what"] == "ffn":
            prune_ffn_neurons(model, rec["stack"], rec["layer"], rec["remove"])
        else:
            prune_heads(model, rec["stack"], rec["layer"], rec["remove"], attn=rec["what"])


@torch.no_grad()
def pass2_masks(model: nn.Module, rule: TwoPassRule) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Pass 2: per weight of ``rule.pass2_kinds``, a mask keeping non-zero weights whose magnitude is at
    least the statistic of that matrix's non-zero magnitudes; returns ``(masks, thresholds)``."""
    masks, thresholds = {}, {}
    for t in find_linears(model, rule.pass2_kinds):
        w = t.module.weight.detach()
        if w.numel() == 0:
            continue
        mag = w.abs()
        thr = adaptive_threshold(mag[mag > 0], rule.pass2_statistic, rule.pass2_k)
        masks[t.weight_name] = (mag > 0) & (mag.double() >= thr)
        thresholds[t.weight_name] = thr
    return masks, thresholds


def two_pass_prune(model: nn.Module, rule: TwoPassRule) -> dict[str, Any]:
    """Both passes, in place: pass 1 removes units physically, pass 2 stores masks on what is left
    (re-apply them after optimiser steps with ``masks.reapply_masks``; ``masks.make_permanent`` before
    saving). Returns a report: the pass-1 ``plan``, counts of removed neurons/heads, pass-2
    ``pass2_thresholds`` and the number of pass-2-masked weights."""
    plan = plan_pass1(model, rule)
    apply_pass1(model, plan)
    masks, thresholds = pass2_masks(model, rule)
    apply_masks(model, masks)
    masked = sum(int((~m).sum()) for m in masks.values())
    return {
        "plan": plan,
        "removed_ffn_neurons": sum(len(r["remove"]) for r in plan if r["what"] == "ffn"),
        "removed_heads": sum(len(r["remove"]) for r in plan if r["what"] != "ffn"),
        "pass2_masked_weights": masked,
        "pass2_weights": sum(m.numel() for m in masks.values()),
        "pass2_thresholds": thresholds,
    }


def kept_widths(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer (from :func:`surgery.structure_of`): ``stack``, ``layer``, ``ffn`` kept / ``ffn_base``,
    ``heads`` kept / ``heads_base``, and for the decoder ``cross_heads``."""
    s = structure_of(model)
    base = s["base_config"]
    out = []
    for stack, srec in s["stacks"].items():
        ffn_base, heads_base = base[f"{stack}_ffn_dim"], base[f"{stack}_attention_heads"]
        for i, rec in enumerate(srec["layers"]):
            row = {"stack": stack, "layer": i, "ffn": rec["ffn"], "ffn_base": ffn_base,
                   "heads": len(rec["heads"]), "heads_base": heads_base}
            if "cross_heads" in rec:
                row["cross_heads"] = len(rec["cross_heads"])
            out.append(row)
    return out


def plot_kept_widths(widths: list[dict[str, Any]], path: str | Path, title: str = "kept width per layer") -> None:
    """PNG: per layer, the kept fraction of FFN neurons, self-attention heads and cross-attention heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{w['stack'][:3]}{w['layer']}" for w in widths]
    series = {
        "FFN neurons": [w["ffn"] / w["ffn_base"] for w in widths],
        "self-attn heads": [w["heads"] / w["heads_base"] for w in widths],
        "cross-attn heads": [w.get("cross_heads", float("nan")) / w["heads_base"] for w in widths],
    }
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(widths) + 2), 3.8))
    width = 0.27
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - 1) * width for i in range(len(widths))]
        ax.bar(xs, vals, width=width, label=name)
    for i, w in enumerate(widths):
        ax.text(i, 1.02, f"{w['ffn']}/{w['ffn_base']}", ha="center", fontsize=7)
    ax.set_xticks(range(len(widths)), labels)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("kept fraction")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
