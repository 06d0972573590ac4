"""p2_report: paper 2's summary table (what merging, low rank and both cost and save) and figures.

    python stages/p2_report.py <dense-metrics-json> <metrics-dir> <p2-dir> <figures-dir>

Reads ``<metrics-dir>/p2_<variant>.json`` (p2_measure) and ``<p2-dir>/<variant>/`` (p2_compress
diagnostics) for every ``p2.variants`` key; writes ``<p2-dir>/summary.csv`` and ``summary.md``,
``<figures-dir>/p2_rank_error.png`` (reconstruction error vs embedding rank, plain vs activation-aware)
and ``<figures-dir>/p2_speedup.png`` (speed-up and size reduction per variant).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from asrcompress.config import get, load_params
from asrcompress.io import log, read_json, setup_logging

COLUMNS = [  # (summary column, metrics key, format)
    ("params_m", "params_m", "{:.3f}"),
    ("params_reduction_pct", "params_reduction_pct", "{:.1f}"),
    ("decoder_layers", "decoder_layers", "{}"),
    ("embedding_rank", "embedding_rank", "{}"),
    ("embedding_compression_x", "embedding_compression_x", "{:.2f}"),
    ("wer_pct", "wer_pct", "{:.2f}"),
    ("wer_ci_low_pct", "wer_ci_low_pct", "{:.2f}"),
    ("wer_ci_high_pct", "wer_ci_high_pct", "{:.2f}"),
    ("performance_kept_pct", "performance_kept_pct", "{:.1f}"),
    ("performance_kept_vs_control_pct", "performance_kept_vs_control_pct", "{:.1f}"),
    ("paired_p_value_b_worse", "paired_p_value_b_worse", "{:.3f}"),
    ("latency_ms_p50", "latency_ms_p50", "{:.1f}"),
    ("speedup_vs_reference", "speedup_vs_reference", "{:.2f}"),
    ("real_params_reduction_pct", "real_params_reduction_pct", "{:.1f}"),
    ("real_speedup_decoder_token", "real_speedup_decoder_token", "{:.2f}"),
    ("real_speedup_30s", "real_speedup_30s", "{:.2f}"),
    ("real_speedup_30s_shared_encoder", "real_speedup_30s_shared_encoder", "{:.2f}"),
]
CONTROL = "control"  # optional variant: the dense model with the same recovery training, nothing compressed
DEV_LOSSES = ("dev_loss_init", "dev_loss_before_training", "dev_loss_after_training")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _fmt(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def summary_rows(dense: dict[str, Any], variants: dict[str, dict[str, Any]],
                 diags: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model (dense first): the COLUMNS plus the dev losses of p2_compress (start model, right
    after the surgery, after recovery training)."""
    first = next(iter(variants.values()), {})
    rows = [{"variant": "dense", **{c: dense.get(k) for c, k, _ in COLUMNS}, "performance_kept_pct": 100.0,
             "speedup_vs_reference": 1.0, "decoder_layers": first.get("decoder_layers_dense")}]
    for name, m in variants.items():
        d = diags.get(name, {})
        rows.append({"variant": name, **{c: m.get(k) for c, k, _ in COLUMNS},
                     **{k: d.get(k) for k in DEV_LOSSES}})
    control = variants.get(CONTROL, {}).get("wer_pct")
    for row in rows:  # against the dense model given the same recovery training (if that variant was run)
        if control is not None and control < 100.0 and row["wer_pct"] is not None:
            row["performance_kept_vs_control_pct"] = 100.0 * (100.0 - row["wer_pct"]) / (100.0 - control)
    return rows


def write_summary(rows: list[dict[str, Any]], dense: dict[str, Any], csv_path: Path, md_path: Path) -> None:
    """CSV (raw numbers) and Markdown (formatted, with the run environment and definitions)."""
    cols = ["variant", *[c for c, _, _ in COLUMNS], *DEV_LOSSES]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fmts = {c: fmt for c, _, fmt in COLUMNS} | dict.fromkeys(DEV_LOSSES, "{:.3f}") | {"variant": "{}"}
    lines = ["# Paper 2 (BaldWhisper): layer merging + activation-aware low-rank embedding", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(fmts[c], r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "Definitions:",
              "- performance kept = (1 - WER_c) / (1 - WER_dense), WER as fractions (normalised WER, test split); "
              "_vs_control: the same against variant `control` (the dense model after the same recovery "
              "training, nothing compressed), which separates the cost of compression from the gain of the "
              "extra training;",
              "- speedup_vs_reference: batch-1 greedy decoding per test utterance, dense and compressed timed "
              f"interleaved in one process, {dense.get('runtime_num_threads')} threads on "
              f"{dense.get('runtime_cpu_model')};",
              "- real_*: the same structure (merged layers, embedding rank as a fraction of d_model) applied to "
              "the real architecture with random weights (measure/real_scale.py); 30 s = encoder window + forced "
              "decode; _shared_encoder uses the dense encoder time for both (the encoder is unchanged); decoder_token = "
              "per generated token;",
              "- dev_loss_*: teacher-forced cross-entropy per token on dev utterances: of the start model (init), "
              "right after the surgery, after recovery training (reports/p2/<variant>/compress.json)."]
    md_path.write_text("\n".join(lines) + "\n")


def plot_rank_error(sweeps: dict[str, list[dict[str, str]]], chosen: dict[str, int], path: Path) -> None:
    """Relative reconstruction error vs rank: plain SVD vs activation-aware, weight space and
    activation-weighted, one panel per variant that factorised the embedding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(sweeps)), figsize=(5 * max(1, len(sweeps)), 3.8), squeeze=False)
    for ax, (name, all_rows) in zip(axes[0], sweeps.items(), strict=False):
        rows = [r for r in all_rows if float(r["rank_fraction"]) < 1.0]  # full rank is exact (error ~1e-15)
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _height(value: Any) -> float:
    """A bar's height; a figure not measured (e.g. no real-scale timing for the variant) draws no bar."""
    return float("nan") if value is None else float(value)


def plot_speedup(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars per variant: speed-ups (x) and size reductions (%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r for r in rows if r["variant"] != "dense"]
    names = [r["variant"] for r in variants]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    groups = (("speedup_vs_reference", "smoke model, CPU batch 1"),
              ("real_speedup_decoder_token", "real arch., decoder per token"),
              ("real_speedup_30s_shared_encoder", "real arch., 30 s window (encoder timed once)"))
    width = 0.8 / len(groups)
    for j, (key, label) in enumerate(groups):
        ax1.bar([i + j * width for i in range(len(names))], [_height(r.get(key)) for r in variants], width,
                label=label)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_xticks([i + width for i in range(len(names))], names)
    ax1.set_ylabel("speed-up vs dense (x)")
    ax1.legend(fontsize=7)
    sizes = (("params_reduction_pct", "smoke model params"), ("real_params_reduction_pct", "real arch. params"))
    width2 = 0.8 / len(sizes)
    for j, (key, label) in enumerate(sizes):
        ax2.bar([i + j * width2 for i in range(len(names))], [_height(r.get(key)) for r in variants], width2,
                label=label)
    ax2.set_xticks([i + width2 / 2 for i in range(len(names))], names)
    ax2.set_ylabel("parameter reduction (%)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(dense_metrics: str, metrics_dir: str, p2_dir: str, figures_dir: str) -> None:
    setup_logging()
    names = list(get(load_params(), "p2.variants", dict))
    dense = read_json(dense_metrics)
    variants = {n: read_json(Path(metrics_dir) / f"p2_{n}.json") for n in names}
    diags = {n: read_json(Path(p2_dir) / n / "compress.json") for n in names}
    rows = summary_rows(dense, variants, diags)
    write_summary(rows, dense, Path(p2_dir) / "summary.csv", Path(p2_dir) / "summary.md")
    sweeps = {n: s for n in names if (s := _read_csv(Path(p2_dir) / n / "rank_error.csv"))}
    chosen = {n: int(d["lowrank"]["rank"]) for n, d in diags.items() if "lowrank" in d}
    plot_rank_error(sweeps, chosen, Path(figures_dir) / "p2_rank_error.png")
    plot_speedup(rows, Path(figures_dir) / "p2_speedup.png")
    log.info("p2_report: %s -> %s/summary.md, %s/p2_rank_error.png, %s/p2_speedup.png", ", ".join(
        f"{metrics_dir}/p2_{n}.json" for n in names), p2_dir, figures_dir, figures_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
