"""Compressed checkpoint format: a ``save_pretrained`` directory (safetensors) + ``compression.json``.

``compression.json`` records ``structure_of(model)`` (base config + per-layer shapes), the method name and
its parameters, the attention implementation and dtype, and the sha256 of every weights file
(``weights_sha256``). :func:`load_compressed` checks those checksums first (a bit-flipped, truncated or
swapped weights file is refused, naming the file; a record written before checksums were recorded loads
with a warning), rebuilds the base model
from the recorded base config (without weight initialisation), resizes it with ``apply_structure`` and
loads the safetensors state dict strictly: every key must match in name and shape, none may be missing
except aliases of a tied parameter (Whisper's ``proj_out.weight`` = ``embed_tokens.weight``), none may be
unexpected. Reloaded outputs equal the in-memory model's outputs exactly.

An int8 model (``compress.int8_dynamic``) is stored as int8 weights + per-row scales in the same
safetensors file, with a ``quantization`` record; it reloads quantised, equal to the saved model.

A plain ``save_pretrained`` directory without ``compression.json`` is loaded with the class's
``from_pretrained`` and the same strictness (missing/unexpected/mismatched keys raise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, GenerationConfig

from asrcompress.compress import int8_dynamic
from asrcompress.compress.surgery import (
    MODEL_CLASSES,
    SurgeryError,
    apply_structure,
    model_class_for,
    num_parameters,
    structure_of,
)

__all__ = [
    "COMPRESSION_FILE",
    "CheckpointError",
    "save_compressed",
    "load_compressed",
    "read_compression_record",
    "verify_weights",
    "weights_bytes",
]

COMPRESSION_FILE = "compression.json"
FORMAT_VERSION = 1
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as recorded; the message names the file."""


def _jsonable(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where} is not JSON-serialisable: {err}") from err


def save_compressed(model: nn.Module, out_dir: str | os.PathLike, method: str, method_params: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None, processor: Any | None = None) -> Path:
    """Write ``model`` to ``out_dir``: ``save_pretrained`` files (config.json, model.safetensors,
    generation_config.json when the model has a generation config) plus ``compression.json`` with
    ``format_version``, ``method``, ``method_params``, ``extra``, ``structure`` (= ``structure_of(model)``),
    ``attn_implementation``, ``dtype``, ``num_parameters``, ``weights_bytes`` and ``weights_sha256`` (file
    name -> sha256 of every weights file). ``processor`` (anything with ``save_pretrained``, e.g. a
    ``WhisperProcessor``; or the path of a directory to load one from with ``AutoProcessor``) is saved
    beside the model, so that ``AutoProcessor.from_pretrained(out_dir)`` (the measure stage's loader) works.
    Returns the directory."""
    if processor is not None and isinstance(processor, str | os.PathLike):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(processor))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "format_version": FORMAT_VERSION,
        "method": str(method),
        "method_params": _jsonable(dict(method_params), "method_params"),
        "extra": _jsonable(dict(extra or {}), "extra"),
        "structure": structure_of(model),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "num_parameters": num_parameters(model) + sum(w + b for w, b in int8_dynamic.int8_elements(model).values()),
    }
    quant = int8_dynamic.quantization_record(model)
    stale = out / COMPRESSION_FILE
    if stale.exists():
        stale.unlink()  # never leave a record describing other weights
    if quant is None:
        model.save_pretrained(out)
    else:  # int8 linears are no nn.Parameters: save_pretrained would drop them
        from safetensors.torch import save_file

        record["quantization"] = quant
        model.config.save_pretrained(out)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out)
        save_file(int8_dynamic.int8_state_dict(model), str(out / _SINGLE), metadata={"format": "pt"})
    if processor is not None:
        processor.save_pretrained(out)
    record["weights_bytes"] = weights_bytes(out)
    record["weights_sha256"] = {f.name: _sha256(f) for f in _weights_files(out)}
    tmp = out / (COMPRESSION_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / COMPRESSION_FILE)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_files(path: Path) -> list[Path]:
    """The weights files of a checkpoint directory: the safetensors files and their shard index."""
    return sorted([*path.glob("*.safetensors"), *path.glob("*.safetensors.index.json")])


def verify_weights(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Check every weights file of ``path`` against the record's ``weights_sha256``; a
    :class:`CheckpointError` naming the file on a missing, unrecorded or changed file. A record without
    checksums (written before they were recorded) passes with a warning."""
    p = Path(path)
    sums = record.get("weights_sha256")
    if sums is None:
        warnings.warn(f"{p / COMPRESSION_FILE}: no weights checksums recorded (an older checkpoint); "
                      f"loading the weights unverified", stacklevel=3)
        return
    if not isinstance(sums, dict) or not sums:
        raise CheckpointError(f"{p / COMPRESSION_FILE}: corrupt compression record ('weights_sha256' is not a "
                              f"non-empty object)")
    for name, expected in sorted(sums.items()):
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"{f}: weights file recorded in {COMPRESSION_FILE} is missing")
        actual = _sha256(f)
        if actual != expected:
            raise CheckpointError(f"{f}: checksum mismatch (sha256 {actual[:16]}..., {COMPRESSION_FILE} records "
                                  f"{str(expected)[:16]}...): the weights file is corrupt or was replaced")
    extra_files = sorted(f.name for f in _weights_files(p) if f.name not in sums)
    if extra_files:
        raise CheckpointError(f"{p / extra_files[0]}: weights file not recorded in {COMPRESSION_FILE} "
                              f"(unrecorded: {extra_files})")


def weights_bytes(path: str | os.PathLike) -> int:
    """Bytes of the safetensors weight files in a checkpoint directory (config/json files excluded)."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def read_compression_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``compression.json`` of ``path`` (None if absent); :class:`CheckpointError` if corrupt."""
    f = Path(path) / COMPRESSION_FILE
    if not f.exists():
        return None
    try:
        record = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{f}: corrupt compression record ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("structure"), dict):
        raise CheckpointError(f"{f}: corrupt compression record (no 'structure' object)")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{f}: unsupported format_version {version!r} (expected {FORMAT_VERSION})")
    return record


def _read_state_dict(path: Path) -> tuple[dict[str, Tensor], str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = path / _SINGLE, path / _INDEX
    try:
        if single.exists():
            return load_file(str(single)), str(single)
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(load_file(str(path / shard)))
            return state, str(index)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot read weights ({err})") from err
    raise CheckpointError(f"{path}: no {_SINGLE} or {_INDEX}")


def _strict_load(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model``; raise naming ``source`` on any missing/unexpected/mis-shaped key.
    A missing key is tolerated only if it names the same Parameter object as a key that was loaded (a tie)."""
    expected = model.state_dict(keep_vars=True)
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    unexpected = sorted(set(state) - set(expected))
    loaded_ids = {id(expected[k]) for k in state if k in expected}
    missing = sorted(k for k in set(expected) - set(state) if id(expected[k]) not in loaded_ids)
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {'; '.join(mismatched[:5])}" + (" ..." if len(mismatched) > 5 else ""))
    if missing:
        problems.append(f"missing keys: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
    if problems:
        raise CheckpointError(f"{source}: does not match the recorded structure ({'; '.join(problems)})")
    model.load_state_dict(dict(state), strict=False)


def _build_empty(cls: type, config: Any) -> nn.Module:
    """Instantiate ``cls(config)`` without running weight initialisation (all weights are loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = cls(config)
    model.tie_weights()  # no_init_weights also skips the tying done by post_init
    return model


def _load_plain(path: Path, attn_implementation: str | None) -> nn.Module:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path}: neither {COMPRESSION_FILE} nor config.json")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: cannot read config ({err})") from err
    arch = (config.architectures or [None])[0]
    if arch not in MODEL_CLASSES:
        raise CheckpointError(f"{config_file}: unsupported architecture {arch!r} (supported: {sorted(MODEL_CLASSES)})")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model, info = MODEL_CLASSES[arch].from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load weights ({err})") from err
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise CheckpointError(f"{path}: weights do not match config.json ({bad})")
    return model.eval()


def load_compressed(path: str | os.PathLike, attn_implementation: str | None = None) -> nn.Module:
    """Rebuild the model saved in ``path`` (by :func:`save_compressed` or plain ``save_pretrained``), in eval
    mode, with exactly the saved shapes and weights and its generation config (when saved). The weights
    files of a :func:`save_compressed` directory are checked against their recorded sha256 first
    (:func:`verify_weights`).

    ``attn_implementation`` defaults to the recorded one (needed for bit-identical outputs)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: checkpoint directory does not exist")
    record = read_compression_record(p)
    if record is None:
        return _load_plain(p, attn_implementation)
    cfile = p / COMPRESSION_FILE
    structure = record["structure"]
    try:
        cls = model_class_for(structure)
        config = cls.config_class.from_dict(dict(structure["base_config"]))
    except (SurgeryError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfile}: corrupt structure record ({err})") from err
    attn = attn_implementation or record.get("attn_implementation")
    if attn:
        config._attn_implementation = attn
    verify_weights(p, record)
    state, source = _read_state_dict(p)
    # an int8 model's float skeleton stays on the meta device (never allocated); load_int8_state materialises it
    with torch.device("meta") if record.get("quantization") else contextlib.nullcontext():
        model = _build_empty(cls, config)
        try:
            apply_structure(model, structure)
        except SurgeryError as err:
            raise CheckpointError(f"{cfile}: structure cannot be applied ({err})") from err
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    if record.get("quantization"):
        try:
            int8_dynamic.load_int8_state(model, state, record["quantization"], source)
        except int8_dynamic.QuantizationError as err:
            raise CheckpointError(str(err)) from err
    else:
        _strict_load(model, state, source)
    if (p / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(p))
    return model.eval()
