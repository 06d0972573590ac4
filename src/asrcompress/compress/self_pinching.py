"""Sparsity-aware self-pinching gates (paper 4, arXiv 2505.22608): one-pass pruning of CTC models.

Unstructured gates (the paper's method)
---------------------------------------
Each prunable linear layer ``l`` (every ``nn.Linear`` of the encoder's transformer layers:
attention q/k/v/out and the two FFN projections) gets ONE learnable scalar threshold ``t_l``. In the
forward pass every weight ``w`` of the layer is replaced by ``w * m`` with the soft gate

    m = sigmoid((w² − t_l²) / (2 τ_l))

(``torch.nn.utils.parametrize``, so the model's own forward runs unchanged). Weights below the
threshold are "pinched" towards zero: their gate closes, and the gradient of the sparsity term
through ``m`` also shrinks them. Two scale conventions make one ``τ`` and one threshold learning rate
serve layers of any weight scale (the paper gives neither value):

* ``τ_l = tau · ms_l`` where ``ms_l`` is the layer's mean squared weight when the gates are
  installed, i.e. ``tau`` is a temperature on ``w²/ms_l``;
* ``t_l = rms_l · k · θ_l`` with ``rms_l = sqrt(ms_l)``, ``θ_l`` the trained parameter and
  ``k = threshold_lr / weight_lr``. The project's training loop has one AdamW learning rate for all
  parameters; Adam moves ``θ`` by about ``weight_lr`` per step, so ``t_l / rms_l`` moves by about
  ``threshold_lr`` per step: a separate threshold learning rate without a second param group.

Gates start open: ``t_l / rms_l = init_threshold`` (small), so no weight is below the threshold.

Sparsity-aware loss
-------------------
The soft sparsity is the parameter-weighted mean of ``1 − m`` over all gated weights,
``s = Σ_l Σ_w (1 − m) / Σ_l numel_l``; the extra loss is ``λ · (s − target(step))²`` with
``target(step) = target_sparsity · min(1, step / ramp_steps)`` (a linear ramp; ``ramp_steps = 0``
gives a constant target). The thresholds learn each layer's sparsity (mixed sparsity); only the
overall sparsity is steered.

At the end (:meth:`SelfPinchingGates.finalize`) the gates become hard masks ``m > 0.5`` (i.e.
``|w| > |t_l|``) applied to the original weights with :func:`asrcompress.compress.masks.apply_masks`
and made permanent (zeros in dense tensors: sparsity, not fewer parameters).

Structured variant
------------------
One gate per FFN neuron and per attention head, on the group's mean squared weight
``g = ‖group‖² / n_group`` (FFN neuron ``j``: row ``j`` of ``intermediate_dense`` with its bias and
column ``j`` of ``output_dense``; head ``h``: its ``head_dim`` rows of q/k/v with biases and its columns
of ``out_proj``), ``m_g = sigmoid((g − t²)/(2 τ))`` with one threshold per layer and module (FFN,
attention), the same scale conventions and the same loss (``s`` weighted by group sizes). The gate
scales the group's output columns (``output_dense`` / ``out_proj``), so a closed group contributes
nothing and removing it is exact. :meth:`finalize` removes the groups with ``m_g <= 0.5``
physically with :func:`asrcompress.compress.surgery.prune_ffn_neurons` /
:func:`~asrcompress.compress.surgery.prune_heads`. Structured gates are implemented for
``Wav2Vec2ForCTC`` and ``HubertForCTC`` (encoder layers) and ``WhisperForConditionalGeneration``
(:func:`structured_units`: encoder and decoder layers; FFN neurons = ``fc1`` rows / ``fc2`` columns,
heads of the self-attention and, in the decoder, of the cross-attention, each its own unit with its own
threshold).

Whisper on a budget (``p4_real``)
---------------------------------
The real track states its target as a share of the *block linears* (every ``nn.Linear`` inside the
encoder and decoder layers, weights and biases: :func:`block_linear_params`). The gated groups cover all
of them except the output biases (``fc2``, ``out_proj``), which no unit removal touches, so
:func:`structured_target` turns a budget into the gates' ``target_sparsity`` (over the gated params).
``check_p4_real_section`` checks the ``p4_real`` section before any work.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from asrcompress.compress.magnitude import uniform_magnitude_masks
from asrcompress.compress.masks import apply_masks, make_permanent, reapply_masks, sparsity_report
from asrcompress.compress.surgery import model_family, prune_ffn_neurons, prune_heads

__all__ = [
    "GateConfig",
    "compress_with_gates",
    "ump_baseline",
    "overall_sparsity_trace",
    "PinchGate",
    "GroupPinchGate",
    "SelfPinchingGates",
    "prunable_linears",
    "prunable_weight_filter",
    "soft_gate",
    "structured_units",
    "block_linear_params",
    "structured_gated_params",
    "structured_target",
    "check_p4_real_section",
    "budget_train_section",
    "budget_gate_config",
]

_LAYER_LINEAR = re.compile(r"(^|\.)encoder\.layers\.\d+\.")
_BLOCK_LINEAR = re.compile(r"(^|\.)(encoder|decoder)\.layers\.\d+\.")


@dataclass(frozen=True)
class GateConfig:
    """Hyper-parameters of the gates (params ``p4.gates``); see the module docstring."""

    tau: float = 0.05               # temperature on w² / (layer mean w²)
    init_threshold: float = 0.05    # t_l / rms_l at the start (gates open)
    threshold_lr: float = 0.02      # about how far t_l / rms_l moves per optimiser step (Adam)
    weight_lr: float = 5e-4         # the training loop's learning rate (sets k = threshold_lr / weight_lr)
    target_sparsity: float = 0.62   # overall parameter-weighted sparsity aimed at
    lam: float = 5.0                # weight λ of the sparsity term λ (s − target)²
    ramp_steps: int = 0             # target ramps linearly from 0 over this many steps (0 = constant)
    structured: bool = False        # neuron/head gates (physical removal) instead of weight gates
    log_every: int = 10             # steps between trace records

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.threshold_lr <= 0 or self.weight_lr <= 0:
            raise ValueError("GateConfig: tau, threshold_lr and weight_lr must be > 0")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"GateConfig: target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if self.lam < 0 or self.ramp_steps < 0 or self.log_every <= 0:
            raise ValueError("GateConfig: lam and ramp_steps must be >= 0, log_every > 0")

    @classmethod
    def from_params(cls, section: dict[str, Any], weight_lr: float) -> GateConfig:
        """Build from a params section (unknown keys are an error); ``weight_lr``: the training lr."""
        known = set(cls.__dataclass_fields__) - {"weight_lr"}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"params.yaml: unknown gate key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(weight_lr=float(weight_lr), **section)


def soft_gate(score: Tensor, threshold: Tensor, tau: Tensor | float) -> Tensor:
    """``sigmoid((score − threshold²) / (2 τ))``: the self-pinching gate (``score`` = w² or a group's
    mean square)."""
    return torch.sigmoid((score - threshold * threshold) / (2.0 * tau))


class _ThresholdMixin(nn.Module):
    """One learnable threshold ``t = rms · k · θ`` with ``rms`` fixed at install."""

    def _init_threshold(self, mean_square: Tensor, cfg: GateConfig) -> None:
        ms = mean_square.detach().clamp_min(1e-12)
        self.register_buffer("mean_square", ms, persistent=False)
        self.k = cfg.threshold_lr / cfg.weight_lr
        self.tau_rel = cfg.tau
        self.theta = nn.Parameter(torch.tensor(cfg.init_threshold / self.k, dtype=ms.dtype, device=ms.device))

    def threshold(self) -> Tensor:
        """The threshold ``t_l`` in weight units (differentiable in ``θ``)."""
        return self.mean_square.sqrt() * self.k * self.theta

    def relative_threshold(self) -> float:
        """``|t_l| / rms_l`` (1.0 = the layer's rms weight at install)."""
        return abs(float(self.k * self.theta.detach()))

    @property
    def tau(self) -> Tensor:
        return self.tau_rel * self.mean_square

    def scores(self, weight: Tensor) -> Tensor:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def gate(self, weight: Tensor) -> Tensor:
        """Soft gate of every scored unit (weight entry or group)."""
        return soft_gate(self.scores(weight), self.threshold(), self.tau)

    def closed(self, weight: Tensor) -> Tensor:
        """Hard decision ``score <= t²`` (= ``m <= 0.5``, without the sigmoid's rounding)."""
        t = self.threshold().detach()
        return self.scores(weight).detach() <= t * t


class PinchGate(_ThresholdMixin):
    """Parametrisation of a weight: ``w -> w * sigmoid((w² − t²)/(2 τ))``, one threshold for the tensor."""

    def __init__(self, weight: Tensor, cfg: GateConfig) -> None:
        super().__init__()
        self._init_threshold(weight.detach().pow(2).mean(), cfg)

    def scores(self, weight: Tensor) -> Tensor:
        """``w²`` of every entry."""
        return weight * weight

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.gate(weight)


class GroupPinchGate(_ThresholdMixin):
    """Parametrisation of an output-side weight (``output_dense`` / ``out_proj``, shape ``(d, G * r)``)
    whose column block ``g`` (``r`` columns) is scaled by ``m_g``, the gate of group ``g``.

    ``partners`` are the input-side linears (``intermediate_dense`` or q/k/v) whose rows
    ``g * r : (g + 1) * r`` (and bias entries) belong to group ``g``; they are read, not owned (not
    registered as submodules)."""

    def __init__(self, out_weight: Tensor, partners: list[nn.Linear], groups: int, cfg: GateConfig) -> None:
        super().__init__()
        if out_weight.shape[1] % groups:
            raise ValueError(f"out weight {tuple(out_weight.shape)} does not split into {groups} groups")
        self.groups = groups
        self.width = out_weight.shape[1] // groups
        self._partners = list(partners)  # a plain list: not registered, not in the state dict
        self.group_numel = out_weight.shape[0] * self.width + sum(
            self.width * (p.in_features + (1 if p.bias is not None else 0)) for p in partners)
        with torch.no_grad():
            score = self.scores(out_weight)
        self._init_threshold(score.mean(), cfg)

    def scores(self, out_weight: Tensor) -> Tensor:
        """Mean squared weight of every group, shape ``(G,)``."""
        g, r = self.groups, self.width
        total = out_weight.pow(2).reshape(out_weight.shape[0], g, r).sum(dim=(0, 2))
        for lin in self._partners:
            total = total + lin.weight.pow(2).reshape(g, -1).sum(dim=1)
            if lin.bias is not None:
                total = total + lin.bias.pow(2).reshape(g, r).sum(dim=1)
        return total / self.group_numel

    def forward(self, out_weight: Tensor) -> Tensor:
        return out_weight * self.gate(out_weight).repeat_interleave(self.width)[None, :]


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linears gated by the unstructured variant: every ``nn.Linear`` inside the encoder's
    transformer layers (``...encoder.layers.<i>....``), by module name."""
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and _LAYER_LINEAR.search(name + ".")}


def prunable_weight_filter(model: nn.Module) -> Callable[[str, nn.Parameter], bool]:
    """``param_filter(name, param)`` selecting the weights of :func:`prunable_linears` (for
    ``sparsity_report`` and the UMP baseline)."""
    names = {f"{n}.weight" for n in prunable_linears(model)}
    return lambda name, param: name in names


def structured_units(model: nn.Module) -> list[tuple[str, int, str, nn.Linear, list[nn.Linear], int]]:
    """The units of the structured gates: ``(stack, layer, unit, output-side linear, input-side linears,
    groups)`` per layer and module, ``unit`` = ``"ffn"`` (neurons), ``"heads"`` (self-attention heads) or
    ``"cross_heads"`` (Whisper decoder cross-attention heads). CTC models: the encoder layers; Whisper:
    encoder and decoder layers (``fc1`` rows / ``fc2`` columns; q/k/v rows / ``out_proj`` columns)."""
    fam = model_family(model)
    if fam == "whisper":
        stacks = {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}
    else:
        stacks = {"encoder": model.base_model.encoder.layers}
    units = []
    for stack, layers in stacks.items():
        for i, layer in enumerate(layers):
            if fam == "whisper":
                fc1, fc2 = layer.fc1, layer.fc2
                atts = [("heads", layer.self_attn)] + ([("cross_heads", layer.encoder_attn)] if stack == "decoder"
                                                       else [])
            else:
                fc1, fc2 = layer.feed_forward.intermediate_dense, layer.feed_forward.output_dense
                atts = [("heads", layer.attention)]
            units.append((stack, i, "ffn", fc2, [fc1], fc1.out_features))
            units += [(stack, i, unit, att.out_proj, [att.q_proj, att.k_proj, att.v_proj], att.num_heads)
                      for unit, att in atts]
    return units


def block_linear_params(model: nn.Module) -> int:
    """Parameters (weights and biases) of every ``nn.Linear`` inside the encoder / decoder layers: the
    denominator of a ``p4_real`` budget."""
    return sum(mod.in_features * mod.out_features + (mod.bias.numel() if mod.bias is not None else 0)
               for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and _BLOCK_LINEAR.search(name + "."))


def structured_gated_params(model: nn.Module) -> int:
    """Parameters covered by the structured gates' groups (what removing every unit would remove)."""
    total = 0
    for _, _, _, out_lin, partners, groups in structured_units(model):
        width = out_lin.in_features // groups
        total += groups * (out_lin.out_features * width + sum(
            width * (p.in_features + (1 if p.bias is not None else 0)) for p in partners))
    return total


def structured_target(model: nn.Module, budget: float) -> float:
    """The structured gates' ``target_sparsity`` (over the gated params) that removes ``budget`` of the
    block linears' parameters (:func:`block_linear_params`)."""
    target = budget * block_linear_params(model) / structured_gated_params(model)
    if not 0.0 <= target < 1.0:
        raise ValueError(f"a budget of {budget} of the block linears needs {target:.3f} of the gated params")
    return target


@dataclass
class _Entry:
    name: str           # "encoder.layers.0.attention.q_proj" (unstructured) / "...layers.0.ffn" (structured)
    owner: nn.Linear    # the parametrised linear
    gate: PinchGate | GroupPinchGate
    layer: int | None = None
    unit: str = ""      # "ffn" | "heads" | "cross_heads" for structured entries
    stack: str = "encoder"


class SelfPinchingGates:
    """Install gates on ``model`` (in place), train with :meth:`loss` and :meth:`after_step` as the
    training loop's ``extra_loss`` / ``after_step`` (the thresholds are model parameters while the gates
    are installed, so the loop optimises and checkpoints them), then :meth:`finalize`."""

    def __init__(self, model: nn.Module, cfg: GateConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.step = 0
        self.trace: list[dict[str, Any]] = []
        self.entries: list[_Entry] = []
        if cfg.structured:
            self._install_structured()
        else:
            for name, lin in prunable_linears(model).items():
                gate = PinchGate(lin.weight, cfg)
                parametrize.register_parametrization(lin, "weight", gate)
                self.entries.append(_Entry(name, lin, gate))
        if not self.entries:
            raise ValueError(f"{type(model).__name__}: no prunable layers found for the gates")
        self.record()  # step 0: the gates as installed

    def _install_structured(self) -> None:
        prefix = self.model.base_model_prefix
        for stack, i, unit, out_lin, partners, groups in structured_units(self.model):
            gate = GroupPinchGate(out_lin.weight, partners, groups, self.cfg)
            parametrize.register_parametrization(out_lin, "weight", gate)
            self.entries.append(_Entry(f"{prefix}.{stack}.layers.{i}.{unit}", out_lin, gate, i, unit, stack))

    # ---------------------------------------------------------------------------- sparsity
    @staticmethod
    def _original(e: _Entry) -> Tensor:
        return e.owner.parametrizations.weight.original

    @staticmethod
    def _unit_size(e: _Entry) -> float:
        """Parameters per gated unit (1 for a weight entry, the group size for a neuron/head)."""
        return float(e.gate.group_numel) if isinstance(e.gate, GroupPinchGate) else 1.0

    def _weighted(self) -> list[tuple[Tensor, float]]:
        """(soft gates, parameters per unit) for every entry, differentiable."""
        return [(e.gate.gate(self._original(e)), self._unit_size(e)) for e in self.entries]

    def soft_sparsity(self) -> Tensor:
        """Parameter-weighted mean of ``1 − m`` over everything gated (differentiable)."""
        num = den = 0.0
        for m, n in self._weighted():
            num = num + (1.0 - m).sum() * n
            den = den + m.numel() * n
        return num / den

    def target(self, step: int | None = None) -> float:
        """Sparsity target at ``step`` (default: the current step)."""
        step = self.step if step is None else step
        if self.cfg.ramp_steps <= 0:
            return self.cfg.target_sparsity
        return self.cfg.target_sparsity * min(1.0, step / self.cfg.ramp_steps)

    def loss(self, model: nn.Module | None = None, batch: Any = None, outputs: Any = None) -> Tensor:
        """The sparsity-aware term ``λ (s − target)²`` (signature of the loop's ``extra_loss``)."""
        return self.cfg.lam * (self.soft_sparsity() - self.target()) ** 2

    @torch.no_grad()
    def layer_stats(self) -> list[dict[str, Any]]:
        """Per gate entry: name, gated params, |t| (weight units and relative to rms), soft and hard
        sparsity (hard = share of params whose gate is <= 0.5)."""
        rows = []
        for e in self.entries:
            w = self._original(e)
            m, closed = e.gate.gate(w), e.gate.closed(w)
            rows.append({
                "layer": e.name,
                "params": int(m.numel() * self._unit_size(e)),
                "threshold": abs(float(e.gate.threshold())),
                "threshold_rel": e.gate.relative_threshold(),
                "soft_sparsity": float((1 - m).mean()),
                "hard_sparsity": float(closed.float().mean()),
            })
        return rows

    @torch.no_grad()
    def hard_sparsity(self) -> float:
        """Parameter-weighted share of gated params whose gate is closed (m <= 0.5)."""
        rows = self.layer_stats()
        return sum(r["hard_sparsity"] * r["params"] for r in rows) / sum(r["params"] for r in rows)

    def after_step(self, model: nn.Module | None = None, step: int = 0) -> None:
        """Loop hook: advance the step counter and record the trace every ``log_every`` steps."""
        self.step = step + 1
        if self.step % self.cfg.log_every == 0:
            self.record()

    def record(self) -> None:
        """Append the current per-layer stats (with the step and target) to :attr:`trace`."""
        for row in self.layer_stats():
            self.trace.append({"step": self.step, "target": round(self.target(), 6), **row})

    # ---------------------------------------------------------------------------- finalisation
    @torch.no_grad()
    def hard_masks(self) -> dict[str, Tensor]:
        """Unstructured: ``{"<linear>.weight": m > 0.5}`` for every gated linear (names as after removal)."""
        if self.cfg.structured:
            raise ValueError("hard_masks: structured gates are finalised by removal (see finalize)")
        return {f"{e.name}.weight": ~e.gate.closed(self._original(e)) for e in self.entries}

    @torch.no_grad()
    def closed_groups(self) -> dict[tuple[str, int, str], list[int]]:
        """Structured: ``{(stack, layer, "ffn" | "heads" | "cross_heads"): [indices with m <= 0.5]}``."""
        if not self.cfg.structured:
            raise ValueError("closed_groups: only for structured gates")
        return {(e.stack, e.layer, e.unit): torch.nonzero(e.gate.closed(self._original(e))).flatten().tolist()
                for e in self.entries}

    def remove(self) -> None:
        """Take the gates off, restoring the original (un-gated) weights."""
        for e in self.entries:
            if parametrize.is_parametrized(e.owner, "weight"):
                parametrize.remove_parametrizations(e.owner, "weight", leave_parametrized=False)

    def finalize(self) -> dict[str, Any]:
        """Make the gates hard and take them off. Unstructured: masks ``m > 0.5`` applied and made
        permanent (weights zeroed). Structured: closed neurons/heads removed physically. Returns a
        summary: final thresholds and per-layer stats, and the removed units (structured)."""
        stats = self.layer_stats()
        with torch.no_grad():
            soft = float(self.soft_sparsity())
        summary: dict[str, Any] = {"gates": asdict(self.cfg), "layers": stats, "soft_sparsity": soft,
                                   "hard_sparsity": self.hard_sparsity()}
        if self.cfg.structured:
            closed = self.closed_groups()
            self.remove()
            for (stack, layer, unit), idx in sorted(closed.items()):
                if unit == "ffn":
                    prune_ffn_neurons(self.model, stack, layer, idx)
                else:
                    prune_heads(self.model, stack, layer, idx, "cross" if unit == "cross_heads" else "self")
            summary["removed"] = {f"{stack}.layer{layer}.{unit}": idx
                                  for (stack, layer, unit), idx in sorted(closed.items())}
        else:
            masks = self.hard_masks()
            self.remove()
            apply_masks(self.model, masks)
            make_permanent(self.model)
        self.entries = []
        return summary



# -------------------------------------------------------------------------------- one-pass / two-pass runs
def compress_with_gates(model: nn.Module, rows: Sequence[dict[str, Any]], collate: Callable, train_cfg: Any,
                        gate_cfg: GateConfig, ckpt_dir: str, loss_log: str, fingerprint: dict[str, Any],
                        desc: str = "gates") -> tuple[SelfPinchingGates, dict[str, Any]]:
    """The one-pass method: install gates on ``model`` (in place), train weights and thresholds together
    with the project's loop (``train_cfg``: a ``TrainConfig``; its ``lr`` must equal
    ``gate_cfg.weight_lr``), then finalise (hard masks or physical removal).

    Returns the gates object (its :attr:`~SelfPinchingGates.trace` holds the per-layer record) and a
    summary: the loop's summary, :meth:`SelfPinchingGates.finalize`'s, ``compress_seconds`` (wall time
    of install + training + finalisation)."""
    from asrcompress.train.loop import train

    if abs(train_cfg.lr - gate_cfg.weight_lr) > 1e-12:
        raise ValueError(f"gate_cfg.weight_lr {gate_cfg.weight_lr} != training lr {train_cfg.lr}: the "
                         "threshold learning rate is expressed relative to the loop's lr")
    t0 = time.perf_counter()
    gates = SelfPinchingGates(model, gate_cfg)
    summary = train(model, rows, collate, train_cfg, ckpt_dir, loss_log, fingerprint,
                    extra_loss=gates.loss, after_step=gates.after_step, desc=desc)
    result = gates.finalize()
    return gates, {**summary, **result, "compress_seconds": time.perf_counter() - t0}


def ump_baseline(model: nn.Module, sparsity: float, rows: Sequence[dict[str, Any]], collate: Callable,
                 train_cfg: Any, ckpt_dir: str, loss_log: str, fingerprint: dict[str, Any],
                 desc: str = "ump") -> dict[str, Any]:
    """Uniform magnitude pruning (the paper's UMP baseline), two passes: every gated weight tensor
    (:func:`prunable_weight_filter`) loses ``sparsity`` of its smallest-magnitude entries
    (:func:`asrcompress.compress.magnitude.uniform_magnitude_masks`), then the model is fine-tuned
    with the masks re-applied after every optimiser step; masks are made permanent at the end.

    Returns the loop's summary plus ``prune_seconds``, ``compress_seconds`` (prune + fine-tune wall time)
    and ``sparsity`` (achieved, over the pruned weights)."""
    from asrcompress.train.loop import train

    t0 = time.perf_counter()
    keep = prunable_weight_filter(model)
    apply_masks(model, uniform_magnitude_masks(model, sparsity, keep))
    prune_s = time.perf_counter() - t0
    summary = train(model, rows, collate, train_cfg, ckpt_dir, loss_log, fingerprint,
                    after_step=lambda m, step: reapply_masks(m), desc=desc)
    make_permanent(model)
    return {**summary, "prune_seconds": prune_s, "compress_seconds": time.perf_counter() - t0,
            "sparsity": sparsity_report(model, keep)["sparsity"]}


def overall_sparsity_trace(traces: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge :attr:`SelfPinchingGates.trace` records of several runs (``{variant: trace}``) into one row
    per step: ``step`` and, per variant, ``<variant>_target`` and the parameter-weighted
    ``<variant>_soft_sparsity`` / ``<variant>_hard_sparsity`` over all its gated layers."""
    by_step: dict[int, dict[str, Any]] = {}
    for variant, rows in traces.items():
        steps: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            steps.setdefault(r["step"], []).append(r)
        for step, rs in steps.items():
            n = sum(r["params"] for r in rs)
            rec = by_step.setdefault(step, {"step": step})
            rec[f"{variant}_target"] = rs[0]["target"]
            for k in ("soft_sparsity", "hard_sparsity"):
                rec[f"{variant}_{k}"] = round(sum(r[k] * r["params"] for r in rs) / n, 6)
    return [by_step[s] for s in sorted(by_step)]


# ------------------------------------------------------------------------------ the `p4` params section
CTC_DIMS_SCHEMA_KEYS = {"hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
                        "intermediate_size": int, "num_conv_pos_embeddings": int,
                        "num_conv_pos_embedding_groups": int, "dropout": float, "stable_layer_norm": bool,
                        "spec_augment": bool, "conv_norm": str}


def check_p4_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate the whole ``p4`` section before any work: unknown, missing, mistyped and out-of-range
    keys (model entries, dims, both training sections, gates, structured gates) raise
    :class:`~asrcompress.config.ParamError` naming ``p4.<key>``."""
    from asrcompress.config import ParamError, Spec, check_section, get
    from asrcompress.train.loop import TrainConfig

    p4 = check_section(get(cfg, "p4"), "p4", {
        "models": Spec(dict), "attn_implementation": Spec(str, choices=("eager", "sdpa")), "dims": Spec(dict),
        "train": Spec(dict), "compress_train": Spec(dict), "gates": Spec(dict), "structured": Spec(dict),
        "dense_control": Spec(bool)})
    corpora = cfg.get("corpora") or {}
    for key, entry in p4["models"].items():
        e = check_section(entry, f"p4.models.{key}", {
            "kind": Spec(str, choices=("wav2vec2", "hubert")), "source": Spec(str), "corpus": Spec(str),
            "target_sparsity": Spec(float, required=False, min=0)})
        if e["corpus"] not in corpora:
            raise ParamError(f"params.yaml: p4.models.{key}.corpus: {e['corpus']!r} is not a key of corpora")
        if e.get("target_sparsity") is not None and e["target_sparsity"] >= 1:
            raise ParamError(f"params.yaml: p4.models.{key}.target_sparsity: must be < 1, got {e['target_sparsity']}")
    check_section(p4["dims"], "p4.dims", {k: Spec(t, required=False, min=1 if t is int else (0 if t is float else None))
                                          for k, t in CTC_DIMS_SCHEMA_KEYS.items()})
    for name in ("train", "compress_train"):
        TrainConfig.from_params(p4[name], 0, name=f"p4.{name}")
    structured = check_section(p4["structured"], "p4.structured", {"enabled": Spec(bool), "gates": Spec(dict)})
    known = set(GateConfig.__dataclass_fields__) - {"weight_lr"}
    for where, gates in (("p4.gates", p4["gates"]), ("p4.structured.gates", structured["gates"])):
        for k in gates:
            if k not in known:
                raise ParamError(f"params.yaml: {where}.{k}: unknown gate key; known: {sorted(known)}")
    lr = float(p4["compress_train"]["lr"])
    for where, gates in (("p4.gates", p4["gates"]), ("p4.structured.gates", {**p4["gates"], **structured["gates"]})):
        try:
            GateConfig.from_params(dict(gates), weight_lr=lr)
        except (TypeError, ValueError) as exc:
            raise ParamError(f"params.yaml: {where}: {exc}") from exc
    return p4


# ------------------------------------------------------------------------- the `p4_real` params section
#: every key of a ``p4_real.budgets.<key>`` entry: the budget and what each budget sets for itself
P4_REAL_BUDGET_KEYS = {"budget": float, "max_steps": int, "lr": float, "batch_size": int, "threshold_lr": float,
                       "lam": float, "train_window_s": int}
#: the gate keys shared by every budget (``p4_real.gates``); the rest come from the budget entry
P4_REAL_GATE_KEYS = ("tau", "init_threshold", "ramp_steps", "log_every")


def check_p4_real_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate the whole ``p4_real`` section (structured gates on Whisper's block linears, one entry per
    budget) before any work: unknown, missing, mistyped and out-of-range keys raise
    :class:`~asrcompress.config.ParamError` naming ``p4_real.<key>``; ``reference`` must resolve. A
    budget's ``train_window_s`` is checked against the model by ``models.whisper.check_train_window``."""
    from asrcompress.compress.baldwhisper import reference_corpus
    from asrcompress.config import ParamError, Spec, check_section, get
    from asrcompress.train.loop import TRAIN_SCHEMA, TrainConfig

    sec = check_section(get(cfg, "p4_real"), "p4_real", {
        "reference": Spec(str), "dev_utterances": Spec(int, min=1), "eval_batch_size": Spec(int, min=1),
        "gates": Spec(dict), "train": Spec(dict), "budgets": Spec(dict)})
    reference_corpus(cfg, "p4_real")
    gates = check_section(sec["gates"], "p4_real.gates", {
        "tau": Spec(float), "init_threshold": Spec(float, min=0), "ramp_steps": Spec(int, min=0),
        "log_every": Spec(int, min=1)})
    per_budget = {k for k in P4_REAL_BUDGET_KEYS if k in TRAIN_SCHEMA}
    check_section(sec["train"], "p4_real.train", {k: v for k, v in TRAIN_SCHEMA.items() if k not in per_budget})
    if not sec["budgets"]:
        raise ParamError("params.yaml: p4_real.budgets: must name at least one budget")
    for key, entry in sec["budgets"].items():
        where = f"p4_real.budgets.{key}"
        b = check_section(entry, where, {k: Spec(t, required=k != "train_window_s", min=0 if t is float else 1)
                                         for k, t in P4_REAL_BUDGET_KEYS.items()})
        if not 0 < b["budget"] < 1:
            raise ParamError(f"params.yaml: {where}.budget: must be in (0, 1), got {b['budget']!r}")
        for name, value in (("p4_real.gates.tau", gates["tau"]), (f"{where}.threshold_lr", b["threshold_lr"])):
            if value <= 0:
                raise ParamError(f"params.yaml: {name}: must be > 0, got {value!r}")
        TrainConfig.from_params(budget_train_section(sec, key), 0, name=where)
        try:
            budget_gate_config(sec, key, target_sparsity=0.0)
        except (TypeError, ValueError) as exc:
            raise ParamError(f"params.yaml: {where}: {exc}") from exc
    return sec


def budget_train_section(p4r: dict[str, Any], key: str) -> dict[str, Any]:
    """``p4_real.train`` with budget ``key``'s ``max_steps``, ``lr`` and ``batch_size``."""
    entry = p4r["budgets"][key]
    return {**p4r["train"], **{k: entry[k] for k in ("max_steps", "lr", "batch_size")}}


def budget_gate_config(p4r: dict[str, Any], key: str, target_sparsity: float) -> GateConfig:
    """Structured gates of budget ``key``: ``p4_real.gates`` + the budget's ``threshold_lr`` and ``lam``,
    the weight lr of its training, and ``target_sparsity`` (over the gated params: :func:`structured_target`)."""
    entry = p4r["budgets"][key]
    return GateConfig(weight_lr=float(entry["lr"]), threshold_lr=float(entry["threshold_lr"]),
                      lam=float(entry["lam"]), target_sparsity=target_sparsity, structured=True,
                      **{k: p4r["gates"][k] for k in P4_REAL_GATE_KEYS})
