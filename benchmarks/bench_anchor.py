"""The anchor users would pick instead: Whisper base in faster-whisper (CTranslate2) vs our transformers path.

The same pre-trained Whisper base (params ``real_models.whisper_base``: the CTranslate2 fp16 ``model.bin``
split over two pinned packages) runs in three engines on the same real utterances, side by side in one run:

* ``ours``: the project's path, the converted ``save_pretrained`` directory (``data/models/real/whisper_base``)
  loaded by ``asrcompress.measure.suite.load_variant``, float32, ``torch.set_num_threads(--threads)``,
  greedy ``generate(features, language="en", task="transcribe", num_beams=1, do_sample=False)``;
* ``fw_float32`` / ``fw_int8``: ``faster_whisper.WhisperModel`` on the original CTranslate2 files (assembled
  once into a temporary directory with the meta files, sha256 checked against params), ``device="cpu"``,
  ``compute_type`` float32 / int8, ``cpu_threads=--threads``, and ``transcribe(audio, **FW_OPTIONS)``:
  greedy (beam_size=1, best_of=1, temperature=0.0 only, so no temperature fallback), without timestamps,
  no VAD, no conditioning on previous text, language "en", task "transcribe"; faster-whisper's other
  options stay at their defaults (recorded in the JSON).

What it measures:
1. WER: every engine transcribes the first --utterances (default 100) test utterances of the corpus
   (``data/corpora/en_real``, LibriSpeech test-other; else read from ``real_corpora.en_real.dir``), scored by
   ``asrcompress.measure.wer.score`` with the "english" normaliser: WER with its 95 % bootstrap CI (utterance
   resamples, seed ``derive_seed(seed, "anchor")``), and how many transcripts differ word for word after
   normalisation between ours and fw float32 (and fw int8).
2. Speed: the first --timing-utterances (default 20), batch 1, --rounds rounds (default 3) after one warm-up
   per engine; within a round, for each utterance the engines run in a seeded random order (interleaved, so
   machine noise hits all of them). Timed: the whole per-utterance path, audio array -> text (faster-whisper:
   ``transcribe`` + consuming its segment generator; ours: feature extraction + ``generate`` + decode).
   RTFx of a round = audio seconds / compute seconds of that round; median and min-max over rounds, and the
   per-round ratio RTFx(engine) / RTFx(ours) ("speed vs ours", > 1 = faster than ours).
3. Peak memory: per engine a fresh interpreter (``sys.executable benchmarks/bench_anchor.py --child ENGINE``,
   started by ``subprocess``, not a fork) imports only its engine's libraries, records its RSS, loads the
   engine, transcribes the first 8 utterances and prints its own ``VmHWM`` (peak RSS) as JSON; delta = peak -
   RSS before loading. The child reads ``/proc/self/status`` through ``asrcompress.measure.proc_status``,
   which does not import torch: a faster-whisper user never loads it (~190 MiB of RSS), so the
   faster-whisper child stays torch-free. The
   parent's polled VmRSS (``peak_rss_subprocess``) is kept in the JSON as a cross-check.

Run: ``.venv/bin/python benchmarks/bench_anchor.py [--threads 2] [--utterances 100] [--timing-utterances 20]
[--rounds 3]`` (about 8-10 minutes on 2 idle cores, longer beside other jobs: ~5 min of WER passes, ~2 min
of timing, ~1-2 min of memory probes; ``--utterances 3 --timing-utterances 2 --rounds 1`` is a 2-3 minute
smoke run). Writes ``reports/real/anchor.md`` (the table) and ``reports/real/anchor.json`` (all figures, raw
timings and transcripts). ``import asrcompress`` pins torch to its AVX2 kernels (as the measure stages
run) unless ``ATEN_CPU_CAPABILITY`` is set. On an AVX-512 CPU run it as
``ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=AUTO ONEDNN_MAX_CPU_ISA=ALL .venv/bin/python benchmarks/bench_anchor.py``
so that torch gets the kernels CTranslate2 picks (``default`` means torch's scalar kernels: measured
4.6 instead of 5.3 RTFx); the kernels are recorded. On a busy
machine the 1-minute load average (printed) tells how much other processes inflated the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asrcompress.models.real_checkpoints import ct2_directory, sha256_file  # torch-free

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("ours", "fw_float32", "fw_int8")
LABELS = {"ours": "transformers fp32 (ours)", "fw_float32": "faster-whisper float32",
          "fw_int8": "faster-whisper int8"}
FW_COMPUTE = {"fw_float32": "float32", "fw_int8": "int8"}
FW_OPTIONS: dict[str, Any] = dict(language="en", task="transcribe", beam_size=1, best_of=1, temperature=0.0,
                                  without_timestamps=True, vad_filter=False, condition_on_previous_text=False)
LANGUAGE = "en"
NORMALIZER = "english"
MEMORY_UTTERANCES = 8
MIB = 2**20


# ------------------------------------------------------------------------------ pure helpers
def assemble_ct2_dir(parts: Sequence[Path], meta_dir: Path, out_dir: Path, expected_sha256: str) -> Path:
    """The CTranslate2 directory faster-whisper loads (``real_checkpoints.ct2_directory``), its
    ``model.bin`` checked against ``expected_sha256`` (ValueError otherwise)."""
    ct2_directory(parts, meta_dir, out_dir)
    digest = sha256_file(out_dir / "model.bin")
    if digest != expected_sha256.lower():
        raise ValueError(f"{out_dir / 'model.bin'}: sha256 {digest} != expected {expected_sha256} (parts {list(parts)})")
    return out_dir


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def fmt_spread(s: Mapping[str, float] | None, digits: int = 1, suffix: str = "") -> str:
    """``"12.3 (11.0-13.1)"``; only the median when min == max (one round); ``"-"`` for None."""
    if s is None:
        return "-"
    med = f"{s['median']:.{digits}f}{suffix}"
    lo, hi = f"{s['min']:.{digits}f}", f"{s['max']:.{digits}f}"
    return med if lo == hi else f"{med} ({lo}-{hi}{suffix})"


def rtfx_per_round(round_seconds: Sequence[Sequence[float]], audio_s: float) -> list[float]:
    """RTFx of each round: audio seconds / the sum of that round's per-utterance compute seconds."""
    from asrcompress.measure.latency import rtfx

    return [rtfx(sum(r), audio_s) for r in round_seconds]


def ratios_to(rtfx: Mapping[str, Sequence[float]], reference: str) -> dict[str, list[float]]:
    """Per round, RTFx(engine) / RTFx(reference) (> 1: faster than the reference)."""
    ref = rtfx[reference]
    return {name: [a / b for a, b in zip(vals, ref, strict=True)] for name, vals in rtfx.items()}


def count_differing(hyps_a: Sequence[str], hyps_b: Sequence[str], normalizer: str = NORMALIZER) -> int:
    """Number of utterances whose transcripts differ word for word after normalisation."""
    from asrcompress.text.normalize import get_normalizer

    norm = get_normalizer(normalizer)
    if len(hyps_a) != len(hyps_b):
        raise ValueError(f"{len(hyps_a)} vs {len(hyps_b)} transcripts")
    return sum(norm(a).split() != norm(b).split() for a, b in zip(hyps_a, hyps_b, strict=True))


def interleaved_order(rng: random.Random, engines: Sequence[str]) -> list[str]:
    order = list(engines)
    rng.shuffle(order)
    return order


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per engine from ``{engine: {"wer": score-dict, "rtfx": spread, "speed_vs_ours": spread,
    "memory": {"peak_rss_mib", "peak_rss_delta_mib"}}}`` (any part may be missing: shown as ``-``)."""
    lines = ["| engine | WER % [95 % CI] | RTFx median (min-max) | speed vs ours | peak RSS MiB | delta MiB |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        w = r.get("wer") or {}
        wer = "-" if w.get("wer_pct") is None else (
            f"{w['wer_pct']:.2f} [{_num(w.get('wer_ci_low_pct'), 2)}, {_num(w.get('wer_ci_high_pct'), 2)}]")
        mem = r.get("memory") or {}
        lines.append(f"| {LABELS.get(name, name)} | {wer} | {fmt_spread(r.get('rtfx'), 1)} | "
                     f"{fmt_spread(r.get('speed_vs_ours'), 2, 'x')} | {_num(mem.get('peak_rss_mib'), 0)} | "
                     f"{_num(mem.get('peak_rss_delta_mib'), 0)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ engines
def fw_transcriber(model: Any) -> Callable[[np.ndarray], str]:
    def run(audio: np.ndarray) -> str:
        segments, _info = model.transcribe(audio, **FW_OPTIONS)
        return " ".join(s.text for s in segments).strip()  # a generator: decoding happens here
    return run


def load_fw(ct2_dir: Path, compute_type: str, threads: int) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=threads,
                        num_workers=1, local_files_only=True)


def load_ours(model_dir: Path) -> tuple[Any, Any]:
    import torch

    from asrcompress.measure.suite import load_variant

    model, processor = load_variant(model_dir)
    if model.dtype != torch.float32:
        model = model.float()
    return model.eval(), processor


def ours_transcriber(model: Any, processor: Any) -> Callable[[np.ndarray], str]:
    import torch

    from asrcompress.inference import prompt_kwargs

    kwargs = prompt_kwargs(model, LANGUAGE)

    @torch.inference_mode()
    def run(audio: np.ndarray) -> str:
        feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        out = model.generate(feats, **kwargs, num_beams=1, do_sample=False)
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        return processor.tokenizer.batch_decode(seqs, skip_special_tokens=True)[0].strip()
    return run


def child_main(engine: str, ct2_dir: str, model_dir: str, audio_npz: str, threads: int) -> dict[str, Any]:
    """Peak-memory probe (a fresh interpreter): engine imports, audio, baseline RSS, load, transcribe."""
    if engine == "ours":
        import torch
        import transformers  # noqa: F401

        import asrcompress.inference  # noqa: F401
        import asrcompress.measure.suite  # noqa: F401

        torch.set_num_threads(threads)
    else:
        import faster_whisper  # noqa: F401
    from asrcompress.measure.proc_status import proc_status_kib  # torch-free

    with np.load(audio_npz) as z:
        audios = [z[k] for k in sorted(z.files, key=int)]
    before = proc_status_kib()
    t0 = time.perf_counter()
    if engine == "ours":
        run = ours_transcriber(*load_ours(Path(model_dir)))
    else:
        run = fw_transcriber(load_fw(Path(ct2_dir), FW_COMPUTE[engine], threads))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = [run(a) for a in audios]
    run_s = time.perf_counter() - t0
    after = proc_status_kib()
    peak = after["VmHWM"] / 1024
    result = {"engine": engine, "peak_rss_mib": peak, "baseline_rss_mib": before["VmRSS"] / 1024,
              "peak_rss_delta_mib": peak - before["VmRSS"] / 1024, "baseline_hwm_mib": before["VmHWM"] / 1024,
              "final_rss_mib": after["VmRSS"] / 1024, "peak_rss_source": "VmHWM", "torch_imported":
              "torch" in sys.modules, "load_s": load_s, "run_s": run_s, "n_utts": len(audios),
              "threads": threads, "texts": texts}
    print(json.dumps(result))
    return result


# ------------------------------------------------------------------------------ parent
def load_rows(corpus: str, n: int) -> list[dict[str, Any]]:
    from asrcompress.config import get, load_params
    from asrcompress.io import load_split

    if Path(corpus).exists():
        rows = load_split(corpus, "test")
    else:
        from asrcompress.data.local_corpus import load_local_corpus

        directory = get(load_params(), "real_corpora.en_real.dir", str)
        print(f"{corpus} not found: reading {directory}", file=sys.stderr)
        ds, _ = load_local_corpus(directory, language=LANGUAGE)
        rows = ds["test"].to_list()
        for r in rows:
            r["audio"]["array"] = np.asarray(r["audio"]["array"], dtype=np.float32)
    if len(rows) < n:
        raise SystemExit(f"{corpus}: {len(rows)} test utterances, {n} asked for")
    rows = rows[:n]
    for r in rows:
        if r["audio"]["sampling_rate"] != 16000:
            raise SystemExit(f"{r['id']}: sampling rate {r['audio']['sampling_rate']}, expected 16000")
        r["audio"]["array"] = np.asarray(r["audio"]["array"], dtype=np.float32)
        if len(r["audio"]["array"]) > 30 * 16000:
            print(f"warning: {r['id']} is longer than 30 s: ours truncates it to one window, faster-whisper "
                  "transcribes it in several", file=sys.stderr)
    return rows


def audio_seconds(rows: Sequence[Mapping[str, Any]]) -> float:
    return sum(len(r["audio"]["array"]) / r["audio"]["sampling_rate"] for r in rows)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("ctranslate2", "faster-whisper", "torch", "transformers")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads and CT2 cpu_threads (default %(default)s)")
    ap.add_argument("--utterances", type=int, default=100, help="WER utterances (default %(default)s)")
    ap.add_argument("--timing-utterances", type=int, default=20, help="timed utterances (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="ours' batch in the WER pass (transcribe_whisper; default %(default)s, as faster-whisper)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    ap.add_argument("--corpus", default="data/corpora/en_real")
    ap.add_argument("--model-dir", default="data/models/real/whisper_base")
    ap.add_argument("--out-md", default="reports/real/anchor.md")
    ap.add_argument("--out-json", default="reports/real/anchor.json")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    ap.add_argument("--audio", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a.child, a.ct2_dir, a.model_dir, a.audio, a.threads)
        return

    import ctranslate2
    from tqdm.auto import tqdm

    from asrcompress.config import derive_seed, get, load_params
    from asrcompress.inference import transcribe_whisper
    from asrcompress.io import write_json
    from asrcompress.measure.latency import runtime_info, set_threads, time_callable
    from asrcompress.measure.memory import peak_rss_subprocess
    from asrcompress.measure.wer import score
    from asrcompress.models.real_checkpoints import locate

    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    params = load_params()
    seed = derive_seed(get(params, "seed", int), "anchor")
    spec = get(params, "real_models.whisper_base", dict)
    set_threads(a.threads)
    n_rows = max(a.utterances, a.timing_utterances, MEMORY_UTTERANCES)
    rows = load_rows(a.corpus, n_rows)
    model_dir = Path(a.model_dir)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: no converted model; run `dvc repro -s real_model@whisper_base`")

    with tempfile.TemporaryDirectory(prefix="anchor_") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        ct2_dir = assemble_ct2_dir([locate(f, "real_models.whisper_base.files") for f in spec["files"]],
                                   locate(str(spec["meta_dir"]), "real_models.whisper_base.meta_dir"),
                                   tmp_path / "ct2", str(spec["sha256"]))
        print(f"CT2 directory assembled and sha256-verified in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        t0 = time.perf_counter()
        model, processor = load_ours(model_dir)
        fw_models = {e: load_fw(ct2_dir, FW_COMPUTE[e], a.threads) for e in FW_COMPUTE}
        runners: dict[str, Callable[[np.ndarray], str]] = {"ours": ours_transcriber(model, processor)}
        runners.update({e: fw_transcriber(m) for e, m in fw_models.items()})
        load_s = time.perf_counter() - t0

        # 1. WER ------------------------------------------------------------------------------------
        wer_rows = rows[:a.utterances]
        refs = [r["text"] for r in wer_rows]
        hyps: dict[str, list[str]] = {}
        wer_s: dict[str, float] = {}
        for name in ENGINES:
            t0 = time.perf_counter()
            if name == "ours":
                hyps[name], _ = transcribe_whisper(model, processor, wer_rows, LANGUAGE, a.batch_size)
            else:
                hyps[name] = [runners[name](r["audio"]["array"])
                              for r in tqdm(wer_rows, desc=f"WER {name}", mininterval=5)]
            wer_s[name] = time.perf_counter() - t0
        scores = {name: score(refs, hyps[name], NORMALIZER, n_resamples=a.resamples, seed=seed) for name in ENGINES}
        differing = {f"ours_vs_{e}": count_differing(hyps["ours"], hyps[e]) for e in FW_COMPUTE}
        differing["fw_float32_vs_fw_int8"] = count_differing(hyps["fw_float32"], hyps["fw_int8"])

        # 2. speed ----------------------------------------------------------------------------------
        timing_rows = rows[:a.timing_utterances]
        timing_audio_s = audio_seconds(timing_rows)
        rng = random.Random(seed)
        warm = timing_rows[0]["audio"]["array"]
        for name in interleaved_order(rng, ENGINES):  # one warm-up per engine
            runners[name](warm)
        times: dict[str, list[list[float]]] = {name: [] for name in ENGINES}
        orders: list[list[list[str]]] = []
        bar = tqdm(total=a.rounds * len(timing_rows), desc="timing", mininterval=5)
        for _ in range(a.rounds):
            for name in ENGINES:
                times[name].append([])
            round_orders = []
            for r in timing_rows:
                order = interleaved_order(rng, ENGINES)
                round_orders.append(order)
                for name in order:
                    audio = r["audio"]["array"]
                    times[name][-1].extend(time_callable(lambda f=runners[name], x=audio: f(x), 0, 1))
                bar.update()
            orders.append(round_orders)
        bar.close()
        rtfx_rounds = {name: rtfx_per_round(times[name], timing_audio_s) for name in ENGINES}
        ratio_rounds = ratios_to(rtfx_rounds, "ours")
        del model, processor, fw_models, runners

        # 3. peak memory (fresh interpreters, one per engine) ---------------------------------------
        mem_rows = rows[:MEMORY_UTTERANCES]
        npz = tmp_path / "audio.npz"
        np.savez(npz, **{str(i): r["audio"]["array"] for i, r in enumerate(mem_rows)})
        memory: dict[str, dict[str, Any]] = {}
        for name in tqdm(ENGINES, desc="peak RSS"):
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--ct2-dir", str(ct2_dir),
                    "--model-dir", str(model_dir.resolve()), "--audio", str(npz), "--threads", str(a.threads)]
            memory[name] = peak_rss_subprocess(argv, timeout_s=900)

    info = {**runtime_info(), "versions": versions(), "cpu_count": os.cpu_count(),
            "ct2_cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
            "platform": platform.platform(), "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
            "MKL_CBWR": os.environ.get("MKL_CBWR"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0]}
    results = {name: {"wer": scores[name], "rtfx": spread(rtfx_rounds[name]),
                      "speed_vs_ours": spread(ratio_rounds[name]),
                      "memory": {k: v for k, v in memory[name].items() if k != "texts"}} for name in ENGINES}
    table = markdown_table(results)
    v = info["versions"]
    header = (f"Whisper base (real weights), greedy, language en, on {len(wer_rows)} utterances of "
              f"{a.corpus} ({audio_seconds(wer_rows):.0f} s, normaliser {NORMALIZER!r}; 95 % bootstrap CI, "
              f"{a.resamples} resamples)")
    notes = [
        f"Speed: first {len(timing_rows)} utterances ({timing_audio_s:.1f} s of audio), batch 1, {a.rounds} "
        f"round(s) after one warm-up per engine, engines interleaved in a seeded random order per utterance; "
        f"RTFx = audio s / compute s per round, median (min-max over rounds); speed vs ours = per-round "
        f"RTFx ratio to ours (> 1 = faster).",
        f"Peak RSS: a fresh process per engine loads it and transcribes {len(mem_rows)} utterances; "
        f"VmHWM at the end; delta = peak - RSS before loading (after the engine's imports).",
        f"Transcripts differing word for word after normalisation: ours vs fw float32 "
        f"{differing['ours_vs_fw_float32']}/{len(wer_rows)}, ours vs fw int8 {differing['ours_vs_fw_int8']}/"
        f"{len(wer_rows)}, fw float32 vs fw int8 {differing['fw_float32_vs_fw_int8']}/{len(wer_rows)}.",
        f"CPU: {info['cpu_model']} ({info['cpu_count']} logical CPUs, torch kernels {info['cpu_kernels']}), "
        f"threads {a.threads} (torch intra-op; CT2 cpu_threads); 1-min load average {load_start:.2f} at start, "
        f"{info['loadavg_1min_end']:.2f} at end.",
        f"Versions: ctranslate2 {v['ctranslate2']}, faster_whisper {v['faster-whisper']}, torch {v['torch']}, "
        f"transformers {v['transformers']}; python {info['python_version']}.",
        "faster-whisper: " + ", ".join(f"{k}={val!r}" for k, val in FW_OPTIONS.items()) + "; ours: generate("
        "language='en', task='transcribe', num_beams=1, do_sample=False) on the converted save_pretrained model.",
    ]
    md = "\n".join(["# Anchor: Whisper base in faster-whisper vs ours\n", header, "", table, "",
                    *[f"- {n}" for n in notes]]) + "\n"
    print(md)
    write_json(a.out_json, {
        "config": {"threads": a.threads, "utterances": len(wer_rows), "timing_utterances": len(timing_rows),
                   "rounds": a.rounds, "batch_size_ours_wer": a.batch_size, "resamples": a.resamples,
                   "seed": seed, "corpus": a.corpus, "model_dir": str(model_dir), "normalizer": NORMALIZER,
                   "memory_utterances": len(mem_rows), "fw_options": FW_OPTIONS,
                   "fw_compute_types": FW_COMPUTE, "ct2_sha256": spec["sha256"], "ct2_files": spec["files"]},
        "runtime": info,
        "results": results,
        "differing_transcripts": differing,
        "timing": {"audio_s": timing_audio_s, "utterance_ids": [r["id"] for r in timing_rows],
                   "seconds": times, "rtfx_rounds": rtfx_rounds, "speed_vs_ours_rounds": ratio_rounds,
                   "orders": orders},
        "wer_pass_s": wer_s,
        "load_s": load_s,
        "total_s": time.perf_counter() - t_start,
        "hyps": {"ids": [r["id"] for r in wer_rows], "refs": refs, **hyps},
        "memory_texts": {name: memory[name].get("texts") for name in ENGINES},
    })
    Path(a.out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_md).write_text(md)
    print(f"wrote {a.out_md}, {a.out_json} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
