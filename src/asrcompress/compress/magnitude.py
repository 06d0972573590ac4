"""Magnitude (L1) pruning masks: the project's one mechanism for choosing which weights to zero.

Three ways to decide *how many* weights each tensor loses; one rule for *which*: the entries with the
smallest ``|w|``, exactly ``k`` of them, ties broken deterministically (lower position first: tensors in
``named_parameters()`` order, entries in row-major flat order).

* :func:`l1_unstructured_masks`: a ratio per Whisper component (:mod:`~asrcompress.compress.components`),
  optionally per layer; each weight tensor loses ``n_to_prune(ratio, numel)`` entries (paper 3; the same
  rule as ``torch.nn.utils.prune.L1Unstructured`` with a float amount, which rounds ``amount * numel``).
* :func:`global_magnitude_masks`: one threshold over all selected tensors together, hitting the overall
  count ``n_to_prune(sparsity, total)`` exactly (paper 3's global baseline).
* :func:`uniform_magnitude_masks`: the same ratio in every selected tensor (paper 4's UMP baseline); works
  for any model given a ``param_filter`` (:func:`linear_weight_filter` for wav2vec 2.0 / HuBERT).

The functions return masks (``{parameter name: bool tensor}``, True = keep) and change nothing; apply them
with :func:`asrcompress.compress.masks.apply_masks`. Only tensors that lose at least one entry get a mask.
A shared (tied) tensor is one tensor, keyed by its first name in ``named_parameters()``.
Masked weights are zeros: report sparsity and non-zero parameters, never fewer parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from asrcompress.compress.components import prunable_filter, tensor_ratios

__all__ = [
    "ParamFilter",
    "n_to_prune",
    "smallest_magnitude_masks",
    "l1_unstructured_masks",
    "global_magnitude_masks",
    "uniform_magnitude_masks",
    "linear_weight_filter",
    "default_param_filter",
    "count_pruned",
    "board_compress",
]

ParamFilter = Callable[[str, nn.Parameter], bool]


def n_to_prune(ratio: float, numel: int) -> int:
    """Entries to prune: ``round(ratio * numel)``, halves rounded up (``floor(x + 0.5)``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio {ratio} outside [0, 1]")
    return min(numel, int(math.floor(ratio * numel + 0.5)))


@torch.no_grad()
def smallest_magnitude_masks(tensors: Sequence[Tensor], k: int) -> list[Tensor]:
    """Keep-masks (bool, shapes of ``tensors``) dropping exactly the ``k`` smallest ``|w|`` entries taken
    over all ``tensors`` together. Ties at the threshold are dropped in order: earlier tensor first, then
    lower flat index. With one tensor this is per-tensor L1 pruning."""
    mags = [t.detach().abs().reshape(-1).float() for t in tensors]
    total = sum(m.numel() for m in mags)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune {k} of {total} entries")
    if k == 0:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    if any(bool(torch.isnan(m).any()) for m in mags):
        raise ValueError("NaN weights: magnitude pruning is undefined")
    if len(mags) == 1:
        threshold = torch.kthvalue(mags[0], k).values
    else:
        threshold = torch.kthvalue(torch.cat(mags), k).values
    todo = k - sum(int((m < threshold).sum()) for m in mags)
    keeps = []
    for t, m in zip(tensors, mags, strict=True):
        drop = m < threshold
        if todo > 0:
            ties = torch.nonzero(m == threshold).reshape(-1)[:todo]
            drop[ties] = True
            todo -= ties.numel()
        keeps.append((~drop).reshape(t.shape))
    return keeps


def l1_unstructured_masks(model: nn.Module, ratios: Mapping[str, float],
                          per_layer: Mapping | None = None) -> dict[str, Tensor]:
    """Component-wise one-shot L1 pruning masks for a Whisper model (paper 3).

    ``ratios``: ``{component: ratio}`` with components from
    :data:`~asrcompress.compress.components.COMPONENTS` (left out = 0; ``other`` is refused).
    ``per_layer``: ``{component: [r_group0, r_group1, ...]}`` (contiguous equal layer groups, e.g. thirds)
    or ``{component: {layer: ratio}}``, overriding ``ratios`` for those layers
    (see :func:`~asrcompress.compress.components.tensor_ratios`). Each weight tensor loses exactly
    ``n_to_prune(ratio, numel)`` entries. The tied token embedding / output projection is one tensor and
    gets the max of the two ratios, once.
    """
    per_tensor, _ = tensor_ratios(model, ratios, per_layer)
    params = dict(model.named_parameters())
    masks = {}
    for name, ratio in per_tensor.items():
        p = params[name]
        k = n_to_prune(ratio, p.numel())
        if k:
            masks[name] = smallest_magnitude_masks([p], k)[0]
    return masks


def linear_weight_filter(model: nn.Module) -> ParamFilter:
    """Select the ``weight`` of every ``nn.Linear`` (for wav2vec 2.0 / HuBERT CTC models this includes the
    CTC ``lm_head``; pass your own filter to leave it out)."""
    names = {f"{mn}.weight" if mn else "weight" for mn, m in model.named_modules() if isinstance(m, nn.Linear)}

    def keep(name: str, param: nn.Parameter) -> bool:
        return name in names

    return keep


def default_param_filter(model: nn.Module) -> ParamFilter:
    """Whisper: the prunable components (:func:`~asrcompress.compress.components.prunable_filter`, i.e. all
    weights but LayerNorm, positional embeddings and biases). Other models: :func:`linear_weight_filter`."""
    if type(model).__name__.startswith("Whisper"):
        return prunable_filter(model)
    return linear_weight_filter(model)


def _selected(model: nn.Module, param_filter: ParamFilter | None) -> list[tuple[str, nn.Parameter]]:
    keep = param_filter or default_param_filter(model)
    chosen = [(n, p) for n, p in model.named_parameters() if keep(n, p)]
    if not chosen:
        raise ValueError("param_filter selects no parameter")
    return chosen


def global_magnitude_masks(model: nn.Module, sparsity: float,
                           param_filter: ParamFilter | None = None) -> dict[str, Tensor]:
    """Global magnitude pruning: one ``|w|`` threshold over every selected tensor, pruning exactly
    ``n_to_prune(sparsity, total selected entries)`` entries overall (per-tensor sparsities vary).
    ``param_filter(name, param)`` selects tensors (default :func:`default_param_filter`)."""
    chosen = _selected(model, param_filter)
    k = n_to_prune(sparsity, sum(p.numel() for _, p in chosen))
    keeps = smallest_magnitude_masks([p for _, p in chosen], k)
    return {n: m for (n, _), m in zip(chosen, keeps, strict=True) if not bool(m.all())}


def uniform_magnitude_masks(model: nn.Module, sparsity: float,
                            param_filter: ParamFilter | None = None) -> dict[str, Tensor]:
    """Uniform magnitude pruning: every selected tensor loses ``n_to_prune(sparsity, numel)`` of its own
    smallest entries (the overall count may differ from the global one by rounding per tensor)."""
    masks = {}
    for name, p in _selected(model, param_filter):
        k = n_to_prune(sparsity, p.numel())
        if k:
            masks[name] = smallest_magnitude_masks([p], k)[0]
    return masks


def count_pruned(masks: Mapping[str, Tensor]) -> int:
    """Number of entries the masks drop (False entries)."""
    return sum(int((~m.bool()).sum()) for m in masks.values())


def board_compress(model: nn.Module, entry: Mapping, inputs: object) -> dict:
    """Leaderboard method ``global_l1``: global magnitude pruning (one ``|w|`` threshold) over the prunable
    Whisper tensors (:func:`default_param_filter`), zeroing ``entry["budget"]`` of ALL parameters; no data."""
    from asrcompress.compress.board import pool_sparsity
    from asrcompress.compress.masks import apply_masks, make_permanent

    keep = default_param_filter(model)
    pool = sum(p.numel() for n, p in model.named_parameters() if keep(n, p))
    s = pool_sparsity(sum(p.numel() for p in model.parameters()), pool, entry.get("budget"), inputs.where)
    masks = global_magnitude_masks(model, s, keep)
    apply_masks(model, masks)
    make_permanent(model)
    return {"pool_params": pool, "pool_sparsity": s, "pruned_weights": count_pruned(masks)}
