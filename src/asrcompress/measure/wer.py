"""WER/CER with jiwer, utterance-level bootstrap intervals and matched-pairs significance tests.

Conventions (the same for every model variant):
- WER = (S + D + I) / N over the whole set (N = reference words), not a mean of per-utterance
  WERs. CER likewise over characters: Unicode code points after NFC (a Devanagari vowel sign
  or virama is one character), spaces between words included (jiwer's convention).
- Raw scores use only whitespace splitting; normalised scores apply ``get_normalizer(name)`` to
  references and hypotheses first.
- Empty reference (after normalisation): the utterance contributes N = 0 and every hypothesis
  word as an insertion (sclite convention). No division is done per utterance. If the whole set
  has N = 0 the WER is undefined and reported as ``None`` (never a division by zero).
- Bootstrap: resample utterances with replacement; WER of a resample = sum of its errors / sum
  of its reference words; resamples with N = 0 are dropped from the percentiles.
"""

from __future__ import annotations

import math

import jiwer
import numpy as np

from asrcompress.text.normalize import get_normalizer

_COUNT_OF = {"substitute": "substitutions", "delete": "deletions", "insert": "insertions", "equal": "hits"}


def _align_counts(refs: list[str], hyps: list[str], chars: bool = False) -> dict[str, np.ndarray]:
    """Per-utterance S, D, I, hits and reference length (words, or characters if ``chars``)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    n = len(refs)
    out = {k: np.zeros(n, dtype=np.int64) for k in (*_COUNT_OF.values(), "n_ref")}
    if n == 0:
        return out
    # jiwer 4 accepts empty strings; join-free whitespace handling is jiwer's default transform
    res = jiwer.process_characters(refs, hyps) if chars else jiwer.process_words(refs, hyps)
    for u, (ref_tokens, chunks) in enumerate(zip(res.references, res.alignments, strict=True)):
        out["n_ref"][u] = len(ref_tokens)
        for c in chunks:
            size = (c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else (c.ref_end_idx - c.ref_start_idx)
            out[_COUNT_OF[c.type]][u] += size
    return out


def per_utterance_errors(refs: list[str], hyps: list[str]) -> dict[str, np.ndarray]:
    """Per-utterance word errors (S + D + I) and reference lengths, on the strings as given.

    Returns ``{"errors": int array, "n_ref_words": int array, "substitutions", "deletions",
    "insertions", "hits"}``, one entry per utterance.
    """
    c = _align_counts(refs, hyps)
    errors = c["substitutions"] + c["deletions"] + c["insertions"]
    return {"errors": errors, "n_ref_words": c["n_ref"], **{k: c[k] for k in _COUNT_OF.values()}}


def _rate_pct(errors: int | np.integer, n: int | np.integer) -> float | None:
    return None if n == 0 else 100.0 * float(errors) / float(n)


def _resample_rates(errors: np.ndarray, n_ref: np.ndarray, n_resamples: int, seed: int,
                    chunk: int = 250) -> np.ndarray:
    """WER (%) of ``n_resamples`` utterance resamples; NaN where a resample has no reference word."""
    rng = np.random.default_rng(seed)
    m = len(errors)
    rates = np.empty(n_resamples)
    for s in range(0, n_resamples, chunk):  # chunks keep the index matrix small for big test sets
        idx = rng.integers(0, m, size=(min(chunk, n_resamples - s), m))
        num, den = errors[idx].sum(axis=1), n_ref[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rates[s:s + len(idx)] = np.where(den > 0, 100.0 * num / np.maximum(den, 1), np.nan)
    return rates


def bootstrap_ci(refs: list[str], hyps: list[str], n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (in %) of the corpus WER of ``refs``/``hyps`` as given.

    Utterances are resampled with replacement, ``n_resamples`` times; each resample's WER is
    sum(errors) / sum(reference words). Normalise the strings before calling if needed.
    """
    e = per_utterance_errors(refs, hyps)
    return bootstrap_ci_from_counts(e["errors"], e["n_ref_words"], n_resamples, seed, level)


def bootstrap_ci_from_counts(errors: np.ndarray, n_ref_words: np.ndarray, n_resamples: int = 1000,
                             seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """As :func:`bootstrap_ci`, from per-utterance error counts and reference lengths."""
    errors, n_ref = np.asarray(errors, dtype=np.int64), np.asarray(n_ref_words, dtype=np.int64)
    if len(errors) == 0 or n_ref.sum() == 0:
        return (math.nan, math.nan)
    rates = _resample_rates(errors, n_ref, n_resamples, seed)
    a = (1.0 - level) / 2
    lo, hi = np.nanquantile(rates, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_bootstrap(errors_a: np.ndarray, errors_b: np.ndarray, n_ref_words: np.ndarray,
                     n_resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap (Bisani & Ney 2004) of WER(B) - WER(A) on the same utterances.

    Both systems are scored on the SAME resampled utterance sets. ``p_value_b_worse`` is the
    fraction of resamples where B is not worse (delta <= 0): small values support "B is worse
    than A". For identical systems every delta is 0 and the p-value is 1.
    """
    ea, eb = np.asarray(errors_a, dtype=np.int64), np.asarray(errors_b, dtype=np.int64)
    n_ref = np.asarray(n_ref_words, dtype=np.int64)
    if not (len(ea) == len(eb) == len(n_ref)):
        raise ValueError("errors_a, errors_b and n_ref_words must have one entry per utterance")
    delta = _resample_rates(eb - ea, n_ref, n_resamples, seed)  # WER is linear in the errors
    delta = delta[~np.isnan(delta)]
    n = int(n_ref.sum())
    point = _rate_pct(int((eb - ea).sum()), n)
    if len(delta) == 0:
        return {"delta_wer_pct": point, "delta_ci_low_pct": None, "delta_ci_high_pct": None,
                "p_value_b_worse": None, "prob_b_worse": None, "n_resamples": n_resamples}
    lo, hi = np.quantile(delta, [0.025, 0.975])
    return {
        "delta_wer_pct": point,
        "delta_ci_low_pct": float(lo),
        "delta_ci_high_pct": float(hi),
        "p_value_b_worse": float(np.mean(delta <= 0)),
        "prob_b_worse": float(np.mean(delta > 0)),
        "n_resamples": n_resamples,
    }


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def matched_pairs_test(errors_a: np.ndarray, errors_b: np.ndarray) -> dict:
    """Matched-pairs test on per-utterance error counts (utterances as the segments of NIST's
    MAPSSWE; the original test splits at error-free stretches of the alignment instead).

    d_u = errors_B(u) - errors_A(u); z = mean(d) / (std(d, ddof=1) / sqrt(n)), normal
    approximation (fine for n >~ 30). ``p_value_b_worse`` is one-sided (H1: B has more errors),
    ``p_value_two_sided`` two-sided. Identical systems give z = 0 and p-values 0.5 / 1.
    """
    d = np.asarray(errors_b, dtype=np.float64) - np.asarray(errors_a, dtype=np.float64)
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n == 0 or sd == 0.0:
        mean = float(d.mean()) if n else 0.0
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        z = float(d.mean()) / (sd / math.sqrt(n))
    return {"z": z, "p_value_b_worse": _normal_sf(z), "p_value_two_sided": min(1.0, 2 * _normal_sf(abs(z))),
            "n_utts": n}


def sign_test(errors_a: np.ndarray, errors_b: np.ndarray) -> dict:
    """Exact sign test on per-utterance error counts (ties dropped).

    ``p_value_b_worse`` = P(X >= n_b_worse) for X ~ Binomial(n_untied, 1/2).
    """
    d = np.asarray(errors_b, dtype=np.int64) - np.asarray(errors_a, dtype=np.int64)
    worse, better = int((d > 0).sum()), int((d < 0).sum())
    n = worse + better
    p = 1.0 if n == 0 else sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n
    return {"n_b_worse": worse, "n_b_better": better, "n_ties": int(len(d) - n), "p_value_b_worse": float(p)}


def score(refs: list[str], hyps: list[str], normalizer: str, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Score hypotheses against references. Flat keys:

    ``wer_pct``/``cer_pct`` (after ``normalizer``), ``wer_raw_pct``/``cer_raw_pct`` (whitespace
    only), ``substitutions``/``deletions``/``insertions``/``hits``/``n_ref_words`` (normalised
    words), ``n_utts``, ``n_empty_refs`` (references empty after normalisation),
    ``wer_ci_low_pct``/``wer_ci_high_pct`` (95 % bootstrap over utterances of the normalised
    WER, ``n_resamples`` resamples, ``seed``), ``normalizer``. Rates are ``None`` when the set
    has no reference word.
    """
    norm = get_normalizer(normalizer)
    nrefs, nhyps = [norm(r) for r in refs], [norm(h) for h in hyps]
    w = per_utterance_errors(nrefs, nhyps)
    raw = per_utterance_errors(refs, hyps)
    ch, ch_raw = _align_counts(nrefs, nhyps, chars=True), _align_counts(refs, hyps, chars=True)
    n_words = int(w["n_ref_words"].sum())
    lo, hi = bootstrap_ci_from_counts(w["errors"], w["n_ref_words"], n_resamples, seed)

    def char_errors(c: dict) -> int:
        return int(c["substitutions"].sum() + c["deletions"].sum() + c["insertions"].sum())

    return {
        "wer_pct": _rate_pct(w["errors"].sum(), n_words),
        "cer_pct": _rate_pct(char_errors(ch), ch["n_ref"].sum()),
        "wer_raw_pct": _rate_pct(raw["errors"].sum(), raw["n_ref_words"].sum()),
        "cer_raw_pct": _rate_pct(char_errors(ch_raw), ch_raw["n_ref"].sum()),
        "substitutions": int(w["substitutions"].sum()),
        "deletions": int(w["deletions"].sum()),
        "insertions": int(w["insertions"].sum()),
        "hits": int(w["hits"].sum()),
        "n_ref_words": n_words,
        "n_utts": len(refs),
        "n_empty_refs": int((w["n_ref_words"] == 0).sum()),
        "wer_ci_low_pct": None if math.isnan(lo) else lo,
        "wer_ci_high_pct": None if math.isnan(hi) else hi,
        "n_resamples": n_resamples,
        "normalizer": normalizer,
    }
