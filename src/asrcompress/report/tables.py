"""Reported vs reproduced: one table per paper, built from ``reports/reported/<paper>.yaml`` and
our metrics files. Nothing here knows a paper's numbers; they are all data.

Status of a row:
* ``matches``: within the row's tolerance (numbers) or passing its ``check`` (qualitative claims);
* ``differs``: measured, outside tolerance / failing the check;
* ``inconclusive``: a ``check`` with ``use_ci: true`` (the claim must hold for the whole 95 % CI,
  whose bounds ``ours.ci: [low key, high key]`` name) whose CI straddles the bound: ``matches`` needs
  the whole CI inside the check, ``differs`` the whole CI outside it;
* ``by construction: <why>``: our figure was set by a parameter chosen to give the reported value (row
  key ``by_construction``), so agreeing with the paper shows nothing; never counted as a match;
* ``not comparable in <profile>``: the setting only exists in another profile (reason given);
  our figure is still shown when there is one;
* ``not run``: the metrics file or key is missing (the stage has not run in this checkout).

The real column (``build_table(..., real=True)``, written by the real-track pipelines' table stages):
a row's ``real: {metrics, key, ...}`` names the same figure measured on the real Whisper base (same
keys as ``ours``, plus optional ``ci: [low, high]`` and ``p_worse: key`` shown in the note). It is
judged by the row's own tolerance or check (a ``near_zero`` check reads the real metrics file);
``comparable_in`` does not apply to it (it is about the smoke profile); ``real.reason`` marks a real
figure shown but not judged (e.g. another model size than the paper's).

A "no degradation" / "near 0" claim takes the check ``{near_zero: {ci_low: key, ci_high: key, p_worse: key,
tolerance: pts, alpha: a}}`` (keys of the row's metrics file): it matches only when the paired test
against the dense model shows no significant degradation (one-sided ``p_worse >= alpha``) AND the whole
95 % CI of the WER change lies within ``[-tolerance, +tolerance]``; the row's note states the figures.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

COLUMNS = ["id", "setting", "quantity", "unit", "source", "reported", "ours", "profile", "diff",
           "rel_diff_pct", "status", "note", "real", "real_status"]


def load_reported(path: str | Path) -> dict[str, Any]:
    """Parse and validate a ``reports/reported/<paper>.yaml`` file (errors name the file and row)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    for key in ("paper", "title", "rows"):
        if key not in data:
            raise ValueError(f"{path}: missing top-level key '{key}'")
    for i, row in enumerate(data["rows"]):
        for key in ("id", "source", "setting", "quantity", "kind", "reported"):
            if key not in row:
                raise ValueError(f"{path}: row {i} ({row.get('id', '?')}): missing key '{key}'")
        if row["kind"] not in ("relative", "absolute", "qualitative"):
            raise ValueError(f"{path}: row {row['id']}: kind must be relative|absolute|qualitative")
        if row.get("ours") is None and "reason" not in row:
            raise ValueError(f"{path}: row {row['id']}: no 'ours' mapping and no 'reason' why not")
        for side in ("ours", "real"):  # every figure judged by a use_ci check needs its CI keys
            if (row.get("check") or {}).get("use_ci") and row.get(side) and len(row[side].get("ci") or []) != 2:
                raise ValueError(f"{path}: row {row['id']}: check.use_ci needs {side}.ci: [low key, high key]")
    return data


def dig(data: Mapping[str, Any], key: str) -> Any:
    """``data[key]``, or for a dotted key the nested value (``"sgl_pruned.wer_hindi_pct"``), as
    ``dvc metrics show`` flattens nested metrics files. None when any part is missing."""
    if key in data:
        return data[key]
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _lookup(root: Path, ours: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
    """Our figure for one row. ``ours`` = {metrics: file, key: (dotted) key} plus optionally
    ``minus: key`` (a difference of two figures of the same file; ``minus: {metrics: file, key: key}``
    takes the second figure from another file) or ``percent_of: key``."""
    if not ours:
        return None, None
    path = root / ours["metrics"]
    if not path.is_file():
        return None, f"not run ({ours['metrics']} missing)"
    data = json.loads(path.read_text())
    value = dig(data, ours["key"])
    if value is None:
        return None, f"not run (no '{ours['key']}' in {ours['metrics']})"
    if "minus" in ours:  # a difference of two figures, e.g. WER(IMP) - WER(ours)
        minus = ours["minus"] if isinstance(ours["minus"], Mapping) else {"metrics": ours["metrics"],
                                                                          "key": ours["minus"]}
        other_path = root / minus["metrics"]
        other = dig(json.loads(other_path.read_text()), minus["key"]) if other_path.is_file() else None
        if other is None:
            return None, f"not run (no '{minus['key']}' in {minus['metrics']})"
        return float(value) - float(other), None
    if "percent_of" in ours:  # a relative figure: 100 * value / data[percent_of]
        base = dig(data, ours["percent_of"])
        if not base:
            return None, f"not run (no '{ours['percent_of']}' in {ours['metrics']})"
        return 100.0 * float(value) / float(base), None
    return float(value), None


def _check(value: float, check: Mapping[str, Any]) -> bool:
    ok = True
    if "min" in check:
        ok &= value >= float(check["min"])
    if "max" in check:
        ok &= value <= float(check["max"])
    return bool(ok)


def _near_zero(check: Mapping[str, Any], figures: Mapping[str, Any] | None, metrics: str) -> tuple[str, str]:
    """(status, note) of a ``near_zero`` check (see the module docstring); figures = the metrics file."""
    vals = {}
    for k in ("ci_low", "ci_high", "p_worse"):
        v = dig(figures or {}, check[k])
        if v is None:
            return f"not run (no '{check[k]}' in {metrics})", ""
        vals[k] = float(v)
    tol, alpha = float(check["tolerance"]), float(check.get("alpha", 0.05))
    sig = vals["p_worse"] < alpha
    inside = -tol <= vals["ci_low"] and vals["ci_high"] <= tol
    note = (f"near-zero rule (matches only if the paired bootstrap's p(worse) >= {alpha:g} and the whole 95 % CI "
            f"of the change lies within +/-{tol:g}): p(worse) = {vals['p_worse']:.3g} ({'<' if sig else '>='} {alpha:g}: "
            f"{'significant' if sig else 'no significant'} degradation), 95 % CI of the change "
            f"[{vals['ci_low']:+.3g}, {vals['ci_high']:+.3g}] {'within' if inside else 'not within'} +/-{tol:g}")
    return ("matches" if inside and not sig else "differs"), note


def _ci(root: Path, ours: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The 95 % CI bounds ``ours.ci`` names (keys of the row's metrics file), None when absent."""
    keys = (ours or {}).get("ci")
    path = root / ours["metrics"] if keys else None
    if not keys or not path.is_file():
        return None
    data = json.loads(path.read_text())
    low, high = dig(data, keys[0]), dig(data, keys[1])
    return None if low is None or high is None else (float(low), float(high))


def _check_status(value: float, check: Mapping[str, Any], ci: tuple[float, float] | None) -> str:
    """``matches`` / ``differs`` for a check; with ``use_ci``, by the whole CI (else ``inconclusive``)."""
    if not check.get("use_ci"):
        return "matches" if _check(value, check) else "differs"
    if ci is None:
        return "not run (no 95 % CI for a use_ci check)"
    if _check(ci[0], check) and _check(ci[1], check):
        return "matches"
    outside = (("max" in check and ci[0] > float(check["max"]))
               or ("min" in check and ci[1] < float(check["min"])))
    return "differs" if outside else f"inconclusive: 95 % CI [{ci[0]:.4g}, {ci[1]:.4g}] straddles the bound"


def compare_row(row: Mapping[str, Any], ours: float | None, missing: str | None, profile: str,
                ci: tuple[float, float] | None = None, figures: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One table row: our value beside the reported one, with difference and status (``ci``: our
    figure's 95 % CI, used by a ``check`` with ``use_ci: true``; ``figures``: the row's whole metrics
    file, read by a ``near_zero`` check)."""
    reported = row["reported"]
    out = {"id": row["id"], "setting": "; ".join(f"{k}: {v}" for k, v in row["setting"].items()),
           "quantity": row["quantity"], "unit": row.get("unit", ""), "source": row["source"],
           "reported": reported, "ours": None if ours is None else round(ours, 4), "profile": profile,
           "diff": None, "rel_diff_pct": None, "status": "", "note": row.get("note", "")}
    if ours is not None and isinstance(reported, int | float):
        out["diff"] = round(ours - float(reported), 4)
        if float(reported) != 0:
            out["rel_diff_pct"] = round(100.0 * (ours - float(reported)) / abs(float(reported)), 2)
    comparable = row.get("comparable_in")
    if comparable is not None and profile not in comparable:
        out["status"] = f"not comparable in {profile}: {row.get('reason', '')}".strip()
        return out
    if ours is None:
        out["status"] = missing or f"not run: {row.get('reason', 'no measurement')}"
        return out
    if row.get("by_construction"):  # a figure we set, not a finding: shown, never a match
        out["status"] = f"by construction: {row['by_construction']}"
        return out
    if "near_zero" in row.get("check", {}):
        out["status"], note = _near_zero(row["check"]["near_zero"], figures, row["ours"]["metrics"])
        out["note"] = "; ".join(n for n in (out["note"], note) if n)
    elif "check" in row:
        out["status"] = _check_status(ours, row["check"], ci)
    elif isinstance(reported, int | float):
        tol = float(row.get("tolerance", 0.0))
        out["status"] = "matches" if math.isclose(ours, float(reported), abs_tol=tol) else "differs"
    else:
        out["status"] = "not comparable: qualitative claim without a check"
    return out


def _row_figures(root: Path, row: Mapping[str, Any], ours: Mapping[str, Any] | None,
                 profile: str) -> dict[str, Any]:
    value, missing = _lookup(root, ours)
    figures = None
    if "near_zero" in row.get("check", {}) and value is not None:
        figures = json.loads((root / ours["metrics"]).read_text())
    return compare_row({**row, "ours": ours}, value, missing, profile, _ci(root, ours), figures)


def _real_column(root: Path, row: Mapping[str, Any]) -> tuple[float | None, str, str]:
    """(value, status, note) of a row's real-model figure (see the module docstring)."""
    real = row["real"]
    judged = {k: v for k, v in row.items() if k not in ("comparable_in", "note")}
    out = _row_figures(root, judged, real, "real")
    notes = [out["note"]] if out["note"] else []
    data = json.loads((root / real["metrics"]).read_text()) if (root / real["metrics"]).is_file() else {}
    ci, p = _ci(root, real), dig(data, real["p_worse"]) if "p_worse" in real else None
    if out["ours"] is not None and (ci or p is not None):
        fmt = "+.3g" if row.get("unit") == "pts" else ".3g"  # a change carries its sign, a ratio does not
        notes.insert(0, f"{out['ours']:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")
                     + (f", p(worse) = {float(p):.3g}" if p is not None else ""))
    status = out["status"]
    if "reason" in real and out["ours"] is not None:
        status = f"shown, not judged: {real['reason']}"
    return out["ours"], status, "; ".join(notes)


def build_table(reported_yaml: str | Path, root: str | Path, profile: str,
                only_metrics: str | None = None, real: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """All rows of one paper's table; with ``only_metrics``, only the rows our figure of which comes
    from that metrics file (e.g. paper 1's whisper-medium rows: ``reports/metrics/p1_medium.json``);
    with ``real``, the real-model column too (rows with a ``real`` mapping)."""
    root = Path(root)
    data = load_reported(reported_yaml)
    rows = []
    for row in data["rows"]:
        if only_metrics is not None and (row.get("ours") or {}).get("metrics") != only_metrics:
            continue
        out = _row_figures(root, row, row.get("ours"), profile)
        out.update(real=None, real_status="")
        if real and row.get("real"):
            out["real"], out["real_status"], note = _real_column(root, row)
            if note:
                out["note"] = "; ".join(n for n in (out["note"], f"real: {note}") if n)
        elif real:
            out["real_status"] = "no real figure"
        rows.append(out)
    return data, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def write_table(data: Mapping[str, Any], rows: list[dict], md_path: str | Path, csv_path: str | Path) -> None:
    """Markdown (for people) and CSV (for tools) versions of one paper's table."""
    md_path, csv_path = Path(md_path), Path(csv_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[str, int] = {}
    real_counts: dict[str, int] = {}
    for r in rows:
        key = r["status"].split(":")[0].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
        if r.get("real_status"):
            key = r["real_status"].split(":")[0].split(" (")[0]
            real_counts[key] = real_counts.get(key, 0) + 1
    shown = ["id", "setting", "quantity", "reported", "ours", "unit", "diff", "status"]
    if any(r.get("real_status") for r in rows):  # a real-track table: the real Whisper base column
        shown += ["real", "real_status"]
    lines = [f"# {data['paper']}: {data['title']}", "",
             f"arXiv {data.get('arxiv', '?')}. Reported figures from `reports/reported/{data['paper']}.yaml`; "
             f"ours from the metrics files named there (profile `{rows[0]['profile'] if rows else '?'}`).", "",
             "Status counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), "",
             *([("Real Whisper base column, status counts: "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(real_counts.items()))), ""] if real_counts else []),
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in shown) + " |")
    notes = [f"- `{r['id']}`: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    md_path.write_text("\n".join(lines) + "\n")


def write_index(papers: list[tuple[Mapping[str, Any], list[dict]]], path: str | Path) -> None:
    """``reports/README.md``: links to every table and figure, with status counts."""
    path = Path(path)
    lines = ["# Reports", "", "Regenerated by `dvc repro` (stage `report`); do not edit by hand.", "",
             "| paper | table | rows | matches | differs | not comparable | not run |", "|---|---|---|---|---|---|---|"]
    for data, rows in papers:
        def n(prefix: str, rows=rows) -> int:
            return sum(r["status"].startswith(prefix) for r in rows)

        lines.append(f"| {data['paper']}: {data['title']} | [tables/{data['paper']}.md](tables/{data['paper']}.md) | "
                     f"{len(rows)} | {n('matches')} | {n('differs')} | {n('not comparable')} | {n('not run')} |")
    figures = sorted((path.parent / "figures").glob("*.png"))
    if figures:
        lines += ["", "## Figures", ""] + [f"- [{f.name}](figures/{f.name})" for f in figures]
    lines += ["", "Metrics per variant: `reports/metrics/*.json` (`dvc metrics show`); hypotheses: "
              "`reports/hyps/*.jsonl`; training curves: `reports/train/*_loss.csv` (`dvc plots show`)."]
    path.write_text("\n".join(lines) + "\n")
