"""Compressed Whispers in the runtime users deploy: faster-whisper (CTranslate2), float32 and int8, each
beside its dense model in the same runtime.

Every model is exported by ``asrcompress.models.ct2_export.export_ct2`` (CTranslate2's own Whisper loader
and writer) to a float32 and an int8 CTranslate2 directory, loaded by ``faster_whisper.WhisperModel``
(``compute_type`` = the directory's type, ``cpu_threads=--threads``) and run with the anchor's greedy
options (``bench_anchor.FW_OPTIONS``: beam 1, temperature 0 only, no timestamps, no VAD, no conditioning),
the language set per group. What CTranslate2 cannot hold as is gets the export option that stores it
exactly, named in the table: a low-rank embedding multiplied out (``expand_embedding``), per-layer head
counts padded with zero heads (``pad_heads``); ``--strict`` refuses them instead (listed as not exported).

Groups (a model is compared with the dense model of its language, on that language's real test set):

* ``en`` on ``data/corpora/en_real`` (LibriSpeech test-other), normaliser from ``real_corpora.en_real``:
  the dense reference Whisper base (``data/models/real/whisper_base``), ``p2r_merge`` (merged decoder
  layers), ``p2r_final`` (merged layers + low-rank embedding), and any model directory given on the command
  line (e.g. ``data/models/lb/*``; taken as English);
* ``hi`` on ``data/corpora/hi_real`` (real Hindi), language ``hi``, the Hindi normaliser: ``p1r_sgl_pruned``
  (paper 1: per-layer FFN widths and head counts) beside its dense reference ``p1r_dense_ft`` (the same
  fine-tuning without SGL, as in the paper-1 real pipeline). Both were fine-tuned on synthetic Hindi, so
  their WER on real Hindi is near 100 % (as the measure stage found): the speed comparison is the point,
  and a Hindi model's WER only means something on Hindi, so it is never scored on English.

Measured per group: the float32 export checked against ours on the first --check-utterances (CTranslate2 fed
our log-mel features: greedy steps equal, largest logit difference; ``ct2_export.check_export``), WER on
the first --utterances test utterances (``asrcompress.measure.wer.score``, 95 %
bootstrap CI), generated tokens per utterance (speed depends on output length), how many transcripts
differ word for word from ours (the measure stage's stored hypotheses ``reports/hyps/<key>.jsonl`` on the
same utterances, where they exist), and speed: the first --timing-utterances, batch 1, --rounds rounds
after one warm-up per engine, every engine of the group interleaved in a seeded random order per utterance;
RTFx per round (audio s / compute s), median (min-max), and per round the ratio to the dense model of the
same compute type ("speed vs dense", > 1 = faster). A model that stops early looks faster for that alone,
so a second, equal-length timing (same utterances, rounds and interleaving) suppresses end-of-text and
has every engine generate exactly the dense float32 model's token count for each utterance
(``max_new_tokens``): its speed-up is the structure's own (``--no-equal-length`` skips it). Also each
exported ``model.bin``'s bytes and the parameters it holds beside ours.

Run (alone on the machine; about 40 min on 2 idle cores with the defaults: ~8 min English WER passes,
~4 + 4 min English timings, ~7 min Hindi WER passes, ~11 + 6 min Hindi timings (the Hindi models loop to
long outputs), ~2 min of exports; each extra English model adds ~4 min):
``python benchmarks/bench_ct2_compressed.py [--threads 2] [--utterances 100] [--hi-utterances 40]
[--timing-utterances 20] [--rounds 3] [data/models/lb/<name> ...]``; smoke: ``--utterances 2 --hi-utterances 2
--timing-utterances 2 --rounds 1`` (5 min on the loaded machine). Needs ``dvc checkout prepare_real@en_real prepare_real@hi_real real_model@whisper_base`` and
``dvc checkout pipelines/p2_real/dvc.yaml:p2r_compress@merge pipelines/p2_real/dvc.yaml:p2r_compress@final
pipelines/p1_real/dvc.yaml:p1r_prune pipelines/p1_real/dvc.yaml:p1r_dense_ft``; a missing model directory
is skipped with a warning. Writes ``reports/real/ct2_compressed.md`` and ``.json`` (all figures, raw
timings, transcripts, capability reports).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_anchor import (  # noqa: E402  (the anchor's options and timing helpers, one copy)
    FW_OPTIONS,
    audio_seconds,
    count_differing,
    fmt_spread,
    interleaved_order,
    load_fw,
    ratios_to,
    rtfx_per_round,
    spread,
    versions,
)

COMPUTE_TYPES = ("float32", "int8")
# group -> (real corpus key, dense reference model); models: name -> (directory, group, stored-hyps key)
GROUPS = {"en": ("en_real", "whisper_base"), "hi": ("hi_real", "p1r_dense_ft")}
MODELS = {
    "whisper_base": ("data/models/real/whisper_base", "en", "base_en_real"),
    "p2r_merge": ("data/models/p2r_merge", "en", "p2r_merge_en"),
    "p2r_final": ("data/models/p2r_final", "en", "p2r_final_en"),
    "p1r_dense_ft": ("data/models/p1r_dense_ft", "hi", "p1r_dense_ft_hi_real"),
    "p1r_sgl_pruned": ("data/models/p1r_sgl_pruned", "hi", "p1r_sgl_pruned_hi_real"),
}
MIB = 2**20


def fw_runner(model: Any, language: str) -> Callable[..., tuple[str, int]]:
    """(audio, **overrides) -> (text, generated tokens) with the anchor's options in ``language``."""
    options = {**FW_OPTIONS, "language": language}

    def run(audio: np.ndarray, **overrides: Any) -> tuple[str, int]:
        segments, _info = model.transcribe(audio, **options, **overrides)
        segs = list(segments)  # a generator: decoding happens here
        return " ".join(s.text for s in segs).strip(), sum(len(s.tokens) for s in segs)
    return run


def load_eot(ct2_dir: Path) -> int:
    """The end-of-text id of an exported directory's tokenizer."""
    import tokenizers

    eot = tokenizers.Tokenizer.from_file(str(ct2_dir / "tokenizer.json")).token_to_id("<|endoftext|>")
    if eot is None:
        raise SystemExit(f"{ct2_dir}: tokenizer.json has no <|endoftext|>")
    return int(eot)


def budget_for(made: Callable[[int], int], target: int, limit: int = 440) -> int:
    """The ``max_new_tokens`` with which ``made(k)`` (tokens generated with end-of-text suppressed) is
    ``target``, searched from ``target`` (CTranslate2 4.8 with faster-whisper makes about (prompt + k) / 2
    tokens when end-of-text never comes, so the budget is not the count); the closest found when none hits."""
    k, best = target, target
    seen: dict[int, int] = {}
    while k not in seen and 1 <= k <= limit:
        seen[k] = made(k)
        if abs(seen[k] - target) < abs(seen.get(best, 10**9) - target):
            best = k
        if seen[k] == target:
            return k
        k += 2 * (target - seen[k]) if seen[k] < target else -1
    return best


def stored_hyps(key: str | None) -> dict[str, str]:
    """Our transcripts by utterance id from the measure stage (``reports/hyps/<key>.jsonl``), or {}."""
    from asrcompress.io import read_jsonl

    path = Path(f"reports/hyps/{key}.jsonl")
    return {r["id"]: r["hyp"] for r in read_jsonl(path)} if key and path.is_file() else {}


def options_for(capability: Mapping[str, Any], strict: bool) -> dict[str, bool] | None:
    """The export options that store what CTranslate2 cannot hold as is; None when --strict refuses."""
    needs = set(capability["needs"])
    if needs and strict:
        return None
    return {"pad_heads": "pad_heads" in needs, "expand_embedding": "expand_embedding" in needs}


def held_as(record: Mapping[str, Any]) -> str:
    done = [k for k in ("pad_heads", "expand_embedding") if record.get(k)]
    return "as is" if not done else " + ".join({"pad_heads": "heads padded",
                                                "expand_embedding": "embedding multiplied out"}[k] for k in done)


def markdown(group: str, corpus: str, rows: Sequence[Mapping[str, Any]], n_wer: int) -> str:
    lines = [f"### {group}: {corpus}, language {rows[0]['language']}\n",
             f"| model | held as | compute | model.bin MiB | params M (ours) | WER % [95 % CI], {n_wer} utt | "
             "differ from ours | our features: greedy = ours (max logit diff) | tokens/utt | "
             "RTFx median (min-max) | speed vs dense | equal-length RTFx | equal-length speed vs dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["wer"]
        wer = "-" if w.get("wer_pct") is None else (
            f"{w['wer_pct']:.2f} [{w['wer_ci_low_pct']:.2f}, {w['wer_ci_high_pct']:.2f}]")
        diff = "-" if r["differ_from_ours"] is None else f"{r['differ_from_ours']}/{r['compared_with_ours']}"
        c = r.get("same_features_check")
        check = "-" if not c else f"{c['greedy_equal']}/{c['utterances']} ({c['max_logit_diff']:.1e})"
        lines.append(f"| {r['model']} | {r['held_as']} | {r['compute_type']} | {r['model_bin_bytes'] / MIB:.0f} | "
                     f"{r['params_exported'] / 1e6:.1f} ({r['params_ours'] / 1e6:.1f}) | {wer} | {diff} | {check} | "
                     f"{r['tokens_per_utt']:.1f} | {fmt_spread(r['rtfx'], 1)} | "
                     f"{fmt_spread(r['speed_vs_dense'], 2, 'x')} | {fmt_spread(r['equal_length_rtfx'], 1)} | "
                     f"{fmt_spread(r['equal_length_speed_vs_dense'], 2, 'x')} |")
    return "\n".join(lines)


def run_group(group: str, names: Sequence[str], dirs: Mapping[str, Path], a: argparse.Namespace, n_wer: int,
              tmp: Path, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    from tqdm.auto import tqdm
    from transformers import WhisperProcessor

    from asrcompress.compress.checkpoint import load_compressed
    from asrcompress.config import get
    from asrcompress.io import load_split
    from asrcompress.measure.latency import time_callable
    from asrcompress.measure.wer import score
    from asrcompress.models.ct2_export import check_export, ct2_capability, export_ct2

    corpus_key, reference = GROUPS[group]
    corpus = Path("data/corpora") / corpus_key
    language = get(params, f"real_corpora.{corpus_key}.whisper_language", str)
    normalizer = get(params, f"real_corpora.{corpus_key}.normalizer", str)
    rows = load_split(corpus, "test")[: max(n_wer, a.timing_utterances)]
    for r in rows:
        r["audio"]["array"] = np.asarray(r["audio"]["array"], dtype=np.float32)
    exports: dict[str, dict[str, Any]] = {}
    refused: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    for name in names:
        model = load_compressed(dirs[name])
        cap = ct2_capability(model)
        opts = options_for(cap, a.strict)
        if opts is None:
            refused[name] = cap
            print(f"{name}: not exported (--strict): CTranslate2 cannot hold {cap['needs']}", file=sys.stderr)
            continue
        for ct in COMPUTE_TYPES:
            t0 = time.perf_counter()
            rec = export_ct2(dirs[name], tmp / f"{name}_{ct}", ct, **opts)
            rec["export_s"] = time.perf_counter() - t0
            exports[f"{name}/{ct}"] = rec
        if a.check_utterances:  # the float32 export fed our features: the export itself, without fw's front-end
            checks[name] = check_export(model, WhisperProcessor.from_pretrained(str(dirs[name])),
                                        tmp / f"{name}_float32", [r["audio"]["array"] for r in
                                                                  rows[: a.check_utterances]], language)
        del model
    engines = list(exports)
    runners = {e: fw_runner(load_fw(tmp / e.replace("/", "_"), e.split("/")[1], a.threads), language)
               for e in engines}

    wer_rows = rows[:n_wer]
    refs = [r["text"] for r in wer_rows]
    hyps: dict[str, list[str]] = {}
    tokens: dict[str, list[int]] = {}
    for e in engines:
        out = [runners[e](r["audio"]["array"]) for r in tqdm(wer_rows, desc=f"WER {e}", mininterval=5)]
        hyps[e], tokens[e] = [t for t, _ in out], [n for _, n in out]

    timing_rows = rows[: a.timing_utterances]
    timing_audio_s = audio_seconds(timing_rows)
    rng = random.Random(seed)

    def timed(kwargs: Sequence[Mapping[str, Any]], desc: str) -> tuple[dict[str, list[list[float]]], dict[str, list[int]]]:
        """Interleaved rounds after one warm-up per engine; ``kwargs[i]`` overrides for utterance i."""
        for e in interleaved_order(rng, engines):
            runners[e](timing_rows[0]["audio"]["array"], **kwargs[0])
        secs: dict[str, list[list[float]]] = {e: [] for e in engines}
        made: dict[str, list[int]] = {e: [] for e in engines}
        for _ in tqdm(range(a.rounds), desc=desc):
            for e in engines:
                secs[e].append([])
            for r, kw in zip(timing_rows, kwargs, strict=True):
                for e in interleaved_order(rng, engines):
                    out: list[tuple[str, int]] = []
                    secs[e][-1].extend(time_callable(
                        lambda f=runners[e], x=r["audio"]["array"], k=kw, o=out: o.append(f(x, **k)), 0, 1))
                    made[e].append(out[0][1])
        return secs, made

    times, _ = timed([{}] * len(timing_rows), f"timing {group}")
    rtfx = {e: rtfx_per_round(times[e], timing_audio_s) for e in engines}
    equal: dict[str, Any] = {}
    if a.equal_length:  # every engine generates the dense float32 model's token count (end-of-text suppressed)
        dense = runners[f"{reference}/float32"]
        eot = load_eot(tmp / f"{reference}_float32")
        targets = [max(1, dense(r["audio"]["array"])[1]) for r in timing_rows]
        kwargs = [{"max_new_tokens": budget_for(lambda k, x=r["audio"]["array"]: dense(
            x, max_new_tokens=k, suppress_tokens=[-1, eot])[1], n), "suppress_tokens": [-1, eot]}
            for r, n in zip(timing_rows, targets, strict=True)]
        secs, made = timed(kwargs, f"equal-length timing {group}")
        eq_rtfx = {e: rtfx_per_round(secs[e], timing_audio_s) for e in engines}
        equal = {"targets": targets, "seconds": secs, "rtfx_rounds": eq_rtfx,
                 "off_target": {e: sum(m != t for m, t in zip(made[e], targets * a.rounds, strict=True))
                                for e in engines}}

    out_rows = []
    for e in engines:
        name, ct = e.split("/")
        ref_e = f"{reference}/{ct}"
        ours = stored_hyps(MODELS.get(name, (None, None, None))[2])
        pairs = [(ours[r["id"]], h) for r, h in zip(wer_rows, hyps[e], strict=True) if r["id"] in ours]
        rec = exports[e]
        out_rows.append({
            "model": name, "dir": str(dirs[name]), "language": language, "compute_type": ct,
            "held_as": held_as(rec), "model_bin_bytes": rec["model_bin_bytes"],
            "same_features_check": checks.get(name) if ct == "float32" else None,
            "params_ours": rec["params_ours"], "params_exported": rec["params_exported"],
            "export_s": rec["export_s"],
            "wer": score(refs, hyps[e], normalizer, n_resamples=a.resamples, seed=seed),
            "tokens_per_utt": float(np.mean(tokens[e])),
            "differ_from_ours": count_differing(*zip(*pairs, strict=True), normalizer=normalizer) if pairs else None,
            "compared_with_ours": len(pairs),
            "rtfx": spread(rtfx[e]),
            "speed_vs_dense": spread(ratios_to(rtfx, ref_e)[e]) if ref_e in rtfx else None,
            "equal_length_rtfx": spread(equal["rtfx_rounds"][e]) if equal else None,
            "equal_length_speed_vs_dense": (spread(ratios_to(equal["rtfx_rounds"], ref_e)[e])
                                            if equal and ref_e in rtfx else None),
        })
    return {"corpus": str(corpus), "language": language, "normalizer": normalizer, "reference": reference,
            "rows": out_rows, "refused": refused,
            "capability": {e.split("/")[0]: exports[e]["capability"] for e in engines},
            "timing": {"audio_s": timing_audio_s, "utterance_ids": [r["id"] for r in timing_rows],
                       "seconds": times, "rtfx_rounds": rtfx, "equal_length": equal},
            "hyps": {"ids": [r["id"] for r in wer_rows], "refs": refs, **hyps}, "tokens": tokens}


def capability_lines(caps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["| model | structure | found | CTranslate2 | option (cost) |", "|---|---|---|---|---|"]
    for name, cap in caps.items():
        for s in cap["structures"]:
            notable = any(w in s["found"] for w in ("merged", "removed", "per-layer", "per attention"))
            if s["structure"] == "zeros":
                notable = s.get("zero_fraction", 0.0) >= 0.01
            elif s["ct2"] != "held" or "queries_scale" in s["reason"]:
                notable = True
            if not notable:
                continue
            opt = "-" if not s["option"] else f"{s['option']} (+{s['option_cost_params'] / 1e6:.2f} M params)"
            lines.append(f"| {name} | {s['structure']} | {s['found']} | {s['ct2']} | {opt} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extra", nargs="*", help="more (English) model directories, e.g. data/models/lb/<name>")
    ap.add_argument("--models", default="p2r_merge,p2r_final,p1r_sgl_pruned",
                    help=f"compressed models of {sorted(MODELS)} (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="CT2 cpu_threads (default %(default)s)")
    ap.add_argument("--utterances", type=int, default=100, help="WER utterances, English (default %(default)s)")
    ap.add_argument("--hi-utterances", type=int, default=40,
                    help="WER utterances, Hindi (default %(default)s: its WER is ~100 %%, the passes slow)")
    ap.add_argument("--timing-utterances", type=int, default=20, help="timed utterances (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default %(default)s)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    ap.add_argument("--strict", action="store_true", help="export only what CTranslate2 holds as is")
    ap.add_argument("--check-utterances", type=int, default=3,
                    help="utterances on which the float32 export, fed our features, is checked against ours "
                         "(models.ct2_export.check_export; default %(default)s, 0 skips)")
    ap.add_argument("--no-equal-length", dest="equal_length", action="store_false",
                    help="skip the second timing in which every model generates the dense model's token count")
    ap.add_argument("--out-md", default="reports/real/ct2_compressed.md")
    ap.add_argument("--out-json", default="reports/real/ct2_compressed.json")
    a = ap.parse_args(argv)

    from asrcompress.config import derive_seed, get, load_params
    from asrcompress.io import write_json

    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    params = load_params()
    seed = derive_seed(get(params, "seed", int), "ct2_compressed")
    dirs = {n: Path(MODELS[n][0]) for n in MODELS}
    groups: dict[str, list[str]] = {g: [ref] for g, (_, ref) in GROUPS.items()}
    for name in [m for m in a.models.split(",") if m]:
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r} (known: {sorted(MODELS)})")
        groups[MODELS[name][1]].append(name)
    for d in a.extra:
        name = Path(d).name
        if name in dirs:
            raise SystemExit(f"{d}: a model named {name!r} is already in the run")
        dirs[name] = Path(d)
        groups["en"].append(name)
    skipped = []
    for g, names in groups.items():
        for n in list(names):
            if not (dirs[n] / "config.json").is_file():
                print(f"warning: {dirs[n]} missing (dvc checkout its stage): skipped", file=sys.stderr)
                skipped.append(str(dirs[n]))
                names.remove(n)
        if names and names[0] != GROUPS[g][1]:
            raise SystemExit(f"group {g}: its dense reference {dirs[GROUPS[g][1]]} is missing")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ct2_compressed_") as tmp:
        for g, names in groups.items():
            if len(names) > 1:
                n_wer = a.hi_utterances if g == "hi" else a.utterances
                results[g] = run_group(g, names, dirs, a, n_wer, Path(tmp), params, seed)

    import ctranslate2

    from asrcompress.measure.latency import runtime_info

    info = {**runtime_info(), "versions": versions(), "cpu_count": os.cpu_count(),
            "ct2_cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
            "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0]}
    caps = {n: c for r in results.values() for n, c in {**r["capability"], **r["refused"]}.items()}
    md = ["# Compressed Whispers in faster-whisper (CTranslate2), beside the dense model\n",
          f"Greedy faster-whisper ({', '.join(f'{k}={v!r}' for k, v in FW_OPTIONS.items() if k != 'language')}), "
          f"batch 1, {a.threads} CPU threads; exported by `asrcompress.models.ct2_export`. Speed: the first "
          f"{a.timing_utterances} utterances, {a.rounds} round(s) after one warm-up per engine, every engine of a "
          "group interleaved in a seeded random order per utterance; RTFx = audio s / compute s per round, "
          "median (min-max); speed vs dense = per-round RTFx ratio to the group's dense model of the same "
          "compute type. 'differ from ours' = transcripts that differ word for word after normalisation from "
          "the measure stage's (transformers float32, `reports/hyps/`): faster-whisper's own front-end and "
          "suppressed tokens differ from ours (the anchor found 22/100 for the dense model); 'our features' = "
          "the float32 export fed our log-mel features of the first utterances, greedy, every step's logits "
          "against ours (`ct2_export.check_export`): the export itself. A model that stops early (fewer "
          "tokens/utt) looks faster for that alone: in the equal-length timing (same utterances and rounds) "
          "end-of-text is suppressed and every engine generates exactly the dense float32 model's token count "
          "for each utterance, so the speed-up there is the structure's own.\n"]
    for g, r in results.items():
        md += [markdown(g, r["corpus"], r["rows"], len(r["hyps"]["ids"])), ""]
        eq = r["timing"]["equal_length"]
        if eq:
            md += [f"Equal-length targets (dense float32 tokens per timed utterance): {eq['targets']}; generations "
                   f"off target (all rounds): {eq['off_target']}.", ""]
    md += ["### What CTranslate2 could not hold as is (and structures worth naming)\n", *capability_lines(caps), ""]
    md += [f"- CPU: {info['cpu_model']} ({info['cpu_count']} logical CPUs); 1-min load average {load_start:.2f} "
           f"at start, {info['loadavg_1min_end']:.2f} at end; ctranslate2 {info['versions']['ctranslate2']}, "
           f"faster-whisper {info['versions']['faster-whisper']}.",
           "- hi: both models were fine-tuned on synthetic Hindi; their real-Hindi WER is near 100 % (the measure "
           "stage's too): compare their speed, not their WER." if "hi" in results else ""]
    if skipped:
        md.append(f"- skipped (not checked out): {', '.join(skipped)}")
    text = "\n".join(md).rstrip() + "\n"
    print(text)
    write_json(a.out_json, {"config": {k: v for k, v in vars(a).items()}, "seed": seed, "fw_options": FW_OPTIONS,
                            "runtime": info, "groups": results, "skipped": skipped,
                            "total_s": time.perf_counter() - t_start})
    Path(a.out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_md).write_text(text)
    print(f"wrote {a.out_md}, {a.out_json} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
