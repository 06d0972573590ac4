"""Training throughput (utterances/s) and peak memory of the real Whisper-small architecture.

The architecture is built from its hyper-parameters with random weights
(``asrcompress.measure.real_scale.build_real``: d_model 768, 12 + 12 layers, 12 heads, FFN 3072,
vocab 51865, 80 mels, 1500 source / 448 target positions; no hub) and trained on one synthetic
batch, repeated: 30 s of log-mel features (80 x 3000, standard normal) and ``--tokens`` label
tokens (language / task / no-timestamps prefix, random text tokens, end of text). Throughput does
not depend on the weight or feature values.

Each step is the optimiser step of ``asrcompress.train.loop.train`` through the same Accelerate
setup (``make_accelerator``: mixed precision by autocast with fp32 master weights, DDP when
launched with several processes): forward with labels, backward, gradient clipping to 1.0, AdamW,
LR scheduler step. ``--warmup`` steps run first, untimed (allocator, kernel selection); then
``--steps`` timed steps, wall clock, with ``torch.cuda.synchronize()`` on a GPU.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (and reserved) over the whole run: weights,
gradients, AdamW states and activations of the worst step; on CPU the process's peak resident set
(``ru_maxrss``, includes building the model) beside the resident set after building it.

Run:  ``python benchmarks/bench_train_throughput.py --device cpu --batch-size 1 --steps 2``
      ``python benchmarks/bench_train_throughput.py --device cuda --batch-size 16 --mixed-precision bf16``
      ``accelerate launch --num_processes 4 benchmarks/bench_train_throughput.py --batch-size 16``
With several processes ``--batch-size`` is per process and the throughput is over all of them.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from asrcompress.measure.real_scale import build_real
from asrcompress.train.loop import make_accelerator, set_activation_checkpointing

PREFIX = (50259, 50359, 50363)  # <|en|> <|transcribe|> <|notimestamps|> (Whisper's multilingual ids)
EOT = 50257


def device_name(device: torch.device, threads: int) -> str:
    """A human-readable name for the device the benchmark runs on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {threads} torch thread(s)"


def rss_mib() -> float:
    """The current resident set of this process (Linux), MiB; NaN where unknown."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib / 1024
    except (OSError, StopIteration):
        return float("nan")


def synthetic_batch(config, batch_size: int, n_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """30 s log-mel features and ``n_tokens`` decoder labels per utterance."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch_size, config.num_mel_bins, 2 * config.max_source_positions, generator=g)
    n_text = max(1, n_tokens - len(PREFIX) - 1)
    text = torch.randint(220, EOT, (batch_size, n_text), generator=g)
    labels = torch.cat([torch.tensor(PREFIX).expand(batch_size, -1), text,
                        torch.full((batch_size, 1), EOT)], dim=1)
    return {"input_features": feats, "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CUDA if available (what the training loop does)")
    ap.add_argument("--batch-size", type=int, default=1, help="utterances per step (per process)")
    ap.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--tokens", type=int, default=40, help="label tokens per utterance")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--arch", default="whisper-small", help="a name in asrcompress.measure.real_scale.REAL_ARCHS")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    args = ap.parse_args()

    accelerator = make_accelerator(args.mixed_precision, cpu=True if args.device == "cpu" else None)
    device = accelerator.device
    if args.device == "cuda" and device.type != "cuda":
        raise SystemExit("--device cuda: no CUDA device visible")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t_build = time.perf_counter()
    model = build_real(args.arch, attn_implementation=args.attn).train()
    build_s = time.perf_counter() - t_build
    n_params = sum(p.numel() for p in model.parameters())
    rss_model = rss_mib()
    if args.gradient_checkpointing:
        set_activation_checkpointing(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    config = accelerator.unwrap_model(model).config
    batch = {k: v.to(device) for k, v in synthetic_batch(config, args.batch_size, args.tokens,
                                                         seed=accelerator.process_index).items()}

    def step() -> float:
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.item()

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    world = accelerator.num_processes
    if world > 1:  # the slowest process sets the pace
        times = accelerator.reduce(torch.tensor(times, device=device), "max").tolist()
    if not accelerator.is_main_process:
        return

    per_step = statistics.median(times)
    utts = args.batch_size * world
    print(f"device               : {device_name(device, args.threads)}; {world} process(es)")
    print(f"torch / arch         : {torch.__version__}; {args.arch}, {n_params / 1e6:.1f} M parameters, "
          f"random weights, attention {args.attn} (built in {build_s:.1f} s)")
    print(f"setup                : batch {args.batch_size}/process x 30 s, {args.tokens} label tokens, "
          f"mixed precision {args.mixed_precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, AdamW, {args.warmup} warm-up + {args.steps} timed step(s)")
    print(f"loss (first, last)   : {losses[0]:.3f}, {losses[-1]:.3f}")
    print(f"step time (s)        : median {per_step:.2f}; all {', '.join(f'{t:.2f}' for t in times)}")
    print(f"throughput           : {utts / per_step:.3g} utterances/s ({30 * utts / per_step:.3g} s of audio/s)")
    if device.type == "cuda":
        print(f"peak memory          : {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB CUDA max allocated "
              f"({torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB reserved)")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"peak memory          : {peak:.0f} MiB peak RSS (after building the model: {rss_model:.0f} MiB)")


if __name__ == "__main__":
    main()
