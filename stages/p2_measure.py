"""p2_measure@<variant>: measure a BaldWhisper variant against the dense model (shared measurement suite)
and add paper 2's own figures.

    python stages/p2_measure.py <variant> <model-dir> <reference-dir> <corpus-dir> <reference-metrics>
        <reference-hyps> <metrics-json> <hyps-jsonl>

``measure.suite.measure_variant`` gives parameters, memory, FLOPs, WER/CER with bootstrap CI, a paired test
against the reference's hypotheses, batch-1 latency interleaved with the reference (``measure`` params:
threads, utterances; ``p2.measure`` may override any of them for paper 2) and, when ``p2.variants.<variant>.real_scale`` names an architecture, the real-scale
timing of the same structure. Added here (definitions in :func:`p2_figures`): ``performance_kept_pct``,
``wer_rel_increase_pct``, ``decoder_params_reduction_pct``, ``embedding_compression_x``,
``embedding_params_reduction_pct``, ``merged_pairs``, ``embedding_rank``, ``embedding_rank_fraction`` and
real-scale speed-ups ``real_speedup_decoder_token``, ``real_speedup_30s``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asrcompress.compress.checkpoint import read_compression_record
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, read_json, setup_logging, write_json, write_jsonl
from asrcompress.measure.params import percent_reduction
from asrcompress.measure.suite import measure_variant


def p2_figures(m: Mapping[str, Any], ref: Mapping[str, Any], record: Mapping[str, Any] | None) -> dict[str, Any]:
    """Paper 2's figures from a variant's metrics ``m``, the dense reference's ``ref`` and the variant's
    compression record.

    * ``performance_kept_pct`` = 100 x (1 - WER_c) / (1 - WER_dense), WERs as fractions (the paper's
      "90 % of the original performance", read as kept word accuracy; None if WER_dense >= 100 %);
    * ``wer_rel_increase_pct`` = 100 x (WER_c - WER_dense) / WER_dense;
    * ``decoder_params_reduction_pct``: decoder parameters without the token/positional embeddings
      (``measure.params`` buckets), so it shows what merging removes;
    * ``embedding_compression_x`` = dense / compressed token-embedding parameters (vocab x d vs r x (vocab + d));
    * ``real_speedup_30s_shared_encoder``: ``real_speedup_30s`` (from the measurement suite: dense /
      compressed time for one 30 s window, encoder + forced decode) when the encoder is unchanged (as in
      every p2 variant), with the dense encoder's median for both.
    """
    out: dict[str, Any] = {}
    wer, wer_ref = m.get("wer_pct"), ref.get("wer_pct")
    if wer is not None and wer_ref is not None:
        out["performance_kept_pct"] = 100.0 * (100.0 - wer) / (100.0 - wer_ref) if wer_ref < 100.0 else None
        out["wer_rel_increase_pct"] = 100.0 * (wer - wer_ref) / wer_ref if wer_ref > 0 else None
    for key in ("decoder_params", "token_embedding_params", "encoder_params"):
        if m.get(key) is not None and ref.get(key):
            out[f"{key}_reduction_pct"] = percent_reduction(m[key], ref[key])
    out["embedding_params_reduction_pct"] = out.pop("token_embedding_params_reduction_pct", None)
    if m.get("token_embedding_params"):
        out["embedding_compression_x"] = ref["token_embedding_params"] / m["token_embedding_params"]
    if m.get("real_latency_decoder_token_ms_p50"):  # real_speedup_* themselves come from the suite
        if m.get("real_gmacs_encoder_ratio") == 1.0:  # same encoder: time it once (the dense run's median)
            enc, n = m["real_latency_encoder_ms_p50_dense"], m["real_decode_tokens"]
            out["real_speedup_30s_shared_encoder"] = (enc + n * m["real_latency_decoder_token_ms_p50_dense"]) / (
                enc + n * m["real_latency_decoder_token_ms_p50"])
    structure = (record or {}).get("structure", {})
    layers = structure.get("stacks", {}).get("decoder", {}).get("layers", [])
    out["merged_pairs"] = sum(1 for r in layers if len(r["origin"]) > 1)
    out["decoder_layers"] = len(layers) if layers else None
    out["decoder_layers_dense"] = structure.get("base_config", {}).get("decoder_layers")
    rank = structure.get("embedding_rank")
    out["embedding_rank"] = rank
    d_model = structure.get("base_config", {}).get("d_model")
    out["embedding_rank_fraction"] = rank / d_model if rank and d_model else None
    return out


def main(variant: str, model_dir: str, reference_dir: str, corpus_dir: str, ref_metrics_path: str,
         ref_hyps_path: str, metrics_path: str, hyps_path: str) -> None:
    setup_logging()
    cfg = load_params()
    spec = get(cfg, f"p2.variants.{variant}", dict)
    reference = get(cfg, "p2.reference", str)
    corpus = get(cfg, f"dense.{reference}.corpus", str)
    ref_metrics = read_json(ref_metrics_path)
    ref_errors = [json.loads(line)["errors"] for line in Path(ref_hyps_path).read_text().splitlines()]
    rows = load_split(corpus_dir, "test")
    metrics, hyps = measure_variant(
        model_dir, rows, get(cfg, f"corpora.{corpus}.whisper_language", str),
        get(cfg, f"corpora.{corpus}.normalizer", str),
        {**get(cfg, "measure", dict), **(get(cfg, "p2.measure", dict, default=None) or {})},
        derive_seed(get(cfg, "seed", int), "measure", f"p2_{variant}"), reference_dir=reference_dir,
        reference_metrics=ref_metrics, reference_errors=ref_errors, real_scale=spec.get("real_scale"))
    metrics = {"variant": f"p2_{variant}", "reference": reference, **metrics,
               **p2_figures(metrics, ref_metrics, read_compression_record(model_dir))}
    write_json(metrics_path, metrics)
    write_jsonl(hyps_path, hyps)
    log.info("p2_measure@%s: %s -> %s | params -%.1f%%, WER %.2f%% (dense %.2f%%), performance kept %.1f%%, "
             "speed-up %.2fx (CPU, batch 1), real-scale %s", variant, model_dir, metrics_path,
             metrics.get("params_reduction_pct", float("nan")), metrics["wer_pct"], ref_metrics["wer_pct"],
             metrics.get("performance_kept_pct") or float("nan"), metrics.get("speedup_vs_reference", float("nan")),
             f"{metrics['real_speedup_30s']:.2f}x per 30 s window" if "real_speedup_30s" in metrics else "not run")


if __name__ == "__main__":
    main(*sys.argv[1:])
