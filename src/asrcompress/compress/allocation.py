"""Pruning ratios derived from measured sensitivity scores (paper 3: the scores decide where and how much).

Input: the records of :func:`asrcompress.compress.sensitivity.sensitivity_scores` (``reports/p3/
sensitivity.json``, key ``per_layer``): one per (component, layer) with ``n_params`` and the summed
``score_grad`` / ``score_fisher``.

Units. With ``by_layer`` every (component, layer) of a layered component (encoder / decoder attention and
FFN) is one unit; without it, one unit per component. The conv front-end (conv1 + conv2) is always one unit
(one ratio per component for it, as in the paper's configuration). A *tied* token embedding / output
projection is one tensor, so one unit: its score is the sum of the two uses' scores and its parameters
are counted once (an untied model has two units).

Rule. With ``s_u = score_u / n_u`` (the per-parameter score; summed scores grow with the group's size)
and ``s_bar`` their parameter-weighted mean::

    r_u(lam) = clip(lam * (s_bar / s_u) ** power, min_ratio, max_ratio)      (s_u = 0: max_ratio)

so a unit less sensitive per parameter is pruned more (``power`` 1: inversely proportional; 0: the same
ratio everywhere). The overall sparsity of the prunable parameters ``S(lam) = sum_u n_u r_u(lam) /
sum_u n_u`` is continuous and non-decreasing in ``lam``; bisection finds ``lam`` with ``S(lam) = target``
(to 1e-9). A target outside the reachable range ``[S(0), max_ratio]`` raises ValueError. Per-tensor
rounding of the masks (``magnitude.n_to_prune``) then moves the pruned count by under one weight per
tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asrcompress.compress.components import COMPONENTS, STACK_OF

__all__ = ["SCORES", "AllocationRule", "Allocation", "allocation_units", "allocate"]

#: ``p3.allocation.score`` -> the record field it reads
SCORES: dict[str, str] = {"fisher": "score_fisher", "gradient": "score_grad"}
_TIED = ("token_embedding", "output_projection")


@dataclass(frozen=True)
class AllocationRule:
    """The ``p3.allocation`` params: which score, per layer or per component, ratio bounds, exponent."""

    score: str = "fisher"
    by_layer: bool = True
    min_ratio: float = 0.0
    max_ratio: float = 0.8
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"p3.allocation.score: {self.score!r} is not one of {sorted(SCORES)}")
        if not 0.0 <= self.min_ratio <= self.max_ratio <= 1.0:
            raise ValueError(f"p3.allocation: need 0 <= min_ratio ({self.min_ratio}) <= max_ratio "
                             f"({self.max_ratio}) <= 1")
        if not self.power >= 0:
            raise ValueError(f"p3.allocation.power: {self.power!r} must be >= 0")


@dataclass
class Allocation:
    """Ratios for :func:`asrcompress.compress.components.tensor_ratios`: ``ratios`` ({component: r}) and
    ``per_layer`` ({component: {layer: r}}); ``units`` (one dict per unit: components, layer, n_params,
    score_per_param, ratio), ``lam`` and the solved ``sparsity`` (before per-tensor rounding)."""

    ratios: dict[str, float]
    per_layer: dict[str, dict[int, float]]
    units: list[dict[str, Any]] = field(default_factory=list)
    lam: float = 0.0
    sparsity: float = 0.0


def allocation_units(records: Sequence[Mapping[str, Any]], score: str, by_layer: bool,
                     tied_embedding: bool) -> list[dict[str, Any]]:
    """Group the sensitivity records into units (see the module docstring): ``{"components", "layer",
    "n_params", "score", "score_per_param"}`` in component then layer order."""
    field_ = SCORES[score]
    units: dict[tuple[str, int | None], dict[str, Any]] = {}
    for r in records:
        comp = r["component"]
        if comp not in COMPONENTS:
            raise ValueError(f"sensitivity record for unknown component {comp!r}")
        layered = STACK_OF[comp] is not None and by_layer
        key = (_TIED[0] if tied_embedding and comp in _TIED else comp, r["layer"] if layered else None)
        u = units.setdefault(key, {"components": [], "layer": key[1], "n_params": 0, "score": 0.0})
        if comp not in u["components"]:
            u["components"].append(comp)
        # a tied tensor's two uses each report the whole tensor: count its parameters once
        if not (tied_embedding and comp == _TIED[1]):
            u["n_params"] += int(r["n_params"])
        u["score"] += float(r[field_])
    for u in units.values():
        if u["n_params"] <= 0:
            raise ValueError(f"sensitivity unit {u['components']} layer {u['layer']}: no parameters")
        if u["score"] < 0:
            raise ValueError(f"sensitivity unit {u['components']} layer {u['layer']}: negative score")
        u["score_per_param"] = u["score"] / u["n_params"]
    return list(units.values())


def _ratios(lam: float, weights: Sequence[float], lo: float, hi: float) -> list[float]:
    return [hi if w == float("inf") else min(hi, max(lo, lam * w)) for w in weights]


def _sparsity(ratios: Sequence[float], sizes: Sequence[int]) -> float:
    return sum(r * n for r, n in zip(ratios, sizes, strict=True)) / sum(sizes)


def allocate(records: Sequence[Mapping[str, Any]], target_sparsity: float, rule: AllocationRule | None = None,
             tied_embedding: bool = True, where: str = "p3.compare_sparsities") -> Allocation:
    """Per-unit ratios reaching ``target_sparsity`` of the scored (prunable) parameters by the rule of the
    module docstring. ``tied_embedding``: whether token embedding and output projection are one tensor
    (see :func:`asrcompress.compress.components.param_map`). ``where`` names the params key of the
    target in errors."""
    rule = rule or AllocationRule()
    units = allocation_units(records, rule.score, rule.by_layer, tied_embedding)
    if not units:
        raise ValueError("allocate: no sensitivity records")
    sizes = [u["n_params"] for u in units]
    total = sum(sizes)
    s_bar = sum(u["score"] for u in units) / total
    if s_bar <= 0:
        raise ValueError(f"allocate: every {rule.score} score is 0; the scores cannot rank anything")
    weights = [1.0 if rule.power == 0 else (float("inf") if u["score_per_param"] == 0
                                            else (s_bar / u["score_per_param"]) ** rule.power) for u in units]
    lo_s = _sparsity(_ratios(0.0, weights, rule.min_ratio, rule.max_ratio), sizes)
    if not lo_s - 1e-12 <= target_sparsity <= rule.max_ratio + 1e-12:
        raise ValueError(f"{where}: sparsity {target_sparsity:g} is outside what p3.allocation reaches "
                         f"[{lo_s:.4g}, {rule.max_ratio:g}] (min_ratio / max_ratio)")
    finite = [w for w in weights if w != float("inf")]
    lam_lo, lam_hi = 0.0, (rule.max_ratio / min(finite) if finite and min(finite) > 0 else 1.0)
    for _ in range(200):
        lam = 0.5 * (lam_lo + lam_hi)
        if _sparsity(_ratios(lam, weights, rule.min_ratio, rule.max_ratio), sizes) < target_sparsity:
            lam_lo = lam
        else:
            lam_hi = lam
        if lam_hi - lam_lo <= 1e-15 * max(1.0, lam_hi):
            break
    ratios = _ratios(lam_hi, weights, rule.min_ratio, rule.max_ratio)
    reached = _sparsity(ratios, sizes)
    if abs(reached - target_sparsity) > 1e-9:  # continuous in lam, so bisection cannot miss
        raise RuntimeError(f"allocate: bisection reached {reached} for target {target_sparsity}")
    out = Allocation({}, {}, lam=lam_hi, sparsity=reached)
    for u, r in zip(units, ratios, strict=True):
        u["ratio"] = r
        out.units.append(u)
        for comp in u["components"]:
            if u["layer"] is None:
                out.ratios[comp] = r
            else:
                out.per_layer.setdefault(comp, {})[int(u["layer"])] = r
    return out
