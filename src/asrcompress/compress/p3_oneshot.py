"""Paper 3's experiment: sensitivity-aware one-shot magnitude pruning of Whisper, no fine-tuning.

Protocol (code of the paper's first author): calibration = the first 10 % of the test split (used only by
the sensitivity scores), WER on the remaining 90 %, greedy decoding, normalised references and
hypotheses. Every point prunes the *dense* model once (masks from :mod:`~asrcompress.compress.magnitude`,
applied with :func:`~asrcompress.compress.masks.apply_masks`), is decoded and scored, and the dense
weights are restored (:func:`pruned`). Decoding and scoring live in
:mod:`asrcompress.measure.masked_sweep` (the measure suite's decoder and scorer); this module plans the
points and builds their masks.

Points (``plan_points``), each with a readable key:

* ``dense``: the unpruned model (reference for every paired test);
* ``dec_self_attn_<pct>``: decoder self-attention q/k/v/out weights at 0-50 % (paper's targeted sweep);
* ``last_encoder_<pct>``: encoder self-attention and FFN weights of the last encoder layers at 50 %
  (paper: the last four of whisper-small's 12 = the last third; ``n_layers: null`` takes the last third
  of any model by fraction, ``max(1, round(L / 3))`` layers: 4 of 12, 1 of the smoke model's 2);
* at every overall sparsity ``t`` of ``p3.compare_sparsities`` (share of the prunable weights), keys
  ``<method>_s<t*100>``:

  - ``sensitivity_s<..>``: ratios derived from the measured sensitivity scores
    (:func:`asrcompress.compress.allocation.allocate`, rule ``p3.allocation``) reaching ``t``;
  - ``paper_s<..>``: the paper's fixed whisper-small ratios (``p3.ratios`` / ``p3.per_layer``) times the
    one scale that makes them reach ``t`` on this model (scale 1 = the paper's configuration, ~40 % on
    whisper-small); a fixed configuration, not derived from our scores;
  - ``global_s<..>`` / ``uniform_s<..>``: global (one threshold) / uniform (same ratio everywhere)
    magnitude pruning over the same prunable tensors, pruning exactly as many weights as
    ``sensitivity_s<..>`` (``paper_s<..>`` when no scores are given).

A point whose masks prune nothing has the dense weights bit for bit and reuses the dense hypotheses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.allocation import Allocation, AllocationRule, allocate
from asrcompress.compress.components import (
    COMPONENTS,
    layer_counts,
    param_map,
    prunable_filter,
    tensor_ratios,
)
from asrcompress.compress.magnitude import (
    global_magnitude_masks,
    l1_unstructured_masks,
    uniform_magnitude_masks,
)
from asrcompress.compress.masks import apply_masks, get_masks, remove_masks
from asrcompress.config import ParamError, Spec

__all__ = [
    "FINAL_RATIOS",
    "FINAL_PER_LAYER",
    "PrunePoint",
    "scale_config",
    "config_sparsity",
    "tied_embedding",
    "last_layers",
    "plan_points",
    "pruned",
    "prunable_numel",
    "point_masks",
    "component_sparsity",
    "headline_metrics",
    "board_compress",
    "BOARD_KEYS",
]

#: the paper's final configuration (code); LayerNorm, positional embeddings and biases: 0 %
FINAL_RATIOS: dict[str, float] = {
    "enc_ffn": 0.50, "enc_self_attn": 0.40, "dec_self_attn": 0.50, "dec_cross_attn": 0.45,
    "dec_ffn": 0.30, "token_embedding": 0.25, "conv": 0.30, "output_projection": 0.25,
}
#: decoder FFN by layer thirds (layers 0-3 / 4-7 / 8-11 of whisper-small)
FINAL_PER_LAYER: dict[str, list[float]] = {"dec_ffn": [0.25, 0.45, 0.30]}


@dataclass(frozen=True)
class PrunePoint:
    """One configuration to evaluate. ``method``: dense | component (a targeted sweep) | sensitivity |
    paper | global | uniform; ``x``: the sweep variable (ratio for the targeted sweeps, overall sparsity of
    the prunable weights for ``compare``); ``scale``: for ``paper``, the factor on the paper's ratios;
    ``match``: for global/uniform, the key of the point whose pruned-weight count is matched."""

    key: str
    group: str
    method: str
    x: float
    ratios: Mapping[str, float] = field(default_factory=dict)
    per_layer: Mapping[str, Any] | None = None
    match: str | None = None
    scale: float | None = None


def scale_config(ratios: Mapping[str, float], per_layer: Mapping[str, Any] | None, scale: float,
                 key: str = "p3.compare_sparsities") -> tuple[dict[str, float], dict[str, Any]]:
    """Multiply every ratio (and per-layer ratio) by ``scale``.

    A scale below 0, or one that takes a ratio above 1, raises ValueError naming ``key`` (the params key
    that asked for the scale) and the ratio's key (``ratios.<component>`` / ``per_layer.<component>...``):
    the point would not be ``scale`` times the configuration (earlier versions capped such ratios at 1
    silently).
    """
    if not scale >= 0:
        raise ValueError(f"{key}: scale {scale!r} must be >= 0")

    def s(where: str, r: float) -> float:
        out = float(r) * scale
        if out > 1.0:
            raise ValueError(f"{key}: scale {scale:g} takes {where} = {float(r):g} to "
                             f"{float(r) * scale:g}, above the cap of 1 (a ratio is at most 1)")
        return out

    new_pl: dict[str, Any] = {}
    for comp, spec in (per_layer or {}).items():
        new_pl[comp] = ({k: s(f"per_layer.{comp}.{k}", v) for k, v in spec.items()} if isinstance(spec, Mapping)
                        else [s(f"per_layer.{comp}[{i}]", v) for i, v in enumerate(spec)])
    return {c: s(f"ratios.{c}", r) for c, r in ratios.items()}, new_pl


def prunable_numel(model: nn.Module) -> int:
    """Weights in the prunable tensors (a tied tensor once)."""
    keep = prunable_filter(model)
    return sum(p.numel() for n, p in model.named_parameters() if keep(n, p))


def config_sparsity(model: nn.Module, ratios: Mapping[str, float], per_layer: Mapping[str, Any] | None) -> float:
    """Share of the prunable weights a ratio configuration asks to prune (before per-tensor rounding)."""
    per_tensor, _ = tensor_ratios(model, ratios, per_layer)
    params = dict(model.named_parameters())
    return sum(r * params[n].numel() for n, r in per_tensor.items()) / prunable_numel(model)


def tied_embedding(model: nn.Module) -> bool:
    """Whether the token embedding and the output projection are one tensor."""
    return any(i.component == "token_embedding" and i.tied_with for i in param_map(model))


def last_layers(n_total: int, n_layers: int | None) -> list[int]:
    """Indices of the last ``n_layers`` layers; ``None`` = the last third by fraction,
    ``max(1, round(n_total / 3))`` layers (paper: 4 of whisper-small's 12; the smoke model: 1 of 2)."""
    n = max(1, round(n_total / 3)) if n_layers is None else int(n_layers)
    if not 1 <= n <= n_total:
        raise ValueError(f"last {n} layers asked of a {n_total}-layer encoder")
    return list(range(n_total - n, n_total))


def _pct(x: float) -> str:
    return f"{round(100 * x):d}"


def _check_scores(model: nn.Module, allocation: Allocation) -> None:
    scored, prunable = sum(u["n_params"] for u in allocation.units), prunable_numel(model)
    if scored != prunable:
        raise ValueError(f"the sensitivity scores cover {scored} prunable weights, the model has {prunable}: "
                         "they were measured on another model (rerun p3_sensitivity)")


def plan_points(model: nn.Module, ratios: Mapping[str, float] = FINAL_RATIOS,
                per_layer: Mapping[str, Any] | None = FINAL_PER_LAYER, *,
                dec_self_attn_ratios: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                last_encoder_ratio: float | None = 0.5, last_encoder_layers: int | None = None,
                last_encoder_components: Sequence[str] = ("enc_self_attn", "enc_ffn"),
                compare_sparsities: Sequence[float] = (0.4,), sensitivity: Sequence[Mapping[str, Any]] | None = None,
                rule: AllocationRule | None = None, baselines: Sequence[str] = ("global",)
                ) -> list[PrunePoint]:
    """The points of the experiment (defaults: the paper's), dense first and at each compare sparsity the
    sensitivity point, the paper's ratios, then the baselines. ``sensitivity``: the per-(component, layer)
    records of ``p3_sensitivity`` (None: no ``sensitivity_*`` points); ``rule``: ``p3.allocation``
    (default :class:`AllocationRule`). ``last_encoder_ratio=None`` skips
    the last-encoder point."""
    points = [PrunePoint("dense", "dense", "dense", 0.0)]
    for r in dec_self_attn_ratios:
        points.append(PrunePoint(f"dec_self_attn_{_pct(r)}", "dec_self_attn_sweep", "component", float(r),
                                 {"dec_self_attn": float(r)}))
    if last_encoder_ratio is not None:
        layers = last_layers(layer_counts(model)["encoder"], last_encoder_layers)
        pl = {c: dict.fromkeys(layers, float(last_encoder_ratio)) for c in last_encoder_components}
        points.append(PrunePoint(f"last_encoder_{_pct(last_encoder_ratio)}", "last_encoder", "component",
                                 float(last_encoder_ratio), {}, pl))
    for b in baselines:
        if b not in ("global", "uniform"):
            raise ValueError(f"p3.baselines: unknown baseline {b!r}; known: global, uniform")
    tensor_ratios(model, ratios, per_layer)  # unknown components / layers fail here, before any decoding
    fixed = config_sparsity(model, ratios, per_layer)
    tied = tied_embedding(model)
    for t in compare_sparsities:
        t = float(t)
        if not 0.0 < t < 1.0:
            raise ValueError(f"p3.compare_sparsities: {t!r} outside (0, 1)")
        match = None
        if sensitivity is not None:
            alloc = allocate(sensitivity, t, rule or AllocationRule(), tied_embedding=tied)
            _check_scores(model, alloc)
            match = f"sensitivity_s{_pct(t)}"
            points.append(PrunePoint(match, "compare", "sensitivity", t, alloc.ratios, alloc.per_layer))
        if fixed <= 0:
            raise ValueError("p3.ratios / p3.per_layer prune nothing: no scale reaches a sparsity")
        scale = t / fixed
        r, pl = scale_config(ratios, per_layer, scale)
        points.append(PrunePoint(f"paper_s{_pct(t)}", "compare", "paper", t, r, pl, scale=scale))
        match = match or f"paper_s{_pct(t)}"
        points += [PrunePoint(f"{b}_s{_pct(t)}", "compare", b, t, match=match) for b in baselines]
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate point keys: {keys}")
    return points


@contextmanager
def pruned(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Apply ``masks`` for the duration of the block, then restore the exact dense weights and drop the
    masks. The model must carry no mask on entry."""
    if get_masks(model):
        raise RuntimeError("pruned(): the model already carries masks")
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in masks}
    try:
        apply_masks(model, masks)
        yield model
    finally:
        remove_masks(model)
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)


def component_sparsity(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Pruned share (%) of each prunable component's weights under ``masks`` (the tied embedding counted
    once, under ``token_embedding``; ``output_projection`` then reads the same tensor)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    pruned_n = dict.fromkeys(COMPONENTS, 0)
    total = dict.fromkeys(COMPONENTS, 0)
    for info in param_map(model):
        if not info.prunable:
            continue
        key = canonical[id(model.get_parameter(info.name))]
        total[info.component] += info.numel
        if key in masks:
            pruned_n[info.component] += int((~masks[key]).sum())
    return {c: round(100.0 * pruned_n[c] / total[c], 4) for c in COMPONENTS if total[c]}


def point_masks(model: nn.Module, point: PrunePoint, done: Mapping[str, Mapping[str, Any]]) -> dict[str, Tensor]:
    """Masks of one point on the dense ``model``. ``done``: records of the points already evaluated (a
    global/uniform point reads ``pruned_weights`` / ``prunable_params`` of its ``match``)."""
    if point.method == "dense":
        return {}
    if point.method in ("component", "sensitivity", "paper"):
        return l1_unstructured_masks(model, point.ratios, point.per_layer)
    target = done[point.match]["pruned_weights"] / done[point.match]["prunable_params"]
    fn = global_magnitude_masks if point.method == "global" else uniform_magnitude_masks
    return fn(model, target, prunable_filter(model))


def headline_metrics(table: Sequence[Mapping[str, Any]], final_key: str = "sensitivity_s40") -> dict[str, Any]:
    """Flat metrics: WER and its change vs dense for every point (``<point>_wer_pct``,
    ``<point>_delta_wer_pct``, the paired test's ``<point>_delta_ci_low_pct`` / ``_delta_ci_high_pct`` /
    ``_p_value_worse``), sparsities of the compare points, and the ``final_key`` point's counts."""
    out: dict[str, Any] = {}
    for r in table:
        out[f"{r['point']}_wer_pct"] = r["wer_pct"]
        if r["method"] != "dense":
            for k in ("delta_wer_pct", "delta_ci_low_pct", "delta_ci_high_pct", "p_value_worse"):
                out[f"{r['point']}_{k}"] = r[k]
        if r["group"] == "compare":
            out[f"{r['point']}_prunable_sparsity_pct"] = round(r["prunable_sparsity_pct"], 3)
    final = next((r for r in table if r["point"] == final_key), None)
    out["params_m"] = table[0]["params_m"]
    if final is not None:
        out.update({"final_point": final_key, "final_nonzero_params_m": final["nonzero_params_m"],
                    "final_sparsity_pct": final["sparsity_pct"], "final_storage_csr_mib": final["storage_csr_mib"],
                    "final_storage_dense_mib": final["storage_dense_mib"]})
    out["n_eval_utts"] = table[0]["n_utts"]
    return out


_FRACTION = (int, float)
_DEVICE = r"cpu|cuda(:\d+)?"
# every key of the `p3` / `p3_real` sections (p3_data checks the whole section before any work)
P3_SCHEMA: dict[str, Any] = {
    "model": (str, False), "source": (str, False), "corpus": (str, False), "evaluate": (dict, False),
    "calibration_corpus": (str, False), "calibration_fraction": (float, True), "n_grad": (int, True),
    "n_fisher": (int, True), "ratios": (dict, True), "per_layer": (dict, False), "dec_self_attn_sweep": (list, True),
    "last_encoder": (dict, True), "compare_sparsities": (list, True), "allocation": (dict, True),
    "baselines": (list, True), "batch_size": (int, True), "max_new_tokens": (int, False),
    "bootstrap_resamples": (int, True), "num_threads": (int, True), "device": (str, True),
}
P3_BASELINES = ("global", "uniform")


def check_p3_section(cfg: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Validate the whole ``section`` (``p3`` or ``p3_real``): unknown, missing, mistyped and
    out-of-range keys raise :class:`ParamError` naming ``section.key``, before any model is loaded."""
    from asrcompress.compress.allocation import SCORES
    from asrcompress.config import ParamError, Spec, check_section, get

    positive = {"n_grad", "n_fisher", "batch_size", "max_new_tokens", "bootstrap_resamples", "num_threads"}
    schema = {k: Spec(t, required=req, min=1 if k in positive else (0 if t is float else None),
                      pattern=_DEVICE if k == "device" else None, what="cpu, cuda or cuda:N" if k == "device" else None)
              for k, (t, req) in P3_SCHEMA.items()}
    out = check_section(get(cfg, section), section, schema)
    if out.get("model") is None and out.get("corpus") is None:
        raise ParamError(f"params.yaml: {section}: needs 'model' (a models key) or 'corpus'")
    if out["calibration_fraction"] >= 1:
        raise ParamError(f"params.yaml: {section}.calibration_fraction: must be < 1, got {out['calibration_fraction']}")

    def fractions(values: Any, name: str, low_open: bool = False) -> None:
        for i, v in (values.items() if isinstance(values, Mapping) else enumerate(values)):
            if isinstance(v, bool) or not isinstance(v, _FRACTION) or not (0 < v < 1 if low_open else 0 <= v <= 1):
                raise ParamError(f"params.yaml: {section}.{name}[{i!r}]: must be a number in "
                                 f"{'(0, 1)' if low_open else '[0, 1]'}, got {v!r}")

    unknown = sorted(set(out["ratios"]) - set(COMPONENTS))
    if unknown:
        raise ParamError(f"params.yaml: {section}.ratios: unknown component(s) {unknown}; known: {list(COMPONENTS)}")
    fractions(out["ratios"], "ratios")
    fractions(out["dec_self_attn_sweep"], "dec_self_attn_sweep")
    fractions(out["compare_sparsities"], "compare_sparsities", low_open=True)
    for i, b in enumerate(out["baselines"]):
        if b not in P3_BASELINES:
            raise ParamError(f"params.yaml: {section}.baselines[{i}]: {b!r} is not one of {list(P3_BASELINES)}")
    check_section(out["last_encoder"], f"{section}.last_encoder", {
        "ratio": Spec(float, required=False, min=0), "n_layers": Spec(int, required=False, min=1),
        "components": Spec(list)})
    alloc = check_section(out["allocation"], f"{section}.allocation", {
        "score": Spec(str, choices=SCORES), "by_layer": Spec(bool), "min_ratio": Spec(float, min=0),
        "max_ratio": Spec(float, min=0), "power": Spec(float, min=0)})
    if not alloc["min_ratio"] <= alloc["max_ratio"] <= 1:
        raise ParamError(f"params.yaml: {section}.allocation: needs 0 <= min_ratio <= max_ratio <= 1, got "
                         f"{alloc['min_ratio']} / {alloc['max_ratio']}")
    return out


@dataclass
class P3Data:
    """What a paper 3 stage reads for its params section (``p3`` or ``p3_real``, see :func:`p3_data`)."""

    section: str
    language: str
    normalizer: str
    calibration: list[dict]
    evaluation: list[dict]
    calibration_from: str


def p3_data(cfg: Mapping[str, Any], section: str, corpus_dir: str, evaluate: str | None = None) -> P3Data:
    """Language, normaliser, calibration rows and evaluation rows of ``section``.

    The corpus is ``evaluate`` when given (a key of ``<section>.evaluate``, whose ``test_utterances``
    keeps the first N test rows, null = all), else ``<section>.corpus`` (a key of ``corpora`` or
    ``real_corpora``) when set, else the corpus of ``models.<section>.model``. Calibration: with
    ``<section>.calibration_corpus`` set, the first ``max(n_grad, n_fisher)`` rows of that (synthetic)
    corpus's *train* split, and the test split of ``corpus_dir`` is evaluated (the sensitivity never
    sees the test set); otherwise the paper code's protocol, the first ``calibration_fraction`` of the
    test split, the rest evaluated."""
    from asrcompress.compress.sensitivity import calibration_split
    from asrcompress.config import ParamError, get
    from asrcompress.io import load_split

    check_p3_section(cfg, section)
    limit = None
    if evaluate is not None:
        entries = get(cfg, f"{section}.evaluate", dict)
        if evaluate not in entries:
            raise ParamError(f"params.yaml: {section}.evaluate: no entry {evaluate!r} (has {sorted(entries)})")
        limit = get(entries, f"{evaluate}.test_utterances", (int, type(None)), default=None) \
            if entries[evaluate] else None
        if limit is not None and limit < 1:
            raise ParamError(f"params.yaml: {section}.evaluate.{evaluate}.test_utterances: must be >= 1, got {limit}")
    corpus = evaluate or get(cfg, f"{section}.corpus", (str, type(None)), default=None) or \
        get(cfg, f"models.{get(cfg, f'{section}.model', str)}.corpus", str)
    corpora = next((c for c in ("corpora", "real_corpora") if corpus in (cfg.get(c) or {})), "corpora")
    language = get(cfg, f"{corpora}.{corpus}.whisper_language", str)
    normalizer = get(cfg, f"{corpora}.{corpus}.normalizer", str)
    calib_corpus = get(cfg, f"{section}.calibration_corpus", (str, type(None)), default=None)
    test = load_split(corpus_dir, "test")[:limit]
    if calib_corpus:
        n = max(get(cfg, f"{section}.n_grad", int), get(cfg, f"{section}.n_fisher", int))
        calib = load_split(f"data/corpora/{calib_corpus}", "train")[:n]
        return P3Data(section, language, normalizer, calib, test, f"data/corpora/{calib_corpus}/train[:{len(calib)}]")
    calib, rest = calibration_split(test, get(cfg, f"{section}.calibration_fraction", float))
    return P3Data(section, language, normalizer, calib, rest, f"{corpus_dir}/test[:{len(calib)}]")


#: leaderboard entry keys of paper 3's sensitivity-aware allocation (besides method, model, label, budget)
BOARD_KEYS = {"sensitivity": Spec(str), "allocation": Spec(dict)}


def board_compress(model: nn.Module, entry: Mapping[str, Any], inputs: Any) -> dict[str, Any]:
    """Leaderboard method ``p3_sensitivity``: per-(component, layer) L1 ratios allocated from the measured
    sensitivity scores (``entry["sensitivity"]``: a p3_sensitivity JSON of the same model; ``entry["allocation"]``:
    the ``p3.allocation`` rule), reaching ``entry["budget"]`` of ALL parameters; one shot, no fine-tuning."""
    from asrcompress.compress.board import pool_sparsity
    from asrcompress.io import read_json

    pool = prunable_numel(model)
    t = pool_sparsity(sum(p.numel() for p in model.parameters()), pool, entry.get("budget"), inputs.where)
    try:
        rule = AllocationRule(**entry["allocation"])
    except (TypeError, ValueError) as err:
        raise ParamError(f"params.yaml: {inputs.where}.allocation: {err}") from err
    alloc = allocate(read_json(entry["sensitivity"])["per_layer"], t, rule, tied_embedding=tied_embedding(model))
    _check_scores(model, alloc)
    masks = l1_unstructured_masks(model, alloc.ratios, alloc.per_layer)
    apply_masks(model, masks)
    pruned_n = sum(int((~m).sum()) for m in masks.values())
    remove_masks(model)
    return {"pool_params": pool, "pool_sparsity": t, "pruned_weights": pruned_n,
            "component_ratios": dict(alloc.ratios)}
