"""p1_measure: paper 1's table (params, memory, FLOPs, WER) for the dense model and the p1 variants.

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
  ptflops, eager attention) with every variant decoding the *reference's* token counts, so that a
  variant is not credited for emitting fewer tokens; ``gflops_encoder`` and ``gflops_decoder_token``
  are given too;
* ``wer_<normaliser>_pct`` with its 95 % bootstrap interval, ``wer_delta_abs`` (first normaliser),
  batch-1 CPU latency and ``speedup_vs_reference`` of the suite (each variant's own greedy decoding,
  so a variant that stops earlier looks faster);
* ``fixed_encoder_ms_p50`` / ``fixed_encoder_speedup`` (the encoder alone) and ``fixed_latency_ms_p50``
  / ``fixed_latency_speedup`` (encoder + exactly ``p1.timing.tokens`` greedy decoder steps): batch-1
  times on one test utterance, all variants interleaved in one process
  (``measure.latency.interleaved_timings``, ``p1.timing.repeats`` rounds after two warm-up rounds,
  ``measure.num_threads`` threads): the speed of the architecture, independent of output length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrcompress.compress.checkpoint import load_compressed
from asrcompress.config import deep_merge, derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json, write_jsonl
from asrcompress.measure import latency
from asrcompress.measure.flops import whisper_cost
from asrcompress.measure.params import percent_reduction
from asrcompress.measure.suite import measure_variant
from asrcompress.measure.wer import score

COPIED = ("params_m", "nonzero_params_m", "weights_mib", "peak_rss_delta_mib", "gflops_encoder",
          "gflops_decoder_token", "gflops_utterance", "latency_ms_p50", "speedup_vs_reference",
          "mean_decoded_tokens")


def _utterance_gflops(model_dir: str, lengths: list[int], prompt_len: int = 4) -> float:
    """Mean per-utterance GFLOPs (2 x MACs) of ``model_dir`` decoding ``lengths`` tokens."""
    cost = whisper_cost(load_compressed(model_dir))
    return 2 * float(np.mean([cost.utterance_macs(n, prompt_len) for n in lengths])) / 1e9


def processor_features(model_dir: str, row: dict[str, Any]) -> Any:
    """Batch-1 log-mel features of ``row`` with the processor saved in ``model_dir``."""
    from transformers import WhisperProcessor

    fe = WhisperProcessor.from_pretrained(model_dir).feature_extractor
    return fe([np.asarray(row["audio"]["array"], dtype=np.float32)], sampling_rate=16000,
              return_tensors="pt").input_features


def fixed_length_timing(model_dirs: dict[str, str], features: Any, tokens: int, repeats: int, seed: int
                        ) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, variants interleaved: ``encoder`` (the encoder alone) and ``decode`` (encoder +
    ``tokens`` forced greedy decoder steps); two warm-up rounds, ``repeats`` timed rounds each."""
    models = {name: load_compressed(d).eval() for name, d in model_dirs.items()}

    def encoder(m: Any) -> None:
        with torch.inference_mode():
            m.model.encoder(features)

    enc = {name: (lambda m=m: encoder(m)) for name, m in models.items()}
    dec = {name: (lambda m=m: latency.whisper_greedy_decode(m, features, tokens)) for name, m in models.items()}
    return {"encoder": latency.interleaved_timings(enc, warmup=2, repeats=repeats, seed=seed),
            "decode": latency.interleaved_timings(dec, warmup=2, repeats=repeats, seed=seed + 1)}


def paper_row(full: dict[str, Any], ref: dict[str, Any] | None, wers: dict[str, dict], flops: float,
              ref_flops: float | None) -> dict[str, Any]:
    """Paper-1 columns of one variant from the suite's flat metrics and the per-normaliser scores."""
    row: dict[str, Any] = {"method": full.get("method"), **{k: full.get(k) for k in COPIED}}
    row["gflops_utterance_at_reference_lengths"] = flops
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
                                     reference_metrics=ref_full, reference_errors=ref_errors)
        hyp_text = [h["hyp"] for h in hyps]
        wers = {n: score(refs, hyp_text, n, int(mcfg["bootstrap_resamples"]), derive_seed(seed, "p1_wer", name))
                for n in normalizers}
        if ref_full is None:
            ref_lengths = [h["tokens"] for h in hyps]
        flops = _utterance_gflops(model_dir, ref_lengths)
        ref = None if ref_full is None else {**ref_full, "wers": ref_wers}
        table[name] = paper_row(full, ref, wers, flops, ref_flops)
        write_json(details / f"{name}.json", {"variant": name, **full})
        write_jsonl(details / f"{name}.jsonl", hyps)
        if ref_full is None:
            ref_full, ref_dir, ref_flops, ref_wers = full, model_dir, flops, wers
            ref_errors = [h["errors"] for h in hyps]
        log.info("p1_measure@%s: %s | %.3f M params, WER %s %.2f%%, %s %.2f%%, %.4f GFLOPs/utt, %.1f ms/utt",
                 name, model_dir, full["params_m"], normalizers[0], wers[normalizers[0]]["wer_pct"],
                 normalizers[-1], wers[normalizers[-1]]["wer_pct"], flops, full["latency_ms_p50"])
    tokens, repeats = get(p1, "timing.tokens", int), get(p1, "timing.repeats", int)
    feats = processor_features(named[0][1], rows[0])
    times = fixed_length_timing(dict(named), feats, tokens, repeats, derive_seed(seed, "p1_timing"))
    for what, key in (("encoder", "fixed_encoder"), ("decode", "fixed_latency")):
        ref_p50 = float(np.median(times[what][named[0][0]]))
        for name, _ in named:
            p50 = float(np.median(times[what][name]))
            table[name].update({f"{key}_ms_p50": 1e3 * p50, f"{key}_speedup": ref_p50 / p50})
    for name, _ in named:
        table[name]["fixed_latency_tokens"] = tokens
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
