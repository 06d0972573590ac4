"""Paper 1: Sparse Group LASSO penalty and prox, weight-adaptive two-pass pruning, IMP."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import make_tiny_whisper

from asrcompress.compress.imp import imp_schedule, run_imp
from asrcompress.compress.magnitude import n_to_prune
from asrcompress.compress.masks import get_masks, reapply_masks, sparsity_report
from asrcompress.compress.sgl import (
    ALL_KINDS,
    SGLConfig,
    column_norms,
    find_linears,
    lr_at,
    matrix_penalty,
    prox_sgl_,
    sgl_hooks,
    sgl_penalty,
    target_filter,
    zero_group_report,
)
from asrcompress.compress.surgery import num_parameters
from asrcompress.compress.weight_adaptive import (
    TwoPassRule,
    adaptive_threshold,
    apply_pass1,
    pass2_masks,
    plan_pass1,
    select_units,
    two_pass_prune,
)
from asrcompress.train.loop import TrainConfig, train

D, FFN, HEADS, HD = 64, 128, 4, 16
DEC = torch.tensor([[1, 5, 7, 9, 11]] * 2)
SQRT2 = math.sqrt(2.0)


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(model, feats):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=DEC).logits


# ------------------------------------------------------------------------------------------- penalty


def test_penalty_value_and_gradient_by_hand():
    # columns (3, 4) and (0, -1): norms 5 and 1; group size 2 -> sqrt(2)
    w = torch.tensor([[3.0, 0.0], [4.0, -1.0]], requires_grad=True)
    p = matrix_penalty(w, l1=0.5, group=0.25)
    assert p.item() == pytest.approx(0.5 * 8 + 0.25 * SQRT2 * (5 + 1))
    p.backward()
    g = 0.25 * SQRT2
    expected = torch.tensor([[0.5 + g * 3 / 5, 0.0 + g * 0.0], [0.5 + g * 4 / 5, -0.5 - g * 1.0]])
    torch.testing.assert_close(w.grad, expected)


def test_zero_column_has_zero_group_gradient():
    w = torch.zeros(3, 2, requires_grad=True)
    matrix_penalty(w, l1=0.0, group=1.0).backward()
    assert torch.equal(w.grad, torch.zeros(3, 2))


def test_model_penalty_splits_encoder_and_decoder_lambdas(tiny_whisper):
    cfg = SGLConfig(l1_encoder=2.0, l1_decoder=3.0, group_encoder=5.0, group_decoder=7.0)
    expected = 0.0
    for t in find_linears(tiny_whisper):
        w = t.module.weight.detach()
        enc = t.stack == "encoder"
        expected += (2.0 if enc else 3.0) * w.abs().sum().item()
        if t.kind in ("fc2", "out_proj"):  # default group kinds
            expected += (5.0 if enc else 7.0) * math.sqrt(w.shape[0]) * column_norms(w).sum().item()
    assert sgl_penalty(tiny_whisper, cfg).item() == pytest.approx(expected, rel=1e-5)
    only_enc = SGLConfig(l1_encoder=1.0, l1_kinds=("fc1",), group_kinds=())
    fc1 = sum(t.module.weight.abs().sum().item() for t in find_linears(tiny_whisper, ["fc1"]) if t.stack == "encoder")
    assert sgl_penalty(tiny_whisper, only_enc).item() == pytest.approx(fc1, rel=1e-5)


def test_find_linears_covers_every_block_linear(tiny_whisper):
    found = find_linears(tiny_whisper)
    # encoder: 2 layers x (4 self-attn + 2 ffn); decoder: 2 layers x (4 self + 4 cross + 2 ffn)
    assert len(found) == 2 * 6 + 2 * 10
    assert {t.kind for t in found} == set(ALL_KINDS)
    keep = target_filter(["fc2"])
    names = [n for n, p in tiny_whisper.named_parameters() if keep(n, p)]
    assert names == [f"model.{s}.layers.{i}.fc2.weight" for s in ("encoder", "decoder") for i in range(2)]


# ------------------------------------------------------------------------------------------- prox


def test_prox_zeroes_small_group_and_shrinks_others_exactly():
    # columns (3, 4) norm 5 and (0.3, 0.4) norm 0.5; group threshold = g sqrt(2) = 1
    w = torch.tensor([[3.0, 0.3], [4.0, 0.4]], dtype=torch.float64)
    prox_sgl_(w, l1_step=0.0, group_step=1 / SQRT2)
    torch.testing.assert_close(w, torch.tensor([[2.4, 0.0], [3.2, 0.0]], dtype=torch.float64))
    assert torch.equal(w[:, 1], torch.zeros(2, dtype=torch.float64))


def test_prox_soft_thresholds_elements_before_groups():
    w = torch.tensor([[3.0, 0.3], [-4.0, 0.4]], dtype=torch.float64)
    prox_sgl_(w, l1_step=0.5, group_step=1 / SQRT2)
    # elements: (2.5, -3.5) and (0, 0); then column 0 shrinks by 1 in norm
    n = math.sqrt(2.5**2 + 3.5**2)
    expected = torch.tensor([[2.5 * (1 - 1 / n), 0.0], [-3.5 * (1 - 1 / n), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(w, expected)


def test_hooks_prox_mode_logs_detached_penalty_and_penalty_mode_has_gradient(tiny_whisper):
    cfg = SGLConfig(group_encoder=1.0, group_decoder=1.0, l1_kinds=(), mode="proximal")
    extra, after = sgl_hooks(cfg, lambda step: 100.0)
    value = extra(tiny_whisper, {}, None)
    assert not value.requires_grad and value.item() > 0
    after(tiny_whisper, 0)  # a huge step: every regularised group goes to zero
    rep = zero_group_report(tiny_whisper, ["fc2", "out_proj"])
    assert rep["zero_groups_pct"] == 100.0 and rep["zero_heads"] == rep["heads"] == 2 * 4 + 2 * 8
    extra_p, after_p = sgl_hooks(SGLConfig(l1_encoder=1.0, mode="penalty"), lambda step: 1.0)
    assert after_p is None and extra_p(make_tiny_whisper(), {}, None).requires_grad


# ------------------------------------------------------------------------------------------- removal


def test_group_driven_to_zero_is_removed_and_output_unchanged(tiny_whisper, whisper_features):
    model = tiny_whisper
    fc2 = model.model.encoder.layers[0].fc2.weight
    out_proj = model.model.decoder.layers[1].encoder_attn.out_proj.weight
    with torch.no_grad():  # make neurons 3 and 70 and cross head 2 weak, then prox them to exactly zero
        fc2[:, [3, 70]] *= 1e-4
        out_proj[:, 2 * HD:3 * HD] *= 1e-4
        prox_sgl_(fc2, 0.0, 1e-3)
        prox_sgl_(out_proj, 0.0, 1e-3)
    assert int((column_norms(fc2) == 0).sum()) == 2
    before, n_before = logits(model, whisper_features), num_parameters(model)
    rule = TwoPassRule(pass1_statistic="mean_std", pass1_k=100.0, pass2_kinds=())  # zero units only
    plan = plan_pass1(model, rule)
    removed = {(r["stack"], r["layer"], r["what"]): r["remove"] for r in plan if r["remove"]}
    assert removed == {("encoder", 0, "ffn"): [3, 70], ("decoder", 1, "cross"): [2]}
    apply_pass1(model, plan)
    assert model.model.encoder.layers[0].fc1.out_features == FFN - 2
    assert model.model.decoder.layers[1].encoder_attn.num_heads == HEADS - 1
    assert n_before - num_parameters(model) == 2 * (2 * D + 1) + 4 * HD * D + 2 * HD
    torch.testing.assert_close(logits(model, whisper_features), before, rtol=1e-5, atol=1e-5)
    out = model.generate(whisper_features, max_new_tokens=4)
    assert out.shape[0] == 2


# ------------------------------------------------------------------------------------------- two-pass rule


def test_adaptive_thresholds_on_known_statistics():
    v = torch.arange(1.0, 7.0)  # 1..6: mean 3.5, population std sqrt(35/12), lower median 3
    assert adaptive_threshold(v, "mean_std", 1.0) == pytest.approx(3.5 - math.sqrt(35 / 12))
    assert adaptive_threshold(v, "median", 0.8) == pytest.approx(2.4)
    assert adaptive_threshold(v, "mean", 0.5) == pytest.approx(1.75)
    assert adaptive_threshold(torch.tensor([]), "mean", 1.0) == -math.inf
    with pytest.raises(ValueError):
        adaptive_threshold(v, "mode", 1.0)


def test_pass1_removes_exactly_the_expected_groups(tiny_whisper):
    norms = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert select_units(norms, "mean_std", 1.0)[0] == [0, 1]      # thr 1.79
    assert select_units(norms, "median", 0.8)[0] == [0, 1, 2]     # thr 2.4 (zero excluded from the median)
    assert select_units(norms, "mean", 0.5)[0] == [0, 1]          # thr 1.75
    assert select_units(norms, "median", 10.0, min_keep=2)[0] == [0, 1, 2, 3, 4]
    # the same on a real fc2: column j gets norm norms_j (cycled over the 128 neurons)
    fc2 = tiny_whisper.model.decoder.layers[0].fc2
    target = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).repeat(FFN // 8)
    with torch.no_grad():
        cols = torch.randn(D, FFN)
        fc2.weight.copy_(cols / column_norms(cols) * target)
    rule = TwoPassRule(pass1_statistic="median", pass1_k=0.8, prune_heads=False, pass2_kinds=())
    rec = next(r for r in plan_pass1(tiny_whisper, rule) if (r["stack"], r["layer"], r["what"]) ==
               ("decoder", 0, "ffn"))
    # non-zero norms 1..7 -> median 4 -> threshold 3.2: norms 0, 1, 2, 3 go
    assert rec["threshold"] == pytest.approx(3.2)
    assert rec["remove"] == [j for j in range(FFN) if j % 8 < 4]


def test_pass2_masks_below_per_matrix_statistic(tiny_whisper):
    fc1 = tiny_whisper.model.encoder.layers[1].fc1
    with torch.no_grad():
        vals = torch.tensor([0.0, 1.0, -2.0, 3.0, -4.0, 5.0, 6.0, -7.0])  # non-zero mean |w| = 4
        fc1.weight.copy_(vals.repeat(fc1.weight.numel() // 8).reshape(fc1.weight.shape))
    masks, thr = pass2_masks(tiny_whisper, TwoPassRule(pass2_statistic="mean", pass2_k=1.0, pass2_kinds=("fc1",)))
    name = "model.encoder.layers.1.fc1.weight"
    assert thr[name] == pytest.approx(4.0)
    assert torch.equal(masks[name], fc1.weight.abs() >= 4.0)
    assert set(masks) == {f"model.{s}.layers.{i}.fc1.weight" for s in ("encoder", "decoder") for i in range(2)}


def test_two_pass_prune_is_physical_and_masked(tiny_whisper, whisper_features):
    n0 = num_parameters(tiny_whisper)
    rep = two_pass_prune(tiny_whisper, TwoPassRule(pass1_statistic="mean_std", pass1_k=1.0))
    assert rep["removed_ffn_neurons"] > 0 and num_parameters(tiny_whisper) < n0
    sp = sparsity_report(tiny_whisper, target_filter())
    assert sp["zero"] >= rep["pass2_masked_weights"] > 0
    assert len(get_masks(tiny_whisper)) == len(find_linears(tiny_whisper))
    assert torch.isfinite(logits(tiny_whisper, whisper_features)).all()


# ------------------------------------------------------------------------------------------- IMP


def test_imp_schedule():
    geo = imp_schedule(0.75, 2)
    assert geo == pytest.approx([0.5, 0.75])
    assert imp_schedule(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(ValueError):
        imp_schedule(1.0, 2)


def test_imp_reaches_target_sparsity_through_finetuning(tiny_whisper):
    keep = target_filter()
    total = sparsity_report(tiny_whisper, keep)["total"]

    def finetune(model, r):  # stands in for training: moves every weight, masks re-applied after
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        reapply_masks(model)
        return {"round": r}

    hist = run_imp(tiny_whisper, 0.6, 3, keep, finetune)
    assert [h["round"] for h in hist] == [0, 1, 2]
    assert hist[0]["sparsity"] < hist[1]["sparsity"] < hist[2]["sparsity"]
    assert hist[-1]["zero"] == n_to_prune(0.6, total)
    assert sparsity_report(tiny_whisper, keep)["zero"] == n_to_prune(0.6, total)


# ------------------------------------------------------------------------------------------- with the training loop


class _Rows:
    """A few (features, labels) rows for the tiny Whisper and a collate that stacks them."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(3)
        self.rows = [{"input_features": torch.randn(80, 100, generator=g),
                      "labels": torch.randint(3, 300, (6,), generator=g)} for _ in range(n)]

    @staticmethod
    def collate(rows):
        return {k: torch.stack([r[k] for r in rows]) for k in ("input_features", "labels")}


def test_sgl_and_imp_through_the_training_loop(tmp_path):
    data = _Rows()
    tcfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=100, num_threads=1)
    model = make_tiny_whisper()
    cfg = SGLConfig(l1_encoder=1e-3, l1_decoder=1e-3, group_encoder=30.0, group_decoder=30.0)
    extra, after = sgl_hooks(cfg, lr_at(tcfg))
    train(model, data.rows, data.collate, tcfg, tmp_path / "ck_sgl", tmp_path / "sgl.csv",
          extra_loss=extra, after_step=after, desc="sgl-test")
    rep = zero_group_report(model, ["fc2", "out_proj"])
    assert rep["zero_groups"] > 0  # lr * 30 * sqrt(64) = 0.24 per step beats the weakest columns
    logged = list(csv.DictReader((tmp_path / "sgl.csv").open()))
    assert len(logged) == 3 and all(float(r["extra_loss"]) > 0 for r in logged)

    imp_model = make_tiny_whisper()
    keep = target_filter()
    total = sparsity_report(imp_model, keep)["total"]

    def finetune(m, r):
        return train(m, data.rows, data.collate, tcfg, tmp_path / f"ck_imp{r}", tmp_path / f"imp{r}.csv",
                     after_step=lambda mm, s: reapply_masks(mm), desc=f"imp-{r}")

    run_imp(imp_model, 0.5, 2, keep, finetune)
    assert sparsity_report(imp_model, keep)["zero"] >= n_to_prune(0.5, total)


def test_config_validation():
    with pytest.raises(ValueError):
        SGLConfig(mode="both")
    with pytest.raises(ValueError):
        SGLConfig(l1_kinds=("embed",))
    with pytest.raises(ValueError):
        TwoPassRule(pass1_statistic="max")
    section = {"lambda_l1_encoder": 1, "lambda_l1_decoder": 2, "lambda_group_encoder": 3,
               "lambda_group_decoder": 4, "l1_kinds": ["fc1"], "group_kinds": ["fc2"], "mode": "proximal"}
    cfg = SGLConfig.from_params(section)
    assert (cfg.l1_encoder, cfg.group_decoder, cfg.l1_kinds) == (1.0, 4.0, ("fc1",))
    assert cfg.lambdas(find_linears(make_tiny_whisper(), ["fc1"])[0]) == (1.0, 0.0)
