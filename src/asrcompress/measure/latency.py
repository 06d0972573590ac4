"""Wall-clock timing: warm-up, repeats, interleaved variants, RTF/RTFx, and the run environment.

Timings are ``time.perf_counter`` seconds around one call, after ``warmup`` untimed calls; on
CUDA the device is synchronised before reading the clock. ``interleaved_timings`` runs all
variants in a freshly shuffled order in every round, so slow drifts of the machine (thermal,
other processes) hit every variant alike instead of biasing whichever ran last.
The thread count is set by the caller (``set_threads``) and recorded with ``runtime_info``.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable, Collection

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return out


def interleaved_timings(fns: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
                        seed: int = 0, warmed: Collection[str] = ()) -> dict[str, list[float]]:
    """Time several variants in shuffled round-robin: ``repeats`` rounds, each calling every
    variant once in a new random order (``random.Random(seed)``); ``warmup`` untimed rounds
    first, minus one for the names in ``warmed`` (the caller has just made that exact call once,
    e.g. to get the encoder states a decoder timing needs). Returns ``{name: [seconds per call,
    ...]}`` with ``repeats`` samples each."""
    rng = random.Random(seed)
    names = list(fns)
    for i in range(warmup):
        for name in names:
            if i == 0 and name in warmed:
                continue
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            out[name].extend(time_callable(fns[name], warmup=0, repeats=1))
    return out


def summarize(seconds: list[float], prefix: str = "latency") -> dict[str, float]:
    """``{prefix}_ms_p50``, ``_ms_p90``, ``_ms_mean``, ``_ms_min``, ``_ms_std`` and ``{prefix}_n``."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        f"{prefix}_ms_p50": float(np.median(ms)),
        f"{prefix}_ms_p90": float(np.percentile(ms, 90)),
        f"{prefix}_ms_mean": float(ms.mean()),
        f"{prefix}_ms_min": float(ms.min()),
        f"{prefix}_ms_std": float(statistics.stdev(ms)) if len(ms) > 1 else 0.0,
        f"{prefix}_n": len(ms),
    }


def paired_speedup(reference_s: list[float], variant_s: list[float], n_resamples: int, seed: int,
                   prefix: str = "speedup") -> dict[str, float]:
    """Speed-up with its spread from paired timings (pair i: the reference and the variant timed
    back to back: one utterance, or one round). Ratios r_i = reference_i / variant_i;
    ``{prefix}`` = median r_i, ``{prefix}_ci_low`` / ``_ci_high`` = 95 % percentile bootstrap
    interval of that median (pairs resampled, ``numpy.random.default_rng(seed)``), ``_min`` /
    ``_max`` = the extreme pairs, ``{prefix}_pairs`` = the number of pairs."""
    ref, var = np.asarray(reference_s, dtype=np.float64), np.asarray(variant_s, dtype=np.float64)
    if ref.shape != var.shape or ref.size == 0:
        raise ValueError(f"paired_speedup: {ref.size} reference vs {var.size} variant timings")
    ratios = ref / var
    idx = np.random.default_rng(seed).integers(0, ratios.size, size=(n_resamples, ratios.size))
    boot = np.median(ratios[idx], axis=1)
    return {prefix: float(np.median(ratios)), f"{prefix}_ci_low": float(np.percentile(boot, 2.5)),
            f"{prefix}_ci_high": float(np.percentile(boot, 97.5)), f"{prefix}_min": float(ratios.min()),
            f"{prefix}_max": float(ratios.max()), f"{prefix}_pairs": int(ratios.size)}


def rtf(compute_s: float, audio_s: float) -> float:
    """Real-time factor: compute seconds per audio second (< 1 is faster than real time)."""
    return compute_s / audio_s


def rtfx(compute_s: float, audio_s: float) -> float:
    """Inverse real-time factor (Open ASR Leaderboard): audio seconds per compute second."""
    return audio_s / compute_s


def cpu_model_name() -> str:
    """The ``model name`` line of /proc/cpuinfo, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def set_threads(n: int) -> None:
    """Fix intra-op threads to ``n`` (record it with :func:`runtime_info`)."""
    torch.set_num_threads(int(n))


def runtime_info() -> dict:
    """Flat description of where a timing ran: threads, CPU, GPU, library versions."""
    import transformers

    return {
        "num_threads": torch.get_num_threads(),
        "cpu_model": cpu_model_name(),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # ATen's vector ISA (Makefile pins AVX2)
        "gpu_model": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
    }


# ------------------------------------------------------------------------------ Whisper decode
def _new_cache():
    from transformers import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(), DynamicCache())


@torch.inference_mode()
def whisper_greedy_decode(model, input_features: torch.Tensor, n_tokens: int,
                          prompt_ids: list[int] | None = None,
                          encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding of exactly ``n_tokens`` new tokens (EOS does not stop it), as generate()
    does it: encoder once, then the decoder with a KV cache (self-attention cache grows by one
    per step; cross-attention K/V computed on the first call and reused), argmax of the
    ``proj_out`` logits of the last position. The prompt (default
    ``[decoder_start_token_id]``) goes through the decoder in one call. Pass
    ``encoder_hidden_states`` to time the decoder alone. Returns (batch, prompt + n_tokens) ids.
    """
    if encoder_hidden_states is None:
        encoder_hidden_states = model.model.encoder(input_features).last_hidden_state
    batch = encoder_hidden_states.shape[0]
    prompt = prompt_ids or [model.config.decoder_start_token_id]
    ids = torch.tensor([prompt] * batch, device=encoder_hidden_states.device)
    cache, step_ids, tokens = _new_cache(), ids, [ids]
    for _ in range(n_tokens):
        out = model.model.decoder(input_ids=step_ids, encoder_hidden_states=encoder_hidden_states,
                                  past_key_values=cache, use_cache=True)
        step_ids = model.proj_out(out.last_hidden_state[:, -1:]).argmax(-1)
        tokens.append(step_ids)
    return torch.cat(tokens, dim=1)
