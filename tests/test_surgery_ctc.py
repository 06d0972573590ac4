"""Physical surgery on CTC models (wav2vec 2.0 and HuBERT, parametrised by the ``tiny_ctc`` fixture)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_ctc

from asrcompress.compress.surgery import (
    HubertAttentionNoHeads,
    SurgeryError,
    Wav2Vec2AttentionNoHeads,
    apply_structure,
    factorize_embedding,
    merge_layers,
    num_parameters,
    prune_ffn_neurons,
    prune_heads,
    remove_layers,
    structure_of,
    uniform_fractions,
)

D, HEADS, HD, FFN = 64, 4, 16, 128


def logits(model, audio):
    with torch.no_grad():
        return model(audio).logits


def layers(model):
    return model.base_model.encoder.layers


def test_neuron_with_zero_output_column_is_removed_without_changing_outputs(tiny_ctc, ctc_audio):
    m = tiny_ctc
    with torch.no_grad():
        layers(m)[1].feed_forward.output_dense.weight[:, [5, 6, 100]] = 0
    ref = logits(m, ctc_audio)
    n0 = num_parameters(m)
    prune_ffn_neurons(m, "encoder", 1, [100, 5, 6])
    assert num_parameters(m) == n0 - 3 * (2 * D + 1)
    ff = layers(m)[1].feed_forward
    assert ff.intermediate_dense.weight.shape == (FFN - 3, D) and ff.output_dense.weight.shape == (D, FFN - 3)
    torch.testing.assert_close(logits(m, ctc_audio), ref, atol=1e-5, rtol=1e-5)


def test_head_with_zero_out_proj_columns_is_removed_without_changing_outputs(tiny_ctc, ctc_audio):
    m = tiny_ctc
    att = layers(m)[0].attention
    with torch.no_grad():
        att.out_proj.weight[:, 2 * HD:3 * HD] = 0
    ref = logits(m, ctc_audio)
    n0 = num_parameters(m)
    prune_heads(m, "encoder", 0, [2])
    # q, k, v rows and out_proj columns (4 * hd * d) + q, k, v bias entries (3 * hd)
    assert num_parameters(m) == n0 - (4 * HD * D + 3 * HD)
    assert att.num_heads == 3 and att.head_dim == HD and att.embed_dim == 3 * HD
    assert att.k_proj.weight.shape == (3 * HD, D) and att.out_proj.weight.shape == (D, 3 * HD)
    torch.testing.assert_close(logits(m, ctc_audio), ref, atol=1e-5, rtol=1e-5)
    assert structure_of(m)["stacks"]["encoder"]["layers"][0]["heads"] == [0, 1, 3]


def test_no_heads_and_zero_width_ffn(tiny_ctc, ctc_audio):
    m = tiny_ctc
    ref_model = copy.deepcopy(m)
    with torch.no_grad():  # reference: attention and FFN of layer 1 contribute only their output biases
        layers(ref_model)[1].attention.out_proj.weight.zero_()
        layers(ref_model)[1].feed_forward.output_dense.weight.zero_()
    prune_heads(m, "encoder", 1, range(HEADS))
    prune_ffn_neurons(m, "encoder", 1, range(FFN))
    att = layers(m)[1].attention
    assert isinstance(att, (Wav2Vec2AttentionNoHeads, HubertAttentionNoHeads)) and att.num_heads == 0
    assert att.q_proj.weight.shape == (0, D) and att.out_proj.bias.shape == (D,)
    torch.testing.assert_close(logits(m, ctc_audio), logits(ref_model, ctc_audio), atol=1e-5, rtol=1e-5)
    rec = structure_of(m)["stacks"]["encoder"]["layers"][1]
    assert rec["heads"] == [] and rec["ffn"] == 0


def test_remove_and_merge_layers(tiny_ctc, ctc_audio):
    kind = "hubert" if "Hubert" in type(tiny_ctc).__name__ else "wav2vec2"
    a = make_tiny_ctc(kind, num_hidden_layers=3)
    b = copy.deepcopy(a)
    merge_layers(a, "encoder", 0, 1.0, 0.0)
    remove_layers(b, "encoder", [1])
    assert a.config.num_hidden_layers == 2 and len(layers(a)) == 2
    assert torch.equal(logits(a, ctc_audio), logits(b, ctc_audio))
    assert structure_of(a)["layers_kept"] == {"encoder": [0, 2]}
    per_layer = sum(p.numel() for p in layers(b)[0].parameters())
    n = num_parameters(b)
    remove_layers(b, "encoder", [0, 1])  # a CTC encoder may lose every layer
    assert num_parameters(b) == n - 2 * per_layer
    assert logits(b, ctc_audio).shape[-1] == 32


def test_stable_layer_norm_variant(ctc_audio):
    m = make_tiny_ctc("wav2vec2", do_stable_layer_norm=True, feat_extract_norm="layer")
    with torch.no_grad():
        layers(m)[0].feed_forward.output_dense.weight[:, :10] = 0
    ref = logits(m, ctc_audio)
    prune_ffn_neurons(m, "encoder", 0, range(10))
    torch.testing.assert_close(logits(m, ctc_audio), ref, atol=1e-5, rtol=1e-5)
    prune_heads(m, "encoder", 1, [0, 1])
    assert logits(m, ctc_audio).shape == ref.shape


def test_apply_structure_and_fractions(tiny_ctc, ctc_audio):
    m = tiny_ctc
    prune_heads(m, "encoder", 0, [0])
    prune_ffn_neurons(m, "encoder", 1, range(0, 128, 4))
    st = structure_of(m)
    fresh = type(m)(type(m.config).from_dict(st["base_config"])).eval()
    apply_structure(fresh, st)
    assert structure_of(fresh) == st
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(logits(fresh, ctc_audio), logits(m, ctc_audio))
    half = type(m)(m.config.__class__.from_dict(st["base_config"])).eval()
    apply_structure(half, uniform_fractions(half.config, ffn=0.5, heads=0.5))
    recs = structure_of(half)["stacks"]["encoder"]["layers"]
    assert [(r["ffn"], len(r["heads"])) for r in recs] == [(64, 2), (64, 2)]
    wrong = "hubert" if st["family"] == "wav2vec2" else "wav2vec2"
    with pytest.raises(SurgeryError, match=f"structure is for family '{st['family']}', model is '{wrong}'"):
        apply_structure(make_tiny_ctc(wrong), st)


def test_bad_requests(tiny_ctc):
    m = tiny_ctc
    with pytest.raises(SurgeryError, match=r"encoder layer 1: head 4 does not exist \(layer has 4 heads\)"):
        prune_heads(m, "encoder", 1, [0, 4])
    with pytest.raises(SurgeryError, match=r"encoder layer 0: no cross-attention"):
        prune_heads(m, "encoder", 0, [0], attn="cross")
    with pytest.raises(SurgeryError, match=r"unknown stack 'decoder'"):
        prune_ffn_neurons(m, "decoder", 0, [0])
    with pytest.raises(SurgeryError, match=r"encoder layer 0: duplicate neuron indices \[3\]"):
        prune_ffn_neurons(m, "encoder", 0, [3, 1, 3])
    with pytest.raises(SurgeryError, match="only Whisper has a tied token embedding"):
        factorize_embedding(m, torch.zeros(32, 2), torch.zeros(2, 64))
    with pytest.raises(SurgeryError, match=r"encoder: layer 2 does not exist \(encoder has 2 layers\)"):
        remove_layers(m, "encoder", [2])
