"""Wanda one-shot pruning (compress/wanda.py): |W| * ||x|| per output row, calibrated by the model's own forward."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_whisper

from asrcompress.compress.board import BoardInputs, pool_sparsity, total_params
from asrcompress.compress.wanda import input_norms, linear_inputs, pool_numel, wanda_masks
from asrcompress.config import ParamError


def _ids(n: int = 2) -> torch.Tensor:
    return torch.tensor([[1, 5, 6, 7, 8]] * n)


def test_input_norms_are_the_l2_norms_of_each_linears_inputs(whisper_features):
    model = make_tiny_whisper()
    norms = input_norms(model, [whisper_features], [_ids()])
    assert set(norms) == set(linear_inputs(model))
    assert "model.decoder.embed_tokens.weight" in norms and "proj_out.weight" not in norms  # tied: once
    seen = {}
    fc1 = model.model.encoder.layers[1].fc1
    def keep_input(m, i, o) -> None:
        seen["x"] = i[0].detach().clone()
    h = fc1.register_forward_hook(keep_input)
    with torch.no_grad():
        model(input_features=whisper_features, decoder_input_ids=_ids())
    h.remove()
    manual = seen["x"].reshape(-1, fc1.in_features).double().pow(2).sum(0).sqrt()
    assert torch.allclose(norms["model.encoder.layers.1.fc1.weight"], manual, rtol=1e-6)


def test_each_output_row_loses_the_same_count_and_activations_decide_which():
    model = make_tiny_whisper()
    lin = linear_inputs(model)
    norms = {n: torch.ones(m.in_features, dtype=torch.float64) for n, m in lin.items()}
    name = "model.encoder.layers.0.fc1.weight"
    w = lin[name].weight
    with torch.no_grad():
        w[:, 0] = 10.0                      # the largest weights of every row ...
    norms[name][0] = 0.0                    # ... on an input that is always zero: Wanda drops them
    masks = wanda_masks(model, norms, 0.25)
    k = round(0.25 * w.shape[1])
    assert all(int((~masks[n]).sum(1).unique().item()) == round(0.25 * lin[n].in_features) for n in masks)
    assert not masks[name][:, 0].any()      # magnitude alone would have kept column 0 in every row
    assert int((~masks[name]).sum()) == k * w.shape[0]


def test_board_compress_zeroes_the_budget_of_all_parameters():
    from conftest import make_offline_rows

    from asrcompress.compress import wanda

    model = make_tiny_whisper()
    model.generation_config.is_multilingual = False  # no language tokens in the tiny vocabulary
    total = total_params(model)
    feats_rows = make_offline_rows(4)
    proc = _TinyProcessor()
    rec = wanda.board_compress(model, {"budget": 0.3, "calibration_tokens": 4},
                               BoardInputs(proc, feats_rows, "en", 0, "leaderboard.entries.w"))
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert abs(zeros / total - 0.3) < 0.01
    assert rec["pool_params"] == pool_numel(model) and rec["calibration_utterances"] == 4
    assert not any(n.startswith("asrc_mask") for n, _ in model.named_buffers())  # zeros baked in, no masks


def test_a_budget_the_pool_cannot_reach_is_named():
    with pytest.raises(ParamError, match=r"leaderboard\.entries\.x\.budget"):
        pool_sparsity(100, 50, 0.6, "leaderboard.entries.x")
    with pytest.raises(ParamError, match=r"leaderboard\.entries\.x\.budget: missing"):
        pool_sparsity(100, 50, None, "leaderboard.entries.x")


class _TinyProcessor:
    """Features of the tiny Whisper's window (80 mels x 100 frames) from any audio."""

    def __init__(self) -> None:
        class FE:
            def __call__(self, audio, sampling_rate, return_tensors):
                g = torch.Generator().manual_seed(len(audio))
                return type("F", (), {"input_features": torch.randn(len(audio), 80, 100, generator=g)})()
        self.feature_extractor = FE()
