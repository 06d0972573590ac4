"""p4_compress@<model>: paper 4 on one dense CTC model — one-pass self-pinching gates (unstructured),
their structured variant (neurons/heads removed physically) and the two-pass UMP baseline (uniform
magnitude pruning at the sparsity the gates reached, then the same fine-tuning budget with masks
re-applied after each step). Each is measured on the test split against the dense model: normalised
WER with a bootstrap CI, matched-pairs p-value vs dense, (non-zero) parameters, checkpoint bytes and
the compression wall time. With ``p4.dense_control`` the dense model is also fine-tuned for the same
budget without pruning ("control"), and every compressed variant is tested against it too (in smoke
the dense model is still improving, so "vs dense" mixes compression with extra training).

    python stages/p4_compress.py <model-key> <dense-dir> <corpus-dir> <out-dir> <reports-dir> \
        <figures-dir> <metrics-json>

Writes ``<out-dir>/{control,gates,structured,ump}`` (``save_compressed`` + processor); in ``<reports-dir>``:
``hyps.jsonl`` (raw hypotheses of every variant), ``thresholds.csv`` (per-layer thresholds and sparsity
over training), ``sparsity_trace.csv`` (overall sparsity over training), ``layers.csv`` (final
per-layer sparsity), ``{control,gates,structured,ump}_loss.csv``; the figures ``p4_<key>_layer_sparsity.png`` and
``p4_<key>_thresholds.png``; the flat metrics JSON.
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

import torch

from asrcompress.compress.checkpoint import save_compressed, weights_bytes
from asrcompress.compress.masks import sparse_storage_bytes, sparsity_report
from asrcompress.compress.self_pinching import (
    GateConfig,
    compress_with_gates,
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


def evaluate(model: torch.nn.Module, processor: Any, rows: list[dict], normalizer: str, n_resamples: int,
             seed: int, batch_size: int = 32) -> tuple[dict[str, Any], list[str], Any]:
    """Greedy-decode ``rows``; (score() metrics, raw hypotheses, per-utterance normalised word errors)."""
    hyps = transcribe_ctc(model, processor, rows, batch_size)
    refs = [r["text"] for r in rows]
    norm = get_normalizer(normalizer)
    errors = per_utterance_errors([norm(r) for r in refs], [norm(h) for h in hyps])["errors"]
    return score(refs, hyps, normalizer, n_resamples, seed), hyps, errors


def size_metrics(model: torch.nn.Module, ckpt: Path, prefix: str) -> dict[str, Any]:
    """Parameters, non-zero parameters, sparsity of the gated weights, checkpoint and CSR bytes."""
    keep = prunable_weight_filter(model)
    counts = count_params(model)
    csr = sum(sparse_storage_bytes(p)["csr_bytes"] if keep(n, p) else p.numel() * p.element_size()
              for n, p in model.named_parameters())
    return {f"{prefix}_params": counts["params"], f"{prefix}_nonzero_params": counts["nonzero_params"],
            f"{prefix}_model_sparsity_pct": counts["sparsity_pct"],
            f"{prefix}_sparsity_pct": 100.0 * sparsity_report(model, keep)["sparsity"],
            f"{prefix}_checkpoint_bytes": weights_bytes(ckpt), f"{prefix}_csr_weights_bytes": csr}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def overall_trace(traces: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per step: target and parameter-weighted soft/hard sparsity of each gate variant."""
    by_step: dict[int, dict[str, Any]] = {}
    for variant, rows in traces.items():
        steps: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            steps.setdefault(r["step"], []).append(r)
        for step, rs in steps.items():
            n = sum(r["params"] for r in rs)
            rec = by_step.setdefault(step, {"step": step})
            rec[f"{variant}_target"] = rs[0]["target"]
            for k in ("soft_sparsity", "hard_sparsity"):
                rec[f"{variant}_{k}"] = round(sum(r[k] * r["params"] for r in rs) / n, 6)
    return [by_step[s] for s in sorted(by_step)]


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
    corpus = get(cfg, f"p4.models.{key}.corpus", str)
    normalizer = get(cfg, f"corpora.{corpus}.normalizer", str)
    n_boot = get(cfg, "p4.bootstrap_resamples", int)
    tcfg = TrainConfig.from_params(get(cfg, "p4.compress_train", dict), seed)
    gate_params = dict(get(cfg, "p4.gates", dict))
    model_target = get(cfg, f"p4.models.{key}", dict).get("target_sparsity")  # per-model override
    if model_target is not None:
        gate_params["target_sparsity"] = float(model_target)
    gcfg = GateConfig.from_params(gate_params, weight_lr=tcfg.lr)
    torch.set_num_threads(tcfg.num_threads)
    dense, processor = load_pretrained(dense_dir, attn_implementation=get(cfg, "p4.attn_implementation", str))
    train_rows, test_rows = load_split(corpus_dir, "train"), load_split(corpus_dir, "test")
    collate = CTCCollator(processor)
    out, rep = Path(out_dir), Path(reports_dir)
    dense_sha = hashlib.sha256(Path(dense_dir, "model.safetensors").read_bytes()).hexdigest()[:16]
    fp = {"model": key, "dense_sha256": dense_sha}
    boot_seed = derive_seed(seed, "bootstrap", "p4", key)
    eval_bs = get(cfg, "p4.eval_batch_size", int)

    base, dense_hyps, dense_err = evaluate(dense, processor, test_rows, normalizer, n_boot, boot_seed, eval_bs)
    dense_counts = count_params(dense)
    metrics: dict[str, Any] = {"dense_wer_pct": base["wer_pct"], "dense_wer_ci_low_pct": base["wer_ci_low_pct"],
                               "dense_wer_ci_high_pct": base["wer_ci_high_pct"], "dense_cer_pct": base["cer_pct"],
                               "dense_params": dense_counts["params"], "test_utterances": len(test_rows),
                               "compress_steps": tcfg.max_steps}
    hyps: dict[str, list[str]] = {"dense": dense_hyps}
    errors: dict[str, Any] = {"dense": dense_err}
    traces: dict[str, list[dict]] = {}

    def measure(name: str, model: torch.nn.Module, summary: dict[str, Any], method_params: dict) -> None:
        ckpt = save_compressed(model, out / name, f"p4_{name}", method_params,
                               extra={"compress_seconds": summary["compress_seconds"]})
        processor.save_pretrained(ckpt)
        res, hyps[name], err = evaluate(model, processor, test_rows, normalizer, n_boot, boot_seed, eval_bs)
        errors[name] = err
        test = matched_pairs_test(dense_err, err)
        metrics.update({f"{name}_wer_pct": res["wer_pct"], f"{name}_wer_ci_low_pct": res["wer_ci_low_pct"],
                        f"{name}_wer_ci_high_pct": res["wer_ci_high_pct"], f"{name}_cer_pct": res["cer_pct"],
                        f"{name}_delta_wer_pct": res["wer_pct"] - base["wer_pct"],
                        f"{name}_p_value_worse": test["p_value_b_worse"],
                        f"{name}_p_value_two_sided": test["p_value_two_sided"],
                        f"{name}_compress_seconds": round(summary["compress_seconds"], 2),
                        **size_metrics(model, ckpt, name)})
        log.info("p4_compress@%s: %s -> %s, WER %.2f%% (dense %.2f%%, p=%.3g), sparsity %.1f%%, %d params, %.0f s",
                 key, name, ckpt, res["wer_pct"], base["wer_pct"], test["p_value_b_worse"],
                 metrics[f"{name}_sparsity_pct"], metrics[f"{name}_params"], summary["compress_seconds"])

    # 0) control: the dense model fine-tuned with the same budget, nothing pruned ("compress_seconds" = the
    #    plain fine-tuning time, the per-step reference for the gates' overhead)
    if get(cfg, "p4.dense_control", bool):
        control = copy.deepcopy(dense)
        t0 = time.perf_counter()
        csum = train(control, train_rows, collate, tcfg, f"checkpoints/p4_control/{key}", rep / "control_loss.csv",
                     {**fp, "control": True}, desc=f"p4_control@{key}")
        measure("control", control, {**csum, "compress_seconds": time.perf_counter() - t0},
                {"steps": tcfg.max_steps})

    # 1) one-pass unstructured gates
    gated = copy.deepcopy(dense)
    gates, summary = compress_with_gates(gated, train_rows, collate, tcfg, gcfg, f"checkpoints/p4_gates/{key}",
                                         rep / "gates_loss.csv", {**fp, "gates": asdict(gcfg)},
                                         desc=f"p4_gates@{key}")
    traces["gates"] = gates.trace
    measure("gates", gated, summary, asdict(gcfg))
    metrics["gates_soft_sparsity_pct"] = 100.0 * summary["soft_sparsity"]
    gate_layers = {r["layer"]: r["hard_sparsity"] for r in summary["layers"]}

    # 2) structured gates (neurons/heads removed physically)
    removed: dict[str, float] = {}
    if get(cfg, "p4.structured.enabled", bool):
        scfg = replace(gcfg, structured=True, **get(cfg, "p4.structured.gates", dict))
        pruned = copy.deepcopy(dense)
        sgates, ssum = compress_with_gates(pruned, train_rows, collate, tcfg, scfg,
                                           f"checkpoints/p4_structured/{key}", rep / "structured_loss.csv",
                                           {**fp, "gates": asdict(scfg)}, desc=f"p4_structured@{key}")
        traces["structured"] = sgates.trace
        removed = {r["layer"]: r["hard_sparsity"] for r in ssum["layers"]}
        measure("structured", pruned, ssum, asdict(scfg))
        metrics["structured_soft_sparsity_pct"] = 100.0 * ssum["soft_sparsity"]
        metrics["structured_gated_removed_pct"] = 100.0 * ssum["hard_sparsity"]
        metrics["structured_removed_params"] = dense_counts["params"] - metrics["structured_params"]
        metrics["structured_ffn_neurons_removed"] = sum(len(v) for k, v in ssum["removed"].items() if "ffn" in k)
        metrics["structured_heads_removed"] = sum(len(v) for k, v in ssum["removed"].items() if "heads" in k)
        metrics["structured_params_reduction_pct"] = 100.0 * metrics["structured_removed_params"] / dense_counts["params"]

    # 3) UMP at the sparsity the gates reached, same fine-tuning budget
    target = metrics["gates_sparsity_pct"] / 100.0
    ump = copy.deepcopy(dense)
    usum = ump_baseline(ump, target, train_rows, collate, tcfg, f"checkpoints/p4_ump/{key}",
                        rep / "ump_loss.csv", {**fp, "ump_sparsity": round(target, 6)}, desc=f"p4_ump@{key}")
    measure("ump", ump, usum, {"sparsity": target, "steps": tcfg.max_steps})
    metrics["ump_prune_seconds"] = round(usum["prune_seconds"], 3)
    metrics["gates_vs_ump_time_ratio"] = metrics["gates_compress_seconds"] / metrics["ump_compress_seconds"]

    if "control" in errors:  # compressed vs the equally fine-tuned dense model
        for name in [n for n in errors if n not in ("dense", "control")]:
            test = matched_pairs_test(errors["control"], errors[name])
            metrics[f"{name}_delta_wer_vs_control_pct"] = metrics[f"{name}_wer_pct"] - metrics["control_wer_pct"]
            metrics[f"{name}_p_value_worse_vs_control"] = test["p_value_b_worse"]

    # reports
    keep = prunable_weight_filter(ump)
    ump_layers = {n: r["zero"] / r["total"] for n, r in sparsity_report(ump, keep)["per_module"].items()}
    layers = [{"layer": name, "gates_sparsity": round(s, 6), "ump_sparsity": round(ump_layers[name], 6)}
              for name, s in gate_layers.items()]
    write_csv(rep / "layers.csv", layers)
    write_csv(rep / "thresholds.csv", [{"variant": v, **r} for v, rows in traces.items() for r in rows])
    write_csv(rep / "sparsity_trace.csv", overall_trace(traces))
    write_jsonl(rep / "hyps.jsonl", ({"id": r["id"], "ref": r["text"], **{v: h[i] for v, h in hyps.items()}}
                                           for i, r in enumerate(test_rows)))
    plot(key, traces, layers, removed, Path(fig_dir))
    write_json(metrics_path, metrics)


if __name__ == "__main__":
    main(*sys.argv[1:])
