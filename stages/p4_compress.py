"""p4_compress@<model>: paper 4 on one dense CTC model — one-pass self-pinching gates (unstructured),
their structured variant (neurons/heads removed physically) and the two-pass UMP baseline (uniform
magnitude pruning at the sparsity the gates reached, then the same fine-tuning budget with masks
re-applied after each step). With ``p4.dense_control`` the dense model is also fine-tuned for the same
budget without pruning ("control"): the paper compares with a fully fine-tuned dense model, and in
smoke the dense model is still improving, so "vs dense" alone would credit compression with the
extra training.

Each variant is measured on the test split: normalised WER with a bootstrap CI, matched-pairs
p-values (one-sided, H1 = the variant makes more errors) vs dense and vs control, (non-zero)
parameters, sparsity of the gated weights, checkpoint bytes and the compression wall time.

    python stages/p4_compress.py <model-key> <dense-dir> <corpus-dir> <out-dir> <reports-dir> \\
        <figures-dir> <metrics-json>

Writes ``<out-dir>/{control,gates,structured,ump}`` (``save_compressed`` + processor); in
``<reports-dir>``: ``hyps.jsonl`` (raw hypotheses of every variant), ``thresholds.csv`` (per-layer
thresholds and sparsity over training), ``sparsity_trace.csv`` (overall sparsity over training),
``layers.csv`` (final per-layer sparsity), ``{control,gates,structured,ump}_loss.csv``; the figures
``p4_<key>_layer_sparsity.png`` and ``p4_<key>_thresholds.png``; the flat metrics JSON.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrcompress.compress.checkpoint import save_compressed, weights_bytes
from asrcompress.compress.masks import sparse_storage_bytes, sparsity_report
from asrcompress.compress.self_pinching import (
    GateConfig,
    compress_with_gates,
    overall_sparsity_trace,
    prunable_weight_filter,
    ump_baseline,
)
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json, write_jsonl
from asrcompress.measure.params import count_params
from asrcompress.measure.wer import matched_pairs_test, per_utterance_errors, score
from asrcompress.models.ctc import load_pretrained, transcribe_ctc
from asrcompress.text.normalize import get_normalizer
from asrcompress.train.collate import CTCCollator
from asrcompress.train.loop import TrainConfig, train


class Bench:
    """Decodes and scores models on the test split and collects flat metrics, hypotheses and
    per-utterance errors per variant (``dense`` first)."""

    def __init__(self, processor: Any, rows: list[dict], normalizer: str, n_resamples: int, seed: int,
                 batch_size: int, out_dir: Path) -> None:
        self.processor, self.rows, self.normalizer = processor, rows, normalizer
        self.n_resamples, self.seed, self.batch_size, self.out_dir = n_resamples, seed, batch_size, out_dir
        self.metrics: dict[str, Any] = {"test_utterances": len(rows)}
        self.hyps: dict[str, list[str]] = {}
        self.errors: dict[str, np.ndarray] = {}

    def _score(self, name: str, model: torch.nn.Module) -> dict[str, Any]:
        hyps = transcribe_ctc(model, self.processor, self.rows, self.batch_size)
        norm = get_normalizer(self.normalizer)
        refs = [r["text"] for r in self.rows]
        self.hyps[name] = hyps
        self.errors[name] = per_utterance_errors([norm(r) for r in refs], [norm(h) for h in hyps])["errors"]
        res = score(refs, hyps, self.normalizer, self.n_resamples, self.seed)
        self.metrics.update({f"{name}_{k}": res[k] for k in ("wer_pct", "wer_ci_low_pct", "wer_ci_high_pct",
                                                             "cer_pct")})
        return res

    def dense(self, model: torch.nn.Module) -> None:
        self._score("dense", model)
        self.metrics["dense_params"] = count_params(model)["params"]

    def variant(self, name: str, model: torch.nn.Module, seconds: float, method_params: dict) -> None:
        """Save ``model`` (``save_compressed``), score it, test it against dense, record its size."""
        ckpt = save_compressed(model, self.out_dir / name, f"p4_{name}", method_params,
                               extra={"compress_seconds": seconds})
        self.processor.save_pretrained(ckpt)
        res = self._score(name, model)
        m = self.metrics
        test = matched_pairs_test(self.errors["dense"], self.errors[name])
        keep = prunable_weight_filter(model)
        counts = count_params(model)
        m.update({
            f"{name}_delta_wer_pct": res["wer_pct"] - m["dense_wer_pct"],
            f"{name}_p_value_worse": test["p_value_b_worse"],
            f"{name}_p_value_two_sided": test["p_value_two_sided"],
            f"{name}_compress_seconds": round(seconds, 2),
            f"{name}_params": counts["params"],
            f"{name}_nonzero_params": counts["nonzero_params"],
            f"{name}_nonzero_reduction_pct": 100.0 * (1 - counts["nonzero_params"] / m["dense_params"]),
            f"{name}_model_sparsity_pct": counts["sparsity_pct"],
            f"{name}_sparsity_pct": 100.0 * sparsity_report(model, keep)["sparsity"],
            f"{name}_checkpoint_bytes": weights_bytes(ckpt),
            f"{name}_csr_weights_bytes": sum(sparse_storage_bytes(p)["csr_bytes"] if keep(n, p)
                                             else p.numel() * p.element_size()
                                             for n, p in model.named_parameters()),
        })
        log.info("p4_compress: %s -> %s, WER %.2f%% (dense %.2f%%, p=%.3g), gated sparsity %.1f%%, "
                 "%d params, %.0f s", name, ckpt, res["wer_pct"], m["dense_wer_pct"], test["p_value_b_worse"],
                 m[f"{name}_sparsity_pct"], counts["params"], seconds)

    def versus_control(self) -> None:
        """``<variant>_p_value``: one-sided matched-pairs p-value that the variant is worse than the
        reference — the equally fine-tuned control if there is one, else the dense model."""
        has_control = "control" in self.errors
        self.metrics["p_value_reference_is_control"] = int(has_control)
        for name in [n for n in self.errors if n not in ("dense", "control")]:
            if has_control:
                test = matched_pairs_test(self.errors["control"], self.errors[name])
                self.metrics[f"{name}_delta_wer_vs_control_pct"] = (self.metrics[f"{name}_wer_pct"]
                                                                    - self.metrics["control_wer_pct"])
                self.metrics[f"{name}_p_value_worse_vs_control"] = test["p_value_b_worse"]
            self.metrics[f"{name}_p_value"] = self.metrics[f"{name}_p_value_worse"
                                                           + ("_vs_control" if has_control else "")]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(key: str, traces: dict[str, list[dict]], layers: list[dict], removed: dict[str, float],
         fig_dir: Path) -> None:
    """Per-layer final sparsity (gates vs UMP; structured: share of each FFN / attention removed) and
    the thresholds over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def short(name: str) -> str:
        return name.split("encoder.layers.")[-1]

    fig_dir.mkdir(parents=True, exist_ok=True)
    panels = 2 if removed else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(6, 0.5 * len(layers)) + 3 * (panels - 1), 4.5),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 1][:panels]})
    ax = axes[0][0]
    x = range(len(layers))
    for i, (col, label) in enumerate((("gates_sparsity", "self-pinching gates"), ("ump_sparsity", "UMP"))):
        ax.bar([j + (i - 0.5) * 0.4 for j in x], [100 * r[col] for r in layers], 0.4, label=label)
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
    fig.tight_layout()
    fig.savefig(fig_dir / f"p4_{key}_layer_sparsity.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4), squeeze=False)
    for ax, (variant, rows) in zip(axes[0], traces.items(), strict=True):
        for name in dict.fromkeys(r["layer"] for r in rows):
            pts = [(r["step"], r["threshold_rel"]) for r in rows if r["layer"] == name]
            ax.plot(*zip(*pts, strict=True), label=short(name))
        ax.set_xlabel("step")
        ax.set_ylabel("|t_l| / rms_l")
        ax.set_title(f"p4 {key}: {variant} thresholds")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(fig_dir / f"p4_{key}_thresholds.png", dpi=120)
    plt.close(fig)


def main(key: str, dense_dir: str, corpus_dir: str, out_dir: str, reports_dir: str, fig_dir: str,
         metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    seed = get(cfg, "seed", int)
    spec = get(cfg, f"p4.models.{key}", dict)
    tcfg = TrainConfig.from_params(get(cfg, "p4.compress_train", dict), seed)
    gate_params = dict(get(cfg, "p4.gates", dict))
    if spec.get("target_sparsity") is not None:  # per-model target (the paper: 65 % / 60 %)
        gate_params["target_sparsity"] = float(spec["target_sparsity"])
    gcfg = GateConfig.from_params(gate_params, weight_lr=tcfg.lr)
    torch.set_num_threads(tcfg.num_threads)
    dense, processor = load_pretrained(dense_dir, attn_implementation=get(cfg, "p4.attn_implementation", str))
    train_rows, test_rows = load_split(corpus_dir, "train"), load_split(corpus_dir, "test")
    collate = CTCCollator(processor)
    rep = Path(reports_dir)
    fp = {"model": key, "dense_sha256": hashlib.sha256(Path(dense_dir, "model.safetensors").read_bytes())
          .hexdigest()[:16]}  # a retrained dense model never resumes an old compression checkpoint
    bench = Bench(processor, test_rows, get(cfg, f"corpora.{get(spec, 'corpus', str)}.normalizer", str),
                  get(cfg, "p4.bootstrap_resamples", int), derive_seed(seed, "bootstrap", "p4", key),
                  get(cfg, "p4.eval_batch_size", int), Path(out_dir))
    bench.dense(dense)
    bench.metrics["compress_steps"] = tcfg.max_steps

    # 0) control: the same fine-tuning budget, nothing pruned (its time: the plain fine-tuning reference)
    if get(cfg, "p4.dense_control", bool):
        control, t0 = copy.deepcopy(dense), time.perf_counter()
        train(control, train_rows, collate, tcfg, f"checkpoints/p4_control/{key}", rep / "control_loss.csv",
              {**fp, "control": True}, desc=f"p4_control@{key}")
        bench.variant("control", control, time.perf_counter() - t0, {"steps": tcfg.max_steps})

    # 1) one-pass unstructured gates
    gated = copy.deepcopy(dense)
    gates, gsum = compress_with_gates(gated, train_rows, collate, tcfg, gcfg, f"checkpoints/p4_gates/{key}",
                                      rep / "gates_loss.csv", {**fp, "gates": asdict(gcfg)},
                                      desc=f"p4_gates@{key}")
    bench.variant("gates", gated, gsum["compress_seconds"], asdict(gcfg))
    bench.metrics["gates_soft_sparsity_pct"] = 100.0 * gsum["soft_sparsity"]
    traces = {"gates": gates.trace}

    # 2) structured gates: closed neurons/heads removed physically
    removed: dict[str, float] = {}
    if get(cfg, "p4.structured.enabled", bool):
        scfg = replace(gcfg, structured=True, **get(cfg, "p4.structured.gates", dict))
        pruned = copy.deepcopy(dense)
        sgates, ssum = compress_with_gates(pruned, train_rows, collate, tcfg, scfg,
                                           f"checkpoints/p4_structured/{key}", rep / "structured_loss.csv",
                                           {**fp, "gates": asdict(scfg)}, desc=f"p4_structured@{key}")
        bench.variant("structured", pruned, ssum["compress_seconds"], asdict(scfg))
        traces["structured"] = sgates.trace
        removed = {r["layer"]: r["hard_sparsity"] for r in ssum["layers"]}
        m = bench.metrics
        m["structured_soft_sparsity_pct"] = 100.0 * ssum["soft_sparsity"]
        m["structured_gated_removed_pct"] = 100.0 * ssum["hard_sparsity"]
        m["structured_removed_params"] = m["dense_params"] - m["structured_params"]
        m["structured_params_reduction_pct"] = 100.0 * m["structured_removed_params"] / m["dense_params"]
        m["structured_ffn_neurons_removed"] = sum(len(v) for k, v in ssum["removed"].items() if "ffn" in k)
        m["structured_heads_removed"] = sum(len(v) for k, v in ssum["removed"].items() if "heads" in k)

    # 3) UMP at the sparsity the gates reached, the same fine-tuning budget
    target = bench.metrics["gates_sparsity_pct"] / 100.0
    ump = copy.deepcopy(dense)
    usum = ump_baseline(ump, target, train_rows, collate, tcfg, f"checkpoints/p4_ump/{key}",
                        rep / "ump_loss.csv", {**fp, "ump_sparsity": round(target, 6)}, desc=f"p4_ump@{key}")
    bench.variant("ump", ump, usum["compress_seconds"], {"sparsity": target, "steps": tcfg.max_steps})
    m = bench.metrics
    m["ump_prune_seconds"] = round(usum["prune_seconds"], 3)
    m["gates_vs_ump_time_ratio"] = m["gates_compress_seconds"] / m["ump_compress_seconds"]
    m["compression_time_reduction_pct"] = 100.0 * (1 - m["gates_vs_ump_time_ratio"])
    bench.versus_control()

    # reports
    ump_layers = sparsity_report(ump, prunable_weight_filter(ump))["per_module"]
    layers = [{"layer": r["layer"], "gates_sparsity": round(r["hard_sparsity"], 6),
               "ump_sparsity": round(ump_layers[r["layer"]]["zero"] / ump_layers[r["layer"]]["total"], 6)}
              for r in gsum["layers"]]
    write_csv(rep / "layers.csv", layers)
    write_csv(rep / "thresholds.csv", [{"variant": v, **r} for v, rows in traces.items() for r in rows])
    write_csv(rep / "sparsity_trace.csv", overall_sparsity_trace(traces))
    hyp_rows = ({"id": r["id"], "ref": r["text"], **{v: h[i] for v, h in bench.hyps.items()}}
                for i, r in enumerate(test_rows))
    write_jsonl(rep / "hyps.jsonl", hyp_rows)
    plot(key, traces, layers, removed, Path(fig_dir))
    write_json(metrics_path, m)
    log.info("p4_compress@%s: %s -> %s; WER dense %.2f%%, gates %.2f%% at %.1f%% sparsity (p=%.3g), "
             "UMP %.2f%%",
             key, dense_dir, metrics_path, m["dense_wer_pct"], m["gates_wer_pct"], m["gates_sparsity_pct"],
             m["gates_p_value"], m["ump_wer_pct"])


if __name__ == "__main__":
    main(*sys.argv[1:])
