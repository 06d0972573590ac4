"""A CTranslate2 Whisper directory (faster-whisper's format) -> a ``save_pretrained`` Hugging Face Whisper.

The real pre-trained Whispers reachable offline ship only as CTranslate2 models (``model.bin``,
``config.json``, ``tokenizer.json``, a vocabulary file). This module reads that format itself and
assembles a ``WhisperForConditionalGeneration`` + ``WhisperProcessor``:

* ``read_ct2_model``: the binary layout written by CTranslate2's ``ModelSpec._serialize``
  (binary version 6): a version, the spec name and revision, then every variable as
  (name, rank, dims, dtype id, byte count, raw bytes), then aliases (name -> variable name);
* ``ct2_to_hf_state_dict``: the variable names mapped onto HF's module names. CTranslate2 fuses
  the self-attention q/k/v projections (``linear_0`` = [q; k; v]) and the cross-attention k/v
  (``linear_1`` = [k; v]; ``linear_0`` is q), and stores a zero bias for k (HF's ``k_proj`` has
  none: it is dropped after checking it is zero). The output projection is tied to the token
  embedding. Variables that CTranslate2 stored once for several names (aliases; identical
  tensors) are copied apart. Quantised (int8) weights are de-quantised with their per-row ``weight_scale``;
  float16 / bfloat16 are upcast to float32;
* ``convert_ct2_whisper``: the model, a tokenizer from ``tokenizer.json`` with Whisper's special
  tokens, the 30 s log-mel feature extractor (80 or 128 bins from the weights), and a generation
  config whose language and task ids come from the tokenizer, so that
  ``generate(features, language="en", task="transcribe")`` works; saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

# CTranslate2's dtype ids (ctranslate2/specs/model_spec.py, _dtype_to_type_id)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_BINARY_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """A file that is not a CTranslate2 Whisper model this reader understands; names the file."""


@dataclass
class CT2Model:
    """The decoded content of a ``model.bin``."""

    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CT2FormatError(f"{self.path}: variable {name!r} missing")
        return self.variables[name]

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


def _read(f: BinaryIO, fmt: str, path: Path) -> Any:
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise CT2FormatError(f"{path}: truncated file (wanted {size} more bytes at offset {f.tell()})")
    out = struct.unpack("<" + fmt, buf)
    return out[0] if len(out) == 1 else out


def _read_string(f: BinaryIO, path: Path) -> str:
    n = _read(f, "H", path)
    raw = f.read(n)
    if len(raw) != n:
        raise CT2FormatError(f"{path}: truncated file inside a string")
    return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def _to_tensor(raw: bytes, dtype_id: int, dims: tuple[int, ...], name: str, path: Path) -> torch.Tensor:
    if dtype_id not in _DTYPES:
        raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
    dt = _DTYPES[dtype_id]
    if dt == "bfloat16":
        arr = np.frombuffer(raw, dtype=np.int16).copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(dims)
    arr = np.frombuffer(raw, dtype=dt).copy()
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise CT2FormatError(f"{path}: variable {name!r} holds {arr.size} values for shape {dims}")
    return torch.from_numpy(arr).reshape(dims)


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 5 or 6) into tensors (their stored dtypes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin there")
    total = path.stat().st_size
    with path.open("rb") as f:
        version = _read(f, "I", path)
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, this reader knows "
                                 f"{SUPPORTED_BINARY_VERSIONS} (is it a model.bin at all?)")
        spec = _read_string(f, path)
        revision = _read(f, "I", path)
        model = CT2Model(path, version, spec, revision)
        for _ in range(_read(f, "I", path)):
            name = _read_string(f, path)
            rank = _read(f, "B", path)
            dims = tuple(_read(f, "I", path) for _ in range(rank))
            dtype_id = _read(f, "B", path)
            nbytes = _read(f, "I", path)
            if nbytes > total - f.tell():
                raise CT2FormatError(f"{path}: variable {name!r} claims {nbytes} bytes past the end of the file")
            model.variables[name] = _to_tensor(f.read(nbytes), dtype_id, dims, name, path)
        if version >= 5:
            for _ in range(_read(f, "I", path)):
                alias = _read_string(f, path)
                model.aliases[alias] = _read_string(f, path)
        if f.read(1):
            raise CT2FormatError(f"{path}: trailing bytes after the aliases (corrupt or another format)")
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{path}: spec {spec!r}, expected 'WhisperSpec'")
    return model


def _weight(m: CT2Model, prefix: str) -> torch.Tensor:
    """A float32 weight, de-quantised when CTranslate2 stored it as int8/int16 with a per-row scale."""
    w = m.get(f"{prefix}/weight")
    if w.dtype in (torch.int8, torch.int16):
        real = m.aliases.get(f"{prefix}/weight", f"{prefix}/weight")  # an alias's scale is its target's
        scale_name = next((n for n in (f"{prefix}/weight_scale", f"{real}_scale") if m.has(n)), None)
        if scale_name is None:
            raise CT2FormatError(f"{m.path}: {prefix}/weight is {w.dtype} without a weight_scale")
        scale = m.get(scale_name).float()
        return w.float() / scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w.float()


def _float(m: CT2Model, name: str) -> torch.Tensor:
    return m.get(name).float()


def _layer_count(m: CT2Model, stack: str) -> int:
    n = 0
    while m.has(f"{stack}/layer_{n}/ffn/linear_0/weight"):
        n += 1
    return n


def _attention(m: CT2Model, src: str, dst: str, d: int, fused_qkv: bool, sd: dict[str, torch.Tensor]) -> None:
    """Split CTranslate2's fused projections into HF's q/k/v/out (k has no bias in HF)."""
    if fused_qkv:
        w, b = _weight(m, f"{src}/linear_0"), _float(m, f"{src}/linear_0/bias")
        parts = {"q": (w[:d], b[:d]), "k": (w[d:2 * d], b[d:2 * d]), "v": (w[2 * d:], b[2 * d:])}
    else:
        wkv, bkv = _weight(m, f"{src}/linear_1"), _float(m, f"{src}/linear_1/bias")
        parts = {"q": (_weight(m, f"{src}/linear_0"), _float(m, f"{src}/linear_0/bias")),
                 "k": (wkv[:d], bkv[:d]), "v": (wkv[d:], bkv[d:])}
    out_src = f"{src}/linear_{2 if not fused_qkv else 1}"
    for name, (w, b) in parts.items():
        if w.shape != (d, d):
            raise CT2FormatError(f"{m.path}: {src} {name} projection has shape {tuple(w.shape)}, expected ({d}, {d})")
        sd[f"{dst}.{name}_proj.weight"] = w.contiguous()
        if name == "k":
            if float(b.abs().max()) != 0.0:
                raise CT2FormatError(f"{m.path}: {src} has a non-zero key bias, which Whisper does not have")
        else:
            sd[f"{dst}.{name}_proj.bias"] = b.contiguous()
    sd[f"{dst}.out_proj.weight"] = _weight(m, out_src)
    sd[f"{dst}.out_proj.bias"] = _float(m, f"{out_src}/bias")


def _layer_norm(m: CT2Model, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    sd[f"{dst}.weight"] = _float(m, f"{src}/gamma")
    sd[f"{dst}.bias"] = _float(m, f"{src}/beta")


def _ffn(m: CT2Model, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    _layer_norm(m, f"{src}/layer_norm", f"{dst}.final_layer_norm", sd)
    for i, name in ((0, "fc1"), (1, "fc2")):
        sd[f"{dst}.{name}.weight"] = _weight(m, f"{src}/linear_{i}")
        sd[f"{dst}.{name}.bias"] = _float(m, f"{src}/linear_{i}/bias")


def ct2_to_hf_state_dict(m: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """HF ``WhisperForConditionalGeneration`` state dict (float32) and the dimensions read from it."""
    conv1 = _weight(m, "encoder/conv1")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    enc_layers, dec_layers = _layer_count(m, "encoder"), _layer_count(m, "decoder")
    if enc_layers == 0 or dec_layers == 0:
        raise CT2FormatError(f"{m.path}: found {enc_layers} encoder and {dec_layers} decoder layers")
    sd: dict[str, torch.Tensor] = {}
    for stack in ("encoder", "decoder"):
        sd[f"model.{stack}.embed_positions.weight"] = _float(m, f"{stack}/position_encodings/encodings")
        _layer_norm(m, f"{stack}/layer_norm", f"model.{stack}.layer_norm", sd)
    for i in (1, 2):
        sd[f"model.encoder.conv{i}.weight"] = _weight(m, f"encoder/conv{i}")
        sd[f"model.encoder.conv{i}.bias"] = _float(m, f"encoder/conv{i}/bias")
    for i in range(enc_layers):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _layer_norm(m, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
        _attention(m, f"{src}/self_attention", f"{dst}.self_attn", d_model, True, sd)
        _ffn(m, f"{src}/ffn", dst, sd)
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _layer_norm(m, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
        _attention(m, f"{src}/self_attention", f"{dst}.self_attn", d_model, True, sd)
        _layer_norm(m, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", sd)
        _attention(m, f"{src}/attention", f"{dst}.encoder_attn", d_model, False, sd)
        _ffn(m, f"{src}/ffn", dst, sd)
    emb = _weight(m, "decoder/embeddings")
    sd["model.decoder.embed_tokens.weight"] = emb
    if m.has("decoder/projection/weight"):
        proj = _weight(m, "decoder/projection")
        if proj.shape != emb.shape or not torch.allclose(proj, emb, atol=1e-2):
            raise CT2FormatError(f"{m.path}: the output projection is not tied to the token embedding")
    seen: set[int] = set()
    for name, t in sd.items():  # CTranslate2 stores identical tensors once (aliases): give each its own
        if t.data_ptr() in seen:
            sd[name] = t.clone()
        seen.add(sd[name].data_ptr())
    dims = {"d_model": d_model, "num_mel_bins": n_mels, "encoder_layers": enc_layers,
            "decoder_layers": dec_layers, "vocab_size": int(emb.shape[0]),
            "ffn_dim": int(sd["model.encoder.layers.0.fc1.weight"].shape[0]),
            "max_source_positions": int(sd["model.encoder.embed_positions.weight"].shape[0]),
            "max_target_positions": int(sd["model.decoder.embed_positions.weight"].shape[0])}
    return sd, dims


def _heads(m: CT2Model, stack: str, path: Path) -> int:
    for name in (f"{stack}/num_heads", "num_heads"):
        if m.has(name):
            return int(m.get(name).reshape(-1)[0])
    raise CT2FormatError(f"{path}: no {stack}/num_heads variable")


def _generation_config(tokenizer: Any, ct2_config: Mapping[str, Any], multilingual: bool,
                       max_length: int) -> Any:
    """Whisper's generation config with every id read from the tokenizer (not from a hub default)."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    vocab = tokenizer.get_vocab()
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    lang_ids = set(ct2_config.get("lang_ids") or [])
    lang_to_id = {f"<|{c}|>": vocab[f"<|{c}|>"] for c in LANGUAGES
                  if f"<|{c}|>" in vocab and (not lang_ids or vocab[f"<|{c}|>"] in lang_ids)}
    kwargs: dict[str, Any] = dict(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=multilingual, suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [eot]),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        max_initial_timestamp_index=50, max_length=max_length, return_timestamps=False)
    if multilingual:
        kwargs.update(lang_to_id=lang_to_id,
                      task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")})
    return GenerationConfig(**kwargs)


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path, *, model_bin: str | Path | None = None,
                        expected_sha256: str | None = None, source: str | list[str] | None = None) -> dict[str, Any]:
    """Convert a CTranslate2 Whisper directory into a ``save_pretrained`` model + processor in ``out_dir``.

    ``ct2_dir`` holds ``config.json`` and ``tokenizer.json`` (and ``model.bin`` unless ``model_bin``
    points elsewhere). With ``expected_sha256`` the model file's digest is checked first and a
    mismatch refused. Returns a record (also written to ``out_dir/conversion.json``): ``source``
    (default: the model file's path; give a machine-independent name to keep the output reproducible),
    source digest, spec, dtypes, dimensions, parameter count.
    """

    from transformers import (
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    from asrcompress.models.real_checkpoints import sha256_file
    from asrcompress.models.whisper import build_feature_extractor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model_bin = Path(model_bin) if model_bin else ct2_dir / "model.bin"
    for need in (ct2_dir / "config.json", ct2_dir / "tokenizer.json", model_bin):
        if not need.is_file():
            raise FileNotFoundError(f"{need}: missing; a CTranslate2 Whisper directory holds model.bin, "
                                    "config.json and tokenizer.json")
    sha = sha256_file(model_bin)
    if expected_sha256 and sha != expected_sha256:
        raise CT2FormatError(f"{model_bin}: sha256 {sha} differs from the expected {expected_sha256} "
                             "(incomplete download, wrong parts or a different model): refusing to convert")
    m = read_ct2_model(model_bin)
    sd, dims = ct2_to_hf_state_dict(m)
    enc_heads, dec_heads = _heads(m, "encoder", model_bin), _heads(m, "decoder", model_bin)
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    tokenizer = WhisperTokenizer(tokenizer_file=str(ct2_dir / "tokenizer.json"))
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    multilingual = dims["vocab_size"] >= 51865  # OpenAI's rule: the .en models have 51864 tokens
    config = WhisperConfig(
        vocab_size=dims["vocab_size"], num_mel_bins=dims["num_mel_bins"], d_model=dims["d_model"],
        encoder_layers=dims["encoder_layers"], decoder_layers=dims["decoder_layers"],
        encoder_attention_heads=enc_heads, decoder_attention_heads=dec_heads,
        encoder_ffn_dim=dims["ffn_dim"], decoder_ffn_dim=dims["ffn_dim"],
        max_source_positions=dims["max_source_positions"], max_target_positions=dims["max_target_positions"],
        decoder_start_token_id=ids("<|startoftranscript|>"), bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, tie_word_embeddings=True, dropout=0.0, torch_dtype="float32")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise CT2FormatError(f"{model_bin}: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model.generation_config = _generation_config(tokenizer, ct2_config, multilingual,
                                                 max_length=dims["max_target_positions"])
    model.eval()
    frames = 2 * dims["max_source_positions"]
    processor = WhisperProcessor(feature_extractor=build_feature_extractor(frames // 100, dims["num_mel_bins"]),
                                 tokenizer=tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    stored = sorted({str(t.dtype).replace("torch.", "") for t in m.variables.values() if t.dim() > 1})
    record = {"source_file": source if source is not None else str(model_bin), "source_sha256": sha, "source_bytes": model_bin.stat().st_size,
              "ct2_spec": m.spec, "ct2_spec_revision": m.revision, "ct2_binary_version": m.binary_version,
              "stored_dtypes": stored, "multilingual": multilingual, "encoder_attention_heads": enc_heads,
              "decoder_attention_heads": dec_heads, **dims,
              "params": sum(p.numel() for p in model.parameters())}
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
