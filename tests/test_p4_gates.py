"""Paper 4: self-pinching gates, their structured variant, and the CTC model helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_ctc
from torch import nn

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.masks import get_masks, sparsity_report
from asrcompress.compress.self_pinching import (
    GateConfig,
    PinchGate,
    SelfPinchingGates,
    prunable_linears,
    prunable_weight_filter,
)
from asrcompress.compress.surgery import num_parameters
from asrcompress.models.ctc import (
    build_model,
    build_processor,
    build_vocab,
    ctc_collapse,
    greedy_ids,
    label_ids,
    load_pretrained,
    save_pretrained,
    transcribe_ctc,
)
from asrcompress.train.collate import CTCCollator

D, HEADS, HD, FFN = 64, 4, 16, 128
TEXTS = ["the strange dog visited our bottle", "call 42 now", "a quick brown fox"]


def set_relative_threshold(gates: SelfPinchingGates, rel: float) -> None:
    with torch.no_grad():
        for e in gates.entries:
            e.gate.theta.fill_(rel / e.gate.k)


def logits(model: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(audio).logits


# ------------------------------------------------------------------------------------------ the gate
def test_open_gate_passes_weights_almost_unchanged() -> None:
    w = torch.randn(64, 64) * 0.02
    gate = PinchGate(w, GateConfig(tau=0.01, init_threshold=0.0))
    gated = gate(w)
    assert torch.linalg.norm(gated - w) / torch.linalg.norm(w) < 0.02
    assert bool(torch.all(gated.abs() <= w.abs()))


def test_threshold_above_every_weight_closes_the_layer() -> None:
    w = torch.randn(32, 16) * 0.05
    gate = PinchGate(w, GateConfig(tau=0.01))
    with torch.no_grad():
        gate.theta.fill_(float(w.abs().max() * 2) / float(gate.mean_square.sqrt() * gate.k))
    assert float(gate(w).detach().abs().max()) < 1e-6
    assert bool(gate.closed(w).all())


def test_threshold_gets_gradient_from_task_loss_and_sparsity_term(ctc_audio: torch.Tensor) -> None:
    model = make_tiny_ctc("wav2vec2")
    gates = SelfPinchingGates(model, GateConfig(tau=0.05, init_threshold=0.3))
    (model(ctc_audio).logits.pow(2).mean() + gates.loss()).backward()
    grads = [e.gate.theta.grad for e in gates.entries]
    assert len(grads) == 12 and all(g is not None and torch.isfinite(g) and g != 0 for g in grads)


def test_sparsity_term_drives_a_toy_model_to_the_target() -> None:
    torch.manual_seed(0)
    toy = nn.Module()
    toy.encoder = nn.Module()
    toy.encoder.layers = nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 64)])
    cfg = GateConfig(tau=0.02, init_threshold=0.05, threshold_lr=0.03, weight_lr=1e-3, target_sparsity=0.6,
                     lam=5.0)
    gates = SelfPinchingGates(toy, cfg)
    assert gates.hard_sparsity() < 0.05
    opt = torch.optim.Adam(toy.parameters(), lr=cfg.weight_lr)
    for _ in range(80):  # the sparsity term alone: thresholds rise (and small weights shrink) to the target
        loss = gates.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(gates.soft_sparsity().detach()) - 0.6) < 0.05
    assert abs(gates.hard_sparsity() - 0.6) < 0.1
    assert len(gates.trace) == 2  # one record per layer, at install


def test_hard_masks_reproduce_soft_gates_as_tau_goes_to_zero(ctc_audio: torch.Tensor) -> None:
    model = make_tiny_ctc("hubert")
    gates = SelfPinchingGates(model, GateConfig(tau=1e-7))
    set_relative_threshold(gates, 0.8)
    soft = logits(model, ctc_audio)
    expected = gates.hard_sparsity()
    summary = gates.finalize()
    assert not get_masks(model)  # made permanent: zeros stay, masks forgotten
    assert not any(n.endswith(".theta") for n, _ in model.named_parameters())  # gates taken off
    torch.testing.assert_close(logits(model, ctc_audio), soft, atol=1e-4, rtol=1e-4)
    report = sparsity_report(model, prunable_weight_filter(model))
    assert report["sparsity"] == pytest.approx(expected, abs=1e-9)
    assert 0.3 < report["sparsity"] < 0.7 and summary["hard_sparsity"] == pytest.approx(expected)


def test_structured_gates_remove_units_and_reload_identically(tmp_path, ctc_audio: torch.Tensor) -> None:
    model = make_tiny_ctc("wav2vec2")
    n0 = num_parameters(model)
    gates = SelfPinchingGates(model, GateConfig(tau=1e-7, structured=True))
    assert len(gates.entries) == 4  # (ffn, heads) x 2 layers
    set_relative_threshold(gates, 1.0)
    closed = gates.closed_groups()
    n_ffn = sum(len(v) for (_, _, unit), v in closed.items() if unit == "ffn")
    n_heads = sum(len(v) for (_, _, unit), v in closed.items() if unit == "heads")
    assert n_ffn > 0
    soft = logits(model, ctc_audio)
    gates.finalize()
    assert num_parameters(model) == n0 - n_ffn * (2 * D + 1) - n_heads * (4 * HD * D + 3 * HD)
    out = logits(model, ctc_audio)
    torch.testing.assert_close(out, soft, atol=1e-4, rtol=1e-4)
    save_compressed(model, tmp_path / "m", "self_pinching_structured", {"tau": 1e-7})
    again = load_compressed(tmp_path / "m")
    assert num_parameters(again) == num_parameters(model)
    assert torch.equal(logits(again, ctc_audio), out)


def test_gates_cover_the_encoder_layer_linears_only() -> None:
    names = set(prunable_linears(make_tiny_ctc("hubert")))
    assert len(names) == 12 and all(".encoder.layers." in n for n in names)
    assert not any("lm_head" in n or "feature_projection" in n for n in names)


# ------------------------------------------------------------------------------------------ CTC helpers
def test_ctc_tokenizer_round_trip(tmp_path) -> None:
    vocab = build_vocab(TEXTS)
    assert list(vocab)[:3] == ["<pad>", "<unk>", "|"] and vocab["<pad>"] == 0 and " " not in vocab
    proc = build_processor(vocab)
    tok = proc.tokenizer
    assert len(tok) == len(vocab)
    for text in TEXTS:
        ids = label_ids(tok, text)
        assert 0 not in ids and tok.decode(ids, group_tokens=False) == text
    assert label_ids(tok, "z")[0] == vocab["<unk>"]
    proc.save_pretrained(tmp_path)
    again = type(proc).from_pretrained(tmp_path)
    assert again.tokenizer.get_vocab() == tok.get_vocab()


def test_greedy_ctc_collapses_repeats_and_drops_blanks() -> None:
    assert ctc_collapse([3, 3, 0, 3, 2, 2, 0, 0, 4, 4]) == [3, 3, 2, 4]
    assert ctc_collapse([0, 0, 0]) == []
    frames = torch.tensor([[5, 5, 0, 5, 6, 6, 7], [7, 0, 0, 7, 7, 5, 5]])
    lg = torch.nn.functional.one_hot(frames, 9).float()
    assert greedy_ids(lg, [7, 4]) == [[5, 5, 6, 7], [7, 7]]  # row 2: frames past its length ignored


def test_collator_and_transcription_keep_row_order(tmp_path) -> None:
    proc = build_processor(build_vocab(TEXTS))
    rng = np.random.default_rng(0)
    rows = [{"id": str(i), "text": t, "audio": {"array": rng.standard_normal(n).astype(np.float32),
                                                "sampling_rate": 16000}}
            for i, (t, n) in enumerate(zip(TEXTS, [16000, 8000, 12000], strict=True))]
    batch = CTCCollator(proc)(rows)
    assert batch["input_values"].shape == (3, 16000) and batch["attention_mask"][1].sum() == 8000
    assert (batch["labels"][1] == -100).sum() == batch["labels"].shape[1] - len("call 42 now")
    dims = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = build_model("hubert", "scratch", proc, dims)
    assert model.config.vocab_size == len(proc.tokenizer) and model.config.ctc_zero_infinity
    out = model(**batch)
    assert torch.isfinite(out.loss)
    save_pretrained(model, proc, tmp_path)
    model2, proc2 = load_pretrained(tmp_path)
    hyps = transcribe_ctc(model2, proc2, rows, batch_size=1)  # batch 1: no padding, exact per row
    assert hyps == transcribe_ctc(model2, proc2, rows[::-1], batch_size=1)[::-1]
    assert hyps == [transcribe_ctc(model2, proc2, [r])[0] for r in rows]
    assert len(transcribe_ctc(model2, proc2, rows, batch_size=2)) == 3


def test_gates_and_ump_run_in_the_training_loop_and_resume(tmp_path) -> None:
    from asrcompress.compress.self_pinching import compress_with_gates, ump_baseline
    from asrcompress.train.loop import TrainConfig

    proc = build_processor(build_vocab(TEXTS))
    rng = np.random.default_rng(1)
    rows = [{"id": str(i), "text": TEXTS[i % 3],
             "audio": {"array": rng.standard_normal(8000).astype(np.float32), "sampling_rate": 16000}}
            for i in range(8)]
    dims = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    tcfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-3, checkpoint_every=3, num_threads=1)
    gcfg = GateConfig(weight_lr=1e-3, threshold_lr=0.05, target_sparsity=0.5, log_every=1)

    def run() -> tuple[nn.Module, SelfPinchingGates, dict]:
        torch.manual_seed(0)
        model = build_model("wav2vec2", "scratch", proc, dims)
        gates, summary = compress_with_gates(model, rows, CTCCollator(proc), tcfg, gcfg, str(tmp_path / "ck"),
                                             str(tmp_path / "loss.csv"), {"t": 1})
        return model, gates, summary

    model, gates, summary = run()
    assert [r["step"] for r in gates.trace[::6]] == [0, 1, 2, 3]  # 6 gated linears per record
    assert gates.trace[-1]["threshold_rel"] > gates.trace[0]["threshold_rel"]
    assert summary["resumed_from"] == 0 and summary["compress_seconds"] > 0
    assert sparsity_report(model, prunable_weight_filter(model))["sparsity"] == pytest.approx(
        summary["hard_sparsity"])
    assert not (tmp_path / "ck").exists()  # a finished run leaves no checkpoint to stand in for a later one
    again, _, summary2 = run()  # so the same run trains again, from step 0, to the same gates
    assert summary2["resumed_from"] == 0
    # (up to wav2vec2's SpecAugment masks, drawn from numpy's global RNG, which the loop does not seed)
    assert [r["layer"] for r in summary2["layers"]] == [r["layer"] for r in summary["layers"]]
    assert [r["threshold"] for r in summary2["layers"]] == pytest.approx([r["threshold"] for r in summary["layers"]],
                                                                         rel=1e-3)
    usum = ump_baseline(again, 0.5, rows, CTCCollator(proc), tcfg, str(tmp_path / "ump"),
                        str(tmp_path / "ump.csv"), {"u": 1})
    assert usum["sparsity"] == pytest.approx(0.5, abs=1e-3) and not get_masks(again)
