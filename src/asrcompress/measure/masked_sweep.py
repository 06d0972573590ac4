"""Decode and score an in-memory sweep of masked variants of one Whisper model against its dense self.

Paper 3 evaluates many one-shot pruning points of the same model; saving a checkpoint per point for the
generic suite (:mod:`asrcompress.measure.suite`) would only repeat the dense weights. This module keeps
the model in memory and, for each point, applies its masks
(:func:`asrcompress.compress.p3_oneshot.pruned`), decodes with the suite's decoder
(:func:`asrcompress.inference.transcribe_whisper`) and scores with the suite's scorer
(:func:`asrcompress.measure.wer.score`, :func:`~asrcompress.measure.wer.per_utterance_errors`,
:func:`~asrcompress.measure.wer.paired_bootstrap`), then restores the dense weights.

Each point's record: WER (normalised) with a bootstrap 95 % CI, the paired bootstrap of WER(point) -
WER(dense) with its CI and one-sided p-values both ways, the matched-pairs test, the parameter count
(unchanged by masks), non-zero parameters, sparsity over all parameters and over the prunable tensors,
storage: dense, CSR for the pruned tensors (``masks.sparse_storage_bytes``: values + int64 column indices
+ row pointers, larger than dense below ~2/3 sparsity) and the smaller of the two per tensor, and the
pruned share of each component.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.magnitude import count_pruned
from asrcompress.compress.masks import sparse_storage_bytes
from asrcompress.compress.p3_oneshot import (
    PrunePoint,
    component_sparsity,
    point_masks,
    prunable_numel,
    pruned,
)
from asrcompress.inference import transcribe_whisper
from asrcompress.measure.params import count_params, unique_named_tensors
from asrcompress.measure.wer import matched_pairs_test, paired_bootstrap, per_utterance_errors, score
from asrcompress.text.normalize import get_normalizer

__all__ = ["point_stats", "run_points"]


@torch.no_grad()
def point_stats(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """Counts of the model *as it is now* (masks applied): parameters (unchanged by masks), non-zero
    parameters, sparsity over all parameters and over the prunable tensors, and storage in MiB."""
    c = count_params(model)
    prunable = prunable_numel(model)
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


def run_points(model: nn.Module, processor: Any, points: Sequence[PrunePoint], rows: Sequence[dict],
               language: str, normalizer: str, n_resamples: int, seed_of: Callable[..., int], *,
               batch_size: int = 16, max_new_tokens: int | None = None,
               log: Callable[[str], Any] | None = None) -> tuple[list[dict], list[dict]]:
    """Evaluate every point on ``rows`` (corpus rows with audio and ``text``).

    ``seed_of(*names) -> int`` gives the bootstrap seeds. Returns ``(table, hyps)``: one flat record per
    point (see the module docstring; ``component_sparsity_pct`` as a dict) and one ``{"point", "id",
    "ref", "hyp"}`` record per point and utterance. The model ends with its dense weights and no masks.
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
        masks = point_masks(model, point, done)
        t0 = time.time()
        with pruned(model, masks):
            stats = point_stats(model, masks)
            comp = component_sparsity(model, masks)
            decoded = bool(masks) or point.method == "dense"
            hyps = (transcribe_whisper(model, processor, rows, language, batch_size, max_new_tokens=max_new_tokens,
                                       progress=False)[0] if decoded else list(dense_hyps))
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
            "point": point.key, "group": point.group, "method": point.method, "x": point.x, "scale": point.scale,
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
