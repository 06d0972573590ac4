"""Paper 2's recipe (BaldWhisper, arXiv 2510.08599), step by step, for ``stages/p2_compress.py``.

A variant applies, in order, decoder layer merging (``merge_step``: pairs chosen by calibration
similarity, ``layer_merge.py``), the activation-aware low-rank embedding (``lowrank_step``,
``lowrank_embedding.py``), then recovery training with the shared loop (``recover``), with feature
distillation towards the dense teacher (``distill.py``) when the variant asks for it. Each step
returns what it did (for ``compress.json``) and its diagnostic rows (``similarity.csv``,
``rank_error.csv``); ``dev_loss`` is the teacher-forced loss the stage records between steps;
``check_p2_section`` checks the whole params section (``p2``, ``p2_real``, ``p2_real_yo``) before any work.
Nothing here measures a compressed model: that is ``measure@`` (``measure/``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from asrcompress.compress.checkpoint import load_compressed
from asrcompress.compress.distill import LOSSES, FeatureDistillation
from asrcompress.compress.layer_merge import SIMILARITIES, merge_most_similar, valid_token_mask
from asrcompress.compress.lowrank_embedding import (
    SCALINGS,
    embedding_weight,
    factorize_activation_aware,
    logit_input_moment,
    rank_error_sweep,
    rank_for_fraction,
)
from asrcompress.config import DENSE_SECTIONS, ParamError, Spec, check_section, get
from asrcompress.models.whisper import encoder_window

Batch = dict[str, torch.Tensor]


def reference_corpus(cfg: Mapping[str, Any], section: str) -> tuple[str, str]:
    """(corpus key, Whisper language) of ``<section>.reference``: a ``dense`` entry (smoke) or a
    ``real_dense`` / ``real_dense_synth`` entry (the real track); its corpus from ``corpora`` or
    ``real_corpora``."""
    ref = get(cfg, f"{section}.reference", str)
    owner = next((s for s in DENSE_SECTIONS if ref in (cfg.get(s) or {})), None)
    if owner is None:
        raise ParamError(f"params.yaml: {section}.reference: {ref!r} is not a key of {', '.join(DENSE_SECTIONS)}")
    corpus = get(cfg, f"{owner}.{ref}.corpus", str)
    corpora = "corpora" if corpus in (cfg.get("corpora") or {}) else "real_corpora"
    return corpus, get(cfg, f"{corpora}.{corpus}.whisper_language", str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# every key of a variant (``<section>.variants.<key>``); max_steps / lr override ``<section>.train``'s
VARIANT_SCHEMA = {"init": Spec(str), **{k: Spec(bool) for k in ("merge", "lowrank", "distill")},
                  "max_steps": Spec(int, required=False, min=0), "lr": Spec(float, required=False)}


def check_p2_section(cfg: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Validate the whole ``section`` (``p2``, ``p2_real``, ``p2_real_yo``: one schema) before any work:
    unknown, missing, mistyped, non-finite and out-of-range keys of the section, ``merge``, ``lowrank``,
    ``distill``, ``train`` (``TrainConfig``) and every ``variants.<key>`` raise :class:`ParamError` naming
    ``section.key``; ``reference`` must resolve (:func:`reference_corpus`). ``train_window_s`` is checked
    against the model by ``models.whisper.check_train_window``. Returns the section as given."""
    from asrcompress.train.loop import TRAIN_SCHEMA, TrainConfig

    def bad(key: str, what: str, value: Any) -> ParamError:
        return ParamError(f"params.yaml: {section}.{key}: must be {what}, got {value!r}")

    out = check_section(get(cfg, section), section, {
        "reference": Spec(str), **{k: Spec(int, min=1) for k in ("calib_utterances", "dev_utterances", "batch_size")},
        "train_window_s": Spec(int, required=False, min=1),
        **{k: Spec(dict) for k in ("merge", "lowrank", "distill", "train", "variants")}})
    reference_corpus(cfg, section)
    merge = check_section(out["merge"], f"{section}.merge", {
        "n_pairs": Spec(int, min=0), "similarity": Spec(str, choices=SIMILARITIES), "pairs": Spec(list, required=False),
        "alpha": Spec((float, list)), "beta": Spec((float, list))})
    pairs = merge.get("pairs")
    if pairs is not None and not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pairs):
        raise bad("merge.pairs", "null or a list of decoder layer indices (ints >= 0)", pairs)
    n_merged = len(pairs) if pairs is not None else merge["n_pairs"]
    for key in ("alpha", "beta"):
        value = merge[key]
        if isinstance(value, list) and (len(value) != n_merged or not all(map(_is_number, value))):
            raise bad(f"merge.{key}", f"a number or a list of {n_merged} numbers (one per merged pair)", value)
    low = check_section(out["lowrank"], f"{section}.lowrank", {
        "rank_fraction": Spec(float), "scaling": Spec(str, choices=SCALINGS), "damping": Spec(float, min=0),
        "sweep": Spec(list)})
    fractions = {"rank_fraction": low["rank_fraction"], **{f"sweep[{i}]": f for i, f in enumerate(low["sweep"])}}
    for key, value in fractions.items():
        if not (_is_number(value) and 0 < value <= 1):
            raise bad(f"lowrank.{key}", "a rank fraction in (0, 1]", value)
    distill = check_section(out["distill"], f"{section}.distill", {
        "layers": Spec((str, list)), "loss": Spec(str, choices=LOSSES), "weight": Spec(float, min=0)})
    layers = distill["layers"]
    if layers not in ("all", "final") and not (isinstance(layers, list) and layers and all(
            k == "final" or (isinstance(k, int) and not isinstance(k, bool) and k >= 0) for k in layers)):
        raise bad("distill.layers", "all, final or a list of student boundaries (ints >= 0, final)", layers)
    # max_steps: 0 = the surgery alone, no training (recover); a variant's max_steps / lr override the section's
    check_section(out["train"], f"{section}.train", {**TRAIN_SCHEMA, "max_steps": Spec(int, min=0)})
    for key, spec in out["variants"].items():
        variant = check_section(spec, f"{section}.variants.{key}", VARIANT_SCHEMA)
        for k in ("max_steps", "lr"):
            if k in variant and variant[k] is None:
                raise bad(f"variants.{key}.{k}", "a number when given", None)
        if variant.get("lr") is not None and variant["lr"] <= 0:
            raise bad(f"variants.{key}.lr", "> 0", variant["lr"])
        trained = variant_train_section(out, variant)
        if trained["max_steps"] != 0:
            TrainConfig.from_params(trained, 0, name=f"{section}.train")
    return out


def variant_train_section(p2: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``<section>.train`` with a variant's own ``max_steps`` / ``lr`` over it (``max_steps: 0``: no training)."""
    return {**get(p2, "train", dict), **{k: spec[k] for k in ("max_steps", "lr") if k in spec}}


def batches(rows: list[dict[str, Any]], collate: Any, size: int) -> list[Batch]:
    """``rows`` collated in consecutive batches of ``size``."""
    return [collate(rows[i:i + size]) for i in range(0, len(rows), size)]


@torch.no_grad()
def dev_loss(model: torch.nn.Module, dev: list[Batch]) -> float:
    """Teacher-forced cross-entropy per target token (nats) over ``dev``."""
    model.eval()
    total, count = 0.0, 0
    for batch in dev:
        n = int(valid_token_mask(batch).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count


def merge_step(model: torch.nn.Module, p2: Mapping[str, Any], calib: list[Batch]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Merge ``p2.merge.n_pairs`` adjacent decoder pairs in place: (record, similarity rows of every pair)."""
    m = get(p2, "merge", dict)
    result = merge_most_similar(model, calib, get(m, "n_pairs", int), get(m, "similarity", str),
                                m["alpha"], m["beta"], m.get("pairs"))
    rows = [{k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
            for r in result["similarity"]]  # origin "0 1": one CSV cell
    return {"criterion": result["criterion"], "merged": result["merged"]}, rows


def lowrank_step(model: torch.nn.Module, p2: Mapping[str, Any], calib: list[Batch]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Factorise the tied embedding at rank ``p2.lowrank.rank_fraction`` x d_model in place: (record,
    rank-error rows: plain SVD vs activation-aware at every ``p2.lowrank.sweep`` fraction)."""
    lr = get(p2, "lowrank", dict)
    scaling, damping = get(lr, "scaling", str), get(lr, "damping", float)
    C, n_tokens = logit_input_moment(model, calib)
    W = embedding_weight(model)
    ranks = sorted({rank_for_fraction(float(f), *W.shape) for f in get(lr, "sweep", list)})
    # the error curve always compares plain SVD with an activation-aware scaling (full if plain is installed)
    sweep = rank_error_sweep(W, C, ranks, "full" if scaling == "none" else scaling, damping)
    rank = rank_for_fraction(get(lr, "rank_fraction", float), *W.shape)
    info = factorize_activation_aware(model, rank, C, scaling, damping)
    return {**info, "full_rank": min(W.shape), "calibration_tokens": n_tokens}, sweep


def recover(model: torch.nn.Module, variant: str, spec: Mapping[str, Any], p2: Mapping[str, Any], seed: int,
            rows: list[dict[str, Any]], collate: Any, teacher_dir: str, init_dir: str, loss_log: Path,
            section: str = "p2", processor: Any = None, window_s: int | None = None) -> dict[str, Any]:
    """Recovery training with the shared loop (+ feature distillation when ``spec.distill``); the
    variant's ``max_steps`` and ``lr`` override ``<section>.train``'s, and ``max_steps: 0`` skips training. With
    ``window_s`` the teacher runs on that cut encoder window too (the student's is the caller's to cut,
    and ``processor`` is the full-window one)."""
    from asrcompress.train.loop import TrainConfig, train

    train_section = variant_train_section(p2, spec)
    if int(train_section["max_steps"]) == 0:
        return {"train": {"steps": 0}}
    tcfg = TrainConfig.from_params(train_section, seed, name=f"{section}.train")
    out: dict[str, Any] = {}
    kd = None
    fingerprint = {"variant": variant, "spec": dict(spec), "init": init_dir,
                   "calib_utterances": p2["calib_utterances"], **{k: p2[k] for k in ("merge", "lowrank", "distill")}}
    with contextlib.ExitStack() as stack:
        if get(spec, "distill", bool):
            d = get(p2, "distill", dict)
            teacher = load_compressed(teacher_dir)
            stack.enter_context(encoder_window(teacher, processor, window_s))
            kd = stack.enter_context(FeatureDistillation(teacher, model, d["layers"], get(d, "loss", str),
                                                         get(d, "weight", float)))
            out["distill"] = kd.describe()
        out["train"] = train(model, rows, collate, tcfg, ckpt_dir=f"checkpoints/{section}/{variant}",
                             loss_log=loss_log, fingerprint=fingerprint, extra_loss=kd,
                             desc=f"p2_compress@{variant}")
    return out


def structure_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Decoder layers now and in the base model, merged pairs, embedding rank and d_model (for the
    report's summary table)."""
    from asrcompress.compress.surgery import structure_of

    s = structure_of(model)
    layers = s["stacks"]["decoder"]["layers"]
    return {"decoder_layers": len(layers), "decoder_layers_base": s["base_config"]["decoder_layers"],
            "merged_pairs": sum(1 for r in layers if len(r["origin"]) > 1),
            "embedding_rank": s["embedding_rank"], "d_model": s["base_config"]["d_model"]}
