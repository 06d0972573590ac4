"""p1_prune: weight-adaptive two-pass pruning of the SGL model, physical removal, recovery fine-tune
(paper 1, step 2).

    python stages/p1_prune.py <sgl-model-dir> <dense-model-dir> <corpus-dir> <out-model-dir> <loss-csv> \
        <metrics-json> <kept-width-png> [<params-section>]

Reads ``p1.corpus``, ``p1.prune`` (the rule, see ``compress/weight_adaptive.py``) and
``p1.recovery_train`` (a ``train``-style section, or null for no recovery). Pass 1 removes FFN neurons
and heads physically; pass 2 masks small weights (kept at zero during recovery, then made permanent).
The dense model is read only to count parameters: the metrics give the reductions and
``imp_target_sparsity``, the sparsity IMP needs over the block linears to end with the same number of
non-zero parameters (``p1.imp.target_sparsity: match``). ``<params-section>`` (default ``p1``): ``p1_real``
on the real Whisper base, recovery inside the cut encoder window ``<section>.train_window_s``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.masks import make_permanent, reapply_masks, sparsity_report
from asrcompress.compress.sgl import check_p1_section, target_filter, zero_group_report
from asrcompress.compress.weight_adaptive import TwoPassRule, kept_widths, plot_kept_widths, two_pass_prune
from asrcompress.config import derive_seed, get, load_params
from asrcompress.io import load_split, log, setup_logging, write_json
from asrcompress.measure.params import count_params, percent_reduction
from asrcompress.models.whisper import check_train_window, encoder_window
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig, train


def main(sgl_dir: str, dense_dir: str, corpus_dir: str, out_dir: str, loss_csv: str, metrics_path: str,
         fig_path: str, section: str = "p1") -> None:
    setup_logging()
    cfg = load_params()
    p1 = check_p1_section(cfg, section)  # the whole section, before any work
    language = get(cfg, f"corpora.{get(p1, 'corpus', str)}.whisper_language", str)
    rule = TwoPassRule.from_params(get(p1, "prune", dict))
    model = load_compressed(sgl_dir)
    window = check_train_window(p1, section, model)
    window_record = {"train_window_s": window} if window else {}  # the smoke p1 records stay as they were
    processor = WhisperProcessor.from_pretrained(sgl_dir)
    dense_model = load_compressed(dense_dir)
    dense, dense_block = count_params(dense_model), sparsity_report(dense_model, target_filter())["total"]
    del dense_model
    zeros_in = zero_group_report(model)

    report = two_pass_prune(model, rule)
    pruned = count_params(model)
    recovery = get(p1, "recovery_train", (dict, type(None)))
    summary: dict = {"steps": 0}
    if recovery:
        tcfg = TrainConfig.from_params(recovery, derive_seed(get(cfg, "seed", int), "p1", "recovery"),
                                       name=f"{section}.recovery_train")
        with encoder_window(model, processor, window) as proc:  # None: the model's own window
            collate = WhisperCollator(proc, language, max_target_positions=model.config.max_target_positions)
            summary = train(model, load_split(corpus_dir, "train"), collate, tcfg,
                            ckpt_dir=f"checkpoints/{Path(out_dir).name}", loss_log=loss_csv,
                            fingerprint={"stage": "p1_prune", "sgl": sgl_dir, "rule": asdict(rule), "window_s": window},
                            after_step=lambda m, step: reapply_masks(m), desc=f"{section}_prune recovery")
    else:
        with open(loss_csv, "w") as f:
            f.write("step,loss,extra_loss,lr\n")
    make_permanent(model)
    widths = kept_widths(model)
    plot_kept_widths(widths, fig_path, title=f"{section}: kept width per layer after two-pass pruning")
    save_compressed(model, out_dir, "sgl_two_pass", method_params=asdict(rule),
                    extra={"source": sgl_dir, "kept_widths": widths, **window_record})
    processor.save_pretrained(out_dir)

    final = count_params(model)
    block = sparsity_report(model, target_filter())
    imp_target = (dense["nonzero_params"] - final["nonzero_params"]) / dense_block
    metrics = {
        "params_dense": dense["params"], "params": final["params"], "nonzero_params": final["nonzero_params"],
        "params_reduction_pct": percent_reduction(final["params"], dense["params"]),
        "nonzero_params_reduction_pct": percent_reduction(final["nonzero_params"], dense["nonzero_params"]),
        "params_after_pass1": pruned["params"],
        "removed_ffn_neurons": report["removed_ffn_neurons"], "removed_heads": report["removed_heads"],
        "zero_ffn_neurons_in": zeros_in["zero_ffn_neurons"], "zero_heads_in": zeros_in["zero_heads"],
        "pass2_masked_weights": report["pass2_masked_weights"], "pass2_weights": report["pass2_weights"],
        "block_weight_sparsity_pct": 100.0 * block["sparsity"],
        "imp_target_sparsity": max(0.0, min(imp_target, 0.99)),
        "recovery": summary, **window_record, "compress_cpu_s": time.process_time(), "kept_widths": widths,
        "pass1": [{k: r[k] for k in ("stack", "layer", "what", "units", "zero", "threshold")}
                  | {"removed": len(r["remove"])} for r in report["plan"]],
    }
    write_json(metrics_path, metrics)
    log.info("%s_prune: %s -> %s | %d FFN neurons (%d were zero) and %d heads removed, params %.3f M -> "
             "%.3f M (-%.1f%%), non-zero -%.1f%%, block sparsity %.1f%%, recovery %d steps", section, sgl_dir, out_dir,
             report["removed_ffn_neurons"], zeros_in["zero_ffn_neurons"], report["removed_heads"],
             dense["params"] / 1e6, final["params"] / 1e6, metrics["params_reduction_pct"],
             metrics["nonzero_params_reduction_pct"], metrics["block_weight_sparsity_pct"], summary["steps"])


if __name__ == "__main__":
    main(*sys.argv[1:])
