"""Whisper parameters by component and layer: what paper 3 scores and prunes.

Every parameter name of a ``WhisperForConditionalGeneration`` (or ``WhisperModel``) maps to one
component and, where it has one, a layer index:

=====================  ==============================================================  =========
component              weights                                                         layer
=====================  ==============================================================  =========
``conv``               ``encoder.conv1.weight``, ``encoder.conv2.weight``              0, 1
``enc_self_attn``      ``encoder.layers.i.self_attn.{q,k,v,out}_proj.weight``          i
``enc_ffn``            ``encoder.layers.i.fc{1,2}.weight``                             i
``dec_self_attn``      ``decoder.layers.i.self_attn.{q,k,v,out}_proj.weight``          i
``dec_cross_attn``     ``decoder.layers.i.encoder_attn.{q,k,v,out}_proj.weight``       i
``dec_ffn``            ``decoder.layers.i.fc{1,2}.weight``                             i
``token_embedding``    ``decoder.embed_tokens.weight``                                 None
``output_projection``  ``proj_out.weight``                                             None
``other``              every bias, every LayerNorm, both positional embeddings         i / None
                       (i inside a transformer layer, None elsewhere, conv biases too)
=====================  ==============================================================  =========

``other`` is never pruned (the paper's final configuration prunes LayerNorm, positional embeddings and
biases at 0 %) and is not scored.

Tied token embedding / output projection
----------------------------------------
In HF Whisper (``tie_word_embeddings=True``, the default and what openai checkpoints use)
``proj_out.weight`` *is* ``model.decoder.embed_tokens.weight``: one ``nn.Parameter`` reached under two
names. An unstructured mask zeroes the storage, so pruning "token embedding 25 %" and "output projection
25 %" hit the same tensor and cannot be told apart. The project's rule (:func:`tensor_ratios`):

* the tensor gets **one** ratio, the **max** of the ratios asked for its uses (25 % and 25 % in the paper's
  final configuration, so 25 % once, not 50 %); the mask is keyed by the first name in
  ``named_parameters()`` order (``model.decoder.embed_tokens.weight``) and :func:`tensor_ratios` returns
  a ``tied`` report saying which uses asked for what and what was applied;
* sensitivity scores are computed per *use*: :func:`untied` gives ``proj_out`` a temporary copy of the
  tensor so the gradient of the input embedding and of the output projection are measured apart; the
  model is re-tied afterwards. (Their sum is not the tied gradient's score, since |g1 w| + |g2 w| >=
  |(g1 + g2) w| element-wise; the two rows say where the sensitivity comes from.)
* counts (``n_params``, sparsity, non-zero parameters) count the tensor once.

A model with ``tie_word_embeddings=False`` has two tensors and gets two independent ratios.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

__all__ = [
    "COMPONENTS",
    "OTHER",
    "LABELS",
    "STACK_OF",
    "ParamInfo",
    "ComponentError",
    "component_of",
    "param_map",
    "prunable_filter",
    "layer_counts",
    "tensor_ratios",
    "untied",
]

#: prunable components, in the order used by tables and plots
COMPONENTS: tuple[str, ...] = (
    "conv", "enc_self_attn", "enc_ffn", "dec_self_attn", "dec_cross_attn", "dec_ffn",
    "token_embedding", "output_projection",
)
OTHER = "other"
LABELS: dict[str, str] = {
    "conv": "conv front-end",
    "enc_self_attn": "encoder self-attention",
    "enc_ffn": "encoder FFN",
    "dec_self_attn": "decoder self-attention",
    "dec_cross_attn": "decoder cross-attention",
    "dec_ffn": "decoder FFN",
    "token_embedding": "token embedding",
    "output_projection": "output projection",
    OTHER: "other (LayerNorm, positions, biases)",
}
#: which layer stack a component's layer index counts in (None: no layer index)
STACK_OF: dict[str, str | None] = {
    "conv": None, "enc_self_attn": "encoder", "enc_ffn": "encoder", "dec_self_attn": "decoder",
    "dec_cross_attn": "decoder", "dec_ffn": "decoder", "token_embedding": None, "output_projection": None,
}

_LAYER = re.compile(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.([a-z0-9_]+)\.(?:([a-z]+_proj)\.)?(weight|bias)$")
_LAYER_ANY = re.compile(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.")
_SUBLAYER = {("encoder", "self_attn"): "enc_self_attn", ("encoder", "fc1"): "enc_ffn",
             ("encoder", "fc2"): "enc_ffn", ("decoder", "self_attn"): "dec_self_attn",
             ("decoder", "encoder_attn"): "dec_cross_attn", ("decoder", "fc1"): "dec_ffn",
             ("decoder", "fc2"): "dec_ffn"}


class ComponentError(ValueError):
    """A parameter name that is not Whisper's, or a ratio for an unknown / unprunable component."""


@dataclass(frozen=True)
class ParamInfo:
    """One *use* of a parameter: its name, component, layer index, size, and the names it shares its
    tensor with (``tied_with``; empty unless tied)."""

    name: str
    component: str
    layer: int | None
    numel: int
    tied_with: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return self.component != OTHER


def component_of(name: str) -> tuple[str, int | None]:
    """``(component, layer)`` of a Whisper parameter name (with or without the ``model.`` prefix).

    Raises :class:`ComponentError` for a name that is not a Whisper parameter, rather than leaving an
    unrecognised weight silently unpruned.
    """
    dotted = "." + name
    if dotted.endswith(".decoder.embed_tokens.weight"):
        return "token_embedding", None
    if name == "proj_out.weight" or dotted.endswith(".proj_out.weight"):
        return "output_projection", None
    conv = re.search(r"\.encoder\.conv([12])\.(weight|bias)$", dotted)
    if conv:
        return ("conv", int(conv.group(1)) - 1) if conv.group(2) == "weight" else (OTHER, None)
    if dotted.endswith(".embed_positions.weight"):
        return OTHER, None
    if re.search(r"\.(encoder|decoder)\.layer_norm\.(weight|bias)$", dotted):
        return OTHER, None
    m = _LAYER.search(name)
    if m:
        stack, layer, sub, proj, kind = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
        if sub.endswith("layer_norm") or kind == "bias":
            return OTHER, layer
        comp = _SUBLAYER.get((stack, sub))
        if comp is not None and (proj is not None) == sub.endswith("attn"):
            return comp, layer
    raise ComponentError(f"{name!r} is not a Whisper parameter this module knows")


def param_map(model: nn.Module) -> list[ParamInfo]:
    """One :class:`ParamInfo` per parameter *use* (``named_parameters(remove_duplicate=False)``), so a
    tied token embedding / output projection gives two entries that name each other in ``tied_with``."""
    uses = list(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, p in uses:
        names_of.setdefault(id(p), []).append(name)
    out = []
    for name, p in uses:
        comp, layer = component_of(name)
        others = tuple(n for n in names_of[id(p)] if n != name)
        out.append(ParamInfo(name, comp, layer, p.numel(), others))
    return out


def prunable_filter(model: nn.Module):
    """``param_filter(name, param) -> bool`` selecting the prunable Whisper tensors (every component but
    ``other``); for :mod:`asrcompress.compress.magnitude`'s global/uniform pruning."""
    prunable = {i.name for i in param_map(model) if i.prunable}

    def keep(name: str, param: nn.Parameter) -> bool:
        return name in prunable

    return keep


def layer_counts(model: nn.Module) -> dict[str, int]:
    """``{"encoder": n, "decoder": n}`` layers, from the parameter names."""
    counts = {"encoder": 0, "decoder": 0}
    for name, _ in model.named_parameters():
        m = _LAYER_ANY.search(name)
        if m:
            counts[m.group(1)] = max(counts[m.group(1)], int(m.group(2)) + 1)
    return counts


def _check_component(comp: str) -> None:
    if comp == OTHER:
        raise ComponentError("component 'other' (LayerNorm, positional embeddings, biases) is never pruned")
    if comp not in COMPONENTS:
        raise ComponentError(f"unknown component {comp!r}; known: {', '.join(COMPONENTS)}")


def _check_ratio(where: str, r: float) -> float:
    r = float(r)
    if not 0.0 <= r <= 1.0:
        raise ComponentError(f"{where}: ratio {r} outside [0, 1]")
    return r


def _layer_ratio(comp: str, layer: int | None, n_layers: int, ratios: Mapping[str, float],
                 per_layer: Mapping | None) -> float:
    """Ratio for one (component, layer): ``per_layer[comp]`` (a list = contiguous equal layer groups,
    e.g. thirds; a mapping = ``{layer: ratio}``) wins over ``ratios[comp]``; default 0."""
    spec = (per_layer or {}).get(comp)
    if spec is not None and layer is not None:
        if isinstance(spec, Mapping):
            if layer in spec or str(layer) in spec:
                return _check_ratio(f"per_layer.{comp}.{layer}", spec[layer] if layer in spec else spec[str(layer)])
        else:
            groups = list(spec)
            if not groups:
                raise ComponentError(f"per_layer.{comp}: empty list")
            return _check_ratio(f"per_layer.{comp}", groups[layer * len(groups) // n_layers])
    return _check_ratio(f"ratios.{comp}", ratios.get(comp, 0.0))


def tensor_ratios(model: nn.Module, ratios: Mapping[str, float], per_layer: Mapping | None = None
                  ) -> tuple[dict[str, float], list[dict]]:
    """Resolve component (and per-layer) ratios to one ratio per distinct tensor.

    ``ratios``: ``{component: ratio}``; components left out get 0. ``per_layer``: optional
    ``{component: [r0, r1, ...]}`` (the component's layers split into ``len(list)`` contiguous groups:
    layer ``l`` of ``L`` takes entry ``l * len // L``; ``[0.25, 0.45, 0.30]`` = layer thirds; with fewer
    layers than entries the last entries go unused) or ``{component: {layer: ratio}}`` (unlisted layers
    fall back to ``ratios``; a layer index the model does not have raises :class:`ComponentError`
    naming ``per_layer.<component>.<layer>``). Only components with a layer index accept ``per_layer``.

    Returns ``({canonical parameter name: ratio}, tied)`` for every prunable tensor (ratio may be 0),
    keyed by the first name of the tensor in ``named_parameters()``; ``tied`` lists one dict per tied
    tensor: ``{"tensor", "uses": {name: component}, "asked": {component: ratio}, "applied"}`` where
    ``applied`` = max of ``asked`` (see the module docstring).
    """
    for comp in ratios:
        _check_component(comp)
    n_layers = layer_counts(model)
    for comp, spec in (per_layer or {}).items():
        _check_component(comp)
        if STACK_OF[comp] is None:
            raise ComponentError(f"per_layer.{comp}: {comp} has no layer index")
        if isinstance(spec, Mapping):
            n = n_layers[STACK_OF[comp]]
            for layer in spec:
                idx = layer if isinstance(layer, int) and not isinstance(layer, bool) else (
                    int(layer) if isinstance(layer, str) and layer.isdigit() else None)
                if idx is None or not 0 <= idx < n:
                    raise ComponentError(f"per_layer.{comp}.{layer}: no such layer; the model's "
                                         f"{STACK_OF[comp]} has layers 0-{n - 1}")
    canonical = {id(p): n for n, p in model.named_parameters()}
    asked: dict[str, dict[str, float]] = {}
    uses: dict[str, dict[str, str]] = {}
    for info in param_map(model):
        if not info.prunable:
            continue
        p = model.get_parameter(info.name)
        key = canonical[id(p)]
        stack = STACK_OF[info.component]
        r = _layer_ratio(info.component, info.layer, n_layers[stack] if stack else 0, ratios, per_layer)
        asked.setdefault(key, {})[info.component] = r
        uses.setdefault(key, {})[info.name] = info.component
    out = {k: max(v.values()) for k, v in asked.items()}
    tied = [{"tensor": k, "uses": uses[k], "asked": asked[k], "applied": out[k]}
            for k in asked if len(uses[k]) > 1]
    return out, tied


@contextmanager
def untied(model: nn.Module) -> Iterator[list[tuple[str, str]]]:
    """Within the block, every use of a shared parameter after the first gets its own copy (so its
    gradient is its own); on exit the original sharing is restored. Yields ``[(copy name, original
    name)]``. Values written to the copies inside the block are discarded."""
    first: dict[int, str] = {}
    swapped: list[tuple[nn.Module, str, nn.Parameter, str, str]] = []
    try:
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) not in first:
                first[id(p)] = name
                continue
            mod_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(mod_name) if mod_name else model
            swapped.append((module, leaf, p, name, first[id(p)]))
        for module, leaf, p, _, _ in swapped:
            setattr(module, leaf, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        yield [(name, orig) for _, _, _, name, orig in swapped]
    finally:
        for module, leaf, p, _, _ in swapped:
            setattr(module, leaf, p)
