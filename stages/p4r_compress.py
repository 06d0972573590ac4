"""p4r_compress@<budget>: paper 4's structured self-pinching gates on OpenAI's Whisper base (pipelines/p4_real).

    python stages/p4r_compress.py <budget> <init-dir> <corpus-dir> <out-dir> <reports-dir>

One gate per FFN neuron and per attention head (self- and cross-attention) of every encoder and decoder layer
(``compress/self_pinching.py``), trained with the seq2seq cross-entropy on the corpus's train split inside the
budget's encoder window, the sparsity pressure steered to ``p4_real.budgets.<budget>.budget`` of the block
linears' parameters; closed units are removed physically and the model saved with ``save_compressed`` (and the
processor) to ``out-dir``. ``reports-dir`` gets ``loss.csv`` (training), ``thresholds.csv`` (per-unit threshold
and sparsity over training) and ``compress.json`` (budget, parameters before / after, what was removed per
layer, the teacher-forced dev loss before and after). Measures nothing else.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import WhisperProcessor

from asrcompress.compress import baldwhisper as bw
from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.self_pinching import (
    block_linear_params,
    budget_gate_config,
    budget_train_section,
    check_p4_real_section,
    compress_with_gates,
    structured_target,
)
from asrcompress.compress.surgery import num_parameters, structure_of
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_csv, write_json
from asrcompress.models.whisper import check_train_window, encoder_window, rows_in_window
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig


def main(key: str, init_dir: str, corpus_dir: str, out_dir: str, reports_dir: str) -> None:
    setup_logging()
    cfg = load_params()
    p4r = check_p4_real_section(cfg)  # the whole section, before any work
    spec = get(cfg, f"p4_real.budgets.{key}", dict)
    where = f"p4_real.budgets.{key}"
    tcfg = TrainConfig.from_params(budget_train_section(p4r, key), derive_seed(get(cfg, "seed", int), "p4_real", key),
                                   name=where)
    _, language = bw.reference_corpus(cfg, "p4_real")
    torch.set_num_threads(tcfg.num_threads)
    rep = Path(reports_dir)
    processor = WhisperProcessor.from_pretrained(init_dir)
    model = load_compressed(init_dir)
    window = check_train_window(spec, where, model)
    block0, params0 = block_linear_params(model), num_parameters(model)
    gcfg = budget_gate_config(p4r, key, structured_target(model, spec["budget"]))
    with encoder_window(model, processor, window) as proc:
        collate = WhisperCollator(proc, language, max_target_positions=model.config.max_target_positions)
        rows, dropped = rows_in_window(load_split(corpus_dir, "train"), window)
        dev_rows, _ = rows_in_window(load_split(corpus_dir, "dev"), window)
        dev = bw.batches(dev_rows[:get(p4r, "dev_utterances", int)], collate, get(p4r, "eval_batch_size", int))
        dev_before = bw.dev_loss(model, dev)
        cpu0 = time.process_time()  # the compression's own CPU time (the leaderboard's column), all threads
        fingerprint = {"budget": key, "spec": spec, "gates": asdict(gcfg), "init": init_dir}
        gates, summary = compress_with_gates(model, rows, collate, tcfg, gcfg, f"checkpoints/p4_real/{key}",
                                             rep / "loss.csv", fingerprint, desc=f"p4r_compress@{key}")
        cpu_s = time.process_time() - cpu0
        dev_after = bw.dev_loss(model, dev)
    removed = summary.pop("removed")
    record = {
        "budget": key, "init": init_dir, "budget_fraction": spec["budget"], "target_gated_sparsity": gcfg.target_sparsity,
        "train_window_s": window, "train_utterances": len(rows), "train_left_out_window": len(dropped),
        "params_init": params0, "params": num_parameters(model), "block_linear_params_init": block0,
        "block_linear_params": block_linear_params(model),
        "ffn_neurons_removed": sum(len(v) for k, v in removed.items() if k.endswith(".ffn")),
        "heads_removed": sum(len(v) for k, v in removed.items() if k.endswith(".heads")),
        "cross_heads_removed": sum(len(v) for k, v in removed.items() if k.endswith(".cross_heads")),
        "dev_loss_init": dev_before, "dev_loss_after": dev_after, "compress_cpu_s": cpu_s,
        **{k: summary[k] for k in ("soft_sparsity", "hard_sparsity", "steps", "final_loss", "compress_seconds")},
        "removed": removed, "layers": summary["layers"], "gates": summary["gates"],
    }
    record["block_linear_removed_pct"] = 100.0 * (1 - record["block_linear_params"] / block0)
    save_compressed(model, out_dir, "p4_self_pinching_structured", {"budget": spec, "gates": asdict(gcfg)},
                    extra={k: record[k] for k in ("block_linear_removed_pct", "compress_seconds")}, processor=processor)
    record["structure"] = structure_of(model)["stacks"]
    write_csv(rep / "thresholds.csv", gates.trace)
    write_json(rep / "compress.json", record)
    log.info("p4r_compress@%s: %s -> %s | params %.3f M -> %.3f M, block linears -%.1f%% (budget %.0f%%), "
             "dev loss %.3f -> %.3f, %.0f s", key, init_dir, out_dir, params0 / 1e6, record["params"] / 1e6,
             record["block_linear_removed_pct"], 100 * spec["budget"], dev_before, dev_after,
             summary["compress_seconds"])


if __name__ == "__main__":
    main(*sys.argv[1:])
