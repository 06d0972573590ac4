"""The leaderboard table: every entry of params ``leaderboard`` beside dense Whisper base and the faster-whisper
anchor, from what the measure suite wrote (nothing is re-measured here).

Per entry (``board_rows``): the compression record (its CPU time), the real-speech measurement (size, memory,
FLOPs, batch-1 latency and the speed-up against dense timed interleaved with it) and, on every
``leaderboard.measure_on`` corpus, WER with its bootstrap CI and a paired test against the dense model on the
same utterances (``measure.compare.compare_variants``: one comparison path for every entry, imported ones too).
``removed_pct`` = share of the dense model's parameters that are gone or zero (``1 - nonzero / dense params``):
the one budget figure every method is matched on, measured, never the nominal budget. ``budget_group`` buckets
it (< 5 %: quantised only, or a method that did not reach its budget; ~30 %: < 40 %; ~50 %: otherwise).

``pareto`` marks the entries no other row (the faster-whisper anchor included, for speed) beats on both WER
(real speech) and bytes on disk, or on both WER and speed-up. Figures: ``report.figures.plot_leaderboard``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asrcompress.io import read_json, read_jsonl
from asrcompress.measure.compare import compare_variants

__all__ = ["board_rows", "anchor_rows", "pareto", "budget_group", "budget_summary", "markdown", "COLUMNS"]

COLUMNS = ["entry", "label", "source", "budget_group", "removed_pct", "params_m", "nonzero_params_m", "int8_params_m",
           "checkpoint_mib", "weights_mib", "peak_rss_delta_mib", "gflops_utterance",
           "wer_real", "wer_real_ci_low", "wer_real_ci_high", "delta_real", "delta_real_ci_low", "delta_real_ci_high",
           "p_worse_real", "wer_synth", "wer_synth_ci_low", "wer_synth_ci_high", "delta_synth", "delta_synth_ci_low",
           "delta_synth_ci_high", "p_worse_synth", "latency_ms_p50", "rtfx_b1", "speedup", "speedup_ci_low",
           "speedup_ci_high", "fixed_speedup", "compress_cpu_s", "collapsed", "pareto_bytes", "pareto_speed"]


def budget_group(removed_pct: float) -> str:
    return "< 5 % removed (quantised only, or budget not reached)" if removed_pct < 5 else (
        "~30 %" if removed_pct < 40 else "~50 %")


def _row(name: str, label: str, source: str, metrics: Mapping[str, Mapping[str, Any]],
         hyps: Mapping[str, Sequence[Mapping[str, Any]]], dense: Mapping[str, Mapping[str, Any]],
         dense_hyps: Mapping[str, Sequence[Mapping[str, Any]]], record: Mapping[str, Any] | None,
         n_resamples: int, seed: int) -> dict[str, Any]:
    real = metrics["real"]
    removed = 100.0 * (1.0 - real["nonzero_params"] / dense["real"]["params"])
    row: dict[str, Any] = {
        "entry": name, "label": label, "source": source, "budget_group": budget_group(removed),
        "removed_pct": removed, "params_m": real["params"] / 1e6, "nonzero_params_m": real["nonzero_params"] / 1e6,
        "int8_params_m": (real.get("int8_params") or 0) / 1e6, "checkpoint_mib": real["checkpoint_mib"],
        "weights_mib": real["weights_mib"], "peak_rss_delta_mib": real.get("peak_rss_delta_mib"),
        "gflops_utterance": real.get("gflops_utterance"), "latency_ms_p50": real.get("latency_ms_p50"),
        "rtfx_b1": real.get("rtfx_b1"), "speedup": real.get("speedup_vs_reference"),
        "speedup_ci_low": real.get("speedup_vs_reference_ci_low"),
        "speedup_ci_high": real.get("speedup_vs_reference_ci_high"),
        "fixed_speedup": real.get("fixed_latency_speedup"),
        "compress_cpu_s": (record or {}).get("compress_cpu_s"),
    }
    if source == "dense":
        row.update(speedup=1.0, fixed_speedup=1.0, compress_cpu_s=0.0)
    for where, m in metrics.items():
        row.update({f"wer_{where}": m["wer_pct"], f"wer_{where}_ci_low": m["wer_ci_low_pct"],
                    f"wer_{where}_ci_high": m["wer_ci_high_pct"]})
        if source == "dense":
            row.update({f"delta_{where}": 0.0})
            continue
        c = compare_variants(m, hyps[where], dense[where], dense_hyps[where], n_resamples, seed, (name, "dense"))
        row.update({f"delta_{where}": c["wer_delta_abs"], f"delta_{where}_ci_low": c["wer_delta_ci_low_pct"],
                    f"delta_{where}_ci_high": c["wer_delta_ci_high_pct"], f"p_worse_{where}": c["p_value_worse"]})
    return row


def board_rows(cfg: Mapping[str, Any], root: str | Path = ".", n_resamples: int = 1000, seed: int = 0
               ) -> list[dict[str, Any]]:
    """Dense first, then the board's entries, then the imported ones (params order). A missing metrics or
    hypotheses file raises naming it (run the entry's measure stage)."""
    root = Path(root)
    sec = cfg["leaderboard"]
    wheres = list(sec["measure_on"])
    refs = {w: sec["measure_on"][w]["reference"] for w in wheres}
    dense = {w: read_json(root / "reports/metrics" / f"{refs[w]}.json") for w in wheres}
    dense_hyps = {w: read_jsonl(root / "reports/hyps" / f"{refs[w]}.jsonl") for w in wheres}
    rows = [_row("dense", "Whisper base, float32 (transformers)", "dense", dense, dense_hyps, dense, dense_hyps,
                 None, n_resamples, seed)]
    for name, entry in sec["entries"].items():
        keys = {w: f"lb_{name}_{w}" for w in wheres}
        metrics = {w: read_json(root / "reports/leaderboard/metrics" / f"{k}.json") for w, k in keys.items()}
        hyps = {w: read_jsonl(root / "reports/leaderboard/hyps" / f"{k}.jsonl") for w, k in keys.items()}
        record = read_json(root / "reports/leaderboard/compress" / f"{name}.json")
        rows.append(_row(name, entry["label"], "board", metrics, hyps, dense, dense_hyps, record, n_resamples, seed))
    for name, imp in (sec.get("imported") or {}).items():
        missing = [w for w in wheres if w not in imp["measured"]]
        if missing:
            raise ValueError(f"params.yaml: leaderboard.imported.{name}.measured: no key for {missing}")
        metrics = {w: read_json(root / "reports/metrics" / f"{imp['measured'][w]}.json") for w in wheres}
        hyps = {w: read_jsonl(root / "reports/hyps" / f"{imp['measured'][w]}.jsonl") for w in wheres}
        if metrics["real"].get("reference") != refs["real"]:
            raise ValueError(f"leaderboard.imported.{name}: its real-speech measurement is timed against "
                             f"{metrics['real'].get('reference')!r}, not the dense {refs['real']!r}")
        record = _imported_record(root, imp.get("compress_record"), name)
        rows.append(_row(name, imp["label"], "imported", metrics, hyps, dense, dense_hyps, record, n_resamples, seed))
    return rows


def _imported_record(root: Path, paths: str | list[str] | None, name: str) -> dict[str, Any] | None:
    """An imported entry's compression record: one file, or the files of a method that ran in several stages
    (paper 1: SGL fine-tune, then prune + recovery), whose ``compress_cpu_s`` add up; None (no CPU figure) when
    any of them lacks it."""
    if not paths:
        return None
    paths = [paths] if isinstance(paths, str) else paths
    if any(not isinstance(p, str) for p in paths):
        raise ValueError(f"params.yaml: leaderboard.imported.{name}.compress_record: a path or a list of paths")
    cpu = [read_json(root / p).get("compress_cpu_s") for p in paths]
    return {"compress_cpu_s": None if None in cpu else float(sum(cpu))}


def anchor_rows(anchor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """faster-whisper float32 / int8 from ``benchmarks/bench_anchor.py``'s JSON: WER on the same real
    utterances, speed against our dense model timed interleaved in that run (median, min-max over rounds)."""
    out = []
    for engine in ("fw_float32", "fw_int8"):
        r = anchor["results"][engine]
        out.append({"entry": engine, "label": f"faster-whisper {engine[3:]} (CTranslate2)", "source": "anchor",
                    "wer_real": r["wer"]["wer_pct"], "wer_real_ci_low": r["wer"]["wer_ci_low_pct"],
                    "wer_real_ci_high": r["wer"]["wer_ci_high_pct"], "speedup": r["speed_vs_ours"]["median"],
                    "speedup_ci_low": r["speed_vs_ours"]["min"], "speedup_ci_high": r["speed_vs_ours"]["max"],
                    "peak_rss_delta_mib": r["memory"]["peak_rss_delta_mib"]})
    return out


#: sizes / speed-ups within this relative margin count as equal (two int8 files differ by their JSON record)
TIE = 0.01


def _front(rows: list[dict[str, Any]], x: str, smaller_better: bool) -> set[str]:
    pts = [(r["entry"], r["wer_real"], r[x]) for r in rows if r.get(x) is not None]
    sign = 1 if smaller_better else -1

    def beats(a: tuple, b: tuple) -> bool:
        margin = TIE * abs(b[2])
        no_worse_x, better_x = sign * a[2] <= sign * b[2] + margin, sign * a[2] < sign * b[2] - margin
        return a[1] <= b[1] and no_worse_x and (a[1] < b[1] or better_x)
    return {p[0] for p in pts if not any(beats(q, p) for q in pts if q is not p)}


def pareto(rows: list[dict[str, Any]], collapsed_wer: float | None = None) -> None:
    """Set ``pareto_bytes`` (WER real vs checkpoint MiB) and ``pareto_speed`` (WER real vs speed-up) in place;
    rows without the figure (the anchor has no bytes) are left out of that front. Within ``TIE`` two sizes or
    speed-ups count as equal. A row whose real-speech WER is at least ``collapsed_wer`` (params
    ``leaderboard.collapsed_wer_pct``: 100 = no usable word) is marked ``collapsed`` and kept off both fronts: a
    model that transcribes nothing is not a trade-off, however small or fast."""
    for r in rows:
        r["collapsed"] = collapsed_wer is not None and r["wer_real"] >= collapsed_wer
    usable = [r for r in rows if not r["collapsed"]]
    fb, fs = _front(usable, "checkpoint_mib", True), _front(usable, "speedup", False)
    for r in rows:
        r["pareto_bytes"], r["pareto_speed"] = r["entry"] in fb, r["entry"] in fs


def budget_summary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per budget group (dense left out): the lowest real-speech WER among the usable entries, the
    entries on a front, and the collapsed ones (call ``pareto`` first)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["source"] != "dense":
            groups.setdefault(r["budget_group"], []).append(r)
    out = []
    for g, rs in groups.items():
        usable = [r for r in rs if not r.get("collapsed")]
        gone = [r["entry"] for r in rs if r.get("collapsed")]
        front = [r["entry"] for r in rs if r.get("pareto_bytes") or r.get("pareto_speed")]
        best = min(usable, key=lambda r: r["wer_real"]) if usable else None
        head = (f"lowest WER {best['entry']} ({best['wer_real']:.1f} %)" if best else "every entry collapsed")
        out.append(f"- {g}: {head}; on a Pareto front: {', '.join(front) or 'none'}"
                   + (f"; collapsed: {', '.join(gone)}" if gone else ""))
    return out


def _f(v: Any, fmt: str = ".1f") -> str:
    return "" if v is None else format(v, fmt)


def _ci(r: Mapping[str, Any], k: str, fmt: str = ".1f") -> str:
    if r.get(k) is None:
        return ""
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    return f"{r[k]:{fmt}} [{_f(lo, fmt)}, {_f(hi, fmt)}]" if lo is not None else f"{r[k]:{fmt}}"


def markdown(rows: Sequence[Mapping[str, Any]], anchors: Sequence[Mapping[str, Any]], wheres: Mapping[str, str]) -> str:
    head = ("| entry | method | removed or zero % | params M (non-zero) | disk MiB | peak RSS delta MiB | GFLOPs/utt "
            f"| WER {wheres['real']} % [CI] | vs dense [CI] | WER {wheres['synth']} % [CI] | vs dense [CI] "
            "| speed-up b1 [CI] | enc+24 tok | compress CPU s | Pareto |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in [*rows, *anchors]:
        front = "collapsed" if r.get("collapsed") else ", ".join(
            k for k, f in (("bytes", r.get("pareto_bytes")), ("speed", r.get("pareto_speed"))) if f)
        params = "" if r.get("params_m") is None else f"{r['params_m']:.1f} ({r['nonzero_params_m']:.1f})"
        lines.append(
            f"| {r['entry']} | {r['label']} | {_f(r.get('removed_pct'))} | {params} | {_f(r.get('checkpoint_mib'))} "
            f"| {_f(r.get('peak_rss_delta_mib'), '.0f')} | {_f(r.get('gflops_utterance'))} | {_ci(r, 'wer_real')} "
            f"| {_ci(r, 'delta_real')} | {_ci(r, 'wer_synth')} | {_ci(r, 'delta_synth')} "
            f"| {_ci(r, 'speedup', '.2f')} | {_f(r.get('fixed_speedup'), '.2f')} "
            f"| {_f(r.get('compress_cpu_s'), '.0f')} | {front} |")
    return "\n".join(lines) + "\n"
