"""Real pre-trained Whispers from installed Python packages: located, assembled, verified, converted.

A ``real_models`` entry in params.yaml names where the CTranslate2 files of one checkpoint live
inside installed packages (``package:relative/path``), the sha256 of the assembled ``model.bin``
and the directory that holds its ``config.json`` and ``tokenizer.json``. ``build_real_checkpoint``
concatenates the parts (some packages split the file to stay under the registry's size limit),
checks the digest, and converts the model with :func:`asrcompress.models.ct2_whisper.convert_ct2_whisper`
into a ``save_pretrained`` directory that every stage can start from as a local path.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asrcompress.models.ct2_whisper import convert_ct2_whisper


class MissingPackageError(FileNotFoundError):
    """A package that holds checkpoint files is not installed; the message says how to install it."""


def locate(ref: str, key: str = "real_models") -> Path:
    """``package:relative/path`` -> the path inside the installed package (not imported)."""
    if ":" not in ref:
        raise ValueError(f"{key}: {ref!r} is not of the form package:relative/path")
    package, rel = ref.split(":", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{key}: the package {package!r} is not installed; `make setup` installs it "
            f"(requirements-real.txt pins it with its hash)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise MissingPackageError(f"{key}: {path} does not exist in the installed package {package!r}")
    return path


def assemble(parts: list[Path], out: Path) -> Path:
    """Concatenate ``parts`` into ``out`` (streamed, 4 MiB blocks)."""
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def build_real_checkpoint(name: str, spec: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Assemble, verify and convert the checkpoint ``real_models.<name>`` into ``out_dir``."""
    key = f"real_models.{name}"
    for field in ("files", "meta_dir", "sha256"):
        if field not in spec:
            raise KeyError(f"{key}.{field}: missing (files: [package:path, ...], meta_dir: package:path, sha256)")
    files = spec["files"]
    if not isinstance(files, list) or not files:
        raise ValueError(f"{key}.files: expected a non-empty list of package:path entries, got {files!r}")
    parts = [locate(f, f"{key}.files") for f in files]
    meta = locate(str(spec["meta_dir"]), f"{key}.meta_dir")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model_bin = parts[0] if len(parts) == 1 else assemble(parts, Path(tmp) / "model.bin")
        record = convert_ct2_whisper(meta, out_dir, model_bin=model_bin, expected_sha256=str(spec["sha256"]))
    record.update({"name": name, "packages": sorted({f.split(":", 1)[0] for f in files}),
                   "source_file": list(files)})  # package:path, not this machine's site-packages path
    return record
