"""Paper 4's structured self-pinching gates on Whisper (issue 21): a gate per FFN neuron and per attention head of
every encoder and decoder layer (decoder cross-attention included), trained with the seq2seq cross-entropy, the
pressure steered to a budget of the block linears; closed units removed physically; the `p4_real` section and
stages/p4r_compress.py (pipelines/p4_real)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import DELETE, OFFLINE_DIMS, load_stage, make_offline_rows, make_tiny_whisper, set_param
from torch import nn
from transformers import WhisperProcessor

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.self_pinching import (
    GateConfig,
    SelfPinchingGates,
    block_linear_params,
    check_p4_real_section,
    compress_with_gates,
    structured_gated_params,
    structured_target,
)
from asrcompress.compress.surgery import num_parameters
from asrcompress.config import ParamError
from asrcompress.models.whisper import build_feature_extractor, build_model
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.loop import TrainConfig

DIMS = {**OFFLINE_DIMS, "encoder_layers": 2, "decoder_layers": 2}  # d 32, 2 heads of 16, ffn 64


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


def unit_sizes(d: int, head_dim: int) -> dict[str, int]:
    """Parameters one removed unit takes away: fc1 row + bias + fc2 column; q/k/v rows, q/v biases, out_proj cols."""
    return {"ffn": 2 * d + 1, "heads": 4 * head_dim * d + 2 * head_dim, "cross_heads": 4 * head_dim * d + 2 * head_dim}


def removed_params(removed: dict[str, list[int]], d: int, head_dim: int) -> int:
    sizes = unit_sizes(d, head_dim)
    return sum(len(idx) * sizes[name.rsplit(".", 1)[1]] for name, idx in removed.items())


def logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=torch.tensor([[1, 5, 7]] * feats.shape[0])).logits


def run_gates(processor, budget: float, tmp: Path, lam: float = 5.0, steps: int = 40
              ) -> tuple[nn.Module, SelfPinchingGates, dict[str, Any], int]:
    """A seeded offline Whisper (1 s window) trained with structured gates on 8 rows; returns (model, gates,
    summary, parameters before)."""
    torch.manual_seed(0)
    model = build_model(DIMS, processor.tokenizer, 1, "eager")
    n0 = num_parameters(model)
    tcfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, checkpoint_every=steps, num_threads=1)
    gcfg = GateConfig(weight_lr=1e-3, threshold_lr=0.05, target_sparsity=structured_target(model, budget), lam=lam,
                      tau=0.05, init_threshold=0.3, structured=True, log_every=5)
    collate = WhisperCollator(processor, "en", max_target_positions=model.config.max_target_positions)
    gates, summary = compress_with_gates(model, make_offline_rows(8), collate, tcfg, gcfg, str(tmp / "ck"),
                                         str(tmp / "loss.csv"), {"budget": budget})
    return model, gates, summary, n0


# ------------------------------------------------------------------------------ gates on Whisper's linears
def test_structured_gates_cover_every_block_linear_of_whisper() -> None:
    model = make_tiny_whisper()  # d 64, 4 heads of 16, ffn 128, 2 + 2 layers
    linears = block_linears(model)
    n_block = sum(p.numel() for m in linears.values() for p in m.parameters())
    gates = SelfPinchingGates(model, GateConfig(structured=True))
    units = sorted((e.stack, e.layer, e.unit) for e in gates.entries)
    assert units == sorted([(s, i, "ffn") for s in ("encoder", "decoder") for i in (0, 1)]
                           + [(s, i, "heads") for s in ("encoder", "decoder") for i in (0, 1)]
                           + [("decoder", i, "cross_heads") for i in (0, 1)])
    covered = {id(e.owner) for e in gates.entries} | {id(p) for e in gates.entries for p in e.gate._partners}
    assert covered == {id(m) for m in linears.values()}  # fc1, fc2, q, k, v, out of every self / cross attention
    groups = {(e.stack, e.unit): e.gate.groups for e in gates.entries}
    assert groups[("encoder", "ffn")] == 128 and groups[("decoder", "cross_heads")] == 4
    # the groups hold every block-linear parameter but the output biases (fc2, out_proj), which no removal touches
    out_biases = sum(m.bias.numel() for n, m in linears.items() if n.endswith(("fc2", "out_proj")))
    assert structured_gated_params(model) + out_biases == block_linear_params(model) == n_block
    assert structured_target(model, 0.3) * structured_gated_params(model) == pytest.approx(
        0.3 * block_linear_params(model))


@pytest.mark.parametrize("budget", [0.2, 0.45])
def test_pressure_steers_the_removed_share_of_the_block_linears_to_the_budget(offline_processor, tmp_path,
                                                                              budget: float) -> None:
    dense = build_model(DIMS, offline_processor.tokenizer, 1)
    model, gates, summary, _ = run_gates(offline_processor, budget, tmp_path)
    start = [r for r in gates.trace if r["step"] == 0]
    assert start and all(r["hard_sparsity"] == 0.0 for r in start)  # the gates start open
    assert 1 - block_linear_params(model) / block_linear_params(dense) == pytest.approx(budget, abs=0.08)
    assert summary["soft_sparsity"] == pytest.approx(structured_target(dense, budget), abs=0.03)


def test_without_pressure_nothing_is_removed(offline_processor, tmp_path) -> None:
    """The control of the test above: the same training with lam = 0 keeps every unit."""
    model, _, summary, n0 = run_gates(offline_processor, 0.45, tmp_path, lam=0.0)
    assert num_parameters(model) == n0 and not any(summary["removed"].values())


# ------------------------------------------------------------------------------ removal, checkpoint, reload
def test_removal_is_physical_and_the_checkpoint_reloads_identically(offline_processor, tmp_path) -> None:
    model, _, summary, n0 = run_gates(offline_processor, 0.4, tmp_path)
    d, hd = DIMS["d_model"], DIMS["d_model"] // DIMS["attention_heads"]
    pinched = removed_params(summary["removed"], d, hd)
    kinds = {name.rsplit(".", 1)[1] for name, idx in summary["removed"].items() if idx}
    assert pinched > 0 and {"ffn", "heads"} <= kinds
    assert num_parameters(model) == n0 - pinched  # physically fewer, by exactly the pinched units
    assert not any("parametrizations" in n or n.endswith("theta") for n, _ in model.named_parameters())

    dense = build_model(DIMS, offline_processor.tokenizer, 1, "eager")
    save_compressed(dense, tmp_path / "dense", "none", {})
    save_compressed(model, tmp_path / "gated", "p4_self_pinching_structured", {"budget": 0.4})
    size = {k: (tmp_path / k / "model.safetensors").stat().st_size for k in ("dense", "gated")}
    assert size["dense"] - size["gated"] == pytest.approx(4 * pinched, abs=4096)  # fp32, header aside

    again = load_compressed(tmp_path / "gated")
    assert num_parameters(again) == num_parameters(model)
    feats = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(3))
    model.eval()
    assert torch.equal(logits(again, feats), logits(model, feats))
    with torch.no_grad():
        ids = again.generate(feats, max_new_tokens=6, language="en", task="transcribe")
        ref = model.generate(feats, max_new_tokens=6, language="en", task="transcribe")
    assert ids.shape[0] == 2 and ids.shape[1] > 4 and torch.equal(ids, ref)


# ------------------------------------------------------------------------------ the `p4_real` section
@pytest.mark.parametrize(("path", "value", "message"), [
    (("budget_list",), {}, r"p4_real\.budget_list: unknown key"),
    (("reference",), "nowhere", r"p4_real\.reference: 'nowhere' is not a key of"),
    (("dev_utterances",), 0, r"p4_real\.dev_utterances: must be >= 1"),
    (("gates", "tau"), 0.0, r"p4_real\.gates\.tau: must be > 0"),
    (("gates", "lam"), 5.0, r"p4_real\.gates\.lam: unknown key"),  # lam is a budget's own
    (("gates", "ramp_steps"), DELETE, r"missing key 'p4_real\.gates\.ramp_steps'"),
    (("train", "lr"), 0.1, r"p4_real\.train\.lr: unknown key"),  # lr, steps, batch are the budget's
    (("train", "warmup_steps"), -1, r"p4_real\.train\.warmup_steps: must be >= 0"),
    (("budgets", "30", "budget"), 1.0, r"p4_real\.budgets\.30\.budget: must be in \(0, 1\)"),
    (("budgets", "30", "budgett"), 0.3, r"p4_real\.budgets\.30\.budgett: unknown key"),
    (("budgets", "50", "max_steps"), 2.5, r"p4_real\.budgets\.50\.max_steps: must be int"),
    (("budgets", "50", "lr"), 0.0, r"p4_real\.budgets\.50\.lr: must be > 0"),
    (("budgets", "50", "threshold_lr"), 0.0, r"p4_real\.budgets\.50\.threshold_lr: must be > 0"),
    (("budgets", "50", "train_window_s"), "4", r"p4_real\.budgets\.50\.train_window_s: must be int"),
    (("budgets", "30", "batch_size"), DELETE, r"missing key 'p4_real\.budgets\.30\.batch_size'"),
])
def test_a_bad_p4_real_key_is_named(committed_params, path: tuple[str, ...], value: Any, message: str) -> None:
    assert set(check_p4_real_section(committed_params)["budgets"]) == {"30", "50"}
    set_param(committed_params["p4_real"], path, value)
    with pytest.raises(ParamError, match=message):
        check_p4_real_section(committed_params)


def test_the_stage_checks_the_section_before_any_work(committed_params, tmp_path, monkeypatch) -> None:
    committed_params["p4_real"]["budgets"]["30"]["lamda"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(committed_params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=r"p4_real\.budgets\.30\.lamda: unknown key"):
        load_stage("p4r_compress").main("30", "/nonexistent", "/nonexistent", "out", "rep")


# ------------------------------------------------------------------------------ the stage, end to end
def test_p4r_compress_trains_in_the_window_removes_and_saves_the_full_window(offline_processor, tmp_path,
                                                                             monkeypatch) -> None:
    """A 2 s-window offline Whisper trained in a 1 s window (the clips are 0.75 s): the stage removes units,
    records them, and saves a model with its own 2 s window that reloads with the recorded parameter count."""
    from datasets import Dataset, DatasetDict

    torch.manual_seed(0)
    processor = WhisperProcessor(feature_extractor=build_feature_extractor(2), tokenizer=offline_processor.tokenizer)
    build_model(DIMS, processor.tokenizer, 2, "eager").save_pretrained(tmp_path / "dense")
    processor.save_pretrained(tmp_path / "dense")
    rows = [{**r, "audio": {"array": r["audio"]["array"].tolist(), "sampling_rate": 16000}}
            for r in make_offline_rows(8)]
    DatasetDict({"train": Dataset.from_list(rows), "dev": Dataset.from_list(rows[:2])}).save_to_disk(
        str(tmp_path / "corpus"))
    section = {"reference": "base_en_synth", "dev_utterances": 2, "eval_batch_size": 2,
               "gates": {"tau": 0.05, "init_threshold": 0.3, "ramp_steps": 0, "log_every": 5},
               "train": {"warmup_steps": 0, "checkpoint_every": 30, "num_threads": 1},
               "budgets": {"40": {"budget": 0.4, "max_steps": 30, "lr": 0.001, "batch_size": 4, "threshold_lr": 0.05,
                                  "lam": 5.0, "train_window_s": 1}}}
    cfg = {"seed": 7, "corpora": {"en": {"whisper_language": "en"}},
           "real_dense_synth": {"base_en_synth": {"model": "dense", "corpus": "en"}}, "p4_real": section}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    load_stage("p4r_compress").main("40", "dense", "corpus", "out", "rep")

    record = json.loads(Path("rep/compress.json").read_text())
    d, hd = DIMS["d_model"], DIMS["d_model"] // DIMS["attention_heads"]
    pinched = removed_params(record["removed"], d, hd)
    assert record["train_window_s"] == 1 and record["steps"] == 30 and pinched > 0
    assert record["params_init"] - record["params"] == pinched
    assert record["block_linear_params_init"] - record["block_linear_params"] == pinched
    assert record["block_linear_removed_pct"] == pytest.approx(40, abs=8)
    assert Path("rep/loss.csv").is_file() and Path("rep/thresholds.csv").is_file()
    model = load_compressed("out")
    assert num_parameters(model) == record["params"]
    assert model.config.max_source_positions == 100  # saved with its own 2 s window
    assert WhisperProcessor.from_pretrained("out").feature_extractor.nb_max_frames == 200
    with torch.no_grad():
        ids = model.generate(torch.zeros(1, 80, 200), max_new_tokens=4, language="en", task="transcribe")
    assert ids.shape[0] == 1
