"""Unstructured (element-wise) masks: sparsity, never fewer parameters.

:func:`apply_masks` zeroes the masked entries of parameters and keeps each mask as a non-persistent buffer
``asrc_mask__<param>`` on the parameter's owning module (so it follows ``.to(device)`` and ``deepcopy`` but
is not written to the state dict / checkpoint). After an optimiser step call :func:`reapply_masks` to zero
the masked entries again. :func:`make_permanent` reapplies once and forgets the masks (weights stay zero);
:func:`remove_masks` forgets them without touching the weights.

Structured surgery (``surgery.prune_ffn_neurons``/``prune_heads``) cuts stored masks together with the
weights they belong to; ``merge_layers``/``factorize_embedding`` refuse masked inputs.

A masked weight is still a parameter: ``num_parameters`` and the dense checkpoint do not shrink.
:func:`sparsity_report` counts zeros; :func:`sparse_storage_bytes` gives what a CSR (``torch.sparse_csr``)
copy of a tensor would take next to its dense size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MASK_PREFIX",
    "MaskError",
    "apply_masks",
    "reapply_masks",
    "get_masks",
    "remove_masks",
    "make_permanent",
    "sparsity_report",
    "sparse_storage_bytes",
]

MASK_PREFIX = "asrc_mask__"  # buffer name prefix; surgery slices such buffers along with their weights


class MaskError(ValueError):
    """A mask that does not fit its parameter (unknown name, wrong shape, non-binary values)."""


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError as err:
        raise MaskError(f"mask {name!r}: no module {module_name!r}") from err
    if leaf not in module._parameters or module._parameters[leaf] is None:
        raise MaskError(f"mask {name!r}: {type(module).__name__} {module_name!r} has no parameter {leaf!r}")
    return module, leaf


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero parameter entries where ``masks[name]`` is 0/False (``name`` as in ``named_parameters()``) and
    keep the masks (as bool) for :func:`reapply_masks`. A mask already stored for the same parameter is
    combined with the new one (logical and). Raises :class:`MaskError` for unknown names, shape mismatch or
    values other than 0/1."""
    checked = []
    for name, mask in masks.items():
        module, leaf = _owner(model, name)
        param = module._parameters[leaf]
        mask_t = torch.as_tensor(mask)
        if tuple(mask_t.shape) != tuple(param.shape):
            raise MaskError(f"mask {name!r}: shape {tuple(mask_t.shape)} vs parameter {tuple(param.shape)}")
        if mask_t.dtype != torch.bool:
            if not bool(((mask_t == 0) | (mask_t == 1)).all()):
                raise MaskError(f"mask {name!r}: values must be 0/1 or bool")
            mask_t = mask_t != 0
        checked.append((module, leaf, mask_t.to(param.device)))
    for module, leaf, mask_t in checked:
        buf = MASK_PREFIX + leaf
        old = module._buffers.get(buf)
        if old is not None:
            mask_t = mask_t & old
        module.register_buffer(buf, mask_t, persistent=False)
        module._parameters[leaf].mul_(mask_t)


@torch.no_grad()
def reapply_masks(model: nn.Module) -> int:
    """Zero the masked entries again (e.g. after an optimiser step); returns the number of masks applied."""
    count = 0
    for module in model.modules():
        for buf, mask in module._buffers.items():
            if buf.startswith(MASK_PREFIX) and mask is not None:
                module._parameters[buf[len(MASK_PREFIX):]].mul_(mask)
                count += 1
    return count


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """The stored masks, keyed by parameter name."""
    out = {}
    for mname, module in model.named_modules():
        for buf, mask in module._buffers.items():
            if buf.startswith(MASK_PREFIX) and mask is not None:
                leaf = buf[len(MASK_PREFIX):]
                out[f"{mname}.{leaf}" if mname else leaf] = mask
    return out


def remove_masks(model: nn.Module) -> dict[str, Tensor]:
    """Forget all stored masks (weights are left as they are) and return them."""
    masks = get_masks(model)
    for module in model.modules():
        for buf in [b for b in module._buffers if b.startswith(MASK_PREFIX)]:
            del module._buffers[buf]
    return masks


def make_permanent(model: nn.Module) -> dict[str, Tensor]:
    """Zero the masked entries one last time and forget the masks; returns them. The zeros stay in the
    dense weights (parameter count unchanged)."""
    reapply_masks(model)
    return remove_masks(model)


@torch.no_grad()
def sparsity_report(model: nn.Module,
                    param_filter: Callable[[str, nn.Parameter], bool] | None = None) -> dict[str, Any]:
    """Count parameter elements that are exactly zero.

    Returns ``{"total", "zero", "nonzero", "sparsity", "per_module"}`` where ``total`` is the number of
    parameter elements considered (each distinct parameter once; ``param_filter(name, param)`` selects them,
    default all), ``zero``/``nonzero`` split it, ``sparsity = zero / total`` (0.0 if empty) and
    ``per_module`` maps each owning module's name to the same counts for its selected parameters.
    """
    total = zero = 0
    per_module: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        if param_filter is not None and not param_filter(name, param):
            continue
        n = param.numel()
        z = n - int(torch.count_nonzero(param))
        total += n
        zero += z
        module_name = name.rpartition(".")[0]
        rec = per_module.setdefault(module_name, {"total": 0, "zero": 0, "nonzero": 0})
        rec["total"] += n
        rec["zero"] += z
        rec["nonzero"] += n - z
    return {"total": total, "zero": zero, "nonzero": total - zero,
            "sparsity": zero / total if total else 0.0, "per_module": per_module}


@torch.no_grad()
def sparse_storage_bytes(tensor: Tensor) -> dict[str, int]:
    """Bytes of ``tensor`` stored dense vs as CSR (``torch.sparse_csr``: values + int64 column indices +
    int64 row pointers). Tensors that are not 2-D are viewed as ``(shape[0], -1)`` (1-D/0-D as one row).

    Returns ``{"dense_bytes", "csr_bytes", "nnz"}``."""
    t = tensor.detach()
    if t.dim() == 0:
        t = t.reshape(1, 1)
    elif t.dim() == 1:
        t = t.reshape(1, -1)
    elif t.dim() > 2:
        t = t.reshape(t.shape[0], -1)
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is not news here
        warnings.simplefilter("ignore", UserWarning)
        csr = t.to_sparse_csr()
    parts = (csr.values(), csr.col_indices(), csr.crow_indices())
    return {
        "dense_bytes": tensor.numel() * tensor.element_size(),
        "csr_bytes": sum(p.numel() * p.element_size() for p in parts),
        "nnz": int(csr.values().numel()),
    }
