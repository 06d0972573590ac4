"""p1_measure: paper 1's whisper-medium table (pipelines/p1_medium/dvc.yaml, paper profile only).

The small chain is measured by the generic ``measure@<key>`` stages (params ``variants``); the
medium models exist only in the paper profile, which DVC's ``foreach`` cannot fan out over, so this
stage runs the same suite (``measure.suite.measure_variant``) over them and keeps paper 1's columns.

    python stages/p1_measure.py <corpus-dir> <metrics-json> <details-dir> dense=<dir> name=<dir> ...

The first ``name=dir`` is the reference (the fine-tuned dense model). Every variant is measured with
the shared suite (``measure.suite.measure_variant``: one mechanism for all papers), with the
``measure`` params section updated by ``p1.measure``; the raw hypotheses and the suite's full flat
metrics go to ``<details-dir>``. WER is scored with every normaliser in ``p1.normalizers`` (the first
is the suite's; paper 1: ``hindi`` and, for contrast, ``whisper_basic``, which deletes Devanagari
vowel signs) from the saved raw hypotheses.

Columns (``<metrics-json>``, one entry per variant; reductions are relative to the reference):

* ``params_reduction_pct``: parameters physically present (masked zeros count);
  ``nonzero_params_reduction_pct``: non-zero parameters (masks and SGL zeros count as removed);
* ``memory_reduction_pct``: **peak inference memory** = peak RSS of a separate process that loads the
  model and greedily transcribes ``rss_utterances`` test utterances, minus that process's RSS before
  loading (``peak_rss_delta_mib``); ``weights_reduction_pct`` = bytes of the stored tensors;
* ``flops_reduction_pct``: FLOPs of transcribing the test set (encoder window + every decoder step,
  ptflops, eager attention) with every variant decoding the *reference's* token counts (the suite's
  ``gflops_utterance_ref_lengths``), so that a variant is not credited for emitting fewer tokens;
  ``gflops_encoder`` and ``gflops_decoder_token`` are given too;
* ``wer_<normaliser>_pct`` with its 95 % bootstrap interval, ``wer_delta_abs`` (first normaliser),
  batch-1 CPU latency and ``speedup_vs_reference`` of the suite (each variant's own greedy decoding,
  so a variant that stops earlier looks faster);
* ``fixed_encoder_*`` (the encoder alone) and ``fixed_latency_*`` (encoder + exactly
  ``measure.fixed_tokens`` greedy decoder steps): the suite's fixed-length batch-1 timing, each variant
  interleaved with the reference, with the speed-up's spread: the speed of the architecture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from asrcompress.config import deep_merge, derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json, write_jsonl
from asrcompress.measure.params import percent_reduction
from asrcompress.measure.suite import measure_variant
from asrcompress.measure.wer import score

COPIED = ("params_m", "nonzero_params_m", "weights_mib", "peak_rss_delta_mib", "gflops_encoder",
          "gflops_decoder_token", "gflops_utterance", "latency_ms_p50", "speedup_vs_reference",
          "speedup_vs_reference_ci_low", "speedup_vs_reference_ci_high", "mean_decoded_tokens",
          "fixed_latency_tokens", *(f"fixed_{w}_{k}" for w in ("encoder", "latency")
                                    for k in ("ms_p50", "speedup", "speedup_ci_low", "speedup_ci_high")))


def paper_row(full: dict[str, Any], ref: dict[str, Any] | None, wers: dict[str, dict], flops: float,
              ref_flops: float | None) -> dict[str, Any]:
    """Paper-1 columns of one variant from the suite's flat metrics and the per-normaliser scores."""
    row: dict[str, Any] = {"method": full.get("method"), **{k: full.get(k) for k in COPIED}}
    row["gflops_utterance_at_reference_lengths"] = flops
    if ref is None:  # the reference against itself
        row.update(fixed_encoder_speedup=1.0, fixed_latency_speedup=1.0)
    for name, s in wers.items():
        row[f"wer_{name}_pct"] = s["wer_pct"]
        row[f"wer_{name}_ci_low_pct"] = s["wer_ci_low_pct"]
        row[f"wer_{name}_ci_high_pct"] = s["wer_ci_high_pct"]
    if ref is not None:
        pairs = {"params_reduction_pct": "params", "nonzero_params_reduction_pct": "nonzero_params",
                 "memory_reduction_pct": "peak_rss_delta_mib", "weights_reduction_pct": "weight_bytes"}
        for out, key in pairs.items():
            row[out] = percent_reduction(full[key], ref[key]) if ref.get(key) else None
        row["flops_reduction_pct"] = percent_reduction(flops, ref_flops) if ref_flops else None
        first = next(iter(wers))
        row["wer_delta_abs"] = wers[first]["wer_pct"] - ref["wers"][first]["wer_pct"]
        row["wer_delta_ci_low_pct"] = full.get("paired_delta_ci_low_pct")
        row["wer_delta_ci_high_pct"] = full.get("paired_delta_ci_high_pct")
        row["p_value_worse"] = full.get("paired_p_value_b_worse")
    return row


def main(corpus_dir: str, metrics_path: str, details_dir: str, *variants: str) -> None:
    setup_logging()
    cfg = load_params()
    p1 = get(cfg, "p1", dict)
    corpus = get(p1, "corpus", str)
    language = get(cfg, f"corpora.{corpus}.whisper_language", str)
    normalizers = get(p1, "normalizers", list)
    mcfg = deep_merge(get(cfg, "measure", dict), get(p1, "measure", dict))
    seed = get(cfg, "seed", int)
    named = [v.split("=", 1) for v in variants]
    if not named or any(len(v) != 2 for v in named):
        raise SystemExit("usage: p1_measure.py <corpus-dir> <metrics-json> <details-dir> name=dir ...")
    rows = load_split(corpus_dir, "test")
    refs = [r["text"] for r in rows]
    out, details = Path(metrics_path), Path(details_dir)
    table: dict[str, Any] = {}
    ref_full: dict[str, Any] | None = None
    ref_wers: dict[str, dict] = {}
    ref_dir = ref_errors = ref_lengths = ref_flops = None
    for name, model_dir in named:
        full, hyps = measure_variant(model_dir, rows, language, normalizers[0], mcfg,
                                     derive_seed(seed, "p1_measure", name), reference_dir=ref_dir,
                                     reference_metrics=ref_full, reference_errors=ref_errors,
                                     reference_lengths=ref_lengths)
        hyp_text = [h["hyp"] for h in hyps]
        wers = {n: score(refs, hyp_text, n, int(mcfg["bootstrap_resamples"]), derive_seed(seed, "p1_wer", name))
                for n in normalizers}
        flops = full.get("gflops_utterance_ref_lengths") or full["gflops_utterance"]
        ref = None if ref_full is None else {**ref_full, "wers": ref_wers}
        table[name] = paper_row(full, ref, wers, flops, ref_flops)
        write_json(details / f"{name}.json", {"variant": name, **full})
        write_jsonl(details / f"{name}.jsonl", hyps)
        if ref_full is None:
            ref_full, ref_dir, ref_flops, ref_wers = full, model_dir, flops, wers
            ref_errors, ref_lengths = [h["errors"] for h in hyps], [h["tokens"] for h in hyps]
        log.info("p1_measure@%s: %s | %.3f M params, WER %s %.2f%%, %s %.2f%%, %.4f GFLOPs/utt, %.1f ms/utt",
                 name, model_dir, full["params_m"], normalizers[0], wers[normalizers[0]]["wer_pct"],
                 normalizers[-1], wers[normalizers[-1]]["wer_pct"], flops, full["latency_ms_p50"])
    table["reference"] = named[0][0]
    table["normalizers"] = normalizers
    table["definitions"] = {
        "memory_reduction_pct": "peak RSS of a process loading the model and transcribing "
                                f"{mcfg['rss_utterances']} test utterances, minus its RSS before loading",
        "weights_reduction_pct": "bytes of the stored parameters and buffers",
        "flops_reduction_pct": "ptflops FLOPs per test utterance, every model decoding the reference's token counts",
        "params_reduction_pct": "parameters physically present (masked zeros count)"}
    write_json(out, table)
    log.info("p1_measure: %s", json.dumps({k: {c: v[c] for c in ("params_reduction_pct", "flops_reduction_pct",
                                                                 "wer_delta_abs", "fixed_encoder_speedup",
                                                                 "fixed_latency_speedup")}
                                           for k, v in table.items() if isinstance(v, dict) and "wer_delta_abs" in v}))


if __name__ == "__main__":
    main(*sys.argv[1:])
