"""WER/CER on hand-made pairs, empty references, bootstrap intervals and paired tests."""

import time

import numpy as np
import pytest

from asrcompress.measure.wer import (
    bootstrap_ci,
    bootstrap_ci_from_counts,
    matched_pairs_test,
    paired_bootstrap,
    per_utterance_errors,
    score,
    sign_test,
)


def test_known_wer_and_cer():
    # ref 4 words; hyp: "b" -> "x" (S), "d" dropped (D): WER 2/4
    s = score(["a b c d"], ["a x c"], "none")
    assert s["wer_pct"] == pytest.approx(50.0)
    assert (s["substitutions"], s["deletions"], s["insertions"], s["hits"]) == (1, 1, 0, 2)
    # chars of "a b c d" = 7 (spaces count); "a x c": 1 substitution + 2 deletions
    assert s["cer_pct"] == pytest.approx(100 * 3 / 7)
    assert s["n_utts"] == 1 and s["n_ref_words"] == 4


def test_corpus_wer_is_pooled_not_averaged():
    refs, hyps = ["a b c d e f g h i j", "k"], ["a b c d e f g h i j", "z"]
    s = score(refs, hyps, "none")
    assert s["wer_pct"] == pytest.approx(100 / 11)  # a mean of utterance WERs would give 50 %


def test_normalised_vs_raw():
    s = score(["Hello, World!"], ["hello world"], "basic")
    assert s["wer_pct"] == 0.0 and s["wer_raw_pct"] == 100.0
    e = score(["I have twenty-three apples."], ["i have 23 apples"], "english")
    assert e["wer_pct"] == 0.0


def test_empty_reference_counts_insertions():
    e = per_utterance_errors(["", "a b"], ["x y", "a b"])
    assert e["errors"].tolist() == [2, 0] and e["n_ref_words"].tolist() == [0, 2]
    s = score(["[noise]", "a b"], ["x y", "a b"], "basic")  # first ref empty after normalisation
    assert s["n_empty_refs"] == 1 and s["insertions"] == 2 and s["wer_pct"] == pytest.approx(100.0)
    only_empty = score([""], ["x"], "none")
    assert only_empty["wer_pct"] is None and only_empty["insertions"] == 1


def test_bootstrap_ci_contains_estimate():
    rng = np.random.default_rng(0)
    refs = [" ".join(f"w{j}" for j in range(10)) for _ in range(200)]
    hyps = [r if rng.random() < 0.7 else r.replace("w3", "zz") for r in refs]
    s = score(refs, hyps, "none")
    assert s["wer_ci_low_pct"] <= s["wer_pct"] <= s["wer_ci_high_pct"]
    assert s["wer_ci_high_pct"] - s["wer_ci_low_pct"] < 4.0
    lo, hi = bootstrap_ci(refs, refs, n_resamples=200, seed=1)
    assert lo == hi == 0.0  # an identical system: zero-width interval


def test_bootstrap_is_fast_and_seeded():
    rng = np.random.default_rng(0)
    errors, n_ref = rng.poisson(1.0, 3000), rng.integers(1, 30, 3000)
    t0 = time.perf_counter()
    a = bootstrap_ci_from_counts(errors, n_ref, n_resamples=1000, seed=3)
    assert time.perf_counter() - t0 < 2.0
    assert a == bootstrap_ci_from_counts(errors, n_ref, n_resamples=1000, seed=3)


def test_paired_tests_identical_and_worse():
    rng = np.random.default_rng(0)
    ea, n_ref = rng.poisson(1.0, 500), np.full(500, 12)
    same = paired_bootstrap(ea, ea, n_ref, n_resamples=500, seed=0)
    assert same["p_value_b_worse"] == 1.0 and same["delta_wer_pct"] == 0.0
    assert matched_pairs_test(ea, ea)["p_value_two_sided"] == 1.0
    assert sign_test(ea, ea)["p_value_b_worse"] == 1.0
    eb = ea + rng.binomial(1, 0.3, 500)  # B makes ~0.3 more errors per utterance
    worse = paired_bootstrap(ea, eb, n_ref, n_resamples=500, seed=0)
    assert worse["p_value_b_worse"] < 0.01 and worse["delta_ci_low_pct"] > 0
    assert matched_pairs_test(ea, eb)["p_value_b_worse"] < 0.01
    assert sign_test(ea, eb)["p_value_b_worse"] < 0.01
    assert paired_bootstrap(eb, ea, n_ref, n_resamples=500, seed=0)["p_value_b_worse"] > 0.99


def test_whisper_basic_hides_hindi_vowel_errors():
    ref, hyp = ["हिंदी भाषा"], ["हिंदू भाषा"]  # a different vowel sign: a real word error
    assert score(ref, hyp, "hindi")["wer_pct"] == pytest.approx(50.0)
    hidden = score(ref, hyp, "whisper_basic")
    assert hidden["wer_pct"] == 0.0 and hidden["n_ref_words"] == 4  # bare consonants, words split
