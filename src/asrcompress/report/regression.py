"""CI regression check: reproduced metrics (workspace) vs committed metrics (git HEAD).

    python -m asrcompress.report.regression [--tolerances reports/tolerances.yaml]

Reads ``dvc metrics diff --json`` (every metrics file DVC knows, HEAD vs workspace) and applies the
rules in ``reports/tolerances.yaml``: WER may not rise beyond a margin (the committed bootstrap CI
half-width when larger), parameter and FLOP counts must match exactly, latency speed-ups are
compared as ratios with a loose margin. Prints a table of what moved; exits 1 on a regression.
Accept new figures by committing them: ``make accept-metrics``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asrcompress.report.tables import dig


@dataclass
class Finding:
    path: str
    key: str
    old: Any
    new: Any
    verdict: str  # "regression" | "improvement" | "changed" | "ok"
    rule: str


def _ci_half_width(old_file: Mapping[str, Any], key: str) -> float:
    lo = dig(old_file, key.replace("_pct", "_ci_low_pct"))
    hi = dig(old_file, key.replace("_pct", "_ci_high_pct"))
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        return (hi - lo) / 2
    return 0.0


def judge(path: str, key: str, old: Any, new: Any, rules: list[Mapping[str, Any]],
          old_file: Mapping[str, Any] | None = None, draw_margin: float = 0.0) -> Finding | None:
    """Apply the first matching rule to one figure. None when no rule matches or nothing to compare.

    ``draw_margin`` (> 0 when the reproduction's pre-trained model is not the committed one, see
    :func:`same_draw`) is the least margin of a ``max_rise`` rule: every trained figure is then
    another draw of the recipe, not the same computation."""
    if not isinstance(old, int | float) or isinstance(old, bool):
        return None
    for rule in rules:
        if not re.search(rule["match"], key) or ("path" in rule and not re.search(rule["path"], path)):
            continue
        name = f"{rule['kind']} ({rule['match']})"
        if not isinstance(new, int | float):
            return Finding(path, key, old, new, "regression", name + ": figure disappeared")
        kind = rule["kind"]
        if kind == "info":  # reported when it moves, never a failure
            return Finding(path, key, old, new, "ok" if new == old else "changed", name)
        if kind == "max_rise":
            margin = max(float(rule.get("abs", 0.0)), draw_margin)
            if rule.get("use_ci") and old_file:
                margin = max(margin, _ci_half_width(old_file, key))
            if new > old + margin:
                return Finding(path, key, old, new, "regression", f"{name}: rose by {new - old:.3g} > {margin:.3g}")
            return Finding(path, key, old, new, "improvement" if new < old - margin else "ok", name)
        if kind == "exact":
            verdict = "ok" if abs(new - old) <= 1e-9 * max(1.0, abs(old)) else "regression"
            return Finding(path, key, old, new, verdict, name)
        if kind == "max_rel_rise":  # counts that depend on training (pruned structure): may not grow
            limit = old * (1.0 + float(rule["rel"]))
            if new > limit:
                return Finding(path, key, old, new, "regression", f"{name}: {new:.6g} > (1 + {rule['rel']}) x {old:.6g}")
            return Finding(path, key, old, new, "improvement" if new < old * (1.0 - float(rule["rel"])) else "ok", name)
        if kind == "min_ratio":
            if old > 0 and new < float(rule["ratio"]) * old:
                return Finding(path, key, old, new, "regression", f"{name}: {new:.3g} < {rule['ratio']} x {old:.3g}")
            return Finding(path, key, old, new, "improvement" if new > old else "ok", name)
        raise ValueError(f"tolerances: unknown rule kind {kind!r}")
    return None


def compare(diff: Mapping[str, Mapping[str, Mapping[str, Any]]], rules: list[Mapping[str, Any]],
            old_files: Mapping[str, Mapping[str, Any]] | None = None, draw_margin: float = 0.0) -> list[Finding]:
    """Judge a ``dvc metrics diff --json``-shaped mapping ``{path: {key: {"old":, "new":}}}``."""
    out = []
    for path, keys in sorted(diff.items()):
        for key, change in sorted(keys.items()):
            finding = judge(path, key, change.get("old"), change.get("new"), rules, (old_files or {}).get(path),
                            draw_margin)
            if finding is not None:
                out.append(finding)
    return out


def dvc_executable() -> str:
    """The environment's dvc (next to this Python), also when it is not on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def _dvc_metrics_diff() -> dict:
    proc = subprocess.run([dvc_executable(), "metrics", "diff", "--all", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvc metrics diff failed:\n{proc.stderr}")
    return json.loads(proc.stdout or "{}")


def _committed(path: str) -> dict:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except json.JSONDecodeError:
        return {}


def _workspace(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def machines_line(committed: Mapping[str, Mapping[str, Any]], reproduced: Mapping[str, Mapping[str, Any]]) -> str:
    """Where the two sides ran (CPU model and ATen kernels, from the metrics' ``runtime_*`` fields): a
    difference there explains training figures that moved a little."""
    def where(files: Mapping[str, Mapping[str, Any]]) -> str:
        for data in files.values():
            if isinstance(data, Mapping) and data.get("runtime_cpu_model"):
                return f"{data['runtime_cpu_model']} ({data.get('runtime_cpu_kernels') or 'kernels not recorded'})"
        return "unknown"
    return f"machines: committed figures from {where(committed)}; reproduced on {where(reproduced)}"


FOUNDATION_OUT = ("pretrain", "data/models/pretrained")


def _out_hash(lock_text: str, stage: str, path: str) -> str | None:
    try:
        lock = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError:
        return None
    for out in ((lock.get("stages") or {}).get(stage) or {}).get("outs") or []:
        if out.get("path") == path:
            return out.get("md5")
    return None


def same_draw(committed_lock: str, workspace_lock: str) -> tuple[bool | None, str]:
    """Is the reproduced pre-trained model bit-identical to the committed one? (None: cannot tell.)

    Training is deterministic (train/determinism.py), so on a machine whose float results match the
    committed run every trained figure is recomputed exactly, and the committed margins apply. Where
    the pre-trained model differs, the floats differ, and everything trained after it is another
    draw of the same recipe: the caller widens the WER margins (``other_draw`` in the tolerances)."""
    stage, path = FOUNDATION_OUT
    old, new = _out_hash(committed_lock, stage, path), _out_hash(workspace_lock, stage, path)
    if old is None or new is None:
        return None, f"draw: cannot compare {path} (no hash in the committed or the reproduced dvc.lock)"
    if old == new:
        return True, f"draw: {path} is bit-identical to the committed one ({new[:12]}): the same computation"
    return False, (f"draw: {path} differs from the committed one ({old[:12]} -> {new[:12]}): this machine's "
                   f"float results differ, so every trained figure is another draw of the recipe")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerances", default="reports/tolerances.yaml")
    args = ap.parse_args(argv)
    tolerances = yaml.safe_load(open(args.tolerances))
    rules = tolerances["rules"]
    lock = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True)
    same, draw_line = same_draw(lock.stdout if lock.returncode == 0 else "",
                                Path("dvc.lock").read_text() if Path("dvc.lock").is_file() else "")
    draw_margin = 0.0
    if same is not True:
        draw_margin = float((tolerances.get("other_draw") or {}).get("wer_max_rise", 0.0))
        draw_line += f"; WER may rise by up to {draw_margin:g} points (tolerances: other_draw)"
    diff = _dvc_metrics_diff()
    committed = {p: _committed(p) for p in diff}
    findings = compare(diff, rules, committed, draw_margin)
    moved = [f for f in findings if f.verdict != "ok"]
    if moved:
        print(f"{'verdict':<12} {'file':<40} {'key':<32} {'committed':>12} {'reproduced':>12}  rule")
        for f in moved:
            print(f"{f.verdict:<12} {f.path:<40} {f.key:<32} {f.old!s:>12.12} {f.new!s:>12.12}  {f.rule}")
    bad = [f for f in findings if f.verdict == "regression"]
    print(machines_line(committed, {p: _workspace(p) for p in diff}))
    print(draw_line)
    print(f"regression check: {len(findings)} figures compared, {len(bad)} regressions, "
          f"{sum(f.verdict == 'improvement' for f in findings)} improvements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
