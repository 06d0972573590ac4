"""measure.compare (compare@ stages), io.write_csv and the suite's extra normalisers."""

from __future__ import annotations

import csv

import pytest

from asrcompress.config import ParamError
from asrcompress.io import write_csv
from asrcompress.measure.compare import compare_variants
from asrcompress.measure.suite import validate_measure_params


def _hyps(errors: list[int], words: int = 10) -> list[dict]:
    return [{"id": f"u{i}", "errors": e, "ref_words": words} for i, e in enumerate(errors)]


def test_compare_variants_delta_and_paired_test() -> None:
    base = _hyps([1] * 40)
    worse = _hyps([3] * 40)
    out = compare_variants({"wer_pct": 30.0, "params": 50}, worse, {"wer_pct": 10.0, "params": 100}, base,
                           n_resamples=200, seed=0)
    assert out["wer_delta_abs"] == pytest.approx(20.0)
    assert out["wer_delta_ci_low_pct"] == pytest.approx(20.0)  # every utterance worse by the same amount
    assert out["p_value_worse"] == 0.0
    assert out["matched_pairs_p_value_worse"] < 1e-6
    assert out["params_reduction_pct"] == pytest.approx(50.0)
    assert out["wer_relative_change_pct"] == pytest.approx(200.0)
    same = compare_variants({"wer_pct": 10.0}, base, {"wer_pct": 10.0}, base, n_resamples=200, seed=0)
    assert same["wer_delta_abs"] == 0.0 and same["p_value_worse"] == 1.0


def test_compare_variants_refuses_different_utterances() -> None:
    a, b = _hyps([1, 2, 3]), _hyps([1, 2, 3])
    b[1]["id"] = "other"
    with pytest.raises(ValueError, match="same utterances"):
        compare_variants({}, a, {}, b, n_resamples=10, seed=0, names=("x", "y"))
    with pytest.raises(ValueError, match="lacks 'errors'"):
        compare_variants({}, [{"id": "u0", "ref_words": 3}], {}, a[:1], n_resamples=10, seed=0)


def test_write_csv_columns_and_empty(tmp_path) -> None:
    path = tmp_path / "sub" / "t.csv"
    write_csv(path, [{"a": 1, "b": 2}, {"a": 3, "c": 9}], columns=["a", "b"])
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"a": "1", "b": "2"}, {"a": "3", "b": ""}]
    with pytest.raises(ValueError, match="t2.csv: nothing to write"):
        write_csv(tmp_path / "t2.csv", [])


def test_extra_normalizers_validated() -> None:
    cfg = {"measure": {"num_threads": 1, "batch_size": 2, "bootstrap_resamples": 10, "latency_utterances": 1,
                       "rss_utterances": 1, "real_scale_tokens": 2, "real_scale_repeats": 5,
                       "latency_repeats": 1, "fixed_tokens": 2, "fixed_repeats": 0},
           "dense": {"d": {"model": "m", "corpus": "c"}},
           "variants": {"v": {"model": "m", "corpus": "c", "reference": "d", "extra_normalizers": ["nope"]}},
           "corpora": {"c": {"whisper_language": "en", "normalizer": "whisper_basic"}}}
    with pytest.raises(ParamError, match=r"variants\.v\.extra_normalizers\[0\]"):
        validate_measure_params(cfg, "variants", "v")
    cfg["variants"]["v"]["extra_normalizers"] = ["whisper_basic"]
    validate_measure_params(cfg, "variants", "v")


def test_read_jsonl_names_the_file_and_line(tmp_path) -> None:
    from asrcompress.io import read_jsonl

    path = tmp_path / "h.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]
    path.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl: not found"):
        read_jsonl(tmp_path / "missing.jsonl")
