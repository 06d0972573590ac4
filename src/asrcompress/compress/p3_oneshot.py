"""Paper 3's experiment: sensitivity-aware one-shot magnitude pruning of Whisper, no fine-tuning.

Protocol (code of the paper's first author): calibration = the first 10 % of the test split (used only by
the sensitivity scores), WER on the remaining 90 %, greedy decoding, normalised references and
hypotheses. Every point prunes the *dense* model once (masks from :mod:`~asrcompress.compress.magnitude`,
applied with :func:`~asrcompress.compress.masks.apply_masks`), decodes, and restores the dense weights.

Points (``plan_points``), each with a readable key:

* ``dense``: the unpruned model (reference for every paired test);
* ``dec_self_attn_<pct>``: decoder self-attention q/k/v/out weights at 0-50 % (paper's targeted sweep);
* ``last_encoder_<pct>``: encoder self-attention and FFN weights of the last encoder layers at 50 %
  (paper: the last four of whisper-small's 12 = the last third; ``n_layers: null`` takes the last third
  of any model, at least one layer: 1 of 2 on the smoke model);
* ``component_x<scale*100>``: the paper's final component ratios times ``scale`` (``x100`` = the final
  configuration itself, ~40 % sparsity on whisper-small);
* ``global_x<..>`` / ``uniform_x<..>``: global (one threshold) / uniform (same ratio everywhere)
  magnitude pruning over the same prunable tensors, pruning as many weights as ``component_x<..>``.

A point whose masks prune nothing has the dense weights bit for bit and reuses the dense hypotheses.

Each point reports WER (normalised) with a bootstrap 95 % CI, the paired bootstrap of WER(point) -
WER(dense) with its CI and one-sided p-values both ways, the matched-pairs test, the parameter count
(unchanged by masks), non-zero parameters, sparsity over all parameters and over the prunable tensors,
and storage: dense, CSR for the pruned tensors (``masks.sparse_storage_bytes``: values + int64 column
indices + row pointers, larger than dense below ~2/3 sparsity), and the smaller of the two per tensor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrcompress.compress.components import (
    COMPONENTS,
    layer_counts,
    param_map,
    prunable_filter,
    tensor_ratios,
)
from asrcompress.compress.magnitude import (
    count_pruned,
    global_magnitude_masks,
    l1_unstructured_masks,
    uniform_magnitude_masks,
)
from asrcompress.compress.masks import apply_masks, get_masks, remove_masks, sparse_storage_bytes
from asrcompress.measure.params import count_params, unique_named_tensors
from asrcompress.measure.wer import matched_pairs_test, paired_bootstrap, per_utterance_errors, score
from asrcompress.text.normalize import get_normalizer

__all__ = [
    "FINAL_RATIOS",
    "FINAL_PER_LAYER",
    "PrunePoint",
    "scale_config",
    "last_layers",
    "plan_points",
    "pruned",
    "point_stats",
    "component_sparsity",
    "run_points",
    "headline_metrics",
    "plot_sweeps",
]

#: the paper's final configuration (code); LayerNorm, positional embeddings and biases: 0 %
FINAL_RATIOS: dict[str, float] = {
    "enc_ffn": 0.50, "enc_self_attn": 0.40, "dec_self_attn": 0.50, "dec_cross_attn": 0.45,
    "dec_ffn": 0.30, "token_embedding": 0.25, "conv": 0.30, "output_projection": 0.25,
}
#: decoder FFN by layer thirds (layers 0-3 / 4-7 / 8-11 of whisper-small)
FINAL_PER_LAYER: dict[str, list[float]] = {"dec_ffn": [0.25, 0.45, 0.30]}


@dataclass(frozen=True)
class PrunePoint:
    """One configuration to evaluate. ``method``: dense | component | global | uniform; ``x``: the sweep
    variable (ratio for the targeted sweeps, scale for ``compare``); ``match``: for global/uniform, the
    key of the component point whose pruned-weight count is matched."""

    key: str
    group: str
    method: str
    x: float
    ratios: Mapping[str, float] = field(default_factory=dict)
    per_layer: Mapping[str, Any] | None = None
    match: str | None = None


def scale_config(ratios: Mapping[str, float], per_layer: Mapping[str, Any] | None, scale: float
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """Multiply every ratio (and per-layer ratio) by ``scale``.

    A scale below 0, or one that takes a ratio above 1, raises ValueError naming ``p3.compare_scales``
    and the ratio's key (``ratios.<component>`` / ``per_layer.<component>...``): the point would not
    be ``scale`` times the configuration (earlier versions capped such ratios at 1 silently).
    """
    if not scale >= 0:
        raise ValueError(f"p3.compare_scales: scale {scale!r} must be >= 0")

    def s(where: str, r: float) -> float:
        out = float(r) * scale
        if out > 1.0:
            raise ValueError(f"p3.compare_scales: scale {scale:g} takes {where} = {float(r):g} to "
                             f"{float(r) * scale:g}, above the cap of 1 (a ratio is at most 1)")
        return out

    new_pl: dict[str, Any] = {}
    for comp, spec in (per_layer or {}).items():
        new_pl[comp] = ({k: s(f"per_layer.{comp}.{k}", v) for k, v in spec.items()} if isinstance(spec, Mapping)
                        else [s(f"per_layer.{comp}[{i}]", v) for i, v in enumerate(spec)])
    return {c: s(f"ratios.{c}", r) for c, r in ratios.items()}, new_pl


def last_layers(n_total: int, n_layers: int | None) -> list[int]:
    """Indices of the last ``n_layers`` layers; ``None`` = the last third (at least one)."""
    n = max(1, round(n_total / 3)) if n_layers is None else int(n_layers)
    if not 1 <= n <= n_total:
        raise ValueError(f"last {n} layers asked of a {n_total}-layer encoder")
    return list(range(n_total - n, n_total))


def _pct(x: float) -> str:
    return f"{round(100 * x):d}"


def plan_points(model: nn.Module, ratios: Mapping[str, float] = FINAL_RATIOS,
                per_layer: Mapping[str, Any] | None = FINAL_PER_LAYER, *,
                dec_self_attn_ratios: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                last_encoder_ratio: float | None = 0.5, last_encoder_layers: int | None = None,
                last_encoder_components: Sequence[str] = ("enc_self_attn", "enc_ffn"),
                compare_scales: Sequence[float] = (1.0,), baselines: Sequence[str] = ("global",)
                ) -> list[PrunePoint]:
    """The points of the experiment (defaults: the paper's), dense first and each component point
    before its baselines. ``last_encoder_ratio=None`` skips the last-encoder point."""
    points = [PrunePoint("dense", "dense", "dense", 0.0)]
    for r in dec_self_attn_ratios:
        points.append(PrunePoint(f"dec_self_attn_{_pct(r)}", "dec_self_attn_sweep", "component", float(r),
                                 {"dec_self_attn": float(r)}))
    if last_encoder_ratio is not None:
        layers = last_layers(layer_counts(model)["encoder"], last_encoder_layers)
        pl = {c: dict.fromkeys(layers, float(last_encoder_ratio)) for c in last_encoder_components}
        points.append(PrunePoint(f"last_encoder_{_pct(last_encoder_ratio)}", "last_encoder", "component",
                                 float(last_encoder_ratio), {}, pl))
    for b in baselines:
        if b not in ("global", "uniform"):
            raise ValueError(f"unknown baseline {b!r}; known: global, uniform")
    for scale in compare_scales:
        r, pl = scale_config(ratios, per_layer, float(scale))
        tensor_ratios(model, r, pl)  # unknown components / layers fail here, before any decoding
        key = f"component_x{_pct(scale)}"
        points.append(PrunePoint(key, "compare", "component", float(scale), r, pl))
        points += [PrunePoint(f"{b}_x{_pct(scale)}", "compare", b, float(scale), match=key) for b in baselines]
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate point keys: {keys}")
    return points


@contextmanager
def pruned(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Apply ``masks`` for the duration of the block, then restore the exact dense weights and drop the
    masks. The model must carry no mask on entry."""
    if get_masks(model):
        raise RuntimeError("pruned(): the model already carries masks")
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in masks}
    try:
        apply_masks(model, masks)
        yield model
    finally:
        remove_masks(model)
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)


def _prunable_numel(model: nn.Module) -> int:
    keep = prunable_filter(model)
    return sum(p.numel() for n, p in model.named_parameters() if keep(n, p))


@torch.no_grad()
def point_stats(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """Counts of the model *as it is now* (masks applied): parameters (unchanged by masks), non-zero
    parameters, sparsity over all parameters and over the prunable tensors, and storage in MiB."""
    c = count_params(model)
    prunable = _prunable_numel(model)
    pruned_n = count_pruned(masks)
    dense_b = csr_b = best_b = 0
    for name, t in unique_named_tensors(model):
        d = t.numel() * t.element_size()
        dense_b += d
        if name in masks:
            s = sparse_storage_bytes(t)["csr_bytes"]
            csr_b += s
            best_b += min(d, s)
        else:
            csr_b += d
            best_b += d
    mib = 2.0 ** 20
    return {
        "params": c["params"], "nonzero_params": c["nonzero_params"],
        "params_m": c["params_m"], "nonzero_params_m": c["nonzero_params_m"],
        "sparsity_pct": c["sparsity_pct"], "pruned_weights": pruned_n,
        "prunable_params": prunable, "prunable_sparsity_pct": 100.0 * pruned_n / prunable,
        "storage_dense_mib": dense_b / mib, "storage_csr_mib": csr_b / mib, "storage_best_mib": best_b / mib,
    }


def component_sparsity(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Pruned share (%) of each prunable component's weights under ``masks`` (the tied embedding counted
    once, under ``token_embedding``; ``output_projection`` then reads the same tensor)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    pruned_n = dict.fromkeys(COMPONENTS, 0)
    total = dict.fromkeys(COMPONENTS, 0)
    for info in param_map(model):
        if not info.prunable:
            continue
        key = canonical[id(model.get_parameter(info.name))]
        total[info.component] += info.numel
        if key in masks:
            pruned_n[info.component] += int((~masks[key]).sum())
    return {c: round(100.0 * pruned_n[c] / total[c], 4) for c in COMPONENTS if total[c]}


def _masks_for(model: nn.Module, point: PrunePoint, done: Mapping[str, dict]) -> dict[str, Tensor]:
    if point.method == "dense":
        return {}
    if point.method == "component":
        return l1_unstructured_masks(model, point.ratios, point.per_layer)
    target = done[point.match]["pruned_weights"] / done[point.match]["prunable_params"]
    fn = global_magnitude_masks if point.method == "global" else uniform_magnitude_masks
    return fn(model, target, prunable_filter(model))


def run_points(model: nn.Module, points: Sequence[PrunePoint], rows: Sequence[dict], decode,
               normalizer: str, n_resamples: int, seed_of, log=None) -> tuple[list[dict], list[dict]]:
    """Evaluate every point on ``rows``.

    ``decode(model, rows) -> hypotheses`` (raw strings); ``seed_of(*names) -> int`` gives the bootstrap
    seeds. Returns ``(table, hyps)``: one flat record per point (see the module docstring; plus
    ``component_sparsity_pct`` as a dict) and one ``{"point", "id", "ref", "hyp"}`` record per point and
    utterance. The model ends with its dense weights and no masks.
    """
    if not points or points[0].method != "dense":
        raise ValueError("the first point must be the dense model")
    norm = get_normalizer(normalizer)
    refs = [r["text"] for r in rows]
    nrefs = [norm(x) for x in refs]
    table: list[dict] = []
    hyps_out: list[dict] = []
    done: dict[str, dict] = {}
    dense_hyps: list[str] = []
    dense_err = n_ref = None
    for point in points:
        masks = _masks_for(model, point, done)
        t0 = time.time()
        with pruned(model, masks):
            stats = point_stats(model, masks)
            comp = component_sparsity(model, masks)
            decoded = bool(masks) or point.method == "dense"
            hyps = decode(model, rows) if decoded else list(dense_hyps)
        decode_s = time.time() - t0
        errs = per_utterance_errors(nrefs, [norm(h) for h in hyps])
        if point.method == "dense":
            dense_hyps, dense_err, n_ref = hyps, errs["errors"], errs["n_ref_words"]
        sc = score(refs, hyps, normalizer, n_resamples=n_resamples, seed=seed_of("p3", "ci", point.key))
        pseed = seed_of("p3", "paired", point.key)
        worse = paired_bootstrap(dense_err, errs["errors"], n_ref, n_resamples, pseed)
        better = paired_bootstrap(errs["errors"], dense_err, n_ref, n_resamples, pseed)
        mp = matched_pairs_test(dense_err, errs["errors"])
        dense_wer = table[0]["wer_pct"] if table else sc["wer_pct"]
        rec = {
            "point": point.key, "group": point.group, "method": point.method, "x": point.x,
            "wer_pct": sc["wer_pct"], "wer_ci_low_pct": sc["wer_ci_low_pct"],
            "wer_ci_high_pct": sc["wer_ci_high_pct"], "cer_pct": sc["cer_pct"],
            "delta_wer_pct": worse["delta_wer_pct"],
            "delta_wer_rel_pct": (None if not dense_wer else 100.0 * worse["delta_wer_pct"] / dense_wer),
            "delta_ci_low_pct": worse["delta_ci_low_pct"], "delta_ci_high_pct": worse["delta_ci_high_pct"],
            "p_value_worse": worse["p_value_b_worse"], "p_value_better": better["p_value_b_worse"],
            "p_value_matched_pairs": mp["p_value_two_sided"],
            **stats, "n_utts": sc["n_utts"], "decoded": decoded, "decode_seconds": round(decode_s, 2),
            "component_sparsity_pct": comp,
        }
        table.append(rec)
        done[point.key] = rec
        hyps_out += [{"point": point.key, "id": r["id"], "ref": r["text"], "hyp": h}
                     for r, h in zip(rows, hyps, strict=True)]
        if log is not None:
            log(f"p3: {point.key}: WER {rec['wer_pct']:.2f}% (delta {rec['delta_wer_pct']:+.2f}), "
                f"sparsity {rec['prunable_sparsity_pct']:.1f}% of prunable, {decode_s:.1f}s")
    return table, hyps_out


def headline_metrics(table: Sequence[Mapping[str, Any]], final_key: str = "component_x100") -> dict[str, Any]:
    """Flat metrics: WER and its change vs dense for every point (``<point>_wer_pct``,
    ``<point>_delta_wer_pct``), sparsities of the compare points, and the final configuration's counts."""
    out: dict[str, Any] = {}
    for r in table:
        out[f"{r['point']}_wer_pct"] = r["wer_pct"]
        if r["method"] != "dense":
            out[f"{r['point']}_delta_wer_pct"] = r["delta_wer_pct"]
        if r["group"] == "compare":
            out[f"{r['point']}_prunable_sparsity_pct"] = round(r["prunable_sparsity_pct"], 3)
    final = next((r for r in table if r["point"] == final_key), None)
    out["params_m"] = table[0]["params_m"]
    if final is not None:
        out.update({"final_nonzero_params_m": final["nonzero_params_m"], "final_sparsity_pct": final["sparsity_pct"],
                    "final_storage_csr_mib": final["storage_csr_mib"],
                    "final_storage_dense_mib": final["storage_dense_mib"]})
    out["n_eval_utts"] = table[0]["n_utts"]
    return out


def plot_sweeps(table: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Two panels to a PNG: (a) WER vs sparsity of the prunable tensors, component-wise vs global (and
    uniform) at matched sparsity; (b) WER vs ratio for the decoder self-attention sweep and the
    last-encoder point. Error bars: bootstrap 95 % CIs; the dense WER and its CI as a band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def err(rs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([[r["wer_pct"] - r["wer_ci_low_pct"] for r in rs],
                         [r["wer_ci_high_pct"] - r["wer_pct"] for r in rs]])

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_a, ax_b = fig.subplots(1, 2)
    dense = table[0]
    for ax in (ax_a, ax_b):
        ax.axhspan(dense["wer_ci_low_pct"], dense["wer_ci_high_pct"], color="0.85", label="dense 95% CI")
        ax.axhline(dense["wer_pct"], color="0.4", lw=1, label=f"dense {dense['wer_pct']:.1f}%")
        ax.set_ylabel("WER % (normalised)")
        ax.grid(alpha=0.3)
    styles = {"component": ("o-", "sensitivity-aware (component ratios)", -1),
              "global": ("s--", "global magnitude", 0), "uniform": ("^:", "uniform magnitude", 1)}
    compare = [r for r in table if r["group"] == "compare"]
    dodge = 0.012 * max([r["prunable_sparsity_pct"] for r in compare] + [1.0])  # matched points overlap
    for method, (fmt, label, side) in styles.items():
        rs = sorted((r for r in compare if r["method"] == method), key=lambda r: r["prunable_sparsity_pct"])
        if rs:
            rs = [dense, *rs]  # every curve starts at the dense model (0 % sparsity)
            ax_a.errorbar([r["prunable_sparsity_pct"] + side * dodge for r in rs], [r["wer_pct"] for r in rs],
                          yerr=err(rs), fmt=fmt, capsize=3, label=label)
    ax_a.set_xlabel("sparsity of prunable weights (%; matched points dodged sideways)")
    ax_a.set_title("one-shot pruning, no fine-tuning")
    ax_a.legend(fontsize=8)
    sweep = sorted((r for r in table if r["group"] == "dec_self_attn_sweep"), key=lambda r: r["x"])
    if sweep:
        ax_b.errorbar([100 * r["x"] for r in sweep], [r["wer_pct"] for r in sweep], yerr=err(sweep), fmt="o-",
                      capsize=3, label="decoder self-attention")
    last = [r for r in table if r["group"] == "last_encoder"]
    if last:
        ax_b.errorbar([100 * r["x"] for r in last], [r["wer_pct"] for r in last], yerr=err(last), fmt="D",
                      capsize=3, label="last encoder layers (attn + FFN)")
    ax_b.set_xlabel("pruning ratio of the targeted component (%)")
    ax_b.set_title("targeted sweeps")
    ax_b.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
