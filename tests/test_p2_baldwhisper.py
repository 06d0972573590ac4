"""Paper 2 (BaldWhisper): decoder layer merging, activation-aware low-rank embedding, feature distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_whisper

from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.compress.distill import FeatureDistillation, default_layer_map, feature_loss
from asrcompress.compress.layer_merge import (
    DecoderStates,
    choose_pairs,
    merge_decoder_pairs,
    merge_most_similar,
    pair_similarity,
)
from asrcompress.compress.lowrank_embedding import (
    activation_aware_factors,
    activation_scale,
    embedding_weight,
    factorize_activation_aware,
    logit_input_moment,
    rank_error_sweep,
    rank_for_fraction,
    reconstruction_errors,
)
from asrcompress.compress.surgery import LowRankEmbedding, remove_layers, structure_of


def _batch(seed: int = 3, batch: int = 2, tokens: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, 300, (batch, tokens), generator=g)
    labels[1, -2:] = -100  # padding in the second row
    return {"input_features": torch.randn(batch, 80, 100, generator=g), "labels": labels}


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _make_identity_layer(model: torch.nn.Module, layer: int) -> None:
    """Zero every residual branch's output of a decoder layer: it then returns its input unchanged."""
    mod = model.model.decoder.layers[layer]
    with torch.no_grad():
        for lin in (mod.self_attn.out_proj, mod.encoder_attn.out_proj, mod.fc2):
            lin.weight.zero_()
            lin.bias.zero_()


# ---------------------------------------------------------------------------------------------- merging


def test_merge_alpha1_beta0_equals_dropping_second_layer():
    batch = _batch()
    merged, dropped = make_tiny_whisper(decoder_layers=4), make_tiny_whisper(decoder_layers=4)
    records = merge_decoder_pairs(merged, [1], alpha=1.0, beta=0.0)
    remove_layers(dropped, "decoder", [2])
    assert records == [{"first": 1, "position": 1, "origin": [1, 2], "alpha": 1.0, "beta": 0.0}]
    assert len(merged.model.decoder.layers) == 3
    torch.testing.assert_close(_logits(merged, batch), _logits(dropped, batch), rtol=0, atol=0)


def test_merge_several_pairs_positions_and_per_pair_weights():
    m = make_tiny_whisper(decoder_layers=6)
    ref = copy.deepcopy(m)
    recs = merge_decoder_pairs(m, [4, 0], alpha=[0.3, 0.5], beta=[0.7, 0.5])
    assert [(r["first"], r["position"], r["origin"]) for r in recs] == [(0, 0, [0, 1]), (4, 3, [4, 5])]
    layers = m.model.decoder.layers
    assert len(layers) == 4
    w = lambda mod, i: mod.model.decoder.layers[i].fc1.weight  # noqa: E731
    torch.testing.assert_close(w(m, 0), 0.3 * w(ref, 0) + 0.7 * w(ref, 1))
    torch.testing.assert_close(w(m, 3), 0.5 * w(ref, 4) + 0.5 * w(ref, 5))
    with pytest.raises(ValueError):
        merge_decoder_pairs(make_tiny_whisper(decoder_layers=4), [0, 1])


def test_choose_pairs_is_exact_and_disjoint():
    assert choose_pairs([0.1, 0.9, 0.2], 1) == [1]
    # greedy would take (1, 2) = 0.9 and then nothing fits; the best two disjoint pairs are (0,1) and (2,3)
    assert choose_pairs([0.8, 0.9, 0.8], 2) == [0, 2]
    assert choose_pairs([0.5, 0.5, 0.5], 1) == [0]
    with pytest.raises(ValueError):
        choose_pairs([0.1, 0.2], 2)


def test_similarity_picks_constructed_duplicate_pair():
    """Layer 2 returns its input unchanged, so layers 1 and 2 have identical outputs: pair (1, 2) wins."""
    m = make_tiny_whisper(decoder_layers=4)
    _make_identity_layer(m, 2)
    batches = [_batch(5), _batch(6)]
    records = pair_similarity(m, batches)
    assert [r["first"] for r in records] == [0, 1, 2]
    assert records[1]["output_cos"] == pytest.approx(1.0, abs=1e-5)
    assert max(r["output_cos"] for r in (records[0], records[2])) < 0.999
    assert records[1]["tokens"] == 2 * (2 * 7 - 2)  # two batches, padding excluded
    result = merge_most_similar(m, batches, n_pairs=1, similarity="output", alpha=1.0, beta=0.0)
    assert result["merged"][0]["origin"] == [1, 2]
    assert structure_of(m)["stacks"]["decoder"]["layers"][1]["origin"] == [1, 2]


def test_decoder_states_hooks_are_removed():
    m = make_tiny_whisper()
    batch = _batch()
    with DecoderStates(m) as rec:
        m(**batch)
        assert len(rec.boundaries) == 3 and all(b is not None for b in rec.boundaries)
        assert rec.state("final").shape == (2, 7, 64)
    n_hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())
    assert n_hooks == 0


# ---------------------------------------------------------------------------------------------- low rank


def test_full_rank_reproduces_embedding_and_logits():
    m = make_tiny_whisper()
    batch = _batch()
    before = _logits(m, batch)
    W = embedding_weight(m).clone()
    C, n_tokens = logit_input_moment(m, [batch])
    assert n_tokens == 2 * 7 - 2 and C.shape == (64, 64)
    info = factorize_activation_aware(m, 64, C, mode="full", damping=0.01)
    emb = m.model.decoder.embed_tokens
    assert isinstance(emb, LowRankEmbedding) and emb.rank == 64
    assert m.proj_out.embedding is emb  # output projection still tied to the embedding
    torch.testing.assert_close(emb.full_weight(), W, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(m, batch), before, rtol=1e-4, atol=1e-4)
    assert info["weight_rel_err"] < 1e-5 and info["act_rel_err"] < 1e-5


def test_activation_aware_beats_plain_svd_on_anisotropic_activations():
    g = torch.Generator().manual_seed(0)
    vocab, d, r = 200, 32, 8
    W = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, -3, d, dtype=torch.float64)  # a few directions carry the activations
    C = (Q * scales**2) @ Q.T
    plain = activation_aware_factors(W, r, *activation_scale(C, "none"))
    aware = activation_aware_factors(W, r, *activation_scale(C, "full", damping=1e-6))
    diag = activation_aware_factors(W, r, *activation_scale(C, "diag", damping=1e-6))
    e_plain = reconstruction_errors(W, plain[0] @ plain[1], C)
    e_aware = reconstruction_errors(W, aware[0] @ aware[1], C)
    e_diag = reconstruction_errors(W, diag[0] @ diag[1], C)
    assert e_aware["act_rel_err"] < 0.5 * e_plain["act_rel_err"]
    assert e_plain["weight_rel_err"] < e_aware["weight_rel_err"]  # plain SVD is optimal in weight space
    assert e_diag["act_rel_err"] < e_plain["act_rel_err"] * 1.5  # diag is a cheap approximation
    sweep = rank_error_sweep(W, C, [4, 8, 32], mode="full", damping=1e-6)
    assert [s["rank"] for s in sweep] == [4, 8, 32]
    assert all(s["aware_act_rel_err"] <= s["plain_act_rel_err"] + 1e-9 for s in sweep)
    assert sweep[0]["aware_act_rel_err"] > sweep[1]["aware_act_rel_err"] > sweep[2]["aware_act_rel_err"]
    assert sweep[2]["plain_weight_rel_err"] < 1e-9
    assert sweep[1]["embedding_params"] == 8 * (vocab + d)
    direct = activation_aware_factors(W, 4, *activation_scale(C, "full", damping=1e-6))
    assert sweep[0]["aware_act_rel_err"] == pytest.approx(
        reconstruction_errors(W, direct[0] @ direct[1], C)["act_rel_err"], rel=1e-6)


def test_rank_for_fraction():
    assert rank_for_fraction(0.25, 51865, 768) == 192
    assert rank_for_fraction(1.0, 1000, 128) == 128
    assert rank_for_fraction(0.001, 1000, 128) == 1
    with pytest.raises(ValueError):
        rank_for_fraction(0.0, 1000, 128)


def test_lowrank_after_merge_saves_and_reloads(tmp_path):
    m = make_tiny_whisper(decoder_layers=4)
    batch = _batch()
    merge_decoder_pairs(m, [2], 0.5, 0.5)
    C, _ = logit_input_moment(m, [batch])
    factorize_activation_aware(m, 16, C)
    save_compressed(m, tmp_path / "m", "p2", {"rank": 16})
    back = load_compressed(tmp_path / "m")
    s = structure_of(back)
    assert s["embedding_rank"] == 16 and [r["origin"] for r in s["stacks"]["decoder"]["layers"]] == [[0], [1], [2, 3]]
    torch.testing.assert_close(_logits(back, batch), _logits(m, batch), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- distillation


def test_distillation_loss_zero_when_student_equals_teacher():
    teacher = make_tiny_whisper()
    student = copy.deepcopy(teacher).train()
    batch = _batch()
    for loss in ("mse", "nmse", "cosine"):
        with FeatureDistillation(teacher, student, layers="all", loss=loss, weight=2.0) as kd:
            out = student(**batch)
            value = kd(student, batch, out)
        assert value.item() == pytest.approx(0.0, abs=1e-6)
        assert len(kd.pairs) == 4  # boundaries 0, 1, 2 and the final norm
    n_hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in student.modules())
    assert n_hooks == 0


def test_distillation_maps_merged_layers_and_trains_student():
    """A (1, 0) merge of (1, 2) where layer 2 is an identity equals the teacher, through the layer map."""
    teacher = make_tiny_whisper(decoder_layers=4)
    _make_identity_layer(teacher, 2)
    student = copy.deepcopy(teacher)
    merge_decoder_pairs(student, [1], 1.0, 0.0)
    assert default_layer_map(student, 4) == {0: 0, 1: 1, 2: 3, 3: 4}
    batch = _batch()
    with FeatureDistillation(teacher, student, layers="all", loss="nmse") as kd:
        out = student(**batch)
        assert kd(student, batch, out).item() == pytest.approx(0.0, abs=1e-6)
        # perturbed student: positive loss with gradients reaching the student only
        with torch.no_grad():
            student.model.decoder.layers[0].fc2.weight.add_(0.1)
        student.train()
        out = student(**batch)
        value = kd(student, batch, out)
        value.backward()
    assert value.item() > 0
    assert student.model.decoder.layers[0].fc2.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_feature_loss_masks_padding():
    s, t = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)
    s[0, 2] = 5.0  # differs only at a padded position
    mask = torch.tensor([[True, True, False]])
    assert feature_loss(s, t + 1.0, mask, "mse").item() == pytest.approx(1.0)
    assert feature_loss(s, t + 1.0, mask, "nmse").item() == pytest.approx(1.0)
    assert feature_loss(s + 1.0, t + 1.0, mask, "cosine").item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------- the recipe's steps


def test_recipe_steps_record_structure_and_diagnostics(tmp_path):
    from asrcompress.compress import baldwhisper as bw
    from asrcompress.io import write_csv

    m = make_tiny_whisper(decoder_layers=2)
    calib = [_batch(seed) for seed in (3, 4)]
    p2 = {"merge": {"n_pairs": 1, "similarity": "output", "alpha": 0.5, "beta": 0.5, "pairs": None},
          "lowrank": {"rank_fraction": 0.25, "scaling": "full", "damping": 0.01, "sweep": [0.125, 0.25, 1.0]}}
    before = bw.dev_loss(m, calib)
    merged, similarity = bw.merge_step(m, p2, calib)
    assert [r["origin"] for r in merged["merged"]] == [[0, 1]] and similarity[0]["origin"] == "0 1"
    info, sweep = bw.lowrank_step(m, p2, calib)
    d_model = m.config.d_model
    assert info["rank"] == d_model // 4 and [r["rank_fraction"] for r in sweep][-1] == 1.0
    write_csv(tmp_path / "similarity.csv", similarity)  # the one CSV helper takes the rows as they are
    assert (tmp_path / "similarity.csv").read_text().splitlines()[1].startswith("0,0 1,")
    assert bw.structure_summary(m) == {"decoder_layers": 1, "decoder_layers_base": 2, "merged_pairs": 1,
                                       "embedding_rank": d_model // 4, "d_model": d_model}
    assert bw.dev_loss(m, calib) != before
    assert bw.recover(m, "v", {"max_steps": 0, "distill": False}, {"train": {"max_steps": 5}}, 0, [], None,
                      "", "", tmp_path / "loss.csv") == {"train": {"steps": 0}}
