"""Unstructured masks: zeros, not fewer parameters."""

from __future__ import annotations

import copy

import pytest
import torch

from asrcompress.compress.masks import (
    MaskError,
    apply_masks,
    get_masks,
    make_permanent,
    reapply_masks,
    remove_masks,
    sparse_storage_bytes,
    sparsity_report,
)
from asrcompress.compress.surgery import (
    SurgeryError,
    merge_layers,
    num_parameters,
    prune_ffn_neurons,
    prune_heads,
)

FC1 = "model.encoder.layers.0.fc1.weight"
Q = "model.decoder.layers.1.self_attn.q_proj.weight"


def half_masks(model, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) > 0.5 for n in names}


def test_masks_change_nonzero_count_not_parameter_count(tiny_whisper):
    m = tiny_whisper
    n0 = num_parameters(m)
    before = sparsity_report(m)
    masks = half_masks(m, [FC1, Q])
    masked = sum(int((~mk).sum()) for mk in masks.values())
    apply_masks(m, masks)
    after = sparsity_report(m)
    assert num_parameters(m) == n0 and after["total"] == before["total"] == n0
    assert after["zero"] - before["zero"] == masked
    assert after["nonzero"] == before["nonzero"] - masked
    fc1_before, fc1_after = before["per_module"]["model.encoder.layers.0.fc1"], after["per_module"]["model.encoder.layers.0.fc1"]
    assert fc1_after["zero"] - fc1_before["zero"] == int((~masks[FC1]).sum())
    assert fc1_after["total"] == 128 * 64 + 128
    assert after["sparsity"] == pytest.approx(after["zero"] / n0)
    assert not any("asrc_mask" in k for k in m.state_dict())  # masks are not checkpointed


def test_reapply_after_optimiser_step(tiny_whisper, whisper_features):
    m = tiny_whisper
    apply_masks(m, half_masks(m, [FC1]))
    w = dict(m.named_parameters())[FC1]
    mask = get_masks(m)[FC1]
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = m(input_features=whisper_features, labels=torch.tensor([[5, 6, 7]] * 2)).loss
    loss.backward()
    opt.step()
    assert (w[~mask] != 0).any()  # the step revived masked weights...
    assert reapply_masks(m) == 1
    assert (w[~mask] == 0).all() and (w[mask] != 0).all()  # ...and reapplying zeroes them again


def test_masks_combine_follow_deepcopy_and_can_be_removed(tiny_whisper):
    m = tiny_whisper
    a, b = half_masks(m, [FC1], seed=1)[FC1], half_masks(m, [FC1], seed=2)[FC1]
    apply_masks(m, {FC1: a})
    apply_masks(m, {FC1: b.float()})  # 0/1 floats accepted, combined with the stored mask
    assert torch.equal(get_masks(m)[FC1], a & b)
    c = copy.deepcopy(m)
    assert torch.equal(get_masks(c)[FC1], a & b)
    kept = make_permanent(m)
    assert set(kept) == {FC1} and get_masks(m) == {} and reapply_masks(m) == 0
    assert (dict(m.named_parameters())[FC1][~(a & b)] == 0).all()
    assert set(remove_masks(c)) == {FC1} and get_masks(c) == {}


def test_ctc_masks_and_filter(tiny_ctc):
    suffix = "encoder.layers.1.feed_forward.intermediate_dense.weight"
    name = next(n for n, _ in tiny_ctc.named_parameters() if n.endswith(suffix))
    apply_masks(tiny_ctc, {name: torch.zeros(128, 64, dtype=torch.bool)})
    rep = sparsity_report(tiny_ctc, param_filter=lambda n, p: n == name)
    assert rep["total"] == rep["zero"] == 128 * 64 and rep["nonzero"] == 0 and rep["sparsity"] == 1.0
    assert list(rep["per_module"]) == [name.rpartition(".")[0]]


def test_bad_masks(tiny_whisper):
    with pytest.raises(MaskError, match=r"mask 'model.encoder.layers.0.fc1.weight': shape \(2, 2\) vs parameter \(128, 64\)"):
        apply_masks(tiny_whisper, {FC1: torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(MaskError, match="has no parameter 'weigth'"):
        apply_masks(tiny_whisper, {"model.encoder.layers.0.fc1.weigth": torch.ones(1)})
    with pytest.raises(MaskError, match="no module"):
        apply_masks(tiny_whisper, {"model.nothing.weight": torch.ones(1)})
    with pytest.raises(MaskError, match="values must be 0/1"):
        apply_masks(tiny_whisper, {FC1: torch.full((128, 64), 0.5)})


def test_sparse_storage_bytes_counts_csr_parts():
    t = torch.zeros(10, 20)
    t[0, :5] = 1.0
    t[7, 3] = 2.0
    s = sparse_storage_bytes(t)
    assert s == {"dense_bytes": 10 * 20 * 4, "csr_bytes": 6 * 4 + 6 * 8 + 11 * 8, "nnz": 6}
    dense = sparse_storage_bytes(torch.ones(10, 20))
    assert dense["csr_bytes"] > dense["dense_bytes"]  # CSR only pays off when sparse enough
    conv = sparse_storage_bytes(torch.zeros(4, 3, 5))
    assert conv == {"dense_bytes": 240, "csr_bytes": 5 * 8, "nnz": 0}


def test_structured_surgery_cuts_stored_masks(tiny_whisper, whisper_features):
    m = tiny_whisper
    fc2 = "model.encoder.layers.0.fc2.weight"
    masks = half_masks(m, [FC1, fc2, Q])
    apply_masks(m, masks)
    prune_ffn_neurons(m, "encoder", 0, [0, 5])
    prune_heads(m, "decoder", 1, [2])
    stored = get_masks(m)
    keep = [i for i in range(128) if i not in (0, 5)]
    assert torch.equal(stored[FC1], masks[FC1][keep])
    assert torch.equal(stored[fc2], masks[fc2][:, keep])
    assert torch.equal(stored[Q], torch.cat([masks[Q][:32], masks[Q][48:]]))
    assert reapply_masks(m) == 3
    assert m.generate(whisper_features, max_new_tokens=3).shape[0] == 2
    with pytest.raises(SurgeryError, match=r"encoder layer 0: fc1.asrc_mask__weight holds an unstructured mask"):
        merge_layers(m, "encoder", 0, 0.5, 0.5)
    make_permanent(m)
    assert get_masks(m) == {}
