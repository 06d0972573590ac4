"""Parameter counts, split by model part, with shared tensors counted once.

Counted: every ``nn.Parameter`` of the model (trainable or not, e.g. Whisper's frozen sinusoidal
encoder positions). Buffers are not parameters (see ``memory.weight_bytes`` for bytes).
A tensor reachable under several names (Whisper's ``proj_out.weight`` tied to
``model.decoder.embed_tokens.weight``) is counted once, under the first name met in
``named_parameters`` order: the same Parameter object (by ``id``) or, on a real device, the same
storage region (data_ptr, dtype, shape, stride). Meta tensors all have data_ptr 0, so on the meta
device only object identity is used.

Buckets (disjoint; they sum to ``params``), assigned from the parameter name:
- ``embedding_params``: token embeddings (``embed_tokens``) and positional embeddings
  (``embed_positions``; the convolutional ``pos_conv_embed`` of wav2vec2/HuBERT).
- ``encoder_params``: the rest of the encoder, including its conv front-end (Whisper
  ``encoder.conv1/conv2``; wav2vec2/HuBERT ``feature_extractor`` + ``feature_projection``).
- ``decoder_params``: the rest of the decoder (Whisper).
- ``other_params``: everything else: CTC ``lm_head``, an untied ``proj_out``,
  ``masked_spec_embed`` (a training-only vector), unrecognised names.
Informational subsets: ``token_embedding_params``, ``pos_embedding_params``, ``frontend_params``.

``nonzero_params`` counts entries != 0, after applying ``torch.nn.utils.prune`` masks (a
``<name>_orig`` parameter with a ``<name>_mask`` buffer counts ``orig * mask``); ``None`` on the
meta device. Masked or zeroed weights still count in ``params``: only physical removal lowers it.
Int8 linears (``compress.int8_dynamic``) hold no ``nn.Parameter``: their weights and biases are counted
from the packed tensors (quantisation removes no parameter; ``int8_params`` says how many are int8).
"""

from __future__ import annotations

import torch
from torch import nn

_FRONTEND_KEYS = ("encoder.conv1.", "encoder.conv2.", "feature_extractor.", "feature_projection.")


def _bucket(name: str) -> tuple[str, str | None]:
    """(bucket, subset) of a parameter name; see the module docstring."""
    dotted = "." + name
    if ".embed_tokens." in dotted:
        return "embedding", "token_embedding"
    if ".embed_positions." in dotted or ".pos_conv_embed." in dotted:
        return "embedding", "pos_embedding"
    if ".encoder." in dotted:
        return "encoder", "frontend" if any(k in dotted for k in _FRONTEND_KEYS) else None
    if ".feature_extractor." in dotted or ".feature_projection." in dotted:
        return "encoder", "frontend"
    if ".decoder." in dotted:
        return "decoder", None
    return "other", None


def unique_named_tensors(model: nn.Module, buffers: bool = False):
    """Yield (name, tensor) for each distinct parameter (and buffer, if asked), shared ones once."""
    seen_ids: set[int] = set()
    seen_storage: set[tuple] = set()
    items = list(model.named_parameters(remove_duplicate=False))
    if buffers:
        items += list(model.named_buffers(remove_duplicate=False))
    for name, t in items:
        if id(t) in seen_ids:
            continue
        seen_ids.add(id(t))
        if t.device.type != "meta" and t.numel() > 0 and t.data_ptr() != 0:
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if key in seen_storage:
                continue
            seen_storage.add(key)
        yield name, t


def _nonzero(model: nn.Module, name: str, p: torch.Tensor) -> int:
    if name.endswith("_orig"):  # torch.nn.utils.prune re-parametrisation
        mod_name, _, attr = name.rpartition(".")
        mask = getattr(model.get_submodule(mod_name) if mod_name else model, attr[:-5] + "_mask", None)
        if isinstance(mask, torch.Tensor):
            return int(torch.count_nonzero(p.detach() * mask).item())
    return int(torch.count_nonzero(p.detach()).item())


def count_params(model: nn.Module) -> dict:
    """Parameter counts of ``model`` (ints) plus the same in millions (``*_m`` floats).

    Keys: ``params``, ``encoder_params``, ``decoder_params``, ``embedding_params``,
    ``other_params``, ``token_embedding_params``, ``pos_embedding_params``, ``frontend_params``,
    ``nonzero_params`` (None on meta), ``sparsity_pct`` (zeros / params, None on meta), and
    ``params_m``, ``encoder_params_m``, ``decoder_params_m``, ``embedding_params_m``,
    ``other_params_m``, ``nonzero_params_m``. Works for WhisperForConditionalGeneration and
    Wav2Vec2ForCTC / HubertForCTC (and any model whose parameter names follow those patterns).
    """
    keys = ("encoder", "decoder", "embedding", "other", "token_embedding", "pos_embedding", "frontend")
    counts = dict.fromkeys(keys, 0)
    total, nonzero, on_meta = 0, 0, False
    for name, p in unique_named_tensors(model):
        bucket, subset = _bucket(name)
        counts[bucket] += p.numel()
        if subset:
            counts[subset] += p.numel()
        total += p.numel()
        if p.device.type == "meta":
            on_meta = True
        else:
            nonzero += _nonzero(model, name, p)
    from asrcompress.compress.int8_dynamic import int8_elements, quantized_linears

    int8 = int8_elements(model)
    modules = dict(quantized_linears(model)) if int8 else {}
    for name, (w_n, b_n) in int8.items():  # int8 linears (compress.int8_dynamic): no nn.Parameter
        bucket, subset = _bucket(name + ".weight")
        counts[bucket] += w_n + b_n
        if subset:
            counts[subset] += w_n + b_n
        total += w_n + b_n
        w, b = modules[name]._packed_params._weight_bias()
        nonzero += int(torch.count_nonzero(w.int_repr())) + (0 if b is None else int(torch.count_nonzero(b)))
    out: dict = {"params": total, **{f"{k}_params": v for k, v in counts.items()}}
    out["int8_params"] = sum(w_n + b_n for w_n, b_n in int8.values())
    out["nonzero_params"] = None if on_meta else nonzero
    out["sparsity_pct"] = None if on_meta or total == 0 else 100.0 * (total - nonzero) / total
    for k in ("params", "encoder_params", "decoder_params", "embedding_params", "other_params", "nonzero_params"):
        out[k + "_m"] = None if out[k] is None else out[k] / 1e6
    return out


def percent_reduction(value: float, reference: float) -> float:
    """100 * (reference - value) / reference: positive when ``value`` is smaller."""
    if reference == 0:
        raise ValueError("percent_reduction: reference is 0")
    return 100.0 * (reference - value) / reference
