"""All five measurements of one model variant, in one flat metrics schema.

``measure_variant`` loads the variant (any ``save_pretrained`` / ``save_compressed`` directory,
via ``load_compressed``), its reference (the dense model it is compared to), and writes:

* parameters (``params_m``, ``nonzero_params_m``, encoder/decoder/embedding splits, ``*_reduction_pct``);
* memory: ``weights_mib`` (bytes of stored tensors), ``checkpoint_mib`` (directory on disk),
  ``peak_rss_delta_mib`` (a separate process: peak RSS while loading the model and transcribing
  test utterances, minus its RSS before loading), ``cuda_peak_mib`` on a GPU;
* FLOPs (ptflops, eager attention): encoder per window, decoder per token, per utterance over the
  test set's actual decoded lengths (``gmacs_*`` and ``gflops_*`` = 2 x MACs), and with a reference
  over the reference's decoded lengths (``gmacs_utterance_ref_lengths``);
* WER/CER raw and normalised with a bootstrap 95 % CI, a paired test against the reference;
* latency: batch-1 greedy decoding per utterance (p10, p50, p90 over utterances, each the median of
  ``latency_repeats`` rounds), RTFx, and a batched RTFx, with the reference timed interleaved in the
  same process (``speedup_vs_reference`` with its bootstrap CI, min and max); and the fixed-length
  timing of the architecture (``fixed_encoder_*``: the encoder alone, ``fixed_latency_*``: encoder +
  ``fixed_tokens`` decoder steps; ``fixed_repeats`` interleaved rounds, with spread);
* optionally the real-scale timing of the same kept structure on a real architecture.

wav2vec 2.0 / HuBERT CTC models (paper 4) go through the same function and schema: greedy CTC
decoding (``inference.transcribe``), FLOPs of the whole forward on an utterance of the mean test
duration (``gmacs_utterance``, plus ``gmacs_per_audio_s``), batch-1 latency of the forward +
greedy decode, and the peak RSS of a probe process running the forward on test utterances.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrcompress.compress.checkpoint import load_compressed, read_compression_record
from asrcompress.config import DENSE_SECTIONS, ParamError, Spec, check_section, get
from asrcompress.inference import CTC_MODEL_TYPES, prompt_kwargs, transcribe
from asrcompress.measure import latency, memory
from asrcompress.measure.flops import ctc_flops, flops_metrics
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
    # batch-1 latency: rounds over the latency utterances (each utterance timed this many times)
    "latency_repeats": _POSITIVE_INT,
    # fixed-length timing: encoder + exactly fixed_tokens decoder steps, fixed_repeats rounds (0 = off)
    "fixed_tokens": _POSITIVE_INT, "fixed_repeats": Spec(int, min=0),
    # real-architecture timing (measure/real_scale.py): decode length, interleaved rounds (enough for a
    # speed-up interval), how lost layers are projected (count | fraction)
    "real_scale_tokens": _POSITIVE_INT, "real_scale_repeats": Spec(int, min=MIN_REPEATS),
    "real_scale_layers": Spec(str, required=False, choices=LAYER_RULES),
    # cap on generated tokens per utterance (null: the model's generation config, max_length)
    "max_new_tokens": Spec(int, required=False, min=1),
}
# one entry of `dense`, `real_dense`, `real_dense_synth`, `variants` or `real_variants`
VARIANT_SCHEMA: dict[str, Spec] = {
    "model": Spec(str), "corpus": Spec(str),
    "reference": Spec(str, required=False), "real_scale": Spec(str, required=False),
    # score only the first N utterances of the test split (a variant must use its reference's N)
    "test_utterances": Spec(int, required=False, min=1),
    # further normalisers: ``wer_<name>_pct`` (+ CI, CER) beside the corpus normaliser's ``wer_pct``
    "extra_normalizers": Spec(list, required=False),
}
# a reference is a dense model, or (real track) another real variant: a fine-tuned control, whose outputs
# decode like the compressed model's, where the pre-trained model is no fair reference (paper 1 on Hindi)
REFERENCE_SECTIONS = (*DENSE_SECTIONS, "real_variants")
MEASURED_SECTIONS = ("dense", "real_dense", "real_dense_synth", "variants", "real_variants")


def validate_measure_params(cfg: Mapping[str, Any], section: str,
                            key: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Check everything ``measure@<key>`` reads from params before any model or data is loaded.

    Returns (measure section, with ``real_measure`` merged over it for ``real_*`` sections and then
    ``real_variants_measure`` for ``real_variants``;
    the variant entry ``<section>.<key>``; the corpora section holding its corpus). Raises
    :class:`ParamError` naming the offending ``section.key``.
    """
    from asrcompress.measure.real_scale import REAL_ARCHS

    mcfg = check_section(get(cfg, "measure"), "measure", MEASURE_SCHEMA)
    if section.startswith("real_"):
        optional = {k: dataclasses.replace(v, required=False) for k, v in MEASURE_SCHEMA.items()}
        overrides = ["real_measure"] + (["real_variants_measure"] if section == "real_variants" else [])
        for name in overrides:
            mcfg.update({k: v for k, v in check_section(get(cfg, name), name, optional).items() if v is not None})
    name = f"{section}.{key}"
    variant = check_section(get(cfg, name), name, VARIANT_SCHEMA)
    reference = variant.get("reference")
    allowed = REFERENCE_SECTIONS if section == "real_variants" else DENSE_SECTIONS
    if reference is not None and not any(reference in (cfg.get(s) or {}) for s in allowed):
        raise ParamError(f"params.yaml: {name}.reference: {reference!r} is not a key of {' or '.join(allowed)}")
    if reference == key:
        raise ParamError(f"params.yaml: {name}.reference: an entry cannot be its own reference")
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


def _decode_one(m: torch.nn.Module, p: Any, row: dict[str, Any], language: str,
                max_new_tokens: int | None) -> Callable[[], Any]:
    """A call that decodes one row at batch 1, as deployed: Whisper greedy ``generate``, or the CTC
    forward + greedy decode (arg-max, collapse, detokenise). Features are computed outside the call."""
    if getattr(m.config, "model_type", "") == "whisper":
        feats = _whisper_batch_features(p, [row])
        return lambda: m.generate(feats, **prompt_kwargs(m, language), num_beams=1, do_sample=False,
                                  max_new_tokens=max_new_tokens)
    from asrcompress.models.ctc import greedy_ids

    x = _ctc_batch_input(p, [row])

    def run() -> str:
        with torch.inference_mode():
            logits = m(x).logits
        ids = greedy_ids(logits, [logits.shape[1]], blank=p.tokenizer.pad_token_id)[0]
        return p.tokenizer.decode(ids, group_tokens=False)
    return run


def _per_utt_latency(model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]], language: str,
                     reference: torch.nn.Module | None, ref_processor: Any, seed: int,
                     max_new_tokens: int | None = None, repeats: int = 1,
                     n_resamples: int = 1000) -> dict[str, Any]:
    """Batch-1 greedy decode of each row, variant and reference interleaved per utterance.

    ``repeats`` rounds over the rows after one warm-up call each; in every round each utterance is
    decoded by the variant and the reference back to back, in a fresh random order. An utterance's
    time is its median over the rounds. Latencies ``latency_ms_p10`` / ``_p50`` / ``_p90`` over the
    utterances; ``speedup_vs_reference`` = median over utterances of the paired ratio reference /
    variant time, with its seeded bootstrap 95 % CI (``_ci_low`` / ``_ci_high``) and ``_min`` / ``_max``.
    """
    fns: dict[str, list] = {"variant": [], "reference": []}
    for row in rows:
        for name, m, p in (("variant", model, processor), ("reference", reference, ref_processor)):
            if m is not None:
                fns[name].append(_decode_one(m, p, row, language, max_new_tokens))
    names = [n for n in fns if fns[n]]
    for n in names:  # warm-up
        fns[n][0]()
    times: dict[str, np.ndarray] = {n: np.zeros((repeats, len(rows))) for n in names}
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for i in range(len(rows)):
            for n in rng.permutation(names):
                times[n][r, i] = latency.time_callable(fns[n][i], warmup=0, repeats=1)[0]
    audio_s = [r["duration"] for r in rows]
    out: dict[str, Any] = {}
    per_utt: dict[str, np.ndarray] = {}
    for n in names:
        t = per_utt[n] = np.median(times[n], axis=0)
        prefix = "" if n == "variant" else "reference_"
        for q in (10, 50, 90):
            out[f"{prefix}latency_ms_p{q}"] = float(np.percentile(t, q) * 1e3)
        out[f"{prefix}rtfx_b1"] = float(sum(audio_s) / t.sum())
    if "reference" in times:
        out.update(latency.paired_speedup(list(per_utt["reference"]), list(per_utt["variant"]), n_resamples,
                                          seed, prefix="speedup_vs_reference"))
    out["latency_utterances"] = len(rows)
    out["latency_repeats"] = repeats
    return out


def _fixed_length_timing(model: torch.nn.Module, processor: Any, row: dict[str, Any],
                         reference: torch.nn.Module | None, ref_processor: Any, tokens: int, repeats: int,
                         seed: int, n_resamples: int) -> dict[str, Any]:
    """Batch-1 time of the architecture, independent of what the model emits: ``fixed_encoder_*``
    (the encoder alone) and ``fixed_latency_*`` (encoder + exactly ``tokens`` greedy decoder steps,
    ``latency.whisper_greedy_decode``) on one test utterance, the reference interleaved in shuffled
    rounds (``latency.interleaved_timings``: two warm-up rounds, ``repeats`` timed rounds).
    ``*_ms_p50`` / ``_min`` / ``_max`` over the rounds; ``*_speedup`` (+ CI, min, max) from the
    per-round paired ratios (``latency.paired_speedup``)."""
    models = {"variant": (model, processor)}
    if reference is not None:
        models["reference"] = (reference, ref_processor)
    feats = {n: _whisper_batch_features(p, [row]) for n, (_, p) in models.items()}

    def encoder(m: torch.nn.Module, f: torch.Tensor) -> None:
        with torch.inference_mode():
            m.model.encoder(f)

    out: dict[str, Any] = {"fixed_latency_tokens": tokens, "fixed_repeats": repeats}
    for i, (what, fn) in enumerate((("fixed_encoder", encoder),
                                    ("fixed_latency", lambda m, f: latency.whisper_greedy_decode(m, f, tokens)))):
        t = latency.interleaved_timings({n: (lambda m=m, f=feats[n], fn=fn: fn(m, f)) for n, (m, _) in models.items()},
                                        warmup=2, repeats=repeats, seed=seed + i)
        for n, s in t.items():
            prefix = what if n == "variant" else f"reference_{what}"
            ms = np.asarray(s) * 1e3
            out.update({f"{prefix}_ms_p50": float(np.median(ms)), f"{prefix}_ms_min": float(ms.min()),
                        f"{prefix}_ms_max": float(ms.max())})
        if reference is not None:
            out.update(latency.paired_speedup(t["reference"], t["variant"], n_resamples, seed + i,
                                              prefix=f"{what}_speedup"))
    return out


def _ctc_batch_input(processor: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
    """Normalised, zero-padded samples of ``rows`` (batch x samples), as the CTC model takes them."""
    audio = [np.asarray(r["audio"]["array"], dtype=np.float32) for r in rows]
    return processor.feature_extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt").input_values


def measure_variant(model_dir: str | Path, rows: list[dict[str, Any]], language: str, normalizer: str,
                    mcfg: Mapping[str, Any], seed: int, reference_dir: str | Path | None = None,
                    reference_metrics: Mapping[str, Any] | None = None,
                    reference_errors: list[int] | None = None,
                    real_scale: str | None = None,
                    reference_lengths: list[int] | None = None,
                    extra_normalizers: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure one Whisper or CTC (wav2vec2 / HuBERT) variant on ``rows`` (its test split). Returns (metrics, hypotheses rows).

    With a reference (its directory, its metrics and its per-utterance errors from its hypotheses
    file), relative figures (``*_reduction_pct``, ``wer_delta_abs``, ``speedup_vs_reference``) and
    a paired bootstrap test (``paired_*``) against it are added. ``reference_lengths`` (the
    reference's decoded token counts, its hypotheses' ``tokens``) adds ``gmacs_utterance_ref_lengths``:
    this variant's FLOPs decoding the reference's lengths, so it is not credited for emitting fewer tokens.

    ``mcfg`` is the ``measure`` params section: ``num_threads``, ``batch_size``,
    ``bootstrap_resamples``, ``latency_utterances``, ``rss_utterances``, ``real_scale_repeats``,
    ``real_scale_tokens``, ``latency_repeats``, ``fixed_tokens``, ``fixed_repeats``, ``device`` (where
    the batched WER decoding runs; its peak CUDA memory is ``cuda_peak_mib``) and optionally ``max_new_tokens`` (a cap on generated tokens). Batch-1 latency, FLOPs and real-scale timing run on the CPU (``latency_device``).
    """
    latency.set_threads(int(mcfg["num_threads"]))
    model, processor = load_variant(model_dir)
    ctc = model.config.model_type in CTC_MODEL_TYPES
    if model.config.model_type != "whisper" and not ctc:
        raise ValueError(f"{model_dir}: measure_variant handles Whisper and CTC models "
                         f"({', '.join(CTC_MODEL_TYPES)}); got {model.config.model_type}")
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
        decoded["out"] = transcribe(model, processor, rows, language, int(mcfg["batch_size"]),
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
    if ctc:  # the whole forward on an utterance of the mean test duration
        cf = ctc_flops(model, seconds=audio_s / len(rows))
        metrics.update({**cf, "gmacs_utterance": cf["gmacs_forward"], "gflops_utterance": 2 * cf["gmacs_forward"]})
    else:
        metrics.update(flops_metrics(model, decoded_lengths=lengths, prompt_len=4))
    if reference_lengths is not None and not ctc:
        if len(reference_lengths) != len(rows):
            raise ValueError(f"reference has {len(reference_lengths)} decoded lengths, test set has {len(rows)}")
        at_ref = flops_metrics(model, decoded_lengths=list(reference_lengths), prompt_len=4)["gmacs_utterance"]
        metrics.update(gmacs_utterance_ref_lengths=at_ref, gflops_utterance_ref_lengths=2 * at_ref)

    # latency, interleaved with the reference -----------------------------------------------
    reference, ref_processor = (None, None)
    if reference_dir is not None and Path(reference_dir).resolve() != Path(model_dir).resolve():
        reference, ref_processor = load_variant(reference_dir)
    lat_rows = rows[: int(mcfg["latency_utterances"])]
    n_boot = int(mcfg["bootstrap_resamples"])
    metrics.update(_per_utt_latency(model, processor, lat_rows, language, reference, ref_processor, seed,
                                    mcfg.get("max_new_tokens"), int(mcfg["latency_repeats"]), n_boot))
    if int(mcfg["fixed_repeats"]) > 0 and not ctc:  # a CTC forward has no output length to fix
        metrics.update(_fixed_length_timing(model, processor, rows[0], reference, ref_processor,
                                            int(mcfg["fixed_tokens"]), int(mcfg["fixed_repeats"]), seed, n_boot))

    # peak RSS of a separate process transcribing test utterances ---------------------------
    with tempfile.TemporaryDirectory() as tmp:
        rss_rows = rows[: int(mcfg["rss_utterances"])]
        feats = _ctc_batch_input(processor, rss_rows) if ctc else _whisper_batch_features(processor, rss_rows)
        torch.save(feats, Path(tmp) / "features.pt")
        task = ["--task", "forward"] if ctc else [
            "--task", "generate", "--new-tokens", str(int(round(statistics.mean(lengths))))]
        rss = memory.peak_rss_subprocess(
            [sys.executable, "-m", "asrcompress.measure.memory_probe", str(model_dir), *task,
             "--batch", str(feats.shape[0]),
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
        if metrics.get("gmacs_utterance_ref_lengths") is not None and reference_metrics.get("gmacs_utterance"):
            # the reference at its own decoded lengths is its gmacs_utterance
            metrics["gmacs_utterance_ref_lengths_reduction_pct"] = percent_reduction(
                metrics["gmacs_utterance_ref_lengths"], reference_metrics["gmacs_utterance"])
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
