"""p4_compress@<model>: paper 4 on one dense CTC model; compresses and saves, measures nothing.

Variants: ``control`` (with ``p4.dense_control``: the same fine-tuning budget, nothing pruned, the
fair reference since in smoke the dense model is still improving), ``gates`` (one-pass unstructured
self-pinching gates), ``structured`` (with ``p4.structured.enabled``: one gate per FFN neuron /
attention head, closed ones removed physically) and ``ump`` (the two-pass baseline: uniform magnitude
pruning at the sparsity the gates reached, then the same budget with masks re-applied). Each is scored
by ``measure@p4_<model>_<variant>`` and set against the control by ``compare@`` (params.yaml).

    python stages/p4_compress.py <model-key> <dense-dir> <corpus-dir> <out-dir> <reports-dir> <metrics-json>

Writes ``<out-dir>/<variant>`` (``save_compressed`` + processor); in ``<reports-dir>``: ``thresholds.csv``
(per-layer thresholds and sparsity over training), ``sparsity_trace.csv``, ``layers.csv`` (final
per-layer sparsity, gates vs UMP), ``structured.csv`` (share of each FFN / attention removed),
``<variant>_loss.csv``; the metrics JSON holds what only compression knows: wall times, the sparsity
of the gated weights, their CSR storage, the structured units removed.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from asrcompress.compress.checkpoint import save_compressed
from asrcompress.compress.masks import sparse_storage_bytes, sparsity_report
from asrcompress.compress.self_pinching import (
    GateConfig,
    check_p4_section,
    compress_with_gates,
    overall_sparsity_trace,
    prunable_weight_filter,
    ump_baseline,
)
from asrcompress.config import get, load_params
from asrcompress.io import load_split, log, setup_logging, write_csv, write_json
from asrcompress.models.ctc import load_pretrained
from asrcompress.train.collate import CTCCollator
from asrcompress.train.loop import TrainConfig, train


def main(key: str, dense_dir: str, corpus_dir: str, out_dir: str, reports_dir: str, metrics_path: str) -> None:
    setup_logging()
    cfg = load_params()
    check_p4_section(cfg)  # the whole section, before any work
    spec = get(cfg, f"p4.models.{key}", dict)
    tcfg = TrainConfig.from_params(get(cfg, "p4.compress_train", dict), get(cfg, "seed", int),
                                   name="p4.compress_train")
    gate_params = dict(get(cfg, "p4.gates", dict))
    if spec.get("target_sparsity") is not None:  # per-model target (the paper: 65 % / 60 %)
        gate_params["target_sparsity"] = float(spec["target_sparsity"])
    gcfg = GateConfig.from_params(gate_params, weight_lr=tcfg.lr)
    structured, control = get(cfg, "p4.structured.enabled", bool), get(cfg, "p4.dense_control", bool)
    scfg = replace(gcfg, structured=True, **get(cfg, "p4.structured.gates", dict)) if structured else None
    torch.set_num_threads(tcfg.num_threads)
    dense, processor = load_pretrained(dense_dir, attn_implementation=get(cfg, "p4.attn_implementation", str))
    rows, collate, rep = load_split(corpus_dir, "train"), CTCCollator(processor), Path(reports_dir)
    fp = {"model": key, "dense_sha256": hashlib.sha256(Path(dense_dir, "model.safetensors").read_bytes())
          .hexdigest()[:16]}  # a retrained dense model never resumes an old compression checkpoint
    m: dict[str, Any] = {"model": key, "compress_steps": tcfg.max_steps}

    def save(name: str, model: torch.nn.Module, seconds: float, method_params: dict) -> None:
        keep = prunable_weight_filter(model)
        ckpt = save_compressed(model, Path(out_dir) / name, f"p4_{name}", method_params,
                               extra={"compress_seconds": seconds}, processor=processor)
        m[f"{name}_compress_seconds"] = round(seconds, 2)
        m[f"{name}_gated_sparsity_pct"] = 100.0 * sparsity_report(model, keep)["sparsity"]
        m[f"{name}_csr_weights_bytes"] = sum(sparse_storage_bytes(p)["csr_bytes"] if keep(n, p)
                                             else p.numel() * p.element_size() for n, p in model.named_parameters())
        log.info("p4_compress@%s: %s -> %s, gated sparsity %.1f%%, %.0f s", key, name, ckpt,
                 m[f"{name}_gated_sparsity_pct"], seconds)

    def run(name: str, fp_extra: dict, fn: Any) -> tuple[torch.nn.Module, Any]:
        """``fn(model, checkpoint dir, loss log, fingerprint, desc)`` on a fresh copy of the dense model."""
        model = copy.deepcopy(dense)
        return model, fn(model, f"checkpoints/p4_{name}/{key}", rep / f"{name}_loss.csv", {**fp, **fp_extra},
                         f"p4_{name}@{key}")

    if control:  # the same fine-tuning budget, nothing pruned (its time: the plain fine-tuning reference)
        t0 = time.perf_counter()
        model, _ = run("control", {"control": True},
                       lambda mdl, ck, log_csv, f, d: train(mdl, rows, collate, tcfg, ck, log_csv, f, desc=d))
        save("control", model, time.perf_counter() - t0, {"steps": tcfg.max_steps})
    gated, (gates, gsum) = run("gates", {"gates": asdict(gcfg)}, lambda mdl, ck, log_csv, f, d: compress_with_gates(
        mdl, rows, collate, tcfg, gcfg, ck, log_csv, f, desc=d))
    save("gates", gated, gsum["compress_seconds"], asdict(gcfg))
    m["gates_soft_sparsity_pct"] = 100.0 * gsum["soft_sparsity"]
    traces = {"gates": gates.trace}
    if scfg is not None:
        pruned, (sgates, ssum) = run("structured", {"gates": asdict(scfg)}, lambda mdl, ck, log_csv, f, d:
                                     compress_with_gates(mdl, rows, collate, tcfg, scfg, ck, log_csv, f, desc=d))
        save("structured", pruned, ssum["compress_seconds"], asdict(scfg))
        traces["structured"] = sgates.trace
        m.update(structured_soft_sparsity_pct=100.0 * ssum["soft_sparsity"],
                 structured_gated_removed_pct=100.0 * ssum["hard_sparsity"],
                 structured_ffn_neurons_removed=sum(len(v) for k, v in ssum["removed"].items() if "ffn" in k),
                 structured_heads_removed=sum(len(v) for k, v in ssum["removed"].items() if "heads" in k))
        write_csv(rep / "structured.csv", [{"layer": r["layer"], "removed": r["hard_sparsity"]} for r in ssum["layers"]])
    target = m["gates_gated_sparsity_pct"] / 100.0  # UMP at the sparsity the gates reached, the same budget
    ump, usum = run("ump", {"ump_sparsity": round(target, 6)}, lambda mdl, ck, log_csv, f, d: ump_baseline(
        mdl, target, rows, collate, tcfg, ck, log_csv, f, desc=d))
    save("ump", ump, usum["compress_seconds"], {"sparsity": target, "steps": tcfg.max_steps})
    m["ump_prune_seconds"] = round(usum["prune_seconds"], 3)
    m["gates_vs_ump_time_ratio"] = m["gates_compress_seconds"] / m["ump_compress_seconds"]
    m["compression_time_reduction_pct"] = 100.0 * (1 - m["gates_vs_ump_time_ratio"])

    ump_layers = sparsity_report(ump, prunable_weight_filter(ump))["per_module"]
    write_csv(rep / "layers.csv", [{"layer": r["layer"], "gates_sparsity": round(r["hard_sparsity"], 6),
                                    "ump_sparsity": round(ump_layers[r["layer"]]["zero"]
                                                          / ump_layers[r["layer"]]["total"], 6)}
                                   for r in gsum["layers"]])
    write_csv(rep / "thresholds.csv", [{"variant": v, **r} for v, trace in traces.items() for r in trace])
    write_csv(rep / "sparsity_trace.csv", overall_sparsity_trace(traces))
    write_json(metrics_path, m)
    log.info("p4_compress@%s: %s -> %s; gates %.1f%% of the gated weights, %.0f s vs UMP %.0f s", key, dense_dir,
             out_dir, m["gates_gated_sparsity_pct"], m["gates_compress_seconds"], m["ump_compress_seconds"])


if __name__ == "__main__":
    main(*sys.argv[1:])
