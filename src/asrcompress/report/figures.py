"""Cross-paper figures and the all-variants table, drawn from the metrics files the stages wrote.

Every paper's variants become *points* in one schema (``Point``): physical and non-zero parameters,
FLOPs per utterance where the paper's stage measured them, WER, and speed-ups with a label saying
what was timed. Nothing here knows a result; a missing metrics file just leaves that paper out.

* ``reports/figures/wer_vs_params.png``: WER against non-zero parameters, one panel per paper,
  filled markers where parameters were physically removed, hollow where weights were only
  zeroed (sparsity), a star for the paper's reference;
* ``reports/figures/wer_vs_flops.png``: WER against GFLOPs per test utterance (papers whose stage
  counts FLOPs);
* ``reports/figures/speedup.png``: speed-up bars against the dense reference timed in the same run,
  the smoke model at batch 1 beside the same structure on the real Whisper-small architecture;
* ``reports/tables/variants.md`` / ``.csv``: every point as a row.

Paper 3's stage figures are drawn here too (``plot_p3_sweeps``, ``plot_p3_sensitivity``, at the end).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Point:
    paper: str
    variant: str
    params_m: float
    nonzero_params_m: float
    wer_pct: float
    is_reference: bool = False
    gflops_utterance: float | None = None
    speedup: float | None = None           # smoke model, batch 1, vs the reference in the same run
    real_speedup: float | None = None      # the structure on the real architecture (random weights)
    wer_ci_low_pct: float | None = None
    wer_ci_high_pct: float | None = None
    source: str = ""
    latency_ms_p50: float | None = None    # batch-1 latency per utterance, median (measure suite)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def _suite_point(paper: str, name: str, m: dict[str, Any], source: str, reference: bool = False) -> Point:
    return Point(paper, name, m["params_m"], m["nonzero_params_m"], m["wer_pct"], is_reference=reference,
                 gflops_utterance=_f(m.get("gflops_utterance")), speedup=_f(m.get("speedup_vs_reference")),
                 real_speedup=_f(m.get("real_speedup_30s")), wer_ci_low_pct=_f(m.get("wer_ci_low_pct")),
                 wer_ci_high_pct=_f(m.get("wer_ci_high_pct")), source=source,
                 latency_ms_p50=_f(m.get("latency_ms_p50")))


P1_VARIANTS = ("p1_dense_ft_hi", "sgl_pruned_hi", "p1_imp_hi")  # params.yaml `variants` keys of paper 1


def p1_points(root: Path) -> list[Point]:
    """Paper 1's ``measure@<key>`` files (``P1_VARIANTS``) and their reference, by the generic reader."""
    return measured_variants(root, list(P1_VARIANTS), paper="p1")


def p2_points(root: Path) -> list[Point]:
    """Paper 2's entries of the generic ``measure@`` stage (``reports/metrics/p2_<variant>.json``, not the
    ``compare@`` files beside them) and their reference, labelled without the ``p2_`` prefix."""
    return measured_variants(root, p2_measured(root), paper="p2", prefix="p2_")


def p3_points(root: Path) -> list[Point]:
    """``reports/p3/sweep.json`` (p3_prune): every sweep point; masks only, so params stay."""
    path = root / "reports/p3/sweep.json"
    data = _read(path)
    if not data:
        return []
    return [Point("p3", _short(p["point"]), p["params_m"], p["nonzero_params_m"], p["wer_pct"],
                  is_reference=p["point"] == "dense", wer_ci_low_pct=_f(p.get("wer_ci_low_pct")),
                  wer_ci_high_pct=_f(p.get("wer_ci_high_pct")), source=str(path.relative_to(root)))
            for p in data["points"]]


def _short(name: str) -> str:
    """Shorter labels for the crowded sweep panel (dsa = decoder self-attention)."""
    return name.replace("dec_self_attn_", "dsa").replace("last_encoder_", "last_enc")


P4_VARIANTS = ("control", "gates", "structured", "ump")


def p4_points(root: Path) -> list[Point]:
    """Per CTC model, the ``measure@`` files of the dense model (``p4_<model>_dense.json``, params
    ``dense``) and of each variant p4_compress saved (``p4_<model>_<variant>.json``, params
    ``variants``): the control fine-tune, gates, structured gates (physically removed), UMP."""
    out = []
    for dense in sorted((root / "reports/metrics").glob("p4_*_dense.json")):
        model = dense.stem.removeprefix("p4_").removesuffix("_dense")
        for v in ("dense", *P4_VARIANTS):
            path = root / f"reports/metrics/p4_{model}_{v}.json"
            if (m := _read(path)) is not None:
                out.append(_suite_point("p4", f"{model}:{v}", m, str(path.relative_to(root)), reference=v == "dense"))
    return out


EXTRACTORS: dict[str, Callable[[Path], list[Point]]] = {"p1": p1_points, "p2": p2_points, "p3": p3_points,
                                                         "p4": p4_points}


def measured_variants(root: Path, keys: list[str], paper: str = "variants", prefix: str = "") -> list[Point]:
    """``reports/metrics/<key>.json`` of the generic ``measure@<key>`` stage (params ``variants``), as
    points of panel ``paper`` labelled ``key`` without ``prefix``; each reference joins once, as its star."""
    out, refs = [], []
    for key in keys:
        path = root / f"reports/metrics/{key}.json"
        m = _read(path)
        if not m:
            continue
        out.append(_suite_point(paper, key.removeprefix(prefix), m, str(path.relative_to(root))))
        ref = m.get("reference")
        if ref and ref not in refs and (rm := _read(root / f"reports/metrics/{ref}.json")):
            refs.append(ref)  # the dense reference joins the panel once, as its star
            out.insert(len(refs) - 1, _suite_point(paper, ref, rm, f"reports/metrics/{ref}.json", reference=True))
    return out


def plot_real_variants(root: str | Path, panels: Mapping[str, str], prefix: str | Path) -> list[Path]:
    """A real-track paper's compressed models (``panels``: ``real_variants`` key -> panel, e.g. its test
    corpus), each with its dense reference: ``<prefix>_wer_vs_params.png`` and ``<prefix>_wer_vs_latency.png``."""
    root = Path(root)
    points: list[Point] = []
    for key, panel in panels.items():
        if _read(root / f"reports/metrics/{key}.json") is None:
            raise FileNotFoundError(f"reports/metrics/{key}.json: not measured (run measure_real_variant@{key})")
        points += [dataclasses.replace(p, paper=panel) for p in measured_variants(root, [key])
                   if not any(q.source == p.source and q.paper == panel for q in points)]
    return [path for what in ("params", "latency")
            if (path := plot_wer_vs(points, what, f"{prefix}_wer_vs_{what}.png")) is not None]


def collect_points(root: str | Path = ".", papers: list[str] | None = None,
                   variants: list[str] | None = None) -> list[Point]:
    """Every variant of the given papers (default all) that has metrics under ``root``, then the
    generic ``variants`` measured by ``measure@<key>``."""
    root = Path(root)
    points = [p for paper in (papers or list(EXTRACTORS)) for p in EXTRACTORS[paper](root)]
    drawn = {p.source for p in points if not p.is_reference}  # a paper's own variants are not drawn twice
    rest = [k for k in variants or [] if f"reports/metrics/{k}.json" not in drawn]
    return points + measured_variants(root, rest)


def _save(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


WER_AXIS_MAX = 100.0  # points above are drawn on the top edge with their value in the label


def _scatter(ax, points: list[Point], x: Callable[[Point], float | None], xlabel: str, title: str) -> None:
    full = max(p.params_m for p in points)  # the uncompressed size in this panel
    top = min(max(p.wer_pct for p in points), WER_AXIS_MAX) * 1.08 + 1
    for p in points:
        xv = x(p)
        if xv is None:
            continue
        label, y, yerr = p.variant, p.wer_pct, None
        if p.wer_pct > WER_AXIS_MAX:  # e.g. an untrained merged model that babbles: off the scale
            label, y = f"{p.variant} ({p.wer_pct:.0f} %, off scale)", top * 0.97
        elif p.wer_ci_low_pct is not None and p.wer_ci_high_pct is not None:
            yerr = [[max(p.wer_pct - p.wer_ci_low_pct, 0)], [max(p.wer_ci_high_pct - p.wer_pct, 0)]]
        marker = "*" if p.is_reference else ("^" if p.wer_pct > WER_AXIS_MAX else "o")
        filled = p.is_reference or p.params_m < full * (1 - 1e-9)  # hollow: nothing physically removed
        ax.errorbar([xv], [y], yerr=yerr, fmt=marker, ms=11 if p.is_reference else 7, capsize=2,
                    mfc=None if filled else "white", color="black" if p.is_reference else None)
        ax.annotate(label, (xv, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_ylim(0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def plot_wer_vs(points: list[Point], what: str, path: str | Path) -> Path | None:
    """WER against ``what`` ('params': non-zero parameters; 'flops': GFLOPs per utterance; 'latency':
    batch-1 latency per utterance), a panel per paper (or per ``Point.paper`` label)."""
    if what == "params":
        def x(p: Point) -> float:
            return p.nonzero_params_m
        xlabel = "non-zero parameters (M)"
    elif what == "latency":
        def x(p: Point) -> float | None:
            return p.latency_ms_p50
        xlabel = "batch-1 CPU latency per utterance, median (ms)"
    else:
        def x(p: Point) -> float | None:
            return p.gflops_utterance
        xlabel = "GFLOPs per test utterance"
    papers = [pp for pp in dict.fromkeys(p.paper for p in points) if any(x(p) is not None for p in points
                                                                            if p.paper == pp)]
    if not papers:
        return None
    ncols = min(3, len(papers))
    nrows = -(-len(papers) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax, paper in zip(axes.flat, papers, strict=False):
        _scatter(ax, [p for p in points if p.paper == paper], x, xlabel, paper)
    for ax in list(axes.flat)[len(papers):]:
        ax.axis("off")
    title = f"WER vs {xlabel} (star: reference; hollow: nothing removed (a dense control, or masks only); bars: 95 % CI)"
    fig.suptitle(textwrap.fill(title, width=70 * ncols), fontsize=9)  # one narrow panel: two lines
    return _save(fig, path)


def plot_speedups(points: list[Point], path: str | Path) -> Path | None:
    """Grouped bars: batch-1 speed-up of the smoke model and of the structure at Whisper-small scale."""
    rows = [p for p in points if not p.is_reference and (p.speedup is not None or p.real_speedup is not None)]
    if not rows:
        return None
    labels = [f"{p.paper}:{p.variant}" for p in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.8))
    w = 0.38
    def height(v: float | None) -> float:  # not measured: no bar (a 0 would read as "no speed-up")
        return float("nan") if v is None else v

    ax.bar([i - w / 2 for i in xs], [height(p.speedup) for p in rows], w, label="smoke model, batch 1 (CPU)")
    ax.bar([i + w / 2 for i in xs], [height(p.real_speedup) for p in rows], w,
           label="same structure, whisper-small, 30 s window")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speed-up vs dense (x)")
    ax.set_title("Latency speed-up, timed interleaved with the dense reference (0 = not measured)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_variants_table(points: list[Point], md_path: str | Path, csv_path: str | Path) -> None:
    """Every variant of every paper in one table (Markdown + CSV)."""
    cols = [f.name for f in fields(Point)]
    csv_path, md_path = Path(csv_path), Path(md_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = ["paper", "variant", "params_m", "nonzero_params_m", "gflops_utterance", "wer_pct", "speedup",
             "real_speedup", "source"]
    lines = ["# Every variant", "", "Physical parameters (`params_m`) fall only when weights are removed; "
             "`nonzero_params_m` also falls for masks. `speedup`: the smoke model at batch 1 against the "
             "dense reference timed in the same run; `real_speedup`: the same structure on whisper-small "
             "(random weights, 30 s window). Regenerated by the `report` stage.", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(fmt(asdict(p)[c]) for c in shown) + " |" for p in points]
    md_path.write_text("\n".join(lines) + "\n")


def write_all(root: str | Path = ".", papers: list[str] | None = None, variants: list[str] | None = None
              ) -> list[Path]:
    """All figures and the variants table under ``root``; returns the files written."""
    root = Path(root)
    points = collect_points(root, papers, variants)
    written = [plot_wer_vs(points, "params", root / "reports/figures/wer_vs_params.png"),
               plot_wer_vs(points, "flops", root / "reports/figures/wer_vs_flops.png"),
               plot_speedups(points, root / "reports/figures/speedup.png")]
    write_variants_table(points, root / "reports/tables/variants.md", root / "reports/tables/variants.csv")
    if "p2" in (papers or EXTRACTORS):
        written += write_p2(root)
    return [p for p in written if p is not None] + [root / "reports/tables/variants.md"]


# ------------------------------------------------------------------------------ paper 3 stage figures
def plot_p3_sweeps(table: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Paper 3 (p3_prune), three panels to a PNG: (a) WER vs sparsity of the prunable tensors for the
    sensitivity-derived allocation, the paper's fixed whisper-small ratios and global (and uniform)
    magnitude pruning at the same sparsity; (b) WER vs ratio for the decoder self-attention sweep and the
    last-encoder point; (c) the pruned share of each component at the highest compared sparsity, per
    method (where each method prunes). Error bars: bootstrap 95 % CIs; the dense WER and its CI as a band."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from asrcompress.compress.components import COMPONENTS, LABELS

    def err(rs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([[r["wer_pct"] - r["wer_ci_low_pct"] for r in rs],
                         [r["wer_ci_high_pct"] - r["wer_pct"] for r in rs]])

    fig = Figure(figsize=(16, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    dense = table[0]
    for ax in (ax_a, ax_b):
        ax.axhspan(dense["wer_ci_low_pct"], dense["wer_ci_high_pct"], color="0.85", label="dense 95% CI")
        ax.axhline(dense["wer_pct"], color="0.4", lw=1, label=f"dense {dense['wer_pct']:.1f}%")
        ax.set_ylabel("WER % (normalised)")
        ax.grid(alpha=0.3)
    styles = {"sensitivity": ("o-", "sensitivity-derived ratios (our scores)", -1.5),
              "paper": ("D-.", "paper's fixed whisper-small ratios", -0.5),
              "global": ("s--", "global magnitude", 0.5), "uniform": ("^:", "uniform magnitude", 1.5)}
    compare = [r for r in table if r["group"] == "compare"]
    dodge = 0.012 * max([r["prunable_sparsity_pct"] for r in compare] + [1.0])  # matched points overlap
    for method, (fmt, label, side) in styles.items():
        rs = sorted((r for r in compare if r["method"] == method), key=lambda r: r["prunable_sparsity_pct"])
        if rs:
            rs = [dense, *rs]  # every curve starts at the dense model (0 % sparsity)
            ax_a.errorbar([r["prunable_sparsity_pct"] + side * dodge for r in rs], [r["wer_pct"] for r in rs],
                          yerr=err(rs), fmt=fmt, capsize=3, label=label)
    ax_a.set_xlabel("sparsity of prunable weights (%; same-sparsity points dodged sideways)")
    ax_a.set_title("one-shot pruning, no fine-tuning")
    ax_a.legend(fontsize=8)
    sweep = sorted((r for r in table if r["group"] == "dec_self_attn_sweep"), key=lambda r: r["x"])
    if sweep:
        ax_b.errorbar([100 * r["x"] for r in sweep], [r["wer_pct"] for r in sweep], yerr=err(sweep), fmt="o-",
                      capsize=3, label="decoder self-attention")
    last = [r for r in table if r["group"] == "last_encoder"]
    if last:
        ax_b.errorbar([100 * r["x"] for r in last], [r["wer_pct"] for r in last], yerr=err(last), fmt="D",
                      capsize=3, label="last encoder layers (attn + FFN)")
    ax_b.set_xlabel("pruning ratio of the targeted component (%)")
    ax_b.set_title("targeted sweeps")
    ax_b.legend(fontsize=8)
    top = max((r["x"] for r in compare), default=None)
    at_top = [r for r in compare if r["x"] == top]
    comps = [c for c in COMPONENTS if any(c in r["component_sparsity_pct"] for r in at_top)]
    width = 0.8 / max(1, len(at_top))
    for i, r in enumerate(at_top):
        ax_c.barh([j + (i - (len(at_top) - 1) / 2) * width for j in range(len(comps))],
                  [r["component_sparsity_pct"].get(c, 0.0) for c in comps], height=width,
                  label=styles.get(r["method"], ("", r["method"], 0))[1])
    ax_c.set_yticks(range(len(comps)), [LABELS[c] for c in comps], fontsize=8)
    ax_c.invert_yaxis()
    ax_c.set_xlabel("pruned share of the component's weights (%)")
    ax_c.set_title(f"where each method prunes at {100 * top:.0f}% sparsity" if top is not None else "no compare points")
    ax_c.grid(alpha=0.3, axis="x")
    if at_top:
        ax_c.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_p3_sensitivity(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Paper 3 (p3_sensitivity): component x layer heatmaps (per-parameter gradient and Fisher scores, log10 colour scale) to a PNG.

    Rows: components; columns: layer 0..L-1 (conv: conv1/conv2 in columns 0/1) and a last column ``-`` for
    components without a layer index. Cells that do not exist are left blank.
    """
    import math

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from asrcompress.compress.components import COMPONENTS, LABELS
    from asrcompress.compress.sensitivity import per_param

    recs = per_param(records)
    comps = [c for c in COMPONENTS if any(r["component"] == c for r in recs)]
    n_layers = 1 + max((r["layer"] for r in recs if r["layer"] is not None), default=-1)
    cols = [str(i) for i in range(n_layers)] + ["-"]
    fig = Figure(figsize=(3.0 + 2 * (1.2 + 0.5 * len(cols)), 1.5 + 0.4 * len(comps)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, name in zip(axes, ("score_grad_per_param", "score_fisher_per_param"),
                             ("gradient |g·w| per parameter", "Fisher g² per parameter"), strict=True):
        grid = np.full((len(comps), len(cols)), np.nan)
        for r in recs:
            col = len(cols) - 1 if r["layer"] is None else r["layer"]
            v = r[key]
            grid[comps.index(r["component"]), col] = math.log10(v) if v > 0 else np.nan
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_xlabel("layer ('-': none; conv row: conv1, conv2)")
        ax.set_title(name, fontsize=10)
        fig.colorbar(im, ax=ax, label="log10 score", shrink=0.9)
        mid = np.nanmean(grid) if np.isfinite(grid).any() else 0.0
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if v > mid else "white")
    axes[0].set_yticks(range(len(comps)), [LABELS[c] for c in comps])
    if title:
        fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plot_p4_compression(reports_dir: str | Path, fig_dir: str | Path) -> list[Path]:
    """Paper 4's compression traces of one model (``p4_compress@<key>`` writes them to
    ``reports/p4/<key>``): ``p4_<key>_layer_sparsity.png`` (final per-layer sparsity, gates vs UMP;
    beside it, with structured gates, the share of each FFN / attention removed) and
    ``p4_<key>_thresholds.png`` (every gated layer's threshold over training, per run)."""
    rep, fig_dir = Path(reports_dir), Path(fig_dir)
    key = rep.name
    layers = _read_csv(rep / "layers.csv")
    removed = {r["layer"]: float(r["removed"]) for r in _read_csv(rep / "structured.csv")} \
        if (rep / "structured.csv").is_file() else {}
    traces: dict[str, list[dict[str, str]]] = {}
    for r in _read_csv(rep / "thresholds.csv"):
        traces.setdefault(r["variant"], []).append(r)

    def short(name: str) -> str:
        return name.split("encoder.layers.")[-1]

    panels = 2 if removed else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(6, 0.5 * len(layers)) + 3 * (panels - 1), 4.5),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 1][:panels]})
    ax = axes[0][0]
    x = range(len(layers))
    for i, (col, label) in enumerate((("gates_sparsity", "self-pinching gates"), ("ump_sparsity", "UMP"))):
        ax.bar([j + (i - 0.5) * 0.4 for j in x], [100 * float(r[col]) for r in layers], 0.4, label=label)
    ax.set_xticks(list(x), [short(r["layer"]) for r in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 115)
    ax.set_ylabel("zeroed weights (%)")
    ax.set_title(f"p4 {key}: final per-layer sparsity")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    if removed:
        ax = axes[0][1]
        ax.bar(range(len(removed)), [100 * v for v in removed.values()], color="tab:green")
        ax.set_xticks(range(len(removed)), [short(k) for k in removed], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("removed parameters (%)")
        ax.set_title("structured gates")
    written = [_save(fig, fig_dir / f"p4_{key}_layer_sparsity.png")]
    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4), squeeze=False)
    for ax, (variant, rows) in zip(axes[0], traces.items(), strict=True):
        for name in dict.fromkeys(r["layer"] for r in rows):
            pts = [(int(r["step"]), float(r["threshold_rel"])) for r in rows if r["layer"] == name]
            ax.plot(*zip(*pts, strict=True), label=short(name))
        ax.set_xlabel("step")
        ax.set_ylabel("|t_l| / rms_l")
        ax.set_title(f"p4 {key}: {variant} thresholds")
        ax.legend(fontsize=6, ncol=2)
    written.append(_save(fig, fig_dir / f"p4_{key}_thresholds.png"))
    return written


# ------------------------------------------------------------------------------------------- paper 2
# From the flat files only: measure@p2_<v> (reports/metrics/p2_<v>.json), compare@p2_<v>_vs_<base>
# (reports/metrics/p2_*_vs_*.json, marked by their "comparison" key) and p2_compress@<v>'s diagnostics
# (reports/p2/<v>/compress.json, rank_error.csv).

P2_SUMMARY = [  # (column, where: m = measure@ file, dense = vs-dense compare@, control = vs-control compare@,
    #            diag = compress.json, structure = compress.json's structure; key)
    ("params_m", "m", "params_m"), ("params_reduction_pct", "m", "params_reduction_pct"),
    ("decoder_layers", "structure", "decoder_layers"), ("embedding_rank", "structure", "embedding_rank"),
    ("wer_pct", "m", "wer_pct"), ("wer_ci_low_pct", "m", "wer_ci_low_pct"),
    ("wer_ci_high_pct", "m", "wer_ci_high_pct"), ("p_value_worse_vs_dense", "m", "paired_p_value_b_worse"),
    ("performance_kept_pct", "dense", "performance_kept_pct"),
    ("performance_kept_vs_control_pct", "control", "performance_kept_pct"),
    ("p_value_worse_vs_control", "control", "p_value_worse"),
    ("speedup_vs_reference", "m", "speedup_vs_reference"),
    ("real_decoder_layers", "m", "real_decoder_layers"), ("real_params_reduction_pct", "m", "real_params_reduction_pct"),
    ("real_speedup_decoder_token", "m", "real_speedup_decoder_token"), ("real_speedup_30s", "m", "real_speedup_30s"),
    ("real_speedup_30s_ci_low", "m", "real_speedup_30s_ci_low"),
    ("real_speedup_30s_ci_high", "m", "real_speedup_30s_ci_high"),
    ("dev_loss_init", "diag", "dev_loss_init"), ("dev_loss_before_training", "diag", "dev_loss_before_training"),
    ("dev_loss_after_training", "diag", "dev_loss_after_training"),
]


def _metrics_files(root: Path, prefix: str) -> dict[str, dict[str, Any]]:
    return {f.stem: json.loads(f.read_text()) for f in sorted((root / "reports/metrics").glob(f"{prefix}*.json"))}


def p2_measured(root: Path) -> list[str]:
    """Keys of paper 2's measure@ files (``reports/metrics/p2_*.json`` without a ``comparison`` key)."""
    return [k for k, m in _metrics_files(root, "p2_").items() if "comparison" not in m]


def p2_summary_rows(root: Path) -> list[dict[str, Any]]:
    """One row per measured p2 variant (its dense reference first): the ``P2_SUMMARY`` columns."""
    files = _metrics_files(root, "p2_")
    measured = {k: m for k, m in files.items() if "comparison" not in m}
    if not measured:
        return []
    ref = next(iter(measured.values())).get("reference")
    cmp = [m for m in files.values() if "comparison" in m]
    control = next((m["baseline"] for m in cmp if m["baseline"] in measured), None)
    rows = []
    for key, m in [(ref, _read(root / f"reports/metrics/{ref}.json") or {}), *measured.items()]:
        diag = _read(root / "reports/p2" / key.removeprefix("p2_") / "compress.json") or {}
        src = {"m": m, "diag": diag, "structure": diag.get("structure", {}),
               "dense": next((c for c in cmp if c["variant"] == key and c["baseline"] == ref), {}),
               "control": next((c for c in cmp if c["variant"] == key and c["baseline"] == control), {})}
        rows.append({"variant": key, **{col: src[where].get(k) for col, where, k in P2_SUMMARY}})
    return rows


def write_p2_summary(rows: list[dict[str, Any]], md_path: Path, csv_path: Path) -> None:
    from asrcompress.io import write_csv

    cols = ["variant", *[c for c, _, _ in P2_SUMMARY]]
    write_csv(csv_path, rows, cols)

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["# Paper 2 (BaldWhisper): every variant", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "Read from `reports/metrics/p2_<v>.json` (measure@), `reports/metrics/p2_<v>_vs_{dense,control}.json` "
              "(compare@) and `reports/p2/<v>/compress.json` (p2_compress@). Definitions:",
              "- performance kept = 100 x (100 - WER) / (100 - WER of the baseline), WER in % (kept word accuracy, "
              "`measure/compare.py`); `_vs_control` against `p2_control`, the dense model after the same recovery "
              "training, which separates the cost of compression from the gain of the extra training; — where no "
              "`comparisons` entry sets the two against each other;",
              "- speedup_vs_reference: batch-1 greedy decoding per test utterance, interleaved with the dense model;",
              "- real_*: the kept structure on the whisper-small architecture with random weights "
              "(`measure/real_scale.py`; lost layers projected by `measure.real_scale_layers`, recorded as "
              "`real_layer_rule`); 30 s = encoder window + a forced decode, the end-to-end figure, with its 95 % "
              "bootstrap interval over interleaved rounds;",
              "- dev_loss_*: teacher-forced cross-entropy per token on dev utterances of the start model, right "
              "after the surgery and after recovery training."]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")


def plot_p2_rank_error(root: Path, path: Path) -> Path | None:
    """Relative reconstruction error vs embedding rank, plain SVD vs activation-aware (weight space and
    activation-weighted), one panel per p2 variant that factorised the embedding."""
    sweeps: dict[str, list[dict[str, str]]] = {}
    chosen: dict[str, int] = {}
    for d in sorted((root / "reports/p2").glob("*/rank_error.csv")):
        with d.open() as f:
            sweeps[d.parent.name] = [r for r in csv.DictReader(f) if float(r["rank_fraction"]) < 1.0]  # full: exact
        rank = ((_read(d.parent / "compress.json") or {}).get("lowrank") or {}).get("rank")
        if rank is not None:
            chosen[d.parent.name] = int(rank)
    if not sweeps:
        return None
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], sweeps.items(), strict=True):
        ranks = [int(r["rank"]) for r in rows]
        for key, label, style in (("plain_weight_rel_err", "plain SVD, weight space", "C0--"),
                                  ("plain_act_rel_err", "plain SVD, activation-weighted", "C0-"),
                                  ("aware_weight_rel_err", "activation-aware, weight space", "C1--"),
                                  ("aware_act_rel_err", "activation-aware, activation-weighted", "C1-")):
            ax.plot(ranks, [float(r[key]) for r in rows], style, marker="o", ms=3, label=label)
        if name in chosen:
            ax.axvline(chosen[name], color="grey", lw=0.8, ls=":", label=f"chosen rank {chosen[name]}")
        ax.set_yscale("log")
        ax.set_xlabel("embedding rank")
        ax.set_ylabel("relative error")
        ax.set_title(f"p2_{name}: token embedding / output projection", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_p2_speedup(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per p2 variant: speed-ups (the smoke model at batch 1; the structure on whisper-small per decoder
    token and end to end on a 30 s window, with its 95 % interval) and parameter reductions."""
    variants = [r for r in rows[1:] if r.get("speedup_vs_reference") is not None]
    if not variants:
        return None
    names = [r["variant"].removeprefix("p2_") for r in variants]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    groups = (("speedup_vs_reference", "smoke model, CPU batch 1"),
              ("real_speedup_decoder_token", "whisper-small, decoder per token"),
              ("real_speedup_30s", "whisper-small, 30 s window (end to end)"))
    width = 0.8 / len(groups)
    for j, (key, label) in enumerate(groups):
        heights = [float("nan") if r.get(key) is None else r[key] for r in variants]  # not measured: no bar
        err = None
        if key == "real_speedup_30s":  # the end-to-end figure carries its 95 % interval over rounds
            err = [[max(h - (r.get(f"{key}_ci_low") or h), 0) for h, r in zip(heights, variants, strict=True)],
                   [max((r.get(f"{key}_ci_high") or h) - h, 0) for h, r in zip(heights, variants, strict=True)]]
        ax1.bar([i + j * width for i in range(len(names))], heights, width, yerr=err, capsize=3, label=label)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_xticks([i + width for i in range(len(names))], names)
    ax1.set_ylabel("speed-up vs dense (x)")
    ax1.legend(fontsize=7)
    sizes = (("params_reduction_pct", "smoke model params"), ("real_params_reduction_pct", "whisper-small params"))
    width2 = 0.8 / len(sizes)
    for j, (key, label) in enumerate(sizes):
        ax2.bar([i + j * width2 for i in range(len(names))],
                [float("nan") if r.get(key) is None else r[key] for r in variants], width2, label=label)
    ax2.set_xticks([i + width2 / 2 for i in range(len(names))], names)
    ax2.set_ylabel("parameter reduction (%)")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def write_p2(root: Path) -> list[Path | None]:
    """Paper 2's summary table (``reports/tables/p2_summary.md`` / ``.csv``) and figures
    (``reports/figures/p2_rank_error.png``, ``p2_speedup.png``); nothing when p2 has not been measured."""
    rows = p2_summary_rows(root)
    if not rows:
        return []
    md = root / "reports/tables/p2_summary.md"
    write_p2_summary(rows, md, root / "reports/tables/p2_summary.csv")
    return [md, plot_p2_rank_error(root, root / "reports/figures/p2_rank_error.png"),
            plot_p2_speedup(rows, root / "reports/figures/p2_speedup.png")]


def plot_leaderboard(rows: Sequence[Mapping[str, Any]], anchors: Sequence[Mapping[str, Any]],
                     wheres: Mapping[str, str], path_bytes: str | Path, path_speed: str | Path) -> list[Path]:
    """The leaderboard's Pareto figures: WER (one panel per measured corpus) against bytes on disk, and
    against the batch-1 speed-up over dense Whisper base timed interleaved. Star: dense; squares: the
    faster-whisper anchor (speed figure, real speech only; its bytes are not measured); filled: something
    physically removed or stored in fewer bits; hollow: zeros only; ringed: on the Pareto front (real
    speech); entries that collapsed on real speech (``pareto``) say so in their label on that panel. WERs above
    100 % sit on the top edge with their value in the label."""
    out = []
    for x, xlabel, path, anchor_ok in (("checkpoint_mib", "checkpoint on disk (MiB)", path_bytes, False),
                                       ("speedup", "speed-up vs dense, batch 1 (x)", path_speed, True)):
        fig, axes = plt.subplots(1, len(wheres), figsize=(6.2 * len(wheres), 4.6), squeeze=False)
        for ax, (where, corpus) in zip(axes[0], wheres.items(), strict=True):
            pts = [r for r in rows if r.get(x) is not None and r.get(f"wer_{where}") is not None]
            if anchor_ok and where == "real":
                pts += [a for a in anchors if a.get(x) is not None]
            top = min(max([r[f"wer_{where}"] for r in pts] + [10.0]), WER_AXIS_MAX) * 1.08 + 1
            dense_mib = next((r["checkpoint_mib"] for r in rows if r["source"] == "dense"), None)
            for r in pts:
                y, label, err = r[f"wer_{where}"], r["entry"], None
                if where == "real" and r.get("collapsed"):
                    label += " (collapsed)"
                if y > WER_AXIS_MAX:
                    label, y = f"{r['entry']} ({y:.0f} %)", top * 0.97
                elif r.get(f"wer_{where}_ci_low") is not None:
                    err = [[max(y - r[f"wer_{where}_ci_low"], 0)], [max(r[f"wer_{where}_ci_high"] - y, 0)]]
                marker = {"dense": "*", "anchor": "s"}.get(r["source"], "o")
                smaller = r["source"] == "anchor" or (dense_mib and r.get("checkpoint_mib", dense_mib) < dense_mib * 0.98)
                ax.errorbar([r[x]], [y], yerr=err, fmt=marker, ms=12 if marker == "*" else 7, capsize=2,
                            mfc=None if smaller or marker == "*" else "white",
                            color="black" if marker == "*" else None)
                if where == "real" and r.get("pareto_bytes" if x == "checkpoint_mib" else "pareto_speed"):
                    ax.plot([r[x]], [y], "o", ms=15, mfc="none", mec="red", mew=1.2)
                ax.annotate(label, (r[x], y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.set_ylim(0, top)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("WER (%)")
            ax.set_title(f"Whisper base on {corpus}" + (" (red ring: Pareto front)" if where == "real" else ""),
                         fontsize=10)
            ax.grid(alpha=0.3)
        out.append(_save(fig, path))
    return out
