"""Loading ``params.yaml``: one file, two profiles, clear errors for missing or mistyped keys.

``params.yaml`` holds the ``smoke`` profile in its top-level sections and, under
``paper_overrides``, only what the ``paper`` profile changes. ``profile: paper`` deep-merges the
overrides over the base, so both profiles share one schema and one code path.
"""

from __future__ import annotations

import copy
import difflib
import os
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
    (ints are accepted where floats are asked for; bools are never taken as numbers).
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
    return node


@dataclass(frozen=True)
class Spec:
    """What one key of a params section may hold (see :func:`check_section`).

    ``type``: accepted type(s) (ints pass for float; bools never pass for numbers).
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
