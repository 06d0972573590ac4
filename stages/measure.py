"""measure@<variant>: params, memory, FLOPs, WER/CER and latency of one model variant.

    python stages/measure.py <variant-key> <metrics-json> <hyps-jsonl> [<reference-dir>]

The real track's entries (``real_dense*``, ``real_variants``) take ``real_measure`` over ``measure``
(and ``real_variants_measure`` over both for ``real_variants``). The variant's
model directory, corpus, reference and real-scale architecture come from
``dense.<key>``, ``real_dense.<key>``, ``real_dense_synth.<key>``, ``variants.<key>`` or
``real_variants.<key>`` in params.yaml (the corpus from
``corpora`` or ``real_corpora``); a variant's reference is a dense variant
whose metrics and hypotheses must exist (dvc.yaml lists them as deps): ``<reference-dir>/metrics/<ref>.json``
and ``<reference-dir>/hyps/<ref>.jsonl`` (default: beside the outputs). The leaderboard's entries
``lb_<entry>_<where>`` (``compress.board.measure_entries``) are measured as ``real_variants``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asrcompress.compress.board import measure_entries
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, read_json, read_jsonl, setup_logging, write_json, write_jsonl
from asrcompress.measure.suite import (
    MEASURED_SECTIONS,
    REFERENCE_SECTIONS,
    measure_variant,
    validate_measure_params,
)


def main(key: str, metrics_path: str, hyps_path: str, reference_dir: str | None = None) -> None:
    setup_logging()
    cfg = load_params()
    cfg["real_variants"] = {**(cfg.get("real_variants") or {}), **measure_entries(cfg)}  # lb_<entry>_<where>
    section = next((s for s in MEASURED_SECTIONS if key in (cfg.get(s) or {})), "variants")
    mcfg, variant, corpora = validate_measure_params(cfg, section, key)  # before any model or data
    corpus = variant["corpus"]
    reference = variant.get("reference")
    ref_dir = ref_metrics = ref_errors = ref_lengths = None
    if reference:
        ref_section = next(s for s in REFERENCE_SECTIONS if reference in (cfg.get(s) or {}))
        ref_dir = get(cfg, f"{ref_section}.{reference}.model", str)
        m_dir, h_dir = ((Path(reference_dir) / "metrics", Path(reference_dir) / "hyps") if reference_dir
                        else (Path(metrics_path).parent, Path(hyps_path).parent))
        ref_metrics = read_json(m_dir / f"{reference}.json")
        ref_rows = read_jsonl(h_dir / f"{reference}.jsonl")
        ref_errors, ref_lengths = [r["errors"] for r in ref_rows], [r["tokens"] for r in ref_rows]
    rows = load_split(f"data/corpora/{corpus}", "test")[: variant.get("test_utterances")]
    metrics, hyps = measure_variant(
        variant["model"], rows, get(cfg, f"{corpora}.{corpus}.whisper_language", str),
        get(cfg, f"{corpora}.{corpus}.normalizer", str), mcfg,
        derive_seed(get(cfg, "seed", int), "measure", key), reference_dir=ref_dir,
        reference_metrics=ref_metrics, reference_errors=ref_errors, reference_lengths=ref_lengths,
        real_scale=variant.get("real_scale"),
        extra_normalizers=variant.get("extra_normalizers") or ())
    metrics = {"variant": key, "reference": reference, **metrics}
    write_json(metrics_path, metrics)
    write_jsonl(hyps_path, hyps)
    log.info("measure@%s: %s -> %s | %.3f M params, WER %.2f%% [%.2f, %.2f], %.3f GMACs/utt, %.1f ms/utt",
             key, variant["model"], metrics_path, metrics["params_m"], metrics["wer_pct"],
             metrics["wer_ci_low_pct"], metrics["wer_ci_high_pct"], metrics["gmacs_utterance"],
             metrics["latency_ms_p50"])


if __name__ == "__main__":
    main(*sys.argv[1:])
