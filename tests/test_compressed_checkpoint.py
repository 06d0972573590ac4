"""Compressed checkpoints: save -> load_compressed gives the same model, bit for bit, and a smaller file."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest
import torch
from conftest import make_tiny_ctc, make_tiny_whisper
from safetensors.torch import load_file, save_file

from asrcompress.compress.checkpoint import (
    COMPRESSION_FILE,
    CheckpointError,
    load_compressed,
    save_compressed,
    weights_bytes,
)
from asrcompress.compress.masks import apply_masks
from asrcompress.compress.surgery import (
    LowRankEmbedding,
    factorize_embedding,
    merge_layers,
    num_parameters,
    prune_ffn_neurons,
    prune_heads,
    remove_layers,
    structure_of,
    svd_factors,
)

DEC = torch.tensor([[1, 5, 7, 9, 11]] * 2)


def whisper_logits(model, feats):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=DEC).logits


def compress_whisper():
    m = make_tiny_whisper(encoder_layers=3, decoder_layers=3)
    prune_heads(m, "encoder", 0, [1, 2])
    prune_heads(m, "decoder", 0, range(4))  # a head-less self-attention
    prune_heads(m, "decoder", 0, [3], attn="cross")
    prune_ffn_neurons(m, "encoder", 1, range(0, 128, 3))
    prune_ffn_neurons(m, "decoder", 0, range(128))  # a zero-width FFN
    remove_layers(m, "encoder", [2])
    merge_layers(m, "decoder", 1, 0.5, 0.5)
    factorize_embedding(m, *svd_factors(m.model.decoder.embed_tokens.weight, 12))
    return m


def test_whisper_roundtrip_is_exact(tmp_path, whisper_features):
    m = compress_whisper()
    out = save_compressed(m, tmp_path / "ckpt", "test-method", {"ratio": 0.5, "layers": [1, 2]}, extra={"note": "x"})
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json",
                                               COMPRESSION_FILE}
    record = json.loads((out / COMPRESSION_FILE).read_text())
    assert record["method"] == "test-method" and record["method_params"] == {"ratio": 0.5, "layers": [1, 2]}
    assert record["extra"] == {"note": "x"} and record["structure"] == structure_of(m)
    assert record["num_parameters"] == num_parameters(m)

    r = load_compressed(out)
    assert not r.training
    assert isinstance(r.model.decoder.embed_tokens, LowRankEmbedding) and r.proj_out.embedding is r.model.decoder.embed_tokens
    assert structure_of(r) == structure_of(m)
    assert num_parameters(r) == num_parameters(m)
    assert torch.equal(whisper_logits(r, whisper_features), whisper_logits(m, whisper_features))
    assert r.generation_config.max_length == m.generation_config.max_length == 16
    assert r.generation_config.decoder_start_token_id == 1
    gen_kwargs = dict(max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(r.generate(whisper_features, **gen_kwargs), m.generate(whisper_features, **gen_kwargs))

    # a reloaded model can be compressed further and saved again; original indices survive
    prune_heads(r, "encoder", 0, [0])
    assert structure_of(r)["stacks"]["encoder"]["layers"][0]["heads"] == [3]
    r2 = load_compressed(save_compressed(r, tmp_path / "again", "second", {}))
    assert structure_of(r2)["stacks"]["encoder"]["layers"][0]["heads"] == [3]
    assert structure_of(r2)["stacks"]["decoder"]["layers"][1]["origin"] == [1, 2]
    assert torch.equal(whisper_logits(r2, whisper_features), whisper_logits(r, whisper_features))


def test_tied_dense_embedding_roundtrip(tmp_path, whisper_features):
    m = make_tiny_whisper()
    prune_ffn_neurons(m, "decoder", 0, [1, 2, 3])
    r = load_compressed(save_compressed(m, tmp_path / "c", "ffn", {}))
    assert r.proj_out.weight is r.model.decoder.embed_tokens.weight
    assert torch.equal(whisper_logits(r, whisper_features), whisper_logits(m, whisper_features))


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_ctc_roundtrip_is_exact(tmp_path, kind, ctc_audio):
    m = make_tiny_ctc(kind, num_hidden_layers=3)
    merge_layers(m, "encoder", 0, 0.3, 0.7)
    prune_heads(m, "encoder", 0, [0, 3])
    prune_heads(m, "encoder", 1, range(4))
    prune_ffn_neurons(m, "encoder", 1, range(100))
    r = load_compressed(save_compressed(m, tmp_path / kind, "mix", {"a": 1}))
    assert type(r) is type(m) and structure_of(r) == structure_of(m)
    with torch.no_grad():
        assert torch.equal(r(ctc_audio).logits, m(ctc_audio).logits)


def test_plain_save_pretrained_directory_loads(tmp_path, whisper_features, ctc_audio):
    m = make_tiny_whisper()
    m.save_pretrained(tmp_path / "plain")
    r = load_compressed(tmp_path / "plain")
    assert torch.equal(whisper_logits(r, whisper_features), whisper_logits(m, whisper_features))
    assert r.generation_config.max_length == 16
    c = make_tiny_ctc("hubert")
    c.save_pretrained(tmp_path / "plain_ctc")
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "plain_ctc")(ctc_audio).logits, c(ctc_audio).logits)


def test_pruned_checkpoint_is_smaller_on_disk_and_masks_are_not(tmp_path):
    dense = make_tiny_whisper()
    base = weights_bytes(save_compressed(dense, tmp_path / "dense", "none", {}))
    pruned = make_tiny_whisper()
    for stack in ("encoder", "decoder"):
        for layer in range(2):
            prune_ffn_neurons(pruned, stack, layer, range(64))
            prune_heads(pruned, stack, layer, [0, 1])
    small = weights_bytes(save_compressed(pruned, tmp_path / "pruned", "half", {}))
    removed_bytes = 4 * (num_parameters(dense) - num_parameters(pruned))
    assert small < base and base - small >= 0.99 * removed_bytes
    masked = make_tiny_whisper()
    apply_masks(masked, {n: torch.rand(p.shape) > 0.5 for n, p in masked.named_parameters() if n.endswith("fc1.weight")})
    assert weights_bytes(save_compressed(masked, tmp_path / "masked", "mask", {})) == base


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_compressed(tmp_path / "nowhere")
    m = make_tiny_whisper()
    prune_ffn_neurons(m, "encoder", 0, [0, 1])
    out = save_compressed(m, tmp_path / "c", "x", {})
    record = json.loads((out / COMPRESSION_FILE).read_text())

    (out / COMPRESSION_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"compression\.json: corrupt compression record"):
        load_compressed(out)
    (out / COMPRESSION_FILE).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(CheckpointError, match=r"compression\.json: corrupt compression record"):
        load_compressed(out)

    bad = json.loads(json.dumps(record))
    bad["structure"]["stacks"]["encoder"]["layers"][0]["ffn"] = 127  # file holds 126 neurons
    (out / COMPRESSION_FILE).write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match the recorded structure "
                                              r"\(shape mismatch: model\.encoder\.layers\.0\.fc1\.bias: file \(126,\) vs model \(127,\)"):
        load_compressed(out)

    (out / COMPRESSION_FILE).write_text(json.dumps(record))
    state = load_file(str(out / "model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["model.decoder.layer_norm.bias"]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    rerecorded = {**record, "weights_sha256": {"model.safetensors": _sha256(out / "model.safetensors")}}
    (out / COMPRESSION_FILE).write_text(json.dumps(rerecorded))  # a record that vouches for the edited file
    with pytest.raises(CheckpointError, match=r"missing keys: \['model\.decoder\.layer_norm\.bias'\].*"
                                              r"unexpected keys: \['extra\.weight'\]"):
        load_compressed(out)

    bad = json.loads(json.dumps(rerecorded))
    bad["structure"]["stacks"]["encoder"]["layers"][0]["ffn"] = 500
    (out / COMPRESSION_FILE).write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"compression\.json: structure cannot be applied"):
        load_compressed(out)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checksums_are_recorded_and_a_corrupt_or_swapped_weights_file_is_refused(tmp_path):
    """Issue 17, item 6: a bit flip or another checkpoint's weights file is caught, naming the file."""
    m = make_tiny_whisper()
    prune_ffn_neurons(m, "encoder", 0, [0, 1])
    out = save_compressed(m, tmp_path / "c", "x", {})
    record = json.loads((out / COMPRESSION_FILE).read_text())
    weights = out / "model.safetensors"
    assert record["weights_sha256"] == {"model.safetensors": _sha256(weights)}
    payload = bytearray(weights.read_bytes())
    payload[-3] ^= 0x01  # one bit of one weight: the file still parses and has the right shapes
    weights.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match=r"c/model\.safetensors: checksum mismatch"):
        load_compressed(out)
    other = make_tiny_whisper(seed=1)  # the same structure, other weights
    prune_ffn_neurons(other, "encoder", 0, [0, 1])
    swapped = save_compressed(other, tmp_path / "other", "x", {})
    shutil.copyfile(swapped / "model.safetensors", weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        load_compressed(out)


def test_a_record_without_checksums_still_loads_with_a_warning(tmp_path, whisper_features):
    m = make_tiny_whisper()
    out = save_compressed(m, tmp_path / "c", "x", {})
    record = json.loads((out / COMPRESSION_FILE).read_text())
    del record["weights_sha256"]  # as written before checksums were recorded
    (out / COMPRESSION_FILE).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=r"compression\.json: no weights checksums recorded"):
        loaded = load_compressed(out)
    assert torch.equal(whisper_logits(loaded, whisper_features), whisper_logits(m.eval(), whisper_features))
    record["weights_sha256"] = {}  # corrupt, not old
    (out / COMPRESSION_FILE).write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="weights_sha256"):
            load_compressed(out)


def test_processor_is_saved_beside_the_model_and_measure_loads_the_directory(tmp_path, offline_processor):
    """Issue 19, item 5: a model saved with save_compressed loads through the measure stage's loader."""
    from asrcompress.measure.suite import load_variant

    m = make_tiny_whisper()
    prune_heads(m, "encoder", 0, [1])
    out = save_compressed(m, tmp_path / "c", "x", {}, processor=offline_processor)
    model, processor = load_variant(out)
    assert type(processor).__name__ == "WhisperProcessor"
    assert processor.tokenizer.get_vocab() == offline_processor.tokenizer.get_vocab()
    assert structure_of(model) == structure_of(m)
    again = save_compressed(m, tmp_path / "from_dir", "x", {}, processor=out)  # or copied from a directory
    assert load_variant(again)[1].tokenizer.get_vocab() == offline_processor.tokenizer.get_vocab()
