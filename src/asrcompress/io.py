"""Small I/O helpers shared by the stages: JSON/JSONL/CSV writing, loading a split, stage logging."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("asrcompress")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV with a header: ``columns`` in that order (keys a row lacks are
    blank, keys not listed are dropped), or the keys of the first row. No rows and no columns: an
    error naming the file, not an empty file that a reader would take for a result."""
    rows = list(rows)
    cols = columns if columns is not None else (list(rows[0]) if rows else None)
    if not cols:
        raise ValueError(f"{path}: nothing to write (no rows and no columns)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (blank lines skipped); a missing file or a bad line names the file."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not found (run its DVC stage first)") from exc
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc})") from exc
    return rows


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not found (run its DVC stage first)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def load_split(corpus_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """A split of a prepared corpus as a list of rows with numpy audio arrays (fast random access)."""
    from datasets import load_from_disk

    path = Path(corpus_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: corpus not found (run `dvc repro` for its prepare stage)")
    ds = load_from_disk(str(path))
    if split not in ds:
        raise KeyError(f"{path}: no split {split!r} (has {list(ds)})")
    rows = ds[split].to_list()
    for row in rows:
        row["audio"]["array"] = np.asarray(row["audio"]["array"], dtype=np.float32)
    return rows
