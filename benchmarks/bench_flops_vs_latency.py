"""Do FLOP savings turn into latency savings? Whisper-small, dense vs half of every FFN and head.

    .venv/bin/python benchmarks/bench_flops_vs_latency.py [--threads 1] [--repeats 5] [--tokens 24]

Builds the real Whisper-small architecture twice from its hyper-parameters (random weights,
eager attention): dense, and with 50 % of the FFN neurons and 50 % of the self- and
cross-attention heads physically removed in every encoder and decoder layer. Counts MACs with
``measure.flops`` and times both, interleaved in one run (``measure.real_scale.time_real``):
the encoder on one 30 s window and the decoder on ``--tokens`` forced greedy tokens (first call
with the cross-attention K/V included), then prints FLOP ratio and latency ratio side by side.
Not a test: nothing is asserted. About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time

from asrcompress.compress.surgery import uniform_fractions
from asrcompress.measure.flops import whisper_flops
from asrcompress.measure.latency import runtime_info, set_threads
from asrcompress.measure.params import count_params
from asrcompress.measure.real_scale import build_real, real_config, time_real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--tokens", type=int, default=24, help="forced greedy decode length")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    set_threads(a.threads)
    t0 = time.perf_counter()

    structure = uniform_fractions(real_config("whisper-small"), ffn=0.5, heads=0.5)  # cross heads too
    models = {"dense": build_real("whisper-small", seed=a.seed),
              "half": build_real("whisper-small", structure, seed=a.seed)}
    flops = {k: whisper_flops(m, n_new_tokens=a.tokens, prompt_len=1) for k, m in models.items()}
    params = {k: count_params(m)["params_m"] for k, m in models.items()}
    times = time_real(models, n_tokens=a.tokens, warmup=a.warmup, repeats=a.repeats, seed=a.seed)

    info = runtime_info()
    print(f"# whisper-small, random weights, eager attention, batch 1, fp32 | threads {info['num_threads']} | "
          f"{info['cpu_model']} | torch {info['torch_version']} | transformers {info['transformers_version']}")
    print(f"# params: dense {params['dense']:.2f} M, half {params['half']:.2f} M "
          f"(ratio {params['half'] / params['dense']:.3f}); {a.repeats} interleaved rounds after {a.warmup} warm-up")
    print(f"{'part':<34}{'GMACs dense':>12}{'GMACs half':>12}{'FLOP ratio':>11}"
          f"{'ms dense':>11}{'ms half':>11}{'latency ratio':>14}")
    rows = [("encoder, one 30 s window", "gmacs_encoder", "latency_encoder_ms_p50", 1.0),
            (f"decoder, {a.tokens} tokens (incl. cross K/V)", "gmacs_decode", "latency_decoder_token_ms_p50",
             float(a.tokens))]
    for label, fkey, tkey, scale in rows:
        fd, fh = flops["dense"][fkey], flops["half"][fkey]
        td, th = times["dense"][tkey] * scale, times["half"][tkey] * scale
        print(f"{label:<34}{fd:>12.2f}{fh:>12.2f}{fh / fd:>11.3f}{td:>11.1f}{th:>11.1f}{th / td:>14.3f}")
    sd, sh = flops["dense"]["gmacs_decoder_token"], flops["half"]["gmacs_decoder_token"]
    cd, ch = flops["dense"]["gmacs_cross_kv"], flops["half"]["gmacs_cross_kv"]
    print(f"# decoder detail: one cached step at past length {flops['dense']['decoder_token_past_len']}: "
          f"{sd:.3f} -> {sh:.3f} GMACs (ratio {sh / sd:.3f}; the 51865 x 768 logits do not shrink); "
          f"cross K/V once: {cd:.2f} -> {ch:.2f} GMACs")
    for k in ("dense", "half"):
        t = times[k]
        print(f"# {k}: encoder p50 {t['latency_encoder_ms_p50']:.1f} ms (min {t['latency_encoder_ms_min']:.1f}, "
              f"p90 {t['latency_encoder_ms_p90']:.1f}); decoder per token p50 "
              f"{t['latency_decoder_token_ms_p50']:.1f} ms (min {t['latency_decoder_token_ms_min']:.1f}, "
              f"p90 {t['latency_decoder_token_ms_p90']:.1f}); RTFx(30 s, {a.tokens} tokens) {t['rtfx_30s']:.2f}")
    print(f"# total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
