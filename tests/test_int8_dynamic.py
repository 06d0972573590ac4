"""Dynamic int8 (compress/int8_dynamic.py): real int8 tensors, counted, saved, reloaded, measured."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_whisper
from safetensors.torch import load_file, save_file

from asrcompress.compress.checkpoint import CheckpointError, load_compressed, save_compressed
from asrcompress.compress.int8_dynamic import (
    QLinear,
    QuantizationError,
    int8_elements,
    quantize_int8,
    quantized_linears,
)
from asrcompress.compress.surgery import prune_ffn_neurons, prune_heads
from asrcompress.measure.flops import whisper_flops
from asrcompress.measure.memory import weight_bytes
from asrcompress.measure.params import count_params


def _logits(model, feats):
    ids = torch.tensor([[1, 5, 6, 7]] * feats.shape[0])
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=ids).logits


def test_every_linear_becomes_int8_and_the_tied_embedding_is_its_copy(whisper_features):
    model = make_tiny_whisper()
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    quantize_int8(model)
    assert sum(isinstance(m, QLinear) for m in model.modules()) == n_linear
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert model.proj_out._packed_params._weight_bias()[0].int_repr().dtype == torch.int8
    emb = model.get_input_embeddings().weight
    w = model.proj_out.weight()
    assert torch.equal(emb, w.dequantize())  # one stored tensor: the embedding is the int8 projection
    with pytest.raises(QuantizationError, match="already"):
        quantize_int8(model)


def test_int8_keeps_the_parameter_count_and_flops_and_cuts_the_bytes(whisper_features):
    dense, model = make_tiny_whisper(), quantize_int8(make_tiny_whisper())
    c0, c1 = count_params(dense), count_params(model)
    assert c1["params"] == c0["params"]  # quantisation removes no parameter
    assert c1["int8_params"] == sum(w + b for w, b in int8_elements(model).values()) > 0.5 * c0["params"]
    # in memory: every linear weight 4 -> 1 byte + 4 per row scale; the output projection is an extra int8
    # copy beside the (float) embedding it feeds
    q = dict(quantized_linears(model))
    untied = sum(m.out_features * m.in_features for n, m in q.items() if n != "proj_out")
    scales = sum(m.out_features for m in q.values())
    proj = q["proj_out"].out_features * q["proj_out"].in_features
    assert weight_bytes(dense) - weight_bytes(model) == 3 * untied - proj - 4 * scales
    f0, f1 = whisper_flops(dense), whisper_flops(model)
    assert f1["gmacs_encoder"] == f0["gmacs_encoder"] and f1["gmacs_decoder_token"] == f0["gmacs_decoder_token"]
    err = (_logits(model, whisper_features) - _logits(dense, whisper_features)).abs().max()
    assert 0 < err < 0.1 * _logits(dense, whisper_features).abs().max()


def test_saved_int8_reloads_equal_and_is_smaller_on_disk(tmp_path, whisper_features):
    dense, model = make_tiny_whisper(), quantize_int8(make_tiny_whisper())
    save_compressed(dense, tmp_path / "f32", "dense", {})
    save_compressed(model, tmp_path / "int8", "int8_dynamic", {})
    state = load_file(str(tmp_path / "int8" / "model.safetensors"))
    assert state["model.encoder.layers.0.fc1.weight"].dtype == torch.int8
    assert "model.decoder.embed_tokens.weight" not in state  # derived from proj_out's int8 tensor
    f32_bytes = (tmp_path / "f32" / "model.safetensors").stat().st_size
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < 0.6 * f32_bytes
    record = json.loads((tmp_path / "int8" / "compression.json").read_text())
    assert record["quantization"]["embedding_from"] == "proj_out"
    assert record["num_parameters"] == count_params(dense)["params"]
    back = load_compressed(tmp_path / "int8")
    assert isinstance(back.model.encoder.layers[0].fc1, QLinear)
    assert torch.equal(_logits(back, whisper_features), _logits(model, whisper_features))
    assert back.generate(whisper_features[:1], max_new_tokens=4).shape[1] >= 2


def test_a_damaged_int8_checkpoint_is_refused_naming_the_file(tmp_path):
    model = quantize_int8(make_tiny_whisper())
    out = save_compressed(model, tmp_path / "m", "int8_dynamic", {})
    f = out / "model.safetensors"
    state = load_file(str(f))
    del state["model.encoder.layers.0.fc1.weight_scale"]
    save_file(state, str(f), metadata={"format": "pt"})
    record = json.loads((out / "compression.json").read_text())
    import hashlib

    record["weights_sha256"]["model.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (out / "compression.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*fc1\.weight_scale"):
        load_compressed(out)


def test_a_pruned_model_with_an_emptied_layer_quantises_saves_and_reloads(tmp_path, whisper_features):
    """SGL can remove every head of a layer: its q/k/v/out_proj hold 0 weights and stay empty float linears."""
    model = make_tiny_whisper()
    heads = model.config.decoder_attention_heads
    prune_heads(model, "decoder", 0, list(range(heads)))
    prune_ffn_neurons(model, "encoder", 0, [0, 1])
    empty = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and m.weight.numel() == 0}
    assert {"model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.out_proj"} <= empty
    ref = _logits(model, whisper_features)
    quantize_int8(model)
    assert {n for n, _ in quantized_linears(model)}.isdisjoint(empty)
    fc1 = model.model.encoder.layers[0].fc1
    assert isinstance(fc1, QLinear) and fc1.out_features == model.config.encoder_ffn_dim - 2
    assert (_logits(model, whisper_features) - ref).abs().max() < 0.1 * ref.abs().max()
    save_compressed(model, tmp_path / "int8", "int8_dynamic", {})
    back = load_compressed(tmp_path / "int8")
    assert back.model.decoder.layers[0].self_attn.q_proj.weight.shape[0] == 0
    assert torch.equal(_logits(back, whisper_features), _logits(model, whisper_features))
