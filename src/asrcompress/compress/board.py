"""The leaderboard's compression side: every method on one real Whisper, one params entry each.

An entry of ``leaderboard.entries`` in params.yaml names a method MODULE and the model it starts from::

    wanda_b30: {method: asrcompress.compress.wanda, model: data/models/real/whisper_base, budget: 0.30}

The module exposes ``board_compress(model, entry, inputs) -> dict`` (it changes ``model`` in place and
returns what it wants recorded) and, optionally, ``BOARD_KEYS`` (``{key: config.Spec}``, its own entry
keys, checked with the common ones before any work). Adding a method to the board = one module + one
params entry (``pipelines/leaderboard/dvc.yaml`` runs every entry; see README "Add a method").

:func:`run_entry` loads the entry's input model (``checkpoint.load_compressed``), hands the method a
:class:`BoardInputs` (processor, unlabelled calibration audio, language, seed), and records the
compression's own CPU and wall time. ``budget`` is the share of ALL parameters to remove or zero
(:func:`pool_sparsity` converts it to the share of the pool a method prunes).

Entries of ``leaderboard.imported`` are models compressed and measured by the papers' own pipelines
(paper 2's recipe in ``pipelines/p2_real``): the board reads their metrics; nothing is re-run.
:func:`measure_entries` expands each board entry into the measure suite's entries, one per
``leaderboard.measure_on`` corpus (``lb_<entry>_<where>``), each against the dense model there.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from asrcompress.config import ParamError, Spec, check_section, derive_seed, get

__all__ = ["BoardInputs", "COMMON_KEYS", "total_params", "pool_sparsity", "load_method",
           "check_leaderboard_section", "measure_entries", "run_entry"]

COMMON_KEYS: dict[str, Spec] = {
    "method": Spec(str, pattern=r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", what="a dotted module path"),
    "model": Spec(str),
    "label": Spec(str),
    "budget": Spec(float, required=False, min=0.0),
}
_SECTION: dict[str, Spec] = {
    "calibration": Spec(dict), "language": Spec(str), "measure_on": Spec(dict), "entries": Spec(dict),
    "imported": Spec(dict, required=False), "anchor": Spec(str, required=False),
    "collapsed_wer_pct": Spec(float, required=False, min=0.0),
}
_CALIBRATION = {"corpus": Spec(str), "split": Spec(str, choices=("train", "dev")), "utterances": Spec(int, min=1)}
_WHERE = {"corpora": Spec(str, choices=("corpora", "real_corpora")), "corpus": Spec(str), "reference": Spec(str),
          "test_utterances": Spec(int, required=False, min=1)}
_IMPORTED = {"label": Spec(str), "budget": Spec(float, required=False, min=0.0),
             "measured": Spec(dict), "compress_record": Spec((str, list), required=False)}


@dataclass
class BoardInputs:
    """What a method may use besides the model: its processor, unlabelled calibration rows (``id``,
    ``audio``, ``duration``: no transcript), the language, a seed, and ``where`` (the params key, for
    error messages)."""

    processor: Any
    calibration_rows: list[dict[str, Any]]
    language: str
    seed: int
    where: str


def total_params(model: nn.Module) -> int:
    """Distinct parameter elements (a tied tensor once)."""
    return sum(p.numel() for p in model.parameters())


def pool_sparsity(total: int, pool: int, budget: float | None, where: str) -> float:
    """The sparsity within a pool of ``pool`` prunable elements that zeroes ``budget`` of ``total``."""
    if budget is None:
        raise ParamError(f"params.yaml: {where}.budget: missing (this method needs a budget)")
    if not 0.0 < budget < 1.0:
        raise ParamError(f"params.yaml: {where}.budget: must be in (0, 1), got {budget!r}")
    s = budget * total / pool
    if s >= 1.0:
        raise ParamError(f"params.yaml: {where}.budget: {budget:g} of {total} parameters needs {s:.1%} of the "
                         f"{pool} this method prunes")
    return s


def load_method(name: str, where: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ParamError(f"params.yaml: {where}.method: cannot import {name!r} ({err})") from err
    if not callable(getattr(module, "board_compress", None)):
        raise ParamError(f"params.yaml: {where}.method: {name} has no board_compress(model, entry, inputs)")
    return module


def check_leaderboard_section(cfg: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
    """The ``leaderboard`` section, checked (every entry, or only ``key``'s with its method's keys);
    an unknown, missing or mistyped key is named as ``leaderboard.<...>.<key>``."""
    sec = check_section(cfg.get("leaderboard"), "leaderboard", _SECTION)
    sec["calibration"] = check_section(sec["calibration"], "leaderboard.calibration", _CALIBRATION)
    for where, spec in sec["measure_on"].items():
        sec["measure_on"][where] = w = check_section(spec, f"leaderboard.measure_on.{where}", _WHERE)
        get(cfg, f"{w['corpora']}.{w['corpus']}", dict)
    for name, entry in (sec.get("imported") or {}).items():
        check_section(entry, f"leaderboard.imported.{name}", _IMPORTED)
    if key is not None and key not in sec["entries"]:
        raise ParamError(f"params.yaml: leaderboard.entries.{key}: no such entry "
                         f"(known: {', '.join(sec['entries'])})")
    for name, entry in sec["entries"].items():
        if key is not None and name != key:
            continue
        where = f"leaderboard.entries.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
            raise ParamError(f"params.yaml: {where}.method: missing (a module with board_compress)")
        module = load_method(entry["method"], where)
        sec["entries"][name] = check_section(entry, where, {**COMMON_KEYS, **getattr(module, "BOARD_KEYS", {})})
    return sec


def measure_entries(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{lb_<entry>_<where>: a real_variants-style entry}`` for every board entry and measure_on corpus:
    the model ``data/models/lb/<entry>``, the corpus, the dense reference (timed interleaved with it)."""
    sec = cfg.get("leaderboard") or {}
    out = {}
    for name in sec.get("entries") or {}:
        for where, spec in (sec.get("measure_on") or {}).items():
            out[f"lb_{name}_{where}"] = {"model": f"data/models/lb/{name}", "corpus": spec.get("corpus"),
                                         "reference": spec.get("reference"),
                                         **({"test_utterances": spec["test_utterances"]}
                                            if spec.get("test_utterances") else {})}
    return out


def run_entry(cfg: Mapping[str, Any], key: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Compress board entry ``key``: returns (model, processor, record); the record has the method's own
    figures and ``compress_cpu_s`` (process CPU time of the method, all threads) / ``compress_wall_s``."""
    from transformers import AutoProcessor

    from asrcompress.compress.checkpoint import load_compressed
    from asrcompress.io import load_split

    sec = check_leaderboard_section(cfg, key)
    entry, where = sec["entries"][key], f"leaderboard.entries.{key}"
    module = load_method(entry["method"], where)
    if not Path(entry["model"]).is_dir():
        raise ParamError(f"params.yaml: {where}.model: {entry['model']} does not exist (run its stage first)")
    seed = derive_seed(get(cfg, "seed", int), "leaderboard", key)
    torch.manual_seed(seed)
    cal = sec["calibration"]
    rows = load_split(f"data/corpora/{cal['corpus']}", cal["split"])[: cal["utterances"]]
    rows = [{"id": r["id"], "audio": r["audio"], "duration": r["duration"]} for r in rows]  # audio only
    model = load_compressed(entry["model"]).eval()
    processor = AutoProcessor.from_pretrained(entry["model"])
    inputs = BoardInputs(processor, rows, sec["language"], seed, where)
    params_before = total_params(model)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    extra = module.board_compress(model, entry, inputs) or {}
    record = {"entry": key, "method": entry["method"], "input_model": entry["model"], "budget": entry.get("budget"),
              **extra, "compress_cpu_s": time.process_time() - cpu0, "compress_wall_s": time.perf_counter() - wall0,
              "threads": torch.get_num_threads(), "params_before": params_before}
    return model, processor, record
