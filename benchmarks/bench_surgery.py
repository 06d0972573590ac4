"""Dense vs physically pruned Whisper-small on CPU: parameters, safetensors bytes, encoder and decoder latency.

The real Whisper-small architecture (d_model 768, 12 + 12 layers, 12 heads, FFN 3072, vocab 51865, 80 mels,
1500 source / 448 target positions) is built from its config with random weights (no hub), with
``attn_implementation="sdpa"`` (transformers' default on CPU). The pruned model is the same weights with 50 %
of the FFN neurons and 50 % of the heads (self and cross) removed in every layer through
``apply_structure(model, uniform_fractions(config, ffn=0.5, heads=0.5))`` — the surgery core, no masks.

Latency: ``torch.set_num_threads(THREADS)``, one warm-up per model and workload, then REPEATS timed runs with
dense and pruned interleaved (so machine noise hits both), median reported.
  * encoder: one 30 s window (input features 1 x 80 x 3000);
  * decoder: DECODE_STEPS greedy steps with the KV cache, run as an explicit loop (random weights would emit
    EOS at arbitrary points, so the number of steps is forced), given a precomputed encoder output; step 1
    (which also computes the cross-attention keys/values of all 1500 frames) is reported apart from the
    per-token cost of the later steps. The median of each row is taken separately.

Run: ``python benchmarks/bench_surgery.py [--threads N] [--repeats R] [--steps S]`` (3-4 minutes on 2 cores).
On a shared machine the 1-minute load average is printed: with more runnable processes than cores, every
parallel op of a small decoder step can stall waiting for a descheduled worker thread, which inflates the
per-token decoder time regardless of model size (``--threads 1`` avoids those stalls).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from asrcompress.compress.checkpoint import save_compressed, weights_bytes
from asrcompress.compress.surgery import apply_structure, num_parameters, uniform_fractions

THREADS = 2
REPEATS = 3
DECODE_STEPS = 32
ATTN = "sdpa"

WHISPER_SMALL = dict(
    d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12, decoder_attention_heads=12,
    encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=51865, num_mel_bins=80, max_source_positions=1500,
    max_target_positions=448, decoder_start_token_id=50258, pad_token_id=50257, bos_token_id=50257,
    eos_token_id=50257,
)


@torch.inference_mode()
def encode(model: WhisperForConditionalGeneration, features: torch.Tensor) -> torch.Tensor:
    return model.model.encoder(features).last_hidden_state


@torch.inference_mode()
def decode(model: WhisperForConditionalGeneration, enc: torch.Tensor, steps: int) -> tuple[float, float]:
    """``steps`` greedy decoder steps with the KV cache, one token per step after the start token.

    Returns (seconds of step 1, seconds of steps 2..steps): step 1 also projects the encoder output into
    every layer's cross-attention keys/values (1500 frames), the later steps reuse them from the cache."""
    ids = torch.full((enc.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    past, stamps = None, [time.perf_counter()]
    for _ in range(steps):
        out = model(encoder_outputs=(enc,), decoder_input_ids=ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        ids = out.logits[:, -1:].argmax(-1)
        stamps.append(time.perf_counter())
    return stamps[1] - stamps[0], stamps[-1] - stamps[1]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per model (default %(default)s)")
    ap.add_argument("--steps", type=int, default=DECODE_STEPS, help="forced decoder steps (default %(default)s)")
    args = ap.parse_args()
    threads, repeats, steps = args.threads, args.repeats, args.steps
    load_start = os.getloadavg()[0]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    config = WhisperConfig(**WHISPER_SMALL)
    config._attn_implementation = ATTN
    dense = WhisperForConditionalGeneration(config).eval()
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    pruned = apply_structure(copy.deepcopy(dense), uniform_fractions(config, ffn=0.5, heads=0.5)).eval()
    t_prune = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        disk_dense = weights_bytes(save_compressed(dense, f"{tmp}/dense", "none", {}))
        disk_pruned = weights_bytes(save_compressed(pruned, f"{tmp}/pruned", "uniform",
                                                    {"ffn": 0.5, "heads": 0.5}))

    features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions,
                           generator=torch.Generator().manual_seed(1))
    enc_out = {name: encode(m, features) for name, m in (("dense", dense), ("pruned", pruned))}  # warm-up
    for name, m in (("dense", dense), ("pruned", pruned)):
        decode(m, enc_out[name], steps)  # warm-up

    keys = ("enc", "dec_first", "dec_rest", "dec_total")
    times: dict[str, list[float]] = {f"{k}_{n}": [] for k in keys for n in ("dense", "pruned")}
    for r in range(repeats):
        order = [("dense", dense), ("pruned", pruned)]
        if r % 2:
            order.reverse()  # alternate who goes first
        for name, m in order:
            times[f"enc_{name}"].append(timed(lambda m=m: encode(m, features)))
        for name, m in order:
            first, rest = decode(m, enc_out[name], steps)
            times[f"dec_first_{name}"].append(first)
            times[f"dec_rest_{name}"].append(rest)
            times[f"dec_total_{name}"].append(first + rest)
    med = {k: statistics.median(v) for k, v in times.items()}

    p_dense, p_pruned = num_parameters(dense), num_parameters(pruned)
    rows = [
        ("parameters", f"{p_dense:,}", f"{p_pruned:,}", p_pruned / p_dense),
        ("safetensors bytes", f"{disk_dense:,}", f"{disk_pruned:,}", disk_pruned / disk_dense),
        ("encoder 30 s window (s)", f"{med['enc_dense']:.3f}", f"{med['enc_pruned']:.3f}",
         med["enc_pruned"] / med["enc_dense"]),
        (f"decoder {steps} steps, KV cache (s)", f"{med['dec_total_dense']:.3f}",
         f"{med['dec_total_pruned']:.3f}", med["dec_total_pruned"] / med["dec_total_dense"]),
        ("  step 1 incl. cross K/V (s)", f"{med['dec_first_dense']:.3f}", f"{med['dec_first_pruned']:.3f}",
         med["dec_first_pruned"] / med["dec_first_dense"]),
        (f"  steps 2..{steps} per token (ms)", f"{1000 * med['dec_rest_dense'] / (steps - 1):.1f}",
         f"{1000 * med['dec_rest_pruned'] / (steps - 1):.1f}", med["dec_rest_pruned"] / med["dec_rest_dense"]),
    ]
    print(f"Whisper-small architecture, random weights, attn_implementation={ATTN!r}, torch {torch.__version__}, "
          f"{threads} threads, median of {repeats} interleaved runs after 1 warm-up")
    print("pruned = 50% of FFN neurons and 50% of attention heads (self + cross) removed in every layer "
          "(physical surgery)")
    print(f"build {t_build:.1f} s, surgery {t_prune:.2f} s; 1-min load average {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end on {os.cpu_count()} CPUs (other processes inflate latencies)")
    print(f"{'':34s} {'dense':>16s} {'pruned':>16s} {'pruned/dense':>13s}")
    for label, a, b, ratio in rows:
        print(f"{label:34s} {a:>16s} {b:>16s} {ratio:>13.3f}")
    print("raw timings (s): " + ", ".join(f"{k}={[round(x, 3) for x in v]}" for k, v in times.items()))


if __name__ == "__main__":
    main()
