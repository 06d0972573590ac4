"""Paired comparison of two measured variants (``compare@<key>``): the one place where two
variants that are not a dense model and its compressed child are set against each other.

Reads what ``measure@`` wrote for each (flat metrics and per-utterance hypotheses rows with
``errors`` and ``ref_words``), checks both were scored on the same utterances in the same order,
and gives the WER change of ``variant`` against ``baseline`` with its paired bootstrap interval
and p-value, the matched-pairs test, and the size reductions. Speed is not compared here: two
separate measure runs are not interleaved, so their timings are not a fair ratio (the measure
stage times a variant interleaved with its reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asrcompress.measure.params import percent_reduction
from asrcompress.measure.wer import matched_pairs_test, paired_bootstrap

SIZE_KEYS = ("params", "nonzero_params", "weight_bytes", "checkpoint_bytes", "peak_rss_delta_mib",
             "gmacs_encoder", "gmacs_decoder_token", "gmacs_utterance",
             "encoder_params", "decoder_params", "token_embedding_params")  # parts: where a method cuts


def per_utterance(hyps: Sequence[Mapping[str, Any]], what: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, errors, reference words) of a hypotheses file's rows; ``what`` names it in errors."""
    try:
        ids = [str(r["id"]) for r in hyps]
        errors = np.asarray([int(r["errors"]) for r in hyps], dtype=np.int64)
        words = np.asarray([int(r["ref_words"]) for r in hyps], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{what}: a row lacks {exc} (re-run its measure stage)") from exc
    return ids, errors, words


def compare_variants(variant: Mapping[str, Any], variant_hyps: Sequence[Mapping[str, Any]],
                     baseline: Mapping[str, Any], baseline_hyps: Sequence[Mapping[str, Any]],
                     n_resamples: int, seed: int, names: tuple[str, str] = ("variant", "baseline")
                     ) -> dict[str, Any]:
    """Flat comparison of ``variant`` against ``baseline`` (metrics dicts + hypotheses rows).

    ``wer_delta_abs`` = variant - baseline (points; negative = better), ``wer_delta_ci_*_pct`` and
    ``p_value_worse`` from the paired bootstrap (fraction of resamples where the variant is not
    worse), ``matched_pairs_p_value_worse`` / ``matched_pairs_p_value_two_sided`` (NIST-style, per
    utterance), ``performance_kept_pct`` = 100 x (100 - WER) / (100 - baseline WER) (kept word
    accuracy, WERs in %; None when the baseline's WER is >= 100 %), ``<size>_reduction_pct`` for
    every size figure both metrics carry, and ``<part>_params_factor`` = baseline / variant (how many
    times fewer; ``decoder_params`` excludes the token and positional embeddings).
    """
    ids_v, err_v, words_v = per_utterance(variant_hyps, names[0])
    ids_b, err_b, words_b = per_utterance(baseline_hyps, names[1])
    if ids_v != ids_b:
        first = next((i for i, (a, b) in enumerate(zip(ids_v, ids_b, strict=False)) if a != b),
                     min(len(ids_v), len(ids_b)))
        raise ValueError(f"{names[0]} and {names[1]} were not scored on the same utterances "
                         f"({len(ids_v)} vs {len(ids_b)} rows, first difference at row {first})")
    if not np.array_equal(words_v, words_b):
        raise ValueError(f"{names[0]} and {names[1]} count different reference words: different normalisers?")
    boot = paired_bootstrap(err_b, err_v, words_b, n_resamples, seed)
    mp = matched_pairs_test(err_b, err_v)
    out: dict[str, Any] = {
        "wer_pct": variant.get("wer_pct"), "baseline_wer_pct": baseline.get("wer_pct"),
        "wer_delta_abs": boot["delta_wer_pct"],
        "wer_delta_ci_low_pct": boot["delta_ci_low_pct"], "wer_delta_ci_high_pct": boot["delta_ci_high_pct"],
        "p_value_worse": boot["p_value_b_worse"],
        "matched_pairs_p_value_worse": mp["p_value_b_worse"],
        "matched_pairs_p_value_two_sided": mp["p_value_two_sided"],
        "n_utts": len(ids_v), "n_resamples": n_resamples,
    }
    if out["baseline_wer_pct"]:
        out["wer_relative_change_pct"] = 100.0 * out["wer_delta_abs"] / out["baseline_wer_pct"]
    wer, base = out["wer_pct"], out["baseline_wer_pct"]
    if wer is not None and base is not None:
        out["performance_kept_pct"] = 100.0 * (100.0 - wer) / (100.0 - base) if base < 100.0 else None
    for key in SIZE_KEYS:
        if variant.get(key) is not None and baseline.get(key):
            out[f"{key}_reduction_pct"] = percent_reduction(variant[key], baseline[key])
            if key.endswith("params") and variant[key]:
                out[f"{key}_factor"] = baseline[key] / variant[key]
    return out
