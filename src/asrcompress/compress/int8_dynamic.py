"""Post-training dynamic int8 quantisation of a Whisper's linear layers (torch), savable and reloadable.

What a practitioner does first: every ``nn.Linear`` of the encoder and decoder layers and the output
projection becomes ``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights, one symmetric scale per output
row, activations quantised per batch at run time, int8 x int8 GEMMs through the x86/fbgemm backend). No
calibration data, no training. The convolutional front-end, LayerNorms and positional embeddings stay
float32.

The tied token embedding / output projection is one tensor in Whisper. Quantised, the output projection
keeps it as int8 + scales, and the input embedding becomes the de-quantised copy of that same int8 tensor
(as CTranslate2's int8 does), so the two stay one stored tensor and the model in memory equals the model
reloaded from disk bit for bit.

Storage (safetensors, in a ``save_compressed`` directory): every quantised linear ``<m>`` as
``<m>.weight`` (int8, out x in), ``<m>.weight_scale`` (float32, out) and ``<m>.bias`` (float32) when it
has one; everything else as float32 under its usual name; the de-quantised embedding is not stored.
``compression.json``'s ``quantization`` record (:func:`quantization_record`) says which modules are int8;
``checkpoint.load_compressed`` rebuilds the float skeleton, quantises those modules and loads the int8
tensors (:func:`load_int8_state`).

Counting: a quantised weight is no ``nn.Parameter``; :func:`quantized_linears` lets the measure suite count
its elements (parameters are unchanged by quantisation) and its bytes (1 per weight + 4 per row scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SCHEME",
    "QuantizationError",
    "QLinear",
    "quantize_int8",
    "is_int8",
    "quantized_linears",
    "quantization_record",
    "int8_elements",
    "int8_state_dict",
    "load_int8_state",
    "packed_weight",
    "board_compress",
]

SCHEME = "dynamic_int8_per_row_symmetric"
_RECORD_ATTR = "_asrc_int8"

with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao; it works in 2.13
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.ao.nn.quantized.dynamic import Linear as QLinear  # noqa: N814
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic


class QuantizationError(ValueError):
    """A model or checkpoint that cannot be quantised / loaded as recorded."""


def _targets(model: nn.Module) -> list[str]:
    """Names of the linears to quantise: every nn.Linear (encoder/decoder layers, the output projection) that
    holds a weight. A pruned layer can be empty (every head or FFN neuron removed: 0 rows); it has nothing to
    quantise and stays an empty float linear (per-row int8 of 0 rows is undefined in torch)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and m.weight.numel() > 0]


def _tied_output(model: nn.Module) -> bool:
    out, emb = getattr(model, "proj_out", None), model.get_input_embeddings()
    return isinstance(out, nn.Linear) and isinstance(emb, nn.Embedding) and out.weight is emb.weight


def _quantize(model: nn.Module, names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
        quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)


def packed_weight(module: QLinear) -> tuple[Tensor, Tensor, Tensor | None]:
    """(int8 weight out x in, float32 per-row scale, float32 bias or None) of a quantised linear."""
    w, b = module._packed_params._weight_bias()
    if w.qscheme() not in (torch.per_channel_symmetric, torch.per_channel_affine) or bool(w.q_per_channel_zero_points().any()):
        raise QuantizationError(f"unexpected int8 scheme {w.qscheme()} (expected per-row, zero point 0)")
    return w.int_repr(), w.q_per_channel_scales().float(), None if b is None else b.detach().float()


def _dequantized(module: QLinear) -> Tensor:
    q, scale, _ = packed_weight(module)
    return q.float() * scale[:, None]


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise ``model`` in place (see the module docstring) and return it. A model already int8 is refused."""
    if is_int8(model):
        raise QuantizationError("the model is already int8-quantised")
    tied = _tied_output(model)
    names = _targets(model)
    if not names:
        raise QuantizationError("no nn.Linear to quantise")
    _quantize(model, names)
    if tied:
        with torch.no_grad():
            emb = model.get_input_embeddings()
            emb.weight = nn.Parameter(_dequantized(model.proj_out), requires_grad=False)
    setattr(model, _RECORD_ATTR, {"scheme": SCHEME, "modules": names, "embedding_from": "proj_out" if tied else None})
    return model.eval()


def is_int8(model: nn.Module) -> bool:
    return getattr(model, _RECORD_ATTR, None) is not None or any(isinstance(m, QLinear) for m in model.modules())


def quantized_linears(model: nn.Module) -> Iterator[tuple[str, QLinear]]:
    """(name, module) of every int8 linear."""
    for n, m in model.named_modules():
        if isinstance(m, QLinear):
            yield n, m


def int8_elements(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{linear name: (weight elements, bias elements)}`` of the int8 linears whose weights are no
    ``nn.Parameter`` of the model: the output projection is left out when the embedding is its
    de-quantised copy (one tensor, counted once, as in the float model)."""
    rec = quantization_record(model) or {}
    out = {}
    for n, m in quantized_linears(model):
        if n == rec.get("embedding_from"):
            continue
        _, b = m._packed_params._weight_bias()
        out[n] = (m.out_features * m.in_features, 0 if b is None else b.numel())
    return out


def quantization_record(model: nn.Module) -> dict[str, Any] | None:
    """``{"scheme", "modules", "embedding_from"}`` of a model quantised by :func:`quantize_int8`, else None."""
    rec = getattr(model, _RECORD_ATTR, None)
    return dict(rec) if rec else None


def int8_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors to store (see the module docstring), contiguous, ready for safetensors."""
    rec = quantization_record(model)
    if rec is None:
        raise QuantizationError("not a model quantised by quantize_int8")
    qnames = {n for n, _ in quantized_linears(model)}
    skip = {f"{n}.{s}" for n in qnames for s in ("scale", "zero_point", "_packed_params.dtype",
                                                  "_packed_params._packed_params")}
    if rec.get("embedding_from"):
        emb_name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
        skip.add(emb_name)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if k not in skip and isinstance(v, Tensor)}
    for n, m in quantized_linears(model):
        q, scale, bias = packed_weight(m)
        state[f"{n}.weight"] = q.contiguous()
        state[f"{n}.weight_scale"] = scale.contiguous()
        if bias is not None:
            state[f"{n}.bias"] = bias.contiguous()
    return state


def load_int8_state(model: nn.Module, state: Mapping[str, Tensor], record: Mapping[str, Any], source: str) -> None:
    """Load ``state`` (from :func:`int8_state_dict`) into the float skeleton ``model``, quantised as ``record``
    says: every recorded linear is replaced by an int8 one built straight from its stored int8 weight and
    scales, then the remaining (float) tensors are loaded. Build the skeleton on the meta device
    (``checkpoint.load_compressed`` does): it is materialised here, so the float copy of the int8 weights is
    never allocated and the model loads in about its int8 size. Every recorded module must have its int8
    weight and scale, and every other key must be a float tensor of the model (errors name ``source``)."""
    if record.get("scheme") != SCHEME:
        raise QuantizationError(f"{source}: unknown quantization scheme {record.get('scheme')!r} (expected {SCHEME})")
    names = list(record.get("modules") or [])
    if not names:
        raise QuantizationError(f"{source}: the quantization record lists no module")
    int8_keys: dict[str, Tensor] = {}
    for n in names:
        for suffix in ("weight", "weight_scale", "bias"):
            key = f"{n}.{suffix}"
            if key in state:
                int8_keys[key] = state[key]
            elif suffix != "bias":
                raise QuantizationError(f"{source}: missing {key} of int8 module {n}")
    float_state = {k: v for k, v in state.items() if k not in int8_keys}
    tied = bool(record.get("embedding_from"))
    modules = dict(model.named_modules())
    for n in names:
        m = modules.get(n)
        if type(m) is not nn.Linear:
            raise QuantizationError(f"{source}: recorded int8 module {n} is not a linear of the model")
        q, scale = int8_keys[f"{n}.weight"], int8_keys[f"{n}.weight_scale"]
        if q.dtype != torch.int8 or tuple(q.shape) != (m.out_features, m.in_features) or scale.shape != (m.out_features,):
            raise QuantizationError(f"{source}: {n}.weight is {q.dtype} {tuple(q.shape)}, expected int8 "
                                    f"({m.out_features}, {m.in_features}) with {m.out_features} scales")
        bias = int8_keys.get(f"{n}.bias")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            qm = QLinear(1, 1, bias_=bias is not None, dtype=torch.qint8)  # a 1x1 placeholder, replaced below:
            qm.in_features, qm.out_features = m.in_features, m.out_features  # no full-size default weight
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(m.out_features, dtype=torch.long), 0)
            qm.set_weight_bias(qw, bias)
            del qw
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qm)
    expected = dict(model.named_parameters())
    expected.update(dict(model.named_buffers()))
    if tied:
        expected.pop(next(k for k in expected if k.endswith("embed_tokens.weight")), None)
    missing = sorted(set(expected) - set(float_state))
    unexpected = sorted(set(float_state) - set(expected))
    bad = [k for k in float_state if k in expected and tuple(float_state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise QuantizationError(f"{source}: does not match the recorded int8 model (missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]})")
    for k, v in float_state.items():  # assign (the skeleton may be on the meta device): no copy, no float linears
        owner_name, _, attr = k.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(v, requires_grad=False)
        else:
            owner._buffers[attr] = v
    if tied:
        model.get_input_embeddings().weight = nn.Parameter(_dequantized(model.proj_out), requires_grad=False)
    setattr(model, _RECORD_ATTR, {"scheme": SCHEME, "modules": names, "embedding_from": record.get("embedding_from")})


def board_compress(model: nn.Module, entry: Mapping[str, Any], inputs: Any) -> dict[str, Any]:
    """Leaderboard method ``int8_dynamic`` (params ``leaderboard.entries.<key>``: no method keys)."""
    quantize_int8(model)
    rec = quantization_record(model) or {}
    return {"quantized_modules": len(rec.get("modules", [])), "scheme": SCHEME,
            "embedding_from": rec.get("embedding_from")}
