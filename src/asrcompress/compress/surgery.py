"""Physical model surgery: remove FFN neurons, attention heads and layers, merge layers, factorise the
token embedding — for Whisper (``WhisperForConditionalGeneration``, encoder and decoder) and CTC models
(``Wav2Vec2ForCTC``, ``HubertForCTC``).

Every compression method decides *what* to remove; this module does the removal. Removed units leave the
tensors (the ``nn.Linear`` modules get smaller, new tensors are allocated with ``index_select`` so no view
keeps the old storage alive), so parameter count, checkpoint size and RAM really shrink. Zeroing weights
is sparsity and lives in :mod:`asrcompress.compress.masks`.

Indexing conventions
--------------------
* ``stack``: ``"encoder"`` or ``"decoder"`` for Whisper, ``"encoder"`` for CTC models.
* ``layer``, head and neuron indices are **current positions** in the model as it is now (after any earlier
  edits), 0-based; negative indices are rejected. :func:`structure_of` records **original** indices
  (the layer's position in the base model, the head's index in the base layer).
* Bad requests raise :class:`SurgeryError` (a ``ValueError``) naming the stack, layer and index.

What is supported
-----------------
* FFN neurons: any count down to zero; a zero-width FFN is a residual pass-through that still adds the
  second projection's bias.
* Heads: any count down to zero. Removing every head of an attention module is supported: the module then
  outputs ``out_proj.bias`` at every position (= zero attention output through a ``(d, 0)`` out_proj).
  In the Whisper decoder such a self-attention writes a 1-channel zero placeholder to the KV cache so the
  cache keeps counting tokens (decoder positions are read from the cache length of layer 0); a head-less
  cross-attention caches nothing.
* Layers: any set. Exception: the Whisper decoder must keep at least one layer (generation reads the
  position offset from the KV cache, which has no layers to count with). Encoder stacks may go to zero
  layers.
* The config's *layer counts* are kept in sync (``encoder_layers``/``decoder_layers``/``num_hidden_layers``,
  used to size the KV cache); per-layer widths and head counts are not expressible in a HF config, so
  ``*_ffn_dim``/``intermediate_size`` and ``*_attention_heads`` keep the base values and the real shapes are
  recorded by :func:`structure_of` (saved in ``compression.json`` by the checkpoint module).
* Attention modules after head pruning: ``num_heads`` = kept heads, ``head_dim`` and ``scaling`` unchanged,
  ``embed_dim`` = ``num_heads * head_dim`` (the attention's inner width; the residual width stays
  ``config.d_model``/``hidden_size``).
* Unstructured masks stored by :mod:`.masks` are cut together with their weights by neuron/head pruning;
  ``merge_layers`` and ``factorize_embedding`` refuse masked modules.
* Parameters are replaced by new ``nn.Parameter`` objects: build optimisers after surgery.

Typical use
-----------
Impose "half the FFN neurons and half the heads of every layer" on a real-size architecture (random
weights; tensor ops only, ~0.4 s for Whisper-small)::

    model = WhisperForConditionalGeneration(config)
    apply_structure(model, uniform_fractions(config, ffn=0.5, heads=0.5))

Carry a structure found on one model to another of the same family and layer counts::

    apply_structure(big, scale_structure(structure_of(small), big.config))
"""

from __future__ import annotations

import copy
import json
import math
import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    HubertForCTC,
    PretrainedConfig,
    Wav2Vec2ForCTC,
    WhisperForConditionalGeneration,
)
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.hubert.modeling_hubert import HubertAttention
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Attention
from transformers.models.whisper.modeling_whisper import WhisperAttention

from asrcompress.compress.masks import MASK_PREFIX

__all__ = [
    "SurgeryError",
    "LowRankEmbedding",
    "LowRankOutputProjection",
    "prune_ffn_neurons",
    "prune_heads",
    "remove_layers",
    "merge_layers",
    "factorize_embedding",
    "svd_factors",
    "structure_of",
    "apply_structure",
    "structure_fractions",
    "uniform_fractions",
    "scale_structure",
    "MODEL_CLASSES",
    "model_family",
    "num_parameters",
    "kept_count",
]

STRUCTURE_FORMAT = 1

# attribute names stamped on modules to remember original indices across edits (not part of the state dict)
_ORIGIN = "asrc_origin"  # on each layer: list of original layer indices it stands for (2+ after a merge)
_KEPT_HEADS = "asrc_kept_heads"  # on each attention module: original indices of the heads it still has
_BASE_CONFIG = "_asrc_base_config"  # on the model: config dict before the first edit


class SurgeryError(ValueError):
    """A surgery request that cannot be carried out (unknown stack, missing layer/head/neuron, duplicates,
    shape mismatch); the message names the stack, the layer and the offending index."""


# --------------------------------------------------------------------------------------------------------
# model families and accessors


_FAMILIES: dict[type, str] = {
    WhisperForConditionalGeneration: "whisper",
    Wav2Vec2ForCTC: "wav2vec2",
    HubertForCTC: "hubert",
}
MODEL_CLASSES: dict[str, type] = {
    "WhisperForConditionalGeneration": WhisperForConditionalGeneration,
    "Wav2Vec2ForCTC": Wav2Vec2ForCTC,
    "HubertForCTC": HubertForCTC,
}
# config keys per family and stack: (layer count, ffn width, attention heads)
_CONFIG_KEYS: dict[str, dict[str, tuple[str, str, str]]] = {
    "whisper": {
        "encoder": ("encoder_layers", "encoder_ffn_dim", "encoder_attention_heads"),
        "decoder": ("decoder_layers", "decoder_ffn_dim", "decoder_attention_heads"),
    },
    "wav2vec2": {"encoder": ("num_hidden_layers", "intermediate_size", "num_attention_heads")},
    "hubert": {"encoder": ("num_hidden_layers", "intermediate_size", "num_attention_heads")},
}


def model_family(model: nn.Module) -> str:
    """``"whisper"``, ``"wav2vec2"`` or ``"hubert"``; :class:`SurgeryError` for any other class."""
    for cls, fam in _FAMILIES.items():
        if isinstance(model, cls):
            return fam
    raise SurgeryError(
        f"unsupported model class {type(model).__name__}: surgery supports "
        f"{', '.join(c.__name__ for c in _FAMILIES)}"
    )


def _stack_owner(model: nn.Module, stack: str) -> nn.Module:
    """The module whose ``.layers`` ModuleList holds the stack."""
    fam = model_family(model)
    if stack not in _CONFIG_KEYS[fam]:
        raise SurgeryError(f"unknown stack {stack!r} for {fam} (stacks: {', '.join(_CONFIG_KEYS[fam])})")
    if fam == "whisper":
        return model.model.encoder if stack == "encoder" else model.model.decoder
    return model.base_model.encoder


def _layers(model: nn.Module, stack: str) -> nn.ModuleList:
    return _stack_owner(model, stack).layers


def _layer(model: nn.Module, stack: str, layer: int) -> nn.Module:
    layers = _layers(model, stack)
    idx = _as_index(layer, f"{stack}: layer {layer!r}")
    if not 0 <= idx < len(layers):
        raise SurgeryError(f"{stack}: layer {idx} does not exist ({stack} has {len(layers)} layers)")
    return layers[idx]


def _ffn(fam: str, layer_module: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    if fam == "whisper":
        return layer_module.fc1, layer_module.fc2
    ff = layer_module.feed_forward
    return ff.intermediate_dense, ff.output_dense


def _attention(fam: str, stack: str, layer: int, layer_module: nn.Module, attn: str) -> nn.Module:
    if attn == "self":
        return layer_module.self_attn if fam == "whisper" else layer_module.attention
    if attn == "cross":
        if fam == "whisper" and stack == "decoder":
            return layer_module.encoder_attn
        raise SurgeryError(f"{stack} layer {layer}: no cross-attention (only the Whisper decoder has one)")
    raise SurgeryError(f"{stack} layer {layer}: attn must be 'self' or 'cross', got {attn!r}")


def _as_index(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise SurgeryError(f"{where}: index must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            return int(value.item())
        raise SurgeryError(f"{where}: index must be an integer, got {value!r}") from None


def _check_indices(indices: Sequence[int] | Tensor, where: str, what: str, n: int, container: str) -> list[int]:
    """Validate ``indices`` (unique, 0 <= i < n) and return them sorted."""
    if isinstance(indices, Tensor):
        indices = indices.reshape(-1).tolist()
    out = [_as_index(i, f"{where}: {what}") for i in indices]
    dups = sorted(i for i, count in Counter(out).items() if count > 1)
    if dups:
        raise SurgeryError(f"{where}: duplicate {what} indices {dups}")
    for i in out:
        if not 0 <= i < n:
            raise SurgeryError(f"{where}: {what} {i} does not exist ({container} has {n} {what}s)")
    return sorted(out)


def _keep_index(n: int, remove: list[int]) -> Tensor:
    """Sorted indices of ``range(n)`` not in ``remove``, built on the CPU in Python: also inside a
    ``torch.device("meta")`` context (an int8 checkpoint's skeleton), where ``nonzero`` has no meta kernel."""
    gone = set(remove)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long, device="cpu")


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every distinct config object reachable from the model's modules (submodels may hold their own)."""
    seen: dict[int, PretrainedConfig] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if isinstance(cfg, PretrainedConfig):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def _set_config(model: nn.Module, key: str, value: Any) -> None:
    for cfg in _configs(model):
        setattr(cfg, key, value)


def _stamp(model: nn.Module) -> None:
    """Remember the base config and the original index of every layer before the first edit."""
    if getattr(model, _BASE_CONFIG, None) is None:
        object.__setattr__(model, _BASE_CONFIG, copy.deepcopy(model.config.to_dict()))
    for stack in _CONFIG_KEYS[model_family(model)]:
        for i, layer_module in enumerate(_layers(model, stack)):
            if getattr(layer_module, _ORIGIN, None) is None:
                layer_module.asrc_origin = [i]


def _kept_heads(att: nn.Module) -> list[int]:
    kept = getattr(att, _KEPT_HEADS, None)
    return list(kept) if kept is not None else list(range(att.num_heads))


def kept_count(structure_layer: Mapping[str, Any], key: str) -> int:
    """Number of heads in a structure layer record (``key`` = ``"heads"`` or ``"cross_heads"``)."""
    value = structure_layer[key]
    return len(value) if isinstance(value, list) else int(value)


def num_parameters(model: nn.Module) -> int:
    """Distinct parameter elements (tied/shared parameters counted once; masked zeros still counted)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------
# in-place resizing of nn.Linear


def _set_linear(lin: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    """Give ``lin`` new (freshly allocated) weight/bias tensors and update its feature counts."""
    req = lin.weight.requires_grad
    lin.weight = nn.Parameter(weight.contiguous(), requires_grad=req)
    if bias is not None:
        lin.bias = nn.Parameter(bias.contiguous(), requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = weight.shape


def _slice_masks(lin: nn.Linear, dim: int, keep: Tensor) -> None:
    """Cut stored unstructured masks (see :mod:`.masks`) of ``lin`` like its weight/bias."""
    for leaf in ("weight", "bias"):
        buf = MASK_PREFIX + leaf
        mask = lin._buffers.get(buf)
        if mask is None or (leaf == "bias" and dim == 1):
            continue
        lin._buffers[buf] = mask.index_select(dim, keep.to(mask.device))


@torch.no_grad()
def _keep_rows(lin: nn.Linear, keep: Tensor) -> None:
    keep = keep.to(lin.weight.device)
    bias = lin.bias.index_select(0, keep) if lin.bias is not None else None
    _set_linear(lin, lin.weight.index_select(0, keep), bias)
    _slice_masks(lin, 0, keep)


@torch.no_grad()
def _keep_cols(lin: nn.Linear, keep: Tensor) -> None:
    keep = keep.to(lin.weight.device)
    _set_linear(lin, lin.weight.index_select(1, keep), None)
    _slice_masks(lin, 1, keep)


def _refuse_masks(module: nn.Module, where: str) -> None:
    for name, _buf in module.named_buffers():
        if name.rpartition(".")[2].startswith(MASK_PREFIX):
            raise SurgeryError(f"{where}: {name} holds an unstructured mask; call masks.make_permanent() or "
                               "masks.remove_masks() first")


# --------------------------------------------------------------------------------------------------------
# attention modules with every head removed


def _no_heads_output(module: nn.Module, hidden_states: Tensor) -> Tensor:
    # out_proj has shape (d, 0): this is the bias broadcast to every position (zeros if no bias)
    return module.out_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))


class WhisperAttentionNoHeads(WhisperAttention):
    """A Whisper attention whose every head was removed: output = ``out_proj.bias`` at every position.

    Self-attention in a decoder appends a ``(batch, 1, new_tokens, 1)`` zero placeholder to the KV cache so
    the cache's token count (read from layer 0 for decoder positions) stays right; cross-attention caches
    nothing.
    """

    def forward(self, hidden_states: Tensor, key_value_states: Tensor | None = None, past_key_values=None,
                attention_mask: Tensor | None = None, output_attentions: bool = False, **kwargs: Any
                ) -> tuple[Tensor, None]:
        if key_value_states is None and past_key_values is not None and self.layer_idx is not None:
            cache = past_key_values
            if isinstance(cache, EncoderDecoderCache):
                cache = cache.self_attention_cache
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return _no_heads_output(self, hidden_states), None


class Wav2Vec2AttentionNoHeads(Wav2Vec2Attention):
    """A wav2vec 2.0 attention whose every head was removed: output = ``out_proj.bias`` at every position."""

    def forward(self, hidden_states: Tensor, key_value_states: Tensor | None = None,
                attention_mask: Tensor | None = None, output_attentions: bool | None = False, **kwargs: Any
                ) -> tuple[Tensor, None]:
        return _no_heads_output(self, hidden_states), None


class HubertAttentionNoHeads(HubertAttention):
    """A HuBERT attention whose every head was removed: output = ``out_proj.bias`` at every position."""

    def forward(self, hidden_states: Tensor, key_value_states: Tensor | None = None,
                attention_mask: Tensor | None = None, output_attentions: bool | None = False, **kwargs: Any
                ) -> tuple[Tensor, None]:
        return _no_heads_output(self, hidden_states), None


_NO_HEADS = {
    WhisperAttention: WhisperAttentionNoHeads,
    Wav2Vec2Attention: Wav2Vec2AttentionNoHeads,
    HubertAttention: HubertAttentionNoHeads,
}


def _to_no_heads(att: nn.Module) -> None:
    if type(att) in _NO_HEADS.values():
        return
    for base, cls in _NO_HEADS.items():
        if type(att) is base:
            att.__class__ = cls
            return
    raise SurgeryError(f"cannot remove every head from {type(att).__name__}")


# --------------------------------------------------------------------------------------------------------
# Whisper alignment heads (generation_config.alignment_heads = [[decoder layer, cross head], ...])


def _remap_alignment_heads(model: nn.Module, layer_map: Mapping[int, int] | None = None,
                           head_layer: int | None = None, head_map: Mapping[int, int] | None = None) -> None:
    gen = getattr(model, "generation_config", None)
    pairs = getattr(gen, "alignment_heads", None) if gen is not None else None
    if not pairs:
        return
    out = []
    for layer_i, head_i in pairs:
        if layer_map is not None:
            if layer_i not in layer_map:
                continue
            layer_i = layer_map[layer_i]
        if head_map is not None and layer_i == head_layer:
            if head_i not in head_map:
                continue
            head_i = head_map[head_i]
        out.append([layer_i, head_i])
    gen.alignment_heads = out


# --------------------------------------------------------------------------------------------------------
# public edits


def prune_ffn_neurons(model: nn.Module, stack: str, layer: int, remove: Sequence[int]) -> None:
    """Remove FFN neurons ``remove`` (current positions) from ``stack`` layer ``layer``.

    Removed: the rows of the first projection (Whisper ``fc1``; CTC ``feed_forward.intermediate_dense``)
    and their bias entries, and the matching input columns of the second projection (``fc2`` /
    ``output_dense``), whose bias is kept. Per removed neuron that is ``2 * d_model + 1`` parameters.
    Any count down to zero is allowed: a zero-width FFN adds only the second projection's bias.
    """
    fam = model_family(model)
    mod = _layer(model, stack, layer)
    fc1, fc2 = _ffn(fam, mod)
    width = fc1.out_features
    rm = _check_indices(remove, f"{stack} layer {layer}", "neuron", width, "FFN")
    _stamp(model)
    if not rm:
        return
    keep = _keep_index(width, rm)
    _keep_rows(fc1, keep)
    _keep_cols(fc2, keep)


def prune_heads(model: nn.Module, stack: str, layer: int, remove: Sequence[int], attn: str = "self") -> None:
    """Remove attention heads ``remove`` (current positions) of ``stack`` layer ``layer``.

    ``attn`` is ``"self"`` or ``"cross"`` (Whisper decoder ``encoder_attn``). Removed per head: ``head_dim``
    rows of q_proj, k_proj and v_proj with their bias entries (Whisper's k_proj has no bias) and the
    matching ``head_dim`` input columns of out_proj (its bias is kept): ``4 * head_dim * d_model`` weights
    + ``3 * head_dim`` biases (``2 * head_dim`` for Whisper). ``head_dim`` and ``scaling`` are unchanged;
    ``num_heads`` and ``embed_dim`` (= kept heads x head_dim) are updated. Removing every head is
    supported (see the module docstring).
    """
    fam = model_family(model)
    mod = _layer(model, stack, layer)
    att = _attention(fam, stack, layer, mod, attn)
    n = att.num_heads
    desc = "cross-attention" if attn == "cross" else "layer"
    rm = _check_indices(remove, f"{stack} layer {layer}" + (" cross-attention" if attn == "cross" else ""),
                        "head", n, desc)
    _stamp(model)
    if not rm:
        return
    hd = att.head_dim
    keep_heads = _keep_index(n, rm)
    rows = (keep_heads[:, None] * hd + torch.arange(hd, device="cpu")[None, :]).reshape(-1)
    for name in ("q_proj", "k_proj", "v_proj"):
        _keep_rows(getattr(att, name), rows)
    _keep_cols(att.out_proj, rows)
    old_kept = _kept_heads(att)
    att.asrc_kept_heads = [old_kept[i] for i in keep_heads.tolist()]
    att.num_heads = len(keep_heads)
    att.embed_dim = att.num_heads * hd
    if att.num_heads == 0:
        _to_no_heads(att)
    if fam == "whisper" and attn == "cross":
        _remap_alignment_heads(model, head_layer=layer,
                               head_map={old: new for new, old in enumerate(keep_heads.tolist())})


def _replace_layers(model: nn.Module, stack: str, new_layers: list[nn.Module],
                    layer_map: Mapping[int, int]) -> None:
    fam = model_family(model)
    owner = _stack_owner(model, stack)
    owner.layers = nn.ModuleList(new_layers)
    for i, layer_module in enumerate(owner.layers):
        for m in layer_module.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    _set_config(model, _CONFIG_KEYS[fam][stack][0], len(new_layers))
    if fam == "whisper" and stack == "decoder":
        _remap_alignment_heads(model, layer_map=layer_map)


def remove_layers(model: nn.Module, stack: str, layers: Sequence[int]) -> None:
    """Drop whole layers (current positions) of ``stack``: every parameter of those layers goes.

    The config layer count and every ``layer_idx`` (KV-cache slot) are renumbered. The Whisper decoder must
    keep at least one layer.
    """
    fam = model_family(model)
    lst = _layers(model, stack)
    n = len(lst)
    rm = _check_indices(layers, stack, "layer", n, stack)
    if fam == "whisper" and stack == "decoder" and len(rm) == n and n > 0:
        raise SurgeryError("decoder: cannot remove every layer (generation reads token positions from the "
                           "decoder's KV cache, which needs at least one layer)")
    _stamp(model)
    if not rm:
        return
    keep = [i for i in range(n) if i not in set(rm)]
    _replace_layers(model, stack, [lst[i] for i in keep], {old: new for new, old in enumerate(keep)})


@torch.no_grad()
def merge_layers(model: nn.Module, stack: str, first: int, alpha: float, beta: float) -> None:
    """Replace layers ``first`` and ``first + 1`` (current positions) by one layer whose every parameter is
    ``alpha * W_first + beta * W_second`` (layer norms included).

    Both layers must have the same parameter names and shapes (same FFN width and head count), otherwise
    :class:`SurgeryError`. The merged layer keeps the first layer's structure bookkeeping (head indices) and
    stands for both original layers. With ``(alpha, beta) = (1, 0)`` the result equals dropping layer
    ``first + 1``.
    """
    lst = _layers(model, stack)
    n = len(lst)
    first = _as_index(first, f"{stack}: layer {first!r}")
    if not 0 <= first < n - 1:
        raise SurgeryError(f"{stack}: cannot merge layers {first} and {first + 1} ({stack} has {n} layers)")
    a, b = lst[first], lst[first + 1]
    _refuse_masks(a, f"{stack} layer {first}")
    _refuse_masks(b, f"{stack} layer {first + 1}")
    _stamp(model)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys() or type(a) is not type(b):
        raise SurgeryError(f"{stack} layers {first} and {first + 1}: parameter sets differ "
                           f"({sorted(pa.keys() ^ pb.keys())})")
    for name in pa:
        if pa[name].shape != pb[name].shape:
            raise SurgeryError(f"{stack} layers {first} and {first + 1}: {name} has shape "
                               f"{tuple(pa[name].shape)} vs {tuple(pb[name].shape)}")
    for an, bn in zip(a.modules(), b.modules(), strict=True):
        if type(an) is not type(bn):
            raise SurgeryError(f"{stack} layers {first} and {first + 1}: module types differ "
                               f"({type(an).__name__} vs {type(bn).__name__})")
    merged = copy.deepcopy(a)
    for name, p in merged.named_parameters():
        p.copy_(alpha * pa[name] + beta * pb[name])
    merged.asrc_origin = list(getattr(a, _ORIGIN)) + list(getattr(b, _ORIGIN))
    new = list(lst[:first]) + [merged] + list(lst[first + 2:])
    layer_map = {i: i for i in range(first + 1)}
    layer_map.update({i: i - 1 for i in range(first + 2, n)})
    _replace_layers(model, stack, new, layer_map)


# --------------------------------------------------------------------------------------------------------
# low-rank token embedding (Whisper)


class LowRankEmbedding(nn.Module):
    """Token embedding ``W ≈ A @ B`` (``A``: vocab x rank, ``B``: rank x d_model), tied to the output layer.

    ``forward(ids)`` = ``A[ids] @ B`` (input embedding); :meth:`logits` = ``(h @ B^T) @ A^T`` = ``h @ W^T``.
    Parameters: ``rank * (vocab + d_model)`` instead of ``vocab * d_model``.
    """

    def __init__(self, A: Tensor, B: Tensor, padding_idx: int | None = None):
        super().__init__()
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
            raise SurgeryError(f"low-rank factors must be (vocab x r) and (r x d), got {tuple(A.shape)} and "
                               f"{tuple(B.shape)}")
        self.A = nn.Parameter(A.detach().clone().contiguous())
        self.B = nn.Parameter(B.detach().clone().contiguous())
        self.padding_idx = padding_idx

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    @property
    def num_embeddings(self) -> int:
        return self.A.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.B.shape[1]

    def forward(self, input_ids: Tensor) -> Tensor:
        return nn.functional.embedding(input_ids, self.A, self.padding_idx) @ self.B

    def logits(self, hidden: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.linear(hidden, self.B), self.A)

    def full_weight(self) -> Tensor:
        """The dense ``vocab x d_model`` matrix ``A @ B`` (for inspection; not stored)."""
        return self.A @ self.B

    def extra_repr(self) -> str:
        return f"vocab={self.num_embeddings}, rank={self.rank}, d_model={self.embedding_dim}"


class LowRankOutputProjection(nn.Module):
    """Output projection tied to a :class:`LowRankEmbedding`: ``logits = (h @ B^T) @ A^T`` with the very same
    parameters. It holds no parameters of its own (the embedding is referenced, not registered), so the
    factors appear once in ``state_dict``/``parameters()``."""

    def __init__(self, embedding: LowRankEmbedding):
        super().__init__()
        object.__setattr__(self, "_embedding", embedding)

    @property
    def embedding(self) -> LowRankEmbedding:
        return self._embedding

    def forward(self, hidden: Tensor) -> Tensor:
        return self._embedding.logits(hidden)

    def extra_repr(self) -> str:
        return f"tied to LowRankEmbedding(rank={self._embedding.rank})"


@torch.no_grad()
def svd_factors(W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``W ≈ A @ B`` with ``A = U_r diag(sqrt(S_r))`` and ``B = diag(sqrt(S_r)) V_r^T``.

    ``rank`` must be in ``1..min(W.shape)``; the full rank reproduces ``W`` to float tolerance. Computed in
    float32 (or float64 for float64 input) and returned in ``W``'s dtype.
    """
    if W.dim() != 2:
        raise SurgeryError(f"svd_factors needs a matrix, got shape {tuple(W.shape)}")
    full = min(W.shape)
    r = _as_index(rank, "svd_factors: rank")
    if not 1 <= r <= full:
        raise SurgeryError(f"svd_factors: rank {r} out of range 1..{full} for a {tuple(W.shape)} matrix")
    work = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    root = S[:r].sqrt()
    return (U[:, :r] * root).to(W.dtype).contiguous(), (root[:, None] * Vh[:r]).to(W.dtype).contiguous()


def _whisper_embedding_weight(model: nn.Module) -> tuple[int, int]:
    emb = model.model.decoder.embed_tokens
    if isinstance(emb, LowRankEmbedding):
        return emb.num_embeddings, emb.embedding_dim
    return tuple(emb.weight.shape)  # type: ignore[return-value]


def factorize_embedding(model: nn.Module, A: Tensor, B: Tensor) -> None:
    """Replace Whisper's tied token embedding / output projection ``W`` (vocab x d_model) by ``A @ B``.

    The decoder's ``embed_tokens`` becomes a :class:`LowRankEmbedding` holding ``A`` and ``B`` (copied) and
    ``proj_out`` a :class:`LowRankOutputProjection` computing logits with the same two parameters.
    Parameter count changes by ``rank * (vocab + d_model) - vocab * d_model``. ``config.tie_word_embeddings``
    is set to False on the edited model so transformers' own tying (which looks for ``.weight``) leaves the
    explicit tie alone; the base config (recorded for reload) is unchanged. May be applied again to an
    already factorised model.
    """
    if model_family(model) != "whisper":
        raise SurgeryError(f"factorize_embedding: only Whisper has a tied token embedding "
                           f"(got {type(model).__name__})")
    vocab, d = _whisper_embedding_weight(model)
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != vocab or B.shape[1] != d or A.shape[1] != B.shape[0]:
        raise SurgeryError(f"decoder embedding: factors must be ({vocab} x r) and (r x {d}), got "
                           f"{tuple(A.shape)} and {tuple(B.shape)}")
    if A.shape[1] < 1:
        raise SurgeryError("decoder embedding: rank must be >= 1")
    _refuse_masks(model.model.decoder.embed_tokens, "decoder embedding")
    _stamp(model)
    old = model.model.decoder.embed_tokens
    ref = old.A if isinstance(old, LowRankEmbedding) else old.weight
    emb = LowRankEmbedding(A.to(ref.device, ref.dtype), B.to(ref.device, ref.dtype), padding_idx=old.padding_idx)
    emb.A.requires_grad_(ref.requires_grad)
    emb.B.requires_grad_(ref.requires_grad)
    model.model.decoder.embed_tokens = emb
    model.proj_out = LowRankOutputProjection(emb)
    _set_config(model, "tie_word_embeddings", False)


# --------------------------------------------------------------------------------------------------------
# structure records


def _base_config_dict(model: nn.Module) -> dict[str, Any]:
    """The base config as plain JSON data (e.g. ``id2label`` keys become strings, as in config.json)."""
    base = getattr(model, _BASE_CONFIG, None)
    return json.loads(json.dumps(base if base is not None else model.config.to_dict()))


def structure_of(model: nn.Module) -> dict[str, Any]:
    """A JSON-able record of the model's physical shape.

    Keys: ``format``; ``family`` (whisper/wav2vec2/hubert); ``model_class``; ``base_config`` (config dict of
    the model before the first edit); ``stacks`` -> stack -> ``base_layers`` (layer count of the base model)
    and ``layers`` (one record per current layer: ``origin`` = original layer indices it stands for (two or
    more after a merge), ``ffn`` = FFN width, ``heads`` = original indices of the kept self-attention heads,
    ``cross_heads`` likewise for the Whisper decoder); ``layers_kept`` -> stack -> the first original index
    of every current layer; ``embedding_rank`` (int, or None for a dense embedding / CTC model);
    ``num_parameters`` (distinct parameter elements).
    """
    fam = model_family(model)
    base = _base_config_dict(model)
    stacks: dict[str, Any] = {}
    kept: dict[str, list[int]] = {}
    for stack, (layers_key, _, _) in _CONFIG_KEYS[fam].items():
        recs = []
        for i, mod in enumerate(_layers(model, stack)):
            fc1, _fc2 = _ffn(fam, mod)
            rec: dict[str, Any] = {
                "origin": list(getattr(mod, _ORIGIN, None) or [i]),
                "ffn": int(fc1.out_features),
                "heads": _kept_heads(_attention(fam, stack, i, mod, "self")),
            }
            if fam == "whisper" and stack == "decoder":
                rec["cross_heads"] = _kept_heads(mod.encoder_attn)
            recs.append(rec)
        stacks[stack] = {"base_layers": int(base[layers_key]), "layers": recs}
        kept[stack] = [r["origin"][0] for r in recs]
    rank = None
    if fam == "whisper" and isinstance(model.model.decoder.embed_tokens, LowRankEmbedding):
        rank = model.model.decoder.embed_tokens.rank
    return {
        "format": STRUCTURE_FORMAT,
        "kind": "absolute",
        "family": fam,
        "model_class": type(model).__name__,
        "base_config": base,
        "stacks": stacks,
        "layers_kept": kept,
        "embedding_rank": rank,
        "num_parameters": num_parameters(model),
    }


def _check_structure(structure: Mapping[str, Any], fam: str) -> None:
    if not isinstance(structure, Mapping) or "stacks" not in structure:
        raise SurgeryError("structure: not a structure record (no 'stacks')")
    if structure.get("family") != fam:
        raise SurgeryError(f"structure is for family {structure.get('family')!r}, model is {fam!r}")
    unknown = set(structure["stacks"]) - set(_CONFIG_KEYS[fam])
    if unknown:
        raise SurgeryError(f"structure: unknown stacks {sorted(unknown)} for {fam}")


@torch.no_grad()
def apply_structure(model: nn.Module, structure: Mapping[str, Any]) -> nn.Module:
    """Resize ``model`` (normally freshly built from a base config) to ``structure``; returns ``model``.

    ``structure`` is a record from :func:`structure_of`, :func:`scale_structure`, or a fractions record
    (:func:`structure_fractions` / :func:`uniform_fractions`, scaled to ``model.config`` first). Per stack,
    the model must have either the structure's ``base_layers`` layers (layers whose original index is not
    the first ``origin`` of a recorded layer are removed; a merged layer keeps its first layer's slot) or
    already exactly as many layers as recorded. Then FFN widths and head counts are cut to the recorded
    absolute numbers by removing the *last* neurons/heads (widths can only shrink: asking for more than the
    model has raises), and the recorded original indices are stamped for bookkeeping. A recorded embedding
    rank replaces the embedding by a :class:`LowRankEmbedding` of that rank with small random factors
    (N(0, 0.02^2); meant to be overwritten by a state dict or to serve measurements). Uses tensor ops only.
    """
    fam = model_family(model)
    if structure.get("kind") == "fractions":
        structure = scale_structure(structure, model.config)
    _check_structure(structure, fam)
    _stamp(model)
    for stack, srec in structure["stacks"].items():
        recs = srec["layers"]
        n_now = len(_layers(model, stack))
        if n_now != len(recs):
            base_layers = int(srec.get("base_layers", -1))
            if n_now != base_layers:
                raise SurgeryError(f"{stack}: model has {n_now} layers, structure records {len(recs)} layers "
                                   f"of a {base_layers}-layer base")
            slots = [int(r["origin"][0]) for r in recs]
            if slots != sorted(set(slots)) or any(not 0 <= s < n_now for s in slots):
                raise SurgeryError(f"{stack}: structure layer origins {slots} are not increasing indices "
                                   f"into {n_now} layers")
            remove_layers(model, stack, [i for i in range(n_now) if i not in set(slots)])
        for i, rec in enumerate(recs):
            mod = _layers(model, stack)[i]
            fc1, _ = _ffn(fam, mod)
            width = int(rec["ffn"])
            if width > fc1.out_features:
                raise SurgeryError(f"{stack} layer {i}: structure asks for {width} FFN neurons, layer has "
                                   f"{fc1.out_features}")
            prune_ffn_neurons(model, stack, i, range(width, fc1.out_features))
            for attn, key in (("self", "heads"), ("cross", "cross_heads")):
                if key not in rec:
                    continue
                att = _attention(fam, stack, i, mod, attn)
                want = kept_count(rec, key)
                if want > att.num_heads:
                    raise SurgeryError(f"{stack} layer {i}: structure asks for {want} {attn}-attention heads, "
                                       f"layer has {att.num_heads}")
                prune_heads(model, stack, i, range(want, att.num_heads), attn=attn)
                if isinstance(rec[key], list):
                    att.asrc_kept_heads = [int(h) for h in rec[key]]
            mod.asrc_origin = [int(o) for o in rec["origin"]]
    rank = structure.get("embedding_rank")
    if rank is not None:
        if fam != "whisper":
            raise SurgeryError(f"structure: embedding_rank given for a {fam} model")
        vocab, d = _whisper_embedding_weight(model)
        ref = next(model.model.decoder.parameters())
        gen = torch.Generator().manual_seed(0)
        A = torch.randn(vocab, int(rank), generator=gen).mul_(0.02).to(ref.device, ref.dtype)
        B = torch.randn(int(rank), d, generator=gen).mul_(0.02).to(ref.device, ref.dtype)
        factorize_embedding(model, A, B)
    return model


# --------------------------------------------------------------------------------------------------------
# structures as kept fractions (portable between architectures with the same layer counts)


def _config_dict(config: PretrainedConfig | Mapping[str, Any]) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def _family_of_config(cfg: Mapping[str, Any]) -> str:
    fam = cfg.get("model_type")
    if fam not in _CONFIG_KEYS:
        raise SurgeryError(f"config model_type {fam!r} not supported (supported: {', '.join(_CONFIG_KEYS)})")
    return fam


def _round_kept(fraction: float, n: int) -> int:
    """Kept units for ``fraction`` of ``n``: nearest integer with halves rounded up (1e-9 tolerance against
    float noise), at least 1 if ``fraction > 0``, at most ``n``."""
    if not 0.0 <= fraction <= 1.0 + 1e-12:
        raise SurgeryError(f"kept fraction {fraction} outside [0, 1]")
    k = math.floor(fraction * n + 0.5 + 1e-9)
    if fraction > 0 and k == 0:
        k = 1
    return min(k, n)


def structure_fractions(structure: Mapping[str, Any]) -> dict[str, Any]:
    """Express an absolute structure as kept fractions of its base config, per layer.

    Layer records get ``ffn`` = width / base ffn width, ``heads`` (and ``cross_heads``) = kept / base head
    count, ``origin`` unchanged; ``embedding_rank`` becomes rank / min(vocab, d_model) (or None).
    """
    if structure.get("kind") == "fractions":
        return copy.deepcopy(dict(structure))
    fam = structure["family"]
    base = structure["base_config"]
    stacks: dict[str, Any] = {}
    for stack, srec in structure["stacks"].items():
        _, ffn_key, heads_key = _CONFIG_KEYS[fam][stack]
        recs = []
        for rec in srec["layers"]:
            out = {"origin": list(rec["origin"]), "ffn": rec["ffn"] / base[ffn_key],
                   "heads": kept_count(rec, "heads") / base[heads_key]}
            if "cross_heads" in rec:
                out["cross_heads"] = kept_count(rec, "cross_heads") / base[heads_key]
            recs.append(out)
        stacks[stack] = {"base_layers": srec["base_layers"], "layers": recs}
    rank = structure.get("embedding_rank")
    emb = None if rank is None else rank / min(base["vocab_size"], base["d_model"])
    return {"format": STRUCTURE_FORMAT, "kind": "fractions", "family": fam, "stacks": stacks,
            "embedding_rank": emb}


def uniform_fractions(config: PretrainedConfig | Mapping[str, Any], ffn: float = 1.0, heads: float = 1.0,
                      cross_heads: float | None = None, embedding_rank: float | None = None) -> dict[str, Any]:
    """A fractions record keeping ``ffn`` of every layer's FFN neurons and ``heads`` of its self-attention
    heads (``cross_heads`` of the Whisper decoder's cross-attention heads, default = ``heads``), all layers
    kept; ``embedding_rank`` = fraction of min(vocab, d_model), or None for a dense embedding. Apply with
    :func:`apply_structure` or turn into absolute numbers with :func:`scale_structure` (rounding: see
    ``_round_kept``: nearest integer, halves up, at least 1 when the fraction is > 0)."""
    cfg = _config_dict(config)
    fam = _family_of_config(cfg)
    stacks: dict[str, Any] = {}
    for stack, (layers_key, _, _) in _CONFIG_KEYS[fam].items():
        recs = []
        for i in range(int(cfg[layers_key])):
            rec: dict[str, Any] = {"origin": [i], "ffn": float(ffn), "heads": float(heads)}
            if fam == "whisper" and stack == "decoder":
                rec["cross_heads"] = float(heads if cross_heads is None else cross_heads)
            recs.append(rec)
        stacks[stack] = {"base_layers": int(cfg[layers_key]), "layers": recs}
    return {"format": STRUCTURE_FORMAT, "kind": "fractions", "family": fam, "stacks": stacks,
            "embedding_rank": embedding_rank}


def scale_structure(structure: Mapping[str, Any], target_config: PretrainedConfig | Mapping[str, Any]
                    ) -> dict[str, Any]:
    """Absolute structure for ``target_config`` from a fractions record or from an absolute structure of a
    different (e.g. smaller) architecture of the same family with the same base layer counts.

    Each kept count = ``_round_kept(fraction, target width)``: ``floor(f * N + 0.5)`` (halves round up),
    raised to 1 if ``f > 0``, capped at ``N``. Heads become ``range(k)``; layer origins are kept, so removed
    and merged layers carry over. Embedding rank = ``_round_kept(f, min(vocab, d_model))``.
    """
    fr = structure_fractions(structure)
    cfg = _config_dict(target_config)
    fam = _family_of_config(cfg)
    if fr["family"] != fam:
        raise SurgeryError(f"structure is for family {fr['family']!r}, target config is {fam!r}")
    stacks: dict[str, Any] = {}
    for stack, srec in fr["stacks"].items():
        layers_key, ffn_key, heads_key = _CONFIG_KEYS[fam][stack]
        if int(srec["base_layers"]) != int(cfg[layers_key]):
            raise SurgeryError(f"{stack}: structure has a {srec['base_layers']}-layer base, target config has "
                               f"{cfg[layers_key]} layers")
        recs = []
        for rec in srec["layers"]:
            out: dict[str, Any] = {"origin": list(rec["origin"]),
                                   "ffn": _round_kept(rec["ffn"], int(cfg[ffn_key])),
                                   "heads": list(range(_round_kept(rec["heads"], int(cfg[heads_key]))))}
            if "cross_heads" in rec:
                out["cross_heads"] = list(range(_round_kept(rec["cross_heads"], int(cfg[heads_key]))))
            recs.append(out)
        stacks[stack] = {"base_layers": int(cfg[layers_key]), "layers": recs}
    rank = fr.get("embedding_rank")
    if rank is not None:
        rank = _round_kept(rank, min(int(cfg["vocab_size"]), int(cfg["d_model"])))
    return {"format": STRUCTURE_FORMAT, "kind": "absolute", "family": fam,
            "model_class": {"whisper": "WhisperForConditionalGeneration", "wav2vec2": "Wav2Vec2ForCTC",
                            "hubert": "HubertForCTC"}[fam],
            "base_config": copy.deepcopy(cfg), "stacks": stacks,
            "layers_kept": {s: [r["origin"][0] for r in v["layers"]] for s, v in stacks.items()},
            "embedding_rank": rank, "num_parameters": None}


def model_class_for(structure: Mapping[str, Any]) -> type:
    """The transformers class named in a structure record."""
    name = structure.get("model_class")
    if name not in MODEL_CLASSES:
        raise SurgeryError(f"structure: unsupported model_class {name!r}")
    return MODEL_CLASSES[name]
