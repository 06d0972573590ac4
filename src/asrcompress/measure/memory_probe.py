"""Entry point run in a fresh process by ``memory.peak_rss_subprocess``; prints one JSON line.

    python -m asrcompress.measure.memory_probe MODEL_DIR [--task generate|encoder|forward]
        [--batch 1] [--seconds 30] [--new-tokens 32] [--repeats 1] [--threads 1]
        [--device cpu|cuda] [--input FEATURES.pt] [--loader auto|compressed|hf]

Order: import torch/transformers/loaders, record ``baseline_rss_mib`` (current RSS), load the
model (``asrcompress.compress.checkpoint.load_compressed``; ``--loader hf`` or, with ``auto``,
a missing loader module falls back to ``from_pretrained`` of the config's class), then run the
workload ``--repeats`` times under ``torch.inference_mode``:
- Whisper ``generate``: encoder + greedy decoding of exactly ``--new-tokens`` tokens with a KV
  cache (``latency.whisper_greedy_decode``); ``encoder``: the encoder only.
- CTC (wav2vec2/HuBERT) ``forward``: logits for ``--seconds`` of 16 kHz audio.
Input: ``--input`` (a tensor saved with torch.save: log-mel features for Whisper, samples for
CTC) or synthetic N(0, 1) of the right shape (Whisper: batch x mels x 2*max_source_positions).
At the end the process reads its own peak, ``peak_rss_mib`` = ``VmHWM`` of ``/proc/self/status``
(``memory.own_peak_rss``; started by exec, its memory map and high-water mark are its own, not
those of the process that launched it), and reports ``peak_rss_delta_mib`` = peak - baseline.
Run it in a fresh interpreter (``sys.executable -m ...``), never in a fork without exec: a forked
child starts with its parent's resident pages in its own VmHWM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil
import torch
from transformers import AutoConfig, HubertForCTC, Wav2Vec2ForCTC, WhisperForConditionalGeneration

from asrcompress.measure.latency import whisper_greedy_decode
from asrcompress.measure.memory import own_peak_rss

try:  # imported before the baseline so its import cost is not charged to the model
    from asrcompress.compress.checkpoint import load_compressed
except ImportError:  # written in parallel; absent in early checkouts
    load_compressed = None

MIB = 2**20
_HF_CLASSES = {"whisper": WhisperForConditionalGeneration, "wav2vec2": Wav2Vec2ForCTC, "hubert": HubertForCTC}


def load_model(path: str, loader: str = "auto") -> torch.nn.Module:
    """Load a saved model: ``load_compressed`` first (primary path), ``from_pretrained`` as fallback."""
    if loader in ("auto", "compressed"):
        if load_compressed is None:
            if loader == "compressed":
                raise ImportError("asrcompress.compress.checkpoint.load_compressed is not available")
        else:
            loaded = load_compressed(path)
            if isinstance(loaded, tuple):  # tolerate (model, metadata) returns
                loaded = next(x for x in loaded if isinstance(x, torch.nn.Module))
            return loaded
    cfg = AutoConfig.from_pretrained(path)
    return _HF_CLASSES[cfg.model_type].from_pretrained(path)


def make_input(model: torch.nn.Module, batch: int, seconds: float, path: str | None) -> torch.Tensor:
    if path:
        return torch.load(path)
    g = torch.Generator().manual_seed(0)
    if model.config.model_type == "whisper":
        frames = 2 * model.config.max_source_positions
        return torch.randn(batch, model.config.num_mel_bins, frames, generator=g)
    return torch.randn(batch, int(seconds * 16000), generator=g)


def run_workload(model: torch.nn.Module, x: torch.Tensor, task: str, new_tokens: int) -> None:
    with torch.inference_mode():
        if model.config.model_type == "whisper":
            if task == "encoder":
                model.model.encoder(x)
            elif task == "generate":
                whisper_greedy_decode(model, x, new_tokens)
            else:
                raise ValueError(f"task {task!r} not valid for Whisper (generate|encoder)")
        else:
            if task != "forward":
                raise ValueError(f"task {task!r} not valid for CTC models (forward)")
            model(x)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--task", default=None, help="generate|encoder (Whisper), forward (CTC)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="CTC audio length")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--input", default=None)
    ap.add_argument("--loader", default="auto", choices=["auto", "compressed", "hf"])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    baseline = psutil.Process().memory_info().rss
    baseline_hwm, _ = own_peak_rss()
    t0 = time.perf_counter()
    model = load_model(a.model_dir, a.loader).eval().to(a.device)
    load_s = time.perf_counter() - t0
    task = a.task or ("generate" if model.config.model_type == "whisper" else "forward")
    x = make_input(model, a.batch, a.seconds, a.input).to(a.device)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        run_workload(model, x, task, a.new_tokens)
    if cuda:
        torch.cuda.synchronize()
    run_s = time.perf_counter() - t0
    peak, source = own_peak_rss()
    result = {
        "peak_rss_mib": peak,
        "peak_rss_delta_mib": peak - baseline / MIB,
        "baseline_rss_mib": baseline / MIB,
        "baseline_hwm_mib": baseline_hwm,  # peak before loading: imports (and, with ru_maxrss, the launcher)
        "peak_rss_source": source,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else None,
        "load_s": load_s,
        "run_s": run_s,
        "task": task,
        "batch": a.batch,
        "new_tokens": a.new_tokens if task == "generate" else None,
        "input_shape": list(x.shape),
        "repeats": a.repeats,
        "num_threads": a.threads,
        "device": a.device,
        "loader": a.loader if load_compressed is not None or a.loader == "hf" else "hf (fallback)",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
