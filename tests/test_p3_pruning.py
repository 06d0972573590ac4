"""Paper 3: component map, sensitivity scores, magnitude masks (component / global / uniform), one-shot
experiment plumbing, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_ctc, make_tiny_whisper, sensitivity_records

from asrcompress.compress.components import (
    COMPONENTS,
    OTHER,
    ComponentError,
    component_of,
    param_map,
    prunable_filter,
    tensor_ratios,
)
from asrcompress.compress.magnitude import (
    count_pruned,
    global_magnitude_masks,
    l1_unstructured_masks,
    linear_weight_filter,
    n_to_prune,
    smallest_magnitude_masks,
    uniform_magnitude_masks,
)
from asrcompress.compress.masks import apply_masks, get_masks
from asrcompress.compress.p3_oneshot import (
    FINAL_PER_LAYER,
    FINAL_RATIOS,
    component_sparsity,
    config_sparsity,
    headline_metrics,
    last_layers,
    plan_points,
    pruned,
)
from asrcompress.compress.sensitivity import (
    calibration_split,
    component_totals,
    per_param,
    sensitivity_scores,
)
from asrcompress.measure.masked_sweep import run_points
from asrcompress.measure.params import count_params
from asrcompress.report.figures import plot_p3_sensitivity, plot_p3_sweeps

EMB, PROJ = "model.decoder.embed_tokens.weight", "proj_out.weight"


def rows_for(n: int, seed: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"id": f"u{i}", "text": "a b", "features": torch.randn(1, 80, 100, generator=g),
             "labels": torch.randint(3, 300, (1, 5), generator=g)} for i in range(n)]


def loss_fn(model, row):
    return model(input_features=row["features"], labels=row["labels"]).loss


def logits(model, feats):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=torch.tensor([[1, 5, 6, 7]] * len(feats))).logits


# ---------------------------------------------------------------------------------------------- components
def test_every_whisper_parameter_has_a_component(tiny_whisper):
    infos = param_map(tiny_whisper)
    assert {i.component for i in infos} == set(COMPONENTS) | {OTHER}
    by_name = {i.name: i for i in infos}
    assert component_of("model.decoder.layers.1.encoder_attn.q_proj.weight") == ("dec_cross_attn", 1)
    assert component_of("model.encoder.layers.0.fc2.weight") == ("enc_ffn", 0)
    assert component_of("model.encoder.conv2.weight") == ("conv", 1)
    for never in ("model.encoder.layers.0.fc1.bias", "model.decoder.layers.1.self_attn_layer_norm.weight",
                  "model.encoder.embed_positions.weight", "model.decoder.layer_norm.bias",
                  "model.encoder.conv1.bias"):
        assert by_name[never].component == OTHER
    assert by_name[EMB].tied_with == (PROJ,) and by_name[PROJ].component == "output_projection"
    with pytest.raises(ComponentError):
        component_of("wav2vec2.encoder.layers.0.attention.q_proj.weight")
    with pytest.raises(ComponentError, match="never pruned"):
        l1_unstructured_masks(tiny_whisper, {"other": 0.1})
    with pytest.raises(ComponentError, match="unknown component"):
        l1_unstructured_masks(tiny_whisper, {"decoder_ffn": 0.1})


# ---------------------------------------------------------------------------------------------- sensitivity
def test_irrelevant_component_ranks_last_and_model_is_left_as_it_was():
    model = make_tiny_whisper()
    # cut the decoder self-attention out of the network: its output (and so its gradients) are zero
    hooks = [layer.self_attn.register_forward_hook(lambda mod, inp, out: (out[0] * 0, *out[1:]))
             for layer in model.model.decoder.layers]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    recs = sensitivity_scores(model, rows_for(2), loss_fn, n_grad=2, n_fisher=1, progress=False)
    for h in hooks:
        h.remove()
    cut = [r for r in recs if r["component"] == "dec_self_attn"]
    assert len(cut) == 2 and all(r["score_grad"] == 0 and r["score_fisher"] == 0 for r in cut)
    assert all(r["score_fisher"] > 0 for r in recs if r["component"] != "dec_self_attn")
    totals = component_totals(recs)
    n = len(totals)
    assert {t["component"]: t["rank_fisher"] for t in totals}["dec_self_attn"] == n
    assert {t["component"]: t["rank_grad"] for t in totals}["dec_self_attn"] == n
    assert recs[0]["n_grad"] == 2 and recs[0]["n_fisher"] == 1
    # the tied embedding is scored per use, counted once per use, and stays tied
    emb = {r["component"]: r for r in recs if r["layer"] is None}
    assert emb["token_embedding"]["n_params"] == emb["output_projection"]["n_params"] == 300 * 64
    assert emb["token_embedding"]["score_fisher"] != emb["output_projection"]["score_fisher"]
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad == flags[n] and p.grad is None
    pp = per_param(recs)
    assert pp[0]["score_grad_per_param"] == pytest.approx(pp[0]["score_grad"] / pp[0]["n_params"])


def test_calibration_split_and_heatmap(tmp_path):
    calib, rest = calibration_split(list(range(200)), 0.1)
    assert calib == list(range(20)) and rest == list(range(20, 200))
    assert calibration_split(list(range(5)), 0.1)[0] == [0]
    recs = [{"component": c, "layer": layer, "n_params": 10, "score_grad": 1.0 + layer, "score_fisher": 0.5}
            for c in ("enc_ffn", "dec_ffn") for layer in (0, 1)]
    recs.append({"component": "token_embedding", "layer": None, "n_params": 10, "score_grad": 0.0,
                 "score_fisher": 1.0})
    plot_p3_sensitivity(recs, tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- magnitude
def test_l1_prunes_exactly_the_requested_count_of_the_smallest_weights():
    model = make_tiny_whisper(decoder_layers=3)
    ratios = {"enc_ffn": 0.5, "dec_self_attn": 0.3, "conv": 0.3, "dec_cross_attn": 0.45, "enc_self_attn": 0.4}
    masks = l1_unstructured_masks(model, ratios, {"dec_ffn": [0.25, 0.45, 0.30]})
    params = dict(model.named_parameters())
    seen = set()
    for info in param_map(model):
        if not info.prunable or info.component in ("token_embedding", "output_projection"):
            continue
        r = ratios.get(info.component) if info.component != "dec_ffn" else [0.25, 0.45, 0.30][info.layer]
        mask = masks[info.name]
        assert int((~mask).sum()) == n_to_prune(r, info.numel), info.name
        w = params[info.name].detach().abs()
        assert w[~mask].max() <= w[mask].min()  # the pruned ones are the smallest
        seen.add(info.component)
    assert seen == set(COMPONENTS) - {"token_embedding", "output_projection"}
    assert not any(component_of(n)[0] == OTHER for n in masks)
    # two layers with a thirds spec: layer 0 -> first third, layer 1 -> second third
    two = make_tiny_whisper()
    r2, _ = tensor_ratios(two, {}, {"dec_ffn": [0.25, 0.45, 0.30]})
    assert r2["model.decoder.layers.0.fc1.weight"] == 0.25 and r2["model.decoder.layers.1.fc2.weight"] == 0.45
    r3, _ = tensor_ratios(two, {"enc_ffn": 0.1}, {"enc_ffn": {1: 0.5}})
    assert r3["model.encoder.layers.0.fc1.weight"] == 0.1 and r3["model.encoder.layers.1.fc1.weight"] == 0.5


def test_ties_are_broken_by_position():
    a, b = torch.ones(2, 3), torch.ones(4)
    (m,) = smallest_magnitude_masks([a], 4)
    assert m.flatten().tolist() == [False] * 4 + [True] * 2
    ma, mb = smallest_magnitude_masks([a, b], 7)
    assert not ma.any() and mb.tolist() == [False, True, True, True]
    c = torch.tensor([3.0, -1.0, 1.0, 2.0])
    assert smallest_magnitude_masks([c], 2)[0].tolist() == [True, False, False, True]
    assert n_to_prune(0.5, 3) == 2 and n_to_prune(0.25, 2) == 1 and n_to_prune(0.0, 10) == 0


def test_global_matches_the_overall_count_with_one_threshold(tiny_whisper):
    big = "model.encoder.layers.0.fc1.weight"
    with torch.no_grad():
        tiny_whisper.get_parameter(big).mul_(10)  # large weights: global pruning should spare them
    keep = prunable_filter(tiny_whisper)
    chosen = {n: p for n, p in tiny_whisper.named_parameters() if keep(n, p)}
    total = sum(p.numel() for p in chosen.values())
    comp = l1_unstructured_masks(tiny_whisper, FINAL_RATIOS, FINAL_PER_LAYER)
    k = count_pruned(comp)
    glob = global_magnitude_masks(tiny_whisper, k / total, keep)
    assert count_pruned(glob) == k
    pruned_max = max(chosen[n].detach().abs()[~m].max() for n, m in glob.items())
    kept_min = min((chosen[n].detach().abs()[glob[n]] if n in glob else chosen[n].detach().abs()).min()
                   for n in chosen)
    assert pruned_max <= kept_min
    assert float((~glob[big]).float().mean()) < 0.05 < k / total  # per-tensor sparsity varies
    assert PROJ not in glob  # the tied tensor is one tensor, under its first name


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2", "hubert"])
def test_uniform_masks_have_the_same_ratio_in_every_tensor(kind):
    model = make_tiny_whisper() if kind == "whisper" else make_tiny_ctc(kind)
    keep = None if kind == "whisper" else linear_weight_filter(model)
    masks = uniform_magnitude_masks(model, 0.3, keep)
    params = dict(model.named_parameters())
    expected = [n for n, p in params.items() if (keep or prunable_filter(model))(n, p)]
    assert sorted(masks) == sorted(expected)
    for n, m in masks.items():
        assert int((~m).sum()) == n_to_prune(0.3, params[n].numel())
    if kind != "whisper":
        assert all(n.endswith(".weight") and "conv" not in n for n in masks)


# ---------------------------------------------------------------------------------------------- applying
def test_zero_pruning_changes_nothing(tiny_whisper, whisper_features):
    zero = {c: 0.0 for c in COMPONENTS}
    assert l1_unstructured_masks(tiny_whisper, zero, {"dec_ffn": [0.0, 0.0]}) == {}
    assert global_magnitude_masks(tiny_whisper, 0.0) == {} and uniform_magnitude_masks(tiny_whisper, 0.0) == {}
    ref = logits(tiny_whisper, whisper_features)
    gen_ref = tiny_whisper.generate(whisper_features, max_new_tokens=5)
    with pruned(tiny_whisper, {}):
        assert torch.equal(logits(tiny_whisper, whisper_features), ref)
        assert torch.equal(tiny_whisper.generate(whisper_features, max_new_tokens=5), gen_ref)


def test_tied_embedding_pruned_once_at_the_max_ratio(tiny_whisper):
    per_tensor, tied = tensor_ratios(tiny_whisper, {"token_embedding": 0.25, "output_projection": 0.4})
    assert tied == [{"tensor": EMB, "uses": {EMB: "token_embedding", PROJ: "output_projection"},
                     "asked": {"token_embedding": 0.25, "output_projection": 0.4}, "applied": 0.4}]
    masks = l1_unstructured_masks(tiny_whisper, {"token_embedding": 0.25, "output_projection": 0.4})
    assert list(masks) == [EMB] and count_pruned(masks) == n_to_prune(0.4, 300 * 64)
    with pruned(tiny_whisper, masks):
        assert tiny_whisper.proj_out.weight is tiny_whisper.model.decoder.embed_tokens.weight
        assert int((tiny_whisper.proj_out.weight == 0).sum()) == n_to_prune(0.4, 300 * 64)
        assert component_sparsity(tiny_whisper, masks)["output_projection"] == pytest.approx(40.0, abs=0.01)
    assert tensor_ratios(tiny_whisper, {"output_projection": 0.3})[0][EMB] == 0.3


def test_nonzero_count_drops_parameter_count_does_not(tiny_whisper):
    before = count_params(tiny_whisper)
    weights = {n: p.detach().clone() for n, p in tiny_whisper.named_parameters()}
    masks = l1_unstructured_masks(tiny_whisper, FINAL_RATIOS, FINAL_PER_LAYER)
    with pruned(tiny_whisper, masks):
        during = count_params(tiny_whisper)
        assert during["params"] == before["params"]
        newly_zero = sum(int(((weights[n] != 0) & ~m).sum()) for n, m in masks.items())  # padding row was 0
        assert during["nonzero_params"] == before["nonzero_params"] - newly_zero
        assert newly_zero > 0.3 * before["params"]
        assert set(get_masks(tiny_whisper)) == set(masks)
    assert get_masks(tiny_whisper) == {}
    assert all(torch.equal(p, weights[n]) for n, p in tiny_whisper.named_parameters())  # restored exactly
    apply_masks(tiny_whisper, masks)
    with pytest.raises(RuntimeError, match="already carries masks"):
        with pruned(tiny_whisper, masks):
            pass


# ---------------------------------------------------------------------------------------------- experiment
def test_run_points_end_to_end_with_the_suite_decoder(tmp_path, offline_processor):
    from conftest import OFFLINE_DIMS, make_offline_rows

    from asrcompress.models.whisper import build_model

    model = build_model({**OFFLINE_DIMS, "encoder_layers": 3}, offline_processor.tokenizer, 1, "eager")
    assert last_layers(3, None) == [2] and last_layers(12, None) == [8, 9, 10, 11] and last_layers(2, None) == [1]
    assert last_layers(2, 1) == [1]
    assert len(plan_points(model)) == 1 + 6 + 1 + 2  # the paper's points by default (no scores: no sensitivity point)
    points = plan_points(model, FINAL_RATIOS, FINAL_PER_LAYER, dec_self_attn_ratios=[0.0, 0.5],
                         sensitivity=sensitivity_records(model), baselines=["global", "uniform"])
    assert [p.key for p in points] == ["dense", "dec_self_attn_0", "dec_self_attn_50", "last_encoder_50",
                                       "sensitivity_s40", "paper_s40", "global_s40", "uniform_s40"]
    rows = make_offline_rows(4)
    table, hyps = run_points(model, offline_processor, points, rows, "en", "english", 50, lambda *a: 0,
                             batch_size=4, max_new_tokens=4)
    by = {r["point"]: r for r in table}
    assert by["dec_self_attn_0"]["wer_pct"] == by["dense"]["wer_pct"] and not by["dec_self_attn_0"]["decoded"]
    assert all(r["decoded"] for r in table if r["point"] != "dec_self_attn_0")
    assert by["global_s40"]["pruned_weights"] == by["sensitivity_s40"]["pruned_weights"] > 0
    for key in ("sensitivity_s40", "paper_s40"):  # both reach the compared sparsity, up to per-tensor rounding
        assert by[key]["prunable_sparsity_pct"] == pytest.approx(40.0, abs=0.05)
    assert by["paper_s40"]["scale"] == pytest.approx(0.4 / config_sparsity(model, FINAL_RATIOS, FINAL_PER_LAYER))
    assert by["sensitivity_s40"]["component_sparsity_pct"] != by["paper_s40"]["component_sparsity_pct"]
    assert by["sensitivity_s40"]["params"] == by["dense"]["params"]
    assert by["sensitivity_s40"]["nonzero_params"] < by["dense"]["nonzero_params"]
    assert by["last_encoder_50"]["component_sparsity_pct"]["enc_ffn"] == pytest.approx(100 / 6, abs=0.01)
    assert by["dec_self_attn_50"]["component_sparsity_pct"]["dec_self_attn"] == pytest.approx(50.0)
    assert by["dense"]["delta_wer_pct"] == 0 and by["dense"]["storage_csr_mib"] == by["dense"]["storage_dense_mib"]
    assert len(hyps) == len(points) * len(rows) and get_masks(model) == {}
    metrics = headline_metrics(table)
    assert metrics["sensitivity_s40_wer_pct"] == by["sensitivity_s40"]["wer_pct"] and metrics["n_eval_utts"] == 4
    assert metrics["final_point"] == "sensitivity_s40"
    assert metrics["paper_s40_p_value_worse"] == by["paper_s40"]["p_value_worse"]
    assert metrics["global_s40_delta_ci_high_pct"] == by["global_s40"]["delta_ci_high_pct"]
    plot_p3_sweeps(table, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
