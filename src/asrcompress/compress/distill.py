"""BaldWhisper's feature distillation: pull a compressed Whisper's decoder hidden states towards a frozen
teacher's, as an extra loss added to cross-entropy by the project's training loop
(``train.loop.train(..., extra_loss=FeatureDistillation(...))``).

States are residual-stream boundaries of the decoder (see :mod:`asrcompress.compress.layer_merge`):
``0`` = embeddings + positions, ``k`` = output of layer ``k - 1``, ``"final"`` = final layer norm output.
After merging, student layer ``j`` stands for original layers ``origin[j]`` (recorded by the surgery), so
student boundary ``k`` is matched with teacher boundary ``max(origin[k - 1]) + 1`` -- the teacher state
after the last layer the student layer replaces (:func:`default_layer_map`).

Losses, averaged over the matched states and over real target tokens (``labels != -100``):
* ``mse``: mean over tokens and channels of ``(s - t)^2``;
* ``nmse``: that divided by the teacher state's mean square (scale-free across layers; the default);
* ``cosine``: mean over tokens of ``1 - cos(s, t)``.
The teacher runs under ``torch.no_grad`` on the same batch, inside the loss call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.layer_merge import DecoderStates, valid_token_mask
from asrcompress.compress.surgery import structure_of

__all__ = ["LOSSES", "StateKey", "default_layer_map", "resolve_layer_map", "feature_loss", "FeatureDistillation"]

LOSSES = ("mse", "nmse", "cosine")
StateKey = int | str  # a boundary index or "final"


def default_layer_map(student: nn.Module, teacher_layers: int) -> dict[int, int]:
    """Student boundary -> teacher boundary for every student boundary, from the merge/removal record:
    ``0 -> 0`` and ``k -> max(origin of student layer k - 1) + 1``. ``teacher_layers`` must be the student's
    base decoder depth (the teacher is the uncompressed model)."""
    stack = structure_of(student)["stacks"]["decoder"]
    if int(stack["base_layers"]) != int(teacher_layers):
        raise ValueError(f"student decoder was cut from a {stack['base_layers']}-layer base, teacher has "
                         f"{teacher_layers} layers: give an explicit layer map")
    out = {0: 0}
    for k, rec in enumerate(stack["layers"], start=1):
        out[k] = max(int(o) for o in rec["origin"]) + 1
    return out


def resolve_layer_map(student: nn.Module, teacher: nn.Module, layers: str | Sequence[StateKey] = "all",
                      layer_map: Mapping[int, int] | None = None) -> list[tuple[StateKey, StateKey]]:
    """(student state, teacher state) pairs to match.

    ``layers``: ``"all"`` (every boundary 0..n and ``"final"``), ``"final"``, or a list of student boundary
    indices and/or ``"final"``. ``layer_map`` overrides :func:`default_layer_map` for boundary indices.
    """
    n_student = len(student.model.decoder.layers)
    n_teacher = len(teacher.model.decoder.layers)
    mapping = dict(layer_map) if layer_map is not None else default_layer_map(student, n_teacher)
    if layers == "all":
        keys: list[StateKey] = [*range(n_student + 1), "final"]
    elif layers == "final":
        keys = ["final"]
    elif isinstance(layers, str):
        raise ValueError(f"layers must be 'all', 'final' or a list, got {layers!r}")
    else:
        keys = list(layers)
    out: list[tuple[StateKey, StateKey]] = []
    for key in keys:
        if key == "final":
            out.append(("final", "final"))
            continue
        k = int(key)
        if not 0 <= k <= n_student or k not in mapping:
            raise ValueError(f"student boundary {k} does not exist or has no teacher boundary (student has "
                             f"{n_student} layers, map {mapping})")
        if not 0 <= mapping[k] <= n_teacher:
            raise ValueError(f"teacher boundary {mapping[k]} does not exist (teacher has {n_teacher} layers)")
        out.append((k, int(mapping[k])))
    if not out:
        raise ValueError("no hidden states selected for distillation")
    return out


def feature_loss(student: Tensor, teacher: Tensor, mask: Tensor, kind: str = "nmse") -> Tensor:
    """Distance between ``(batch, tokens, d)`` states over the tokens in ``mask`` (see module docstring)."""
    if kind not in LOSSES:
        raise ValueError(f"distillation loss must be one of {LOSSES}, got {kind!r}")
    s, t = student[mask], teacher[mask].to(student.dtype)
    if s.numel() == 0:
        return student.sum() * 0.0
    if kind == "cosine":
        return (1.0 - nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    mse = (s - t).pow(2).mean()
    return mse / t.pow(2).mean().clamp_min(1e-12) if kind == "nmse" else mse


class FeatureDistillation:
    """``extra_loss`` for :func:`asrcompress.train.loop.train`: ``weight`` x mean feature loss between the
    student's and the frozen teacher's decoder states.

    Use as a context manager around training (it hooks the student's decoder and removes the hooks on
    exit)::

        with FeatureDistillation(teacher, student, layers="all", loss="nmse", weight=1.0) as kd:
            train(student, rows, collate, cfg, ..., extra_loss=kd)

    The student's states are recorded during the loop's own forward pass (no second student forward);
    the teacher (eval mode, gradients off) runs on the same batch inside the call.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, layers: str | Sequence[StateKey] = "all",
                 loss: str = "nmse", weight: float = 1.0, layer_map: Mapping[int, int] | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"distillation loss must be one of {LOSSES}, got {loss!r}")
        if teacher is student:
            raise ValueError("teacher and student must be distinct models (copy the teacher)")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student
        self.pairs = resolve_layer_map(student, teacher, layers, layer_map)
        self.loss, self.weight = loss, float(weight)
        self._student_states = DecoderStates(student, keep_grad=True)
        self._teacher_states = DecoderStates(self.teacher)

    def describe(self) -> dict[str, Any]:
        """JSON-able description: matched (student, teacher) states, loss, weight."""
        return {"pairs": [[s, t] for s, t in self.pairs], "loss": self.loss, "weight": self.weight}

    def __enter__(self) -> FeatureDistillation:
        self._student_states.__enter__()
        self._teacher_states.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        self._student_states.close()
        self._teacher_states.close()

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], outputs: Any = None) -> Tensor:
        """The weighted distillation loss for the student forward pass that just ran on ``batch``."""
        with torch.no_grad():
            self.teacher(input_features=batch["input_features"], labels=batch["labels"])
        mask = valid_token_mask(batch)
        losses = [feature_loss(self._student_states.state(s), self._teacher_states.state(t), mask, self.loss)
                  for s, t in self.pairs]
        return self.weight * torch.stack(losses).mean()
