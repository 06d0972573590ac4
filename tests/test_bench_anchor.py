"""Pure helpers of benchmarks/bench_anchor.py (no model, no engine): CT2 directory assembly, spreads, table."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from conftest import load_stage

bench = load_stage("bench_anchor", "benchmarks")


def _fake_package(tmp_path: Path) -> tuple[list[Path], Path, str]:
    parts = []
    for i, payload in enumerate((b"first-part-" * 1000, b"second", b"")):
        p = tmp_path / f"model.bin.part{i + 1}"
        p.write_bytes(payload)
        parts.append(p)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "config.json").write_text('{"suppress_ids": []}')
    (meta / "tokenizer.json").write_text("{}")
    (meta / "vocabulary.json").write_text("[]")
    (meta / "unrelated.txt").write_text("x")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    return parts, meta, digest


def test_assemble_ct2_dir_concatenates_and_copies_meta(tmp_path):
    parts, meta, digest = _fake_package(tmp_path)
    out = bench.assemble_ct2_dir(parts, meta, tmp_path / "ct2", digest.upper())
    assert (out / "model.bin").read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    assert bench.sha256_file(out / "model.bin") == digest


def test_assemble_ct2_dir_checks_digest_and_order(tmp_path):
    parts, meta, digest = _fake_package(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        bench.assemble_ct2_dir(parts[::-1], meta, tmp_path / "ct2", digest)  # parts out of order
    (meta / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        bench.assemble_ct2_dir(parts, meta, tmp_path / "ct2b", digest)


def test_spread_and_format():
    s = bench.spread([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert bench.fmt_spread(s, 1) == "2.5 (1.0-10.0)"
    assert bench.fmt_spread(bench.spread([1.234]), 2, "x") == "1.23x"  # one round: no range
    assert bench.fmt_spread(None) == "-"


def test_rtfx_and_ratios_per_round():
    rounds = {"ours": [[1.0, 1.0], [2.0, 2.0]], "fw": [[0.5, 0.5], [0.5, 1.5]]}
    rtfx = {k: bench.rtfx_per_round(v, audio_s=8.0) for k, v in rounds.items()}
    assert rtfx == {"ours": [4.0, 2.0], "fw": [8.0, 4.0]}
    assert bench.ratios_to(rtfx, "ours") == {"ours": [1.0, 1.0], "fw": [2.0, 2.0]}


def test_count_differing_after_normalisation():
    a = ["Hello, world.", "One  two", "It's fine", "one two", ""]
    b = ["hello world", "1 2", "it is fine", "one two three", ""]
    # case, punctuation, spacing and spelled numbers vanish; a contraction and an added word differ
    assert bench.count_differing(a, a) == 0
    assert bench.count_differing(a, b) == 2
    assert bench.count_differing(["a b"], ["a c"]) == 1
    with pytest.raises(ValueError):
        bench.count_differing(["a"], [])


def test_interleaved_order_is_seeded_permutation():
    o1 = [bench.interleaved_order(random.Random(7), bench.ENGINES) for _ in range(3)]
    o2 = [bench.interleaved_order(random.Random(7), bench.ENGINES) for _ in range(3)]
    assert o1 == o2 and all(sorted(o) == sorted(bench.ENGINES) for o in o1)


def test_markdown_table_rows_and_missing_parts():
    results = {
        "ours": {"wer": {"wer_pct": 10.0, "wer_ci_low_pct": 8.5, "wer_ci_high_pct": 11.25},
                 "rtfx": {"median": 12.0, "min": 11.0, "max": 13.0},
                 "speed_vs_ours": {"median": 1.0, "min": 1.0, "max": 1.0},
                 "memory": {"peak_rss_mib": 700.4, "peak_rss_delta_mib": 420.6}},
        "fw_int8": {"wer": {"wer_pct": None}},
    }
    lines = bench.markdown_table(results).splitlines()
    assert lines[0].startswith("| engine | WER %") and len(lines) == 4
    assert lines[2] == ("| transformers fp32 (ours) | 10.00 [8.50, 11.25] | 12.0 (11.0-13.0) | 1.00x | 700 | 421 |")
    assert lines[3] == "| faster-whisper int8 | - | - | - | - | - |"
