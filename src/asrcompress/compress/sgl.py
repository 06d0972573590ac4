"""Sparse Group LASSO (SGL) for Whisper fine-tuning (paper 1, arXiv 2510.12666).

Penalty (encoder and decoder weights get their own lambdas, as in the paper)::

    P = l1_encoder  * sum_{W in enc} ||W||_1  +  l1_decoder    * sum_{W in dec} ||W||_1
      + group_encoder * sum_{W in enc} sum_j sqrt(p_W) ||W[:, j]||_2
      + group_decoder * sum_{W in dec} sum_j sqrt(p_W) ||W[:, j]||_2

A group is a **column** of an ``nn.Linear`` weight ``W`` (out x in): the ``p_W = out`` weights that
read input feature ``j``. ``sqrt(p_W)`` is the usual group-size scaling (Simon et al. 2013). Biases,
layer norms, embeddings and the conv front-end are never regularised.

Which matrices (``l1_kinds`` / ``group_kinds``, params)
-------------------------------------------------------
The transformer-block linears are candidates: ``fc1``, ``fc2`` and the ``q/k/v/out_proj`` of every
self- and cross-attention. Their zero columns mean different things:

* a zero column ``j`` of ``fc2`` = FFN neuron ``j`` that nobody reads: removable (with row ``j`` of
  ``fc1``) by :func:`asrcompress.compress.surgery.prune_ffn_neurons`, output unchanged;
* zero columns of ``out_proj`` covering one head's whole ``head_dim`` slice = a head nobody reads:
  removable by :func:`~asrcompress.compress.surgery.prune_heads`;
* a zero column of ``fc1`` / ``q_proj`` / ``k_proj`` / ``v_proj`` ignores one residual-stream feature in
  that one matrix; removing it would change ``d_model`` for the whole model, so it is sparsity only.

Default: the group term on ``fc2`` and ``out_proj`` only (its zeros become physical removals, i.e.
fewer parameters and FLOPs) and the L1 term on all six kinds (element sparsity everywhere, as the
paper's "L1 of the encoder/decoder weights"). Group zeros in ``fc1``/``q``/``k``/``v`` would cost
accuracy for sparsity the two-pass pruner's pass 2 already gives; add them to ``group_kinds`` to
follow the paper literally.

How it is applied (``mode``)
----------------------------
* ``proximal`` (default): after every optimiser step, the proximal operator of ``t * P`` with
  ``t`` = the learning rate of that step (:func:`proximal_step`): element soft-threshold by ``t * l1``,
  then group soft-threshold of each column by ``t * group * sqrt(p)`` (the exact SGL prox, applied in
  this order). This produces **exact zeros**. The penalty value is passed to the training loop as a
  *detached* ``extra_loss`` (logged in the loss CSV, no gradient), so it is not applied twice.
  With AdamW the step is not a true proximal-gradient step (Adam rescales the gradient, not the
  prox); ``t = lr`` is the documented choice.
* ``penalty``: the paper's literal "CE + P": ``P`` is added to the loss with its gradient and no
  prox. Weights get small but not exactly zero; the pruner decides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ALL_KINDS",
    "REMOVABLE_KINDS",
    "LinearTarget",
    "SGLConfig",
    "check_p1_section",
    "find_linears",
    "target_filter",
    "column_norms",
    "matrix_penalty",
    "sgl_penalty",
    "prox_sgl_",
    "proximal_step",
    "lr_at",
    "sgl_hooks",
    "group_norms",
    "head_norms",
    "structural_units",
    "zero_group_report",
    "plot_group_norm_histograms",
]

#: every linear kind of a Whisper transformer block
ALL_KINDS: tuple[str, ...] = ("fc1", "fc2", "q_proj", "k_proj", "v_proj", "out_proj")
#: kinds whose zero columns are physically removable (FFN neurons, attention heads)
REMOVABLE_KINDS: tuple[str, ...] = ("fc2", "out_proj")
MODES = ("proximal", "penalty")

_LINEAR = re.compile(
    r"^model\.(?P<stack>encoder|decoder)\.layers\.(?P<layer>\d+)\."
    r"(?:(?P<attn>self_attn|encoder_attn)\.)?(?P<kind>fc1|fc2|q_proj|k_proj|v_proj|out_proj)$"
)


@dataclass(frozen=True)
class LinearTarget:
    """One transformer-block linear of a Whisper model."""

    name: str               # module name, e.g. ``model.decoder.layers.1.encoder_attn.out_proj``
    stack: str              # ``encoder`` | ``decoder``
    layer: int              # current layer position
    attn: str | None        # ``self`` | ``cross`` | None (FFN)
    kind: str               # one of :data:`ALL_KINDS`
    module: nn.Linear = field(compare=False, repr=False)

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"


def find_linears(model: nn.Module, kinds: Iterable[str] = ALL_KINDS) -> list[LinearTarget]:
    """The transformer-block linears of a Whisper model whose kind is in ``kinds`` (model order)."""
    kinds = set(kinds)
    unknown = kinds - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown linear kind(s) {sorted(unknown)}; known: {list(ALL_KINDS)}")
    out = []
    for name, module in model.named_modules():
        m = _LINEAR.match(name)
        if m is None or not isinstance(module, nn.Linear) or m["kind"] not in kinds:
            continue
        attn = {"self_attn": "self", "encoder_attn": "cross", None: None}[m["attn"]]
        out.append(LinearTarget(name, m["stack"], int(m["layer"]), attn, m["kind"], module))
    return out


def target_filter(kinds: Iterable[str] = ALL_KINDS) -> Callable[[str, nn.Parameter], bool]:
    """``param_filter(name, param)`` selecting the *weights* of the transformer-block linears of
    ``kinds`` (for masks, magnitude pruning and sparsity reports)."""
    kinds = frozenset(kinds)

    def keep(name: str, param: nn.Parameter) -> bool:
        module_name, _, leaf = name.rpartition(".")
        m = _LINEAR.match(module_name)
        return leaf == "weight" and m is not None and m["kind"] in kinds

    return keep


@dataclass(frozen=True)
class SGLConfig:
    """The four lambdas (paper's lambda1..lambda4), which kinds get which term, and how it is applied."""

    l1_encoder: float = 0.0      # lambda1
    l1_decoder: float = 0.0      # lambda2
    group_encoder: float = 0.0   # lambda3
    group_decoder: float = 0.0   # lambda4
    l1_kinds: tuple[str, ...] = ALL_KINDS
    group_kinds: tuple[str, ...] = REMOVABLE_KINDS
    mode: str = "proximal"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"SGL mode must be one of {MODES}, got {self.mode!r}")
        for key in ("l1_encoder", "l1_decoder", "group_encoder", "group_decoder"):
            if getattr(self, key) < 0:
                raise ValueError(f"SGL {key} must be >= 0, got {getattr(self, key)}")
        for kinds in (self.l1_kinds, self.group_kinds):
            bad = set(kinds) - set(ALL_KINDS)
            if bad:
                raise ValueError(f"unknown linear kind(s) {sorted(bad)}; known: {list(ALL_KINDS)}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> SGLConfig:
        """From the ``p1.sgl`` params section (keys ``lambda_l1_encoder``, ``lambda_l1_decoder``,
        ``lambda_group_encoder``, ``lambda_group_decoder``, ``l1_kinds``, ``group_kinds``, ``mode``)."""
        from asrcompress.config import get

        return cls(l1_encoder=get(section, "lambda_l1_encoder", float),
                   l1_decoder=get(section, "lambda_l1_decoder", float),
                   group_encoder=get(section, "lambda_group_encoder", float),
                   group_decoder=get(section, "lambda_group_decoder", float),
                   l1_kinds=tuple(get(section, "l1_kinds", list)),
                   group_kinds=tuple(get(section, "group_kinds", list)),
                   mode=get(section, "mode", str))

    def lambdas(self, target: LinearTarget) -> tuple[float, float]:
        """(L1 lambda, group lambda) that apply to ``target``."""
        enc = target.stack == "encoder"
        l1 = (self.l1_encoder if enc else self.l1_decoder) if target.kind in self.l1_kinds else 0.0
        grp = (self.group_encoder if enc else self.group_decoder) if target.kind in self.group_kinds else 0.0
        return l1, grp

    def targets(self, model: nn.Module) -> list[tuple[LinearTarget, float, float]]:
        """Every regularised linear with its (L1, group) lambdas (entries with both 0 left out)."""
        out = []
        for t in find_linears(model, set(self.l1_kinds) | set(self.group_kinds)):
            l1, grp = self.lambdas(t)
            if l1 > 0 or grp > 0:
                out.append((t, l1, grp))
        return out


def column_norms(weight: Tensor) -> Tensor:
    """L2 norm of every column (group) of an ``out x in`` weight: shape ``(in,)``."""
    return torch.linalg.vector_norm(weight, dim=0)


def matrix_penalty(weight: Tensor, l1: float, group: float) -> Tensor:
    """``l1 * ||W||_1 + group * sqrt(out) * sum_j ||W[:, j]||_2`` (differentiable; the gradient of a
    zero column is 0, a subgradient)."""
    value = weight.new_zeros(())
    if l1:
        value = value + l1 * weight.abs().sum()
    if group:
        value = value + group * math.sqrt(weight.shape[0]) * column_norms(weight).sum()
    return value


def sgl_penalty(model: nn.Module, cfg: SGLConfig) -> Tensor:
    """The SGL penalty ``P`` of ``model`` (a scalar tensor carrying the gradient)."""
    terms = [matrix_penalty(t.module.weight, l1, grp) for t, l1, grp in cfg.targets(model)]
    if not terms:
        return next(model.parameters()).new_zeros(())
    return torch.stack(terms).sum()


@torch.no_grad()
def prox_sgl_(weight: Tensor, l1_step: float, group_step: float) -> Tensor:
    """In place: the proximal operator of ``l1_step * ||W||_1 + group_step * sqrt(out) * sum_j ||W_j||``.

    First every element is soft-thresholded, ``w <- sign(w) max(|w| - l1_step, 0)``; then every column
    ``v`` is group soft-thresholded, ``v <- max(0, 1 - group_step sqrt(out) / ||v||) v``: a column whose
    norm is at most ``group_step * sqrt(out)`` becomes exactly zero, the others shrink towards zero by
    that amount in norm. Returns ``weight``.
    """
    if l1_step > 0:
        weight.copy_(weight.sign() * (weight.abs() - l1_step).clamp_min(0))
    if group_step > 0:
        thr = group_step * math.sqrt(weight.shape[0])
        norms = column_norms(weight)
        scale = (1 - thr / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
        weight.mul_(scale[None, :])
    return weight


@torch.no_grad()
def proximal_step(model: nn.Module, cfg: SGLConfig, step_size: float) -> None:
    """Apply :func:`prox_sgl_` with thresholds ``step_size * lambda`` to every regularised weight."""
    for t, l1, grp in cfg.targets(model):
        prox_sgl_(t.module.weight, step_size * l1, step_size * grp)


def lr_at(train_cfg: Any) -> Callable[[int], float]:
    """The learning rate the training loop's optimiser uses at ``step`` for a ``TrainConfig`` (warm-up +
    cosine schedule of :mod:`asrcompress.train.loop`, read from there, not re-derived): the prox step size.
    """
    from asrcompress.train.loop import lr_factor

    factor = lr_factor(train_cfg)
    return lambda step: float(train_cfg.lr) * factor(step)


def sgl_hooks(cfg: SGLConfig, lr_at: Callable[[int], float]
              ) -> tuple[Callable[[nn.Module, dict, Any], Tensor], Callable[[nn.Module, int], None] | None]:
    """``(extra_loss, after_step)`` for :func:`asrcompress.train.loop.train`.

    ``lr_at(step)`` is the learning rate the optimiser used at ``step`` (the prox step size). In
    ``proximal`` mode ``extra_loss`` is the detached penalty (logged only) and ``after_step`` the prox;
    in ``penalty`` mode ``extra_loss`` carries the gradient and ``after_step`` is None.
    """
    if cfg.mode == "penalty":
        return (lambda model, batch, outputs: sgl_penalty(model, cfg)), None

    def extra_loss(model: nn.Module, batch: dict, outputs: Any) -> Tensor:
        with torch.no_grad():
            return sgl_penalty(model, cfg).detach()

    def after_step(model: nn.Module, step: int) -> None:
        proximal_step(model, cfg, lr_at(step))

    return extra_loss, after_step


# ------------------------------------------------------------------------------------ reporting


@torch.no_grad()
def group_norms(model: nn.Module, kinds: Iterable[str] = REMOVABLE_KINDS) -> dict[str, Tensor]:
    """Column norms of every linear of ``kinds``, keyed by weight name (CPU float tensors)."""
    return {t.weight_name: column_norms(t.module.weight.detach().float()).cpu() for t in find_linears(model, kinds)}


@torch.no_grad()
def head_norms(attention: nn.Module) -> Tensor:
    """Frobenius norm of each head's ``head_dim``-column block of ``attention.out_proj`` (shape
    ``(num_heads,)``): zero means no output reads the head, so it is removable."""
    if attention.num_heads == 0:
        return torch.zeros(0)
    sq = column_norms(attention.out_proj.weight.detach().float()).pow(2)
    return sq.reshape(attention.num_heads, -1).sum(1).sqrt().cpu()


@torch.no_grad()
def structural_units(model: nn.Module) -> Iterator[tuple[str, int, str, Tensor]]:
    """Every removable unit set of a Whisper model with its norms: ``(stack, layer, what, norms)`` with
    ``what`` = ``"ffn"`` (norms of the ``fc2`` columns, one per FFN neuron), ``"self"`` or ``"cross"``
    (per-head norms of ``out_proj``, :func:`head_norms`)."""
    for stack in ("encoder", "decoder"):
        owner = model.model.encoder if stack == "encoder" else model.model.decoder
        for i, layer in enumerate(owner.layers):
            yield stack, i, "ffn", column_norms(layer.fc2.weight.detach().float()).cpu()
            yield stack, i, "self", head_norms(layer.self_attn)
            if stack == "decoder":
                yield stack, i, "cross", head_norms(layer.encoder_attn)


@torch.no_grad()
def zero_group_report(model: nn.Module, kinds: Sequence[str] = ALL_KINDS, tol: float = 0.0) -> dict[str, Any]:
    """Share of column groups whose norm is <= ``tol`` (0: exactly zero), overall, per kind and per
    stack and kind; plus the removable units: FFN neurons whose ``fc2`` column is zero and heads whose
    whole ``out_proj`` block is zero. Flat keys, e.g. ``zero_groups_pct``, ``zero_groups_pct_fc2``,
    ``zero_groups_pct_encoder_fc2``, ``zero_ffn_neurons``, ``ffn_neurons``, ``zero_heads``, ``heads``."""
    counts: dict[str, list[int]] = {}
    for t in find_linears(model, kinds):
        n = column_norms(t.module.weight.detach().float())
        z, tot = int((n <= tol).sum()), n.numel()
        for key in ("", f"_{t.kind}", f"_{t.stack}_{t.kind}"):
            c = counts.setdefault(key, [0, 0])
            c[0] += z
            c[1] += tot
    out: dict[str, Any] = {}
    for key, (z, tot) in sorted(counts.items()):
        out[f"zero_groups{key}"] = z
        out[f"groups{key}"] = tot
        out[f"zero_groups_pct{key}"] = 100.0 * z / tot if tot else 0.0
    units = {"ffn": [0, 0], "heads": [0, 0]}
    for _stack, _layer, what, norms in structural_units(model):
        c = units["ffn" if what == "ffn" else "heads"]
        c[0] += int((norms <= tol).sum())
        c[1] += norms.numel()
    out.update(zero_ffn_neurons=units["ffn"][0], ffn_neurons=units["ffn"][1],
               zero_heads=units["heads"][0], heads=units["heads"][1])
    return out


def plot_group_norm_histograms(before: Mapping[str, Tensor], after: Mapping[str, Tensor], path: str | Path,
                               title: str = "SGL: column-group norms before / after", bins: int = 50) -> None:
    """PNG with one panel per (stack, kind): histograms of the column norms before and after, with the
    count of exactly-zero groups in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel_key(name: str) -> str:
        m = _LINEAR.match(name.removesuffix(".weight"))
        return f"{m['stack']} {m['kind']}" if m else name

    panels: dict[str, dict[str, list[Tensor]]] = {}
    for label, norms in (("before", before), ("after", after)):
        for name, n in norms.items():
            panels.setdefault(panel_key(name), {"before": [], "after": []})[label].append(n.reshape(-1))
    keys = sorted(panels)
    cols = min(2, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        data = {lab: torch.cat(v).numpy() if v else None for lab, v in panels[key].items()}
        top = max(float(d.max()) for d in data.values() if d is not None and d.size) or 1.0
        for lab, color in (("before", "tab:blue"), ("after", "tab:orange")):
            d = data[lab]
            if d is None:
                continue
            zeros = int((d == 0).sum())
            ax.hist(d, bins=bins, range=(0, top), alpha=0.55, color=color,
                    label=f"{lab} (n={d.size}, zero={zeros})")
        ax.set_title(key)
        ax.set_xlabel("column L2 norm")
        ax.set_ylabel("groups")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ the `p1` params section
P1_TRAIN_KEYS = ("sgl_train", "recovery_train", "control_train", "imp_train")  # train/loop.TRAIN_SCHEMA sections


def check_p1_section(cfg: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Validate the whole ``section`` (``p1`` or ``p1_real``: one schema) before any work: unknown, missing,
    mistyped, non-finite and out-of-range keys of the section, of ``sgl``, ``prune`` (the two-pass rule,
    ``weight_adaptive.py``), ``imp`` (``imp.py``) and of the training sub-sections (``TrainConfig``;
    ``recovery_train`` may be null) raise :class:`~asrcompress.config.ParamError` naming ``section.key``.
    ``train_window_s`` is checked against the model by ``models.whisper.check_train_window``.
    Returns the section as given."""
    from asrcompress.compress.imp import SCHEDULES
    from asrcompress.compress.weight_adaptive import STATISTICS
    from asrcompress.config import ParamError, Spec, check_section, get
    from asrcompress.train.loop import TrainConfig

    out = check_section(get(cfg, section), section, {
        "model": Spec(str), "corpus": Spec(str), "medium_source": Spec(str, required=False),
        "train_window_s": Spec(int, required=False, min=1), "sgl": Spec(dict), "prune": Spec(dict),
        "imp": Spec(dict), **{k: Spec(dict) for k in P1_TRAIN_KEYS}, "recovery_train": Spec((dict, type(None)))})
    if out["corpus"] not in (cfg.get("corpora") or {}):
        raise ParamError(f"params.yaml: {section}.corpus: {out['corpus']!r} is not a key of corpora")
    sgl = check_section(out["sgl"], f"{section}.sgl", {
        **{f"lambda_{term}_{stack}": Spec(float, min=0) for term in ("l1", "group") for stack in ("encoder", "decoder")},
        "l1_kinds": Spec(list), "group_kinds": Spec(list), "mode": Spec(str, choices=MODES)})
    prune = check_section(out["prune"], f"{section}.prune", {
        "pass1_statistic": Spec(str, choices=STATISTICS), "pass1_k": Spec(float, min=0),
        "pass2_statistic": Spec(str, choices=STATISTICS), "pass2_k": Spec(float, min=0),
        "zero_tol": Spec(float, min=0), "min_keep": Spec(int, min=0), "prune_ffn": Spec(bool),
        "prune_heads": Spec(bool), "pass2_kinds": Spec(list)})
    for where, kinds in (("sgl.l1_kinds", sgl["l1_kinds"]), ("sgl.group_kinds", sgl["group_kinds"]),
                         ("prune.pass2_kinds", prune["pass2_kinds"])):
        for i, kind in enumerate(kinds):
            if kind not in ALL_KINDS:
                raise ParamError(f"params.yaml: {section}.{where}[{i}]: {kind!r} is not one of {list(ALL_KINDS)}")
    imp = check_section(out["imp"], f"{section}.imp", {
        "target_sparsity": Spec((float, str)), "rounds": Spec(int, min=1), "schedule": Spec(str, choices=SCHEDULES)})
    target = imp["target_sparsity"]
    if target != "match" and (isinstance(target, str) or not 0 <= target < 1):
        raise ParamError(f"params.yaml: {section}.imp.target_sparsity: must be 'match' or a number in [0, 1), "
                         f"got {target!r}")
    for key in P1_TRAIN_KEYS:
        if out[key] is not None:
            TrainConfig.from_params(out[key], 0, name=f"{section}.{key}")
    return out
