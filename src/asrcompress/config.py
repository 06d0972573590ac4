"""Loading ``params.yaml``: one file, two profiles, clear errors for missing or mistyped keys.

``params.yaml`` holds the ``smoke`` profile in its top-level sections and, under
``paper_overrides``, only what the ``paper`` profile changes. ``profile: paper`` deep-merges the
overrides over the base, so both profiles share one schema and one code path.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asrcompress.text.normalize import _NORMALIZERS

PROFILES = ("smoke", "paper")


class ParamError(ValueError):
    """A missing, mistyped or invalid entry in params.yaml (the message names the key)."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins on leaves)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated within one mapping (at any depth) instead of
    letting the last one win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (lines {first} and {line})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | os.PathLike = "params.yaml", profile: str | None = None) -> dict[str, Any]:
    """Load params.yaml and resolve the active profile into one flat-sectioned dict.

    A key given twice in one mapping (at any depth) is refused, naming the key and both lines.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamError(f"{path}: top level must be a mapping")
    profile = profile or os.environ.get("ASRC_PROFILE") or raw.get("profile", "smoke")
    if profile not in PROFILES:
        raise ParamError(f"{path}: key 'profile' is {profile!r}; expected one of {PROFILES}")
    overrides = raw.pop("paper_overrides", {}) or {}
    cfg = deep_merge(raw, overrides) if profile == "paper" else raw
    cfg["profile"] = profile
    return cfg


_MISSING = object()


def get(cfg: Mapping[str, Any], dotted: str, typ: type | tuple[type, ...] | None = None,
        default: Any = _MISSING) -> Any:
    """``get(cfg, "train.lr", float)``: the value at a dotted key, type-checked.

    Raises :class:`ParamError` naming the key when it is missing or of the wrong type
    (ints are accepted where floats are asked for; bools are never taken as numbers; a float must be
    finite: ``.nan`` / ``.inf`` are refused).
    """
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not _MISSING:
                return default
            raise ParamError(f"params.yaml: missing key '{dotted}'")
        node = node[part]
    if typ is not None:
        types = typ if isinstance(typ, tuple) else (typ,)
        if float in types and isinstance(node, int) and not isinstance(node, bool):
            node = float(node)
        bad_bool = isinstance(node, bool) and bool not in types
        if bad_bool or not isinstance(node, types):
            names = "/".join(t.__name__ for t in types)
            raise ParamError(f"params.yaml: key '{dotted}' must be {names}, got {type(node).__name__} {node!r}")
        if isinstance(node, float) and not math.isfinite(node):
            raise ParamError(f"params.yaml: key '{dotted}' must be a finite number, got {node!r}")
    return node


@dataclass(frozen=True)
class Spec:
    """What one key of a params section may hold (see :func:`check_section`).

    ``type``: accepted type(s) (ints pass for float; bools never pass for numbers; floats must be finite).
    ``required``: absent (or null, when optional) keys are allowed only if False.
    ``min``: smallest allowed number; ``choices``: allowed values; ``pattern``: a regex the whole
    string must match (``what`` is its description in the error message).
    """

    type: type | tuple[type, ...]
    required: bool = True
    min: float | None = None
    choices: Collection[Any] | None = None
    pattern: str | None = None
    what: str | None = None


def _check_value(value: Any, dotted: str, spec: Spec) -> Any:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise ParamError(f"params.yaml: {dotted}: must be {names}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"params.yaml: {dotted}: must be a finite number, got {value!r}")
    if spec.min is not None and value < spec.min:
        raise ParamError(f"params.yaml: {dotted}: must be >= {spec.min:g}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ParamError(f"params.yaml: {dotted}: {value!r} is not one of {sorted(spec.choices)}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        raise ParamError(f"params.yaml: {dotted}: {value!r} is not {spec.what or 'of the form ' + spec.pattern}")
    return value


def check_section(section: Any, name: str, schema: Mapping[str, Spec]) -> dict[str, Any]:
    """Validate the params section ``name`` (a dotted path, e.g. ``"measure"``) against ``schema``.

    Raises :class:`ParamError` naming ``name.key`` for an unknown key (with the closest known key
    as a suggestion), a missing required key, a wrong type or a value out of bounds. Returns the
    section as a new dict (ints converted where floats are asked for; null optional keys kept).
    """
    if not isinstance(section, Mapping):
        raise ParamError(f"params.yaml: {name}: must be a mapping, got {type(section).__name__} {section!r}")
    for key in section:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {sorted(schema)}"
            raise ParamError(f"params.yaml: {name}.{key}: unknown key{hint}")
    out = dict(section)
    for key, spec in schema.items():
        if key not in section or (section[key] is None and not spec.required):
            if spec.required:
                raise ParamError(f"params.yaml: missing key '{name}.{key}'")
            continue
        out[key] = _check_value(section[key], f"{name}.{key}", spec)
    return out


# the params sections holding dense (uncompressed) models: a reference of a compressed model or of a recipe
DENSE_SECTIONS: tuple[str, ...] = ("dense", "real_dense", "real_dense_synth")


# ------------------------------------------------------------------------------ section schemas
# The sections the shared (non-paper) stages read, checked before any work with errors naming
# ``section.key``. Training sections: ``asrcompress.train.loop.TRAIN_SCHEMA`` (``TrainConfig.from_params``);
# ``measure``: ``asrcompress.measure.suite.validate_measure_params``.
_LANG = r"[a-z]{2,3}(_[A-Za-z0-9]+)?"
NORMALIZER_NAMES = tuple(_NORMALIZERS)  # text.normalize.get_normalizer's names
CORPUS_SCHEMA = {  # corpora.<key>
    "source": Spec(str), "language": Spec(str, pattern=_LANG, what="a language code (e.g. en)"),
    "whisper_language": Spec(str, pattern=_LANG, what="a Whisper language code (e.g. en)"),
    "normalizer": Spec(str, choices=NORMALIZER_NAMES), "sizes": Spec(dict)}
SIZES_SCHEMA = {s: Spec(int) for s in ("train", "dev", "test")}  # >= 0; hub corpora: -1 = every item
SYNTH_SCHEMA = {"rate_wpm": Spec(list), "pitch": Spec(list), "gain": Spec(list),
                "noise_prob": Spec(float, min=0), "snr_db": Spec(float)}
WHISPER_SCHEMA = {"source": Spec(str), "chunk_length_s": Spec(int, min=1),
                  "attn_implementation": Spec(str, choices=("eager", "sdpa", "flash_attention_2")),
                  "dims": Spec(dict, required=False)}
DIMS_SCHEMA = {**{k: Spec(int, min=1) for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads",
                                                  "ffn_dim", "max_target_positions")},
               "num_mel_bins": Spec(int, required=False, min=1), "dropout": Spec(float, required=False, min=0)}
TOKENIZER_SCHEMA = {"vocab_size": Spec(int, min=300)}  # below ~300 the byte-level BPE has no merges left
PRETRAIN_CTC_SCHEMA = {"weight": Spec(float, min=0), "frame_stride": Spec(int, min=1)}
MODEL_ENTRY_SCHEMA = {"corpus": Spec(str)}  # models.<key>
REAL_CORPUS_SCHEMA = {  # real_corpora.<key>
    "dir": Spec(str), "language": CORPUS_SCHEMA["language"], "whisper_language": CORPUS_SCHEMA["whisper_language"],
    "normalizer": CORPUS_SCHEMA["normalizer"], "splits": Spec(dict, required=False),
    "max_items": Spec(int, required=False, min=1), "speaker_from_id": Spec(str, required=False, choices=("none", "dash"))}
REAL_MODEL_SCHEMA = {"files": Spec(list), "meta_dir": Spec(str),  # real_models.<name>
                     "sha256": Spec(str, pattern=r"[0-9a-f]{64}", what="64 lower-case hex digits")}


def check(cfg: Mapping[str, Any], dotted: str, schema: Mapping[str, Spec]) -> dict[str, Any]:
    """``check(cfg, "corpora.en", CORPUS_SCHEMA)``: the section at ``dotted``, validated by
    :func:`check_section` (missing section: a :class:`ParamError` naming it)."""
    return check_section(get(cfg, dotted), dotted, schema)


def check_range(values: Any, dotted: str) -> tuple[float, float]:
    """A ``[low, high]`` pair of finite numbers with low <= high (``synth.pitch``)."""
    ok = (isinstance(values, list) and len(values) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))
    if not ok or values[0] > values[1]:
        raise ParamError(f"params.yaml: {dotted}: must be [low, high] with low <= high, got {values!r}")
    return float(values[0]), float(values[1])


def check_corpus(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``corpora.<key>`` and its ``sizes``; ``source`` must be ``synth`` or a hub spec name. A synthetic
    corpus also needs ``synth`` (ranges, probability <= 1) and sizes >= 0."""
    from asrcompress.data.hub_loaders import CORPORA

    name = f"corpora.{key}"
    if key not in (get(cfg, "corpora", dict)):
        raise ParamError(f"params.yaml: missing key '{name}' (corpora: {sorted(cfg['corpora'])})")
    corpus = check(cfg, name, CORPUS_SCHEMA)
    if corpus["source"] != "synth" and corpus["source"] not in CORPORA:
        raise ParamError(f"params.yaml: {name}.source: {corpus['source']!r} is neither 'synth' nor a hub corpus "
                         f"spec ({sorted(CORPORA)}; asrcompress.data.hub_loaders)")
    corpus["sizes"] = check(cfg, f"{name}.sizes", SIZES_SCHEMA)
    synthetic = corpus["source"] == "synth"
    for split, n in corpus["sizes"].items():  # 0 = an empty split (an evaluation-only corpus), still written
        if n < (0 if synthetic else -1):
            raise ParamError(f"params.yaml: {name}.sizes.{split}: must be "
                             f"{'>= 0 for a synthetic corpus' if synthetic else '>= 0, or -1 for every item'}, got {n}")
    if synthetic:
        synth = check(cfg, "synth", SYNTH_SCHEMA)
        for k in ("rate_wpm", "pitch", "gain"):
            check_range(synth[k], f"synth.{k}")
        if synth["noise_prob"] > 1:
            raise ParamError(f"params.yaml: synth.noise_prob: must be <= 1, got {synth['noise_prob']!r}")
    return corpus


def check_whisper(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``whisper`` section; ``dims`` (required for ``source: scratch``) with heads dividing d_model."""
    whisper = check(cfg, "whisper", WHISPER_SCHEMA)
    if whisper["source"] == "scratch":
        if whisper.get("dims") is None:
            raise ParamError("params.yaml: missing key 'whisper.dims' (whisper.source is scratch)")
        dims = whisper["dims"] = check(cfg, "whisper.dims", DIMS_SCHEMA)
        if dims["d_model"] % dims["attention_heads"]:
            raise ParamError(f"params.yaml: whisper.dims.attention_heads: {dims['attention_heads']} does not divide "
                             f"whisper.dims.d_model {dims['d_model']}")
    return whisper


def check_model_entry(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``models.<key>``: its ``corpus`` must be a ``corpora`` key."""
    entry = check(cfg, f"models.{key}", MODEL_ENTRY_SCHEMA)
    if entry["corpus"] not in get(cfg, "corpora", dict):
        raise ParamError(f"params.yaml: models.{key}.corpus: {entry['corpus']!r} is not a key of corpora "
                         f"({sorted(cfg['corpora'])})")
    return entry


def set_profile(path: str | os.PathLike, profile: str) -> None:
    """Switch the active profile by rewriting the ``profile:`` line of params.yaml (comments kept)."""
    if profile not in PROFILES:
        raise ParamError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    path = Path(path)
    text = path.read_text()
    new, n = re.subn(r"^profile:\s*\S+", f"profile: {profile}", text, count=1, flags=re.M)
    if n != 1:
        raise ParamError(f"{path}: no top-level 'profile:' line to switch")
    path.write_text(new)


def derive_seed(base_seed: int, *names: str) -> int:
    """A stable per-purpose seed derived from the one seed in params (``derive_seed(s, "synth", "hi")``)."""
    rng = random.Random(f"{base_seed}:" + ":".join(names))
    return rng.randrange(2**31 - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch from one number."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _main() -> None:
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "use":
        raise SystemExit("usage: python -m asrcompress.config use {smoke|paper}")
    set_profile("params.yaml", sys.argv[2])
    print(f"params.yaml: profile set to {sys.argv[2]}")


if __name__ == "__main__":
    _main()
