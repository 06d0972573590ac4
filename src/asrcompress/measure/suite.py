"""All five measurements of one model variant, in one flat metrics schema.

``measure_variant`` loads the variant (any ``save_pretrained`` / ``save_compressed`` directory,
via ``load_compressed``), its reference (the dense model it is compared to), and writes:

* parameters (``params_m``, ``nonzero_params_m``, encoder/decoder/embedding splits, ``*_reduction_pct``);
* memory: ``weights_mib`` (bytes of stored tensors), ``checkpoint_mib`` (directory on disk),
  ``peak_rss_delta_mib`` (a separate process: peak RSS while loading the model and transcribing
  test utterances, minus its RSS before loading), ``cuda_peak_mib`` on a GPU;
* FLOPs (ptflops, eager attention): encoder per window, decoder per token, per utterance over the
  test set's actual decoded lengths (``gmacs_*`` and ``gflops_*`` = 2 x MACs);
* WER/CER raw and normalised with a bootstrap 95 % CI, a paired test against the reference;
* latency: batch-1 greedy decoding per utterance (median, p90), RTFx, and a batched RTFx, with
  the reference timed interleaved in the same process (``speedup_vs_reference``);
* optionally the real-scale timing of the same kept structure on a real architecture.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrcompress.compress.checkpoint import load_compressed, read_compression_record
from asrcompress.config import ParamError, Spec, check_section, get
from asrcompress.inference import prompt_kwargs, transcribe_whisper
from asrcompress.measure import latency, memory
from asrcompress.measure.flops import flops_metrics
from asrcompress.measure.params import count_params, percent_reduction
from asrcompress.measure.real_scale import LAYER_RULES, MIN_REPEATS
from asrcompress.measure.wer import paired_bootstrap, per_utterance_errors, score
from asrcompress.text.normalize import get_normalizer

_POSITIVE_INT = Spec(int, min=1)
# the `measure` params section (`real_measure` overrides any of these keys for the real track)
MEASURE_SCHEMA: dict[str, Spec] = {
    "device": Spec(str, required=False, pattern=r"cpu|cuda(:\d+)?", what="cpu, cuda or cuda:N"),
    "num_threads": _POSITIVE_INT, "batch_size": _POSITIVE_INT, "bootstrap_resamples": _POSITIVE_INT,
    "latency_utterances": _POSITIVE_INT, "rss_utterances": _POSITIVE_INT,
    # real-architecture timing (measure/real_scale.py): decode length, interleaved rounds (enough for a
    # speed-up interval), how lost layers are projected (count | fraction)
    "real_scale_tokens": _POSITIVE_INT, "real_scale_repeats": Spec(int, min=MIN_REPEATS),
    "real_scale_layers": Spec(str, required=False, choices=LAYER_RULES),
    # cap on generated tokens per utterance (null: the model's generation config, max_length)
    "max_new_tokens": Spec(int, required=False, min=1),
}
# one entry of `dense`, `real_dense`, `real_dense_synth` or `variants`
VARIANT_SCHEMA: dict[str, Spec] = {
    "model": Spec(str), "corpus": Spec(str),
    "reference": Spec(str, required=False), "real_scale": Spec(str, required=False),
    # score only the first N utterances of the test split (a variant must use its reference's N)
    "test_utterances": Spec(int, required=False, min=1),
    # further normalisers: ``wer_<name>_pct`` (+ CI, CER) beside the corpus normaliser's ``wer_pct``
    "extra_normalizers": Spec(list, required=False),
}
REFERENCE_SECTIONS = ("dense", "real_dense")


def validate_measure_params(cfg: Mapping[str, Any], section: str,
                            key: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Check everything ``measure@<key>`` reads from params before any model or data is loaded.

    Returns (measure section, with ``real_measure`` merged over it for ``real_*`` sections;
    the variant entry ``<section>.<key>``; the corpora section holding its corpus). Raises
    :class:`ParamError` naming the offending ``section.key``.
    """
    from asrcompress.measure.real_scale import REAL_ARCHS

    mcfg = check_section(get(cfg, "measure"), "measure", MEASURE_SCHEMA)
    if section.startswith("real_"):
        optional = {k: dataclasses.replace(v, required=False) for k, v in MEASURE_SCHEMA.items()}
        mcfg.update({k: v for k, v in check_section(get(cfg, "real_measure"), "real_measure", optional).items()
                     if v is not None})
    name = f"{section}.{key}"
    variant = check_section(get(cfg, name), name, VARIANT_SCHEMA)
    reference = variant.get("reference")
    if reference is not None and not any(reference in (cfg.get(s) or {}) for s in REFERENCE_SECTIONS):
        raise ParamError(f"params.yaml: {name}.reference: {reference!r} is not a key of "
                         f"{' or '.join(REFERENCE_SECTIONS)}")
    real_scale = variant.get("real_scale")
    if real_scale is not None and real_scale not in REAL_ARCHS:
        raise ParamError(f"params.yaml: {name}.real_scale: {real_scale!r} is not one of {sorted(REAL_ARCHS)}")
    corpus = variant["corpus"]
    corpora = next((c for c in ("real_corpora", "corpora") if corpus in (cfg.get(c) or {})), None)
    if corpora is None:
        raise ParamError(f"params.yaml: {name}.corpus: {corpus!r} is not a key of corpora or real_corpora")
    get(cfg, f"{corpora}.{corpus}.whisper_language", str)
    normalizer = get(cfg, f"{corpora}.{corpus}.normalizer", str)
    try:
        get_normalizer(normalizer)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {corpora}.{corpus}.normalizer: {exc}") from exc
    for i, extra in enumerate(variant.get("extra_normalizers") or []):
        try:
            get_normalizer(extra)
        except (ValueError, TypeError) as exc:
            raise ParamError(f"params.yaml: {name}.extra_normalizers[{i}]: {exc}") from exc
    return mcfg, variant, corpora


def load_variant(model_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Model (through ``load_compressed``) and its processor, both from ``model_dir``."""
    from transformers import AutoProcessor

    model = load_compressed(model_dir).eval()
    processor = AutoProcessor.from_pretrained(str(model_dir))
    return model, processor


def _whisper_batch_features(processor: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
    audio = [np.asarray(r["audio"]["array"], dtype=np.float32) for r in rows]
    return processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features


def _per_utt_latency(model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]], language: str,
                     reference: torch.nn.Module | None, ref_processor: Any, seed: int,
                     max_new_tokens: int | None = None) -> dict[str, Any]:
    """Batch-1 greedy decode of each row, variant and reference interleaved per utterance."""
    fns: dict[str, list] = {"variant": [], "reference": []}
    for row in rows:
        for name, m, p in (("variant", model, processor), ("reference", reference, ref_processor)):
            if m is None:
                continue
            feats = _whisper_batch_features(p, [row])
            fns[name].append(lambda m=m, f=feats: m.generate(f, **prompt_kwargs(m, language),
                                                            num_beams=1, do_sample=False,
                                                            max_new_tokens=max_new_tokens))
    names = [n for n in fns if fns[n]]
    for n in names:  # warm-up
        fns[n][0]()
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    for i in range(len(rows)):
        for n in rng.permutation(names):
            times[n].extend(latency.time_callable(fns[n][i], warmup=0, repeats=1))
    audio_s = [r["duration"] for r in rows]
    out: dict[str, Any] = {}
    for n in names:
        t = np.asarray(times[n])
        prefix = "" if n == "variant" else "reference_"
        out[f"{prefix}latency_ms_p50"] = float(np.median(t) * 1e3)
        out[f"{prefix}latency_ms_p90"] = float(np.percentile(t, 90) * 1e3)
        out[f"{prefix}rtfx_b1"] = float(sum(audio_s) / t.sum())
    if "reference" in times:
        out["speedup_vs_reference"] = out["reference_latency_ms_p50"] / out["latency_ms_p50"]
    out["latency_utterances"] = len(rows)
    return out


def measure_variant(model_dir: str | Path, rows: list[dict[str, Any]], language: str, normalizer: str,
                    mcfg: Mapping[str, Any], seed: int, reference_dir: str | Path | None = None,
                    reference_metrics: Mapping[str, Any] | None = None,
                    reference_errors: list[int] | None = None,
                    real_scale: str | None = None,
                    extra_normalizers: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure one Whisper variant on ``rows`` (its test split). Returns (metrics, hypotheses rows).

    With a reference (its directory, its metrics and its per-utterance errors from its hypotheses
    file), relative figures (``*_reduction_pct``, ``wer_delta_abs``, ``speedup_vs_reference``) and
    a paired bootstrap test (``paired_*``) against it are added.

    ``mcfg`` is the ``measure`` params section: ``num_threads``, ``batch_size``,
    ``bootstrap_resamples``, ``latency_utterances``, ``rss_utterances``, ``real_scale_repeats``,
    ``real_scale_tokens``, ``device`` (where the batched WER decoding runs; its peak CUDA memory is
    ``cuda_peak_mib``) and optionally ``max_new_tokens`` (a cap on generated tokens). Batch-1 latency, FLOPs and real-scale timing run on the CPU (``latency_device``).
    """
    latency.set_threads(int(mcfg["num_threads"]))
    model, processor = load_variant(model_dir)
    if model.config.model_type != "whisper":
        raise ValueError(f"{model_dir}: measure_variant handles Whisper models; got {model.config.model_type}")
    record = read_compression_record(model_dir) or {}
    metrics: dict[str, Any] = {"model_dir": str(model_dir), "method": record.get("method", "dense")}

    # parameters and memory -------------------------------------------------------------------
    metrics.update({k: v for k, v in count_params(model).items()})
    metrics.update(memory.memory_metrics(model, model_dir))

    # WER (batched decoding, also the batched throughput) -----------------------------------
    device = str(mcfg.get("device") or "cpu")  # where the batched WER decoding runs (cpu | cuda)
    if device != "cpu":
        model.to(device)
    decoded: dict[str, Any] = {}

    def decode() -> None:
        t0 = time.perf_counter()
        decoded["out"] = transcribe_whisper(model, processor, rows, language, int(mcfg["batch_size"]),
                                             max_new_tokens=mcfg.get("max_new_tokens"))
        decoded["seconds"] = time.perf_counter() - t0

    cuda_peak = memory.cuda_peak_mib(decode) if device.startswith("cuda") else decode()
    model.to("cpu")  # FLOPs, batch-1 latency (the edge setting) and real-scale timing stay on the CPU
    (hyps, lengths), decode_s = decoded["out"], decoded["seconds"]
    refs = [r["text"] for r in rows]
    metrics.update(score(refs, hyps, normalizer, n_resamples=int(mcfg["bootstrap_resamples"]), seed=seed))
    for extra in extra_normalizers:  # the same hypotheses under another normaliser
        res = score(refs, hyps, extra, n_resamples=int(mcfg["bootstrap_resamples"]), seed=seed)
        metrics.update({f"{k.replace('_pct', '')}_{extra}_pct": res[k]
                        for k in ("wer_pct", "wer_ci_low_pct", "wer_ci_high_pct", "cer_pct")})
    audio_s = float(sum(r["duration"] for r in rows))
    metrics.update({"test_utterances": len(rows), "test_audio_s": audio_s, "decode_device": device,
                    "rtfx_batched": audio_s / decode_s, "mean_decoded_tokens": float(np.mean(lengths))})
    norm = get_normalizer(normalizer)
    errs = per_utterance_errors([norm(r) for r in refs], [norm(h) for h in hyps])
    hyp_rows = [{"id": r["id"], "ref": r["text"], "hyp": h, "tokens": n, "errors": int(e), "ref_words": int(w)}
                for r, h, n, e, w in zip(rows, hyps, lengths, errs["errors"], errs["n_ref_words"], strict=True)]

    # FLOPs over the actual decoded lengths -------------------------------------------------
    metrics.update(flops_metrics(model, decoded_lengths=lengths, prompt_len=4))

    # latency, interleaved with the reference -----------------------------------------------
    reference, ref_processor = (None, None)
    if reference_dir is not None and Path(reference_dir).resolve() != Path(model_dir).resolve():
        reference, ref_processor = load_variant(reference_dir)
    lat_rows = rows[: int(mcfg["latency_utterances"])]
    metrics.update(_per_utt_latency(model, processor, lat_rows, language, reference, ref_processor, seed,
                                    mcfg.get("max_new_tokens")))

    # peak RSS of a separate process transcribing test utterances ---------------------------
    with tempfile.TemporaryDirectory() as tmp:
        feats = _whisper_batch_features(processor, rows[: int(mcfg["rss_utterances"])])
        torch.save(feats, Path(tmp) / "features.pt")
        rss = memory.peak_rss_subprocess(
            [sys.executable, "-m", "asrcompress.measure.memory_probe", str(model_dir), "--task", "generate",
             "--batch", str(feats.shape[0]), "--new-tokens", str(int(round(statistics.mean(lengths)))),
             "--threads", str(int(mcfg["num_threads"])), "--input", str(Path(tmp) / "features.pt")])
    metrics.update({k: rss[k] for k in ("peak_rss_mib", "peak_rss_delta_mib", "baseline_rss_mib") if k in rss})
    metrics["cuda_peak_mib"] = cuda_peak  # peak allocated CUDA memory of the batched decoding; None on CPU
    metrics["latency_device"] = "cpu"

    # comparisons against the reference's own metrics --------------------------------------
    if reference_metrics:
        for key in ("params", "nonzero_params", "weight_bytes", "checkpoint_bytes", "peak_rss_delta_mib",
                    "gmacs_encoder", "gmacs_decoder_token", "gmacs_utterance"):
            if metrics.get(key) is not None and reference_metrics.get(key):
                metrics[f"{key}_reduction_pct"] = percent_reduction(metrics[key], reference_metrics[key])
        if reference_metrics.get("wer_pct") is not None:
            metrics["wer_delta_abs"] = metrics["wer_pct"] - reference_metrics["wer_pct"]
    if reference_errors is not None:
        if len(reference_errors) != len(rows):
            raise ValueError(f"reference has {len(reference_errors)} per-utterance errors, test set has {len(rows)}")
        metrics.update({f"paired_{k}": v for k, v in paired_bootstrap(
            np.asarray(reference_errors), errs["errors"], errs["n_ref_words"],
            int(mcfg["bootstrap_resamples"]), seed).items()})

    # real-scale timing of the same kept structure ------------------------------------------
    if real_scale:
        from asrcompress.compress.surgery import structure_of
        from asrcompress.measure.real_scale import real_scale_report

        rs = real_scale_report(real_scale, structure_of(model), n_tokens=int(mcfg["real_scale_tokens"]),
                               repeats=int(mcfg["real_scale_repeats"]), seed=seed,
                               layers=mcfg.get("real_scale_layers") or "count")
        metrics.update({f"real_{k}": v for k, v in rs.items()})  # real_speedup_30s (+ spread), ...
    metrics.update({f"runtime_{k}": v for k, v in latency.runtime_info().items()})
    return metrics, hyp_rows
