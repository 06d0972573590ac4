"""Real pre-trained Whispers from installed Python packages: located, assembled, verified, converted.

A ``real_models`` entry in params.yaml names where the CTranslate2 files of one checkpoint live
inside installed packages (``package:relative/path``), the sha256 of the assembled ``model.bin``
and the directory that holds its ``config.json`` and ``tokenizer.json``. ``build_real_checkpoint``
concatenates the parts (some packages split the file to stay under the registry's size limit),
checks the digest, and converts the model with :func:`asrcompress.models.ct2_whisper.convert_ct2_whisper`
into a ``save_pretrained`` directory that every stage can start from as a local path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

META_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt", "preprocessor_config.json")


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


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def assemble(parts: Sequence[Path], out: Path) -> Path:
    """Concatenate ``parts`` into ``out`` (streamed, 4 MiB blocks)."""
    with out.open("wb") as dst:
        for part in parts:
            with Path(part).open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def ct2_directory(parts: Sequence[Path], meta_dir: Path, out_dir: Path) -> Path:
    """A CTranslate2 model directory as faster-whisper and ``convert_ct2_whisper`` read it:
    ``model.bin`` (the parts concatenated in order; a single part is linked, not copied) and the meta
    files of ``meta_dir`` (``config.json`` and ``tokenizer.json`` required). Not verified: check
    ``sha256_file(out_dir / "model.bin")`` (``convert_ct2_whisper`` does, given the digest)."""
    for name in ("config.json", "tokenizer.json"):
        if not (meta_dir / name).is_file():
            raise FileNotFoundError(f"{meta_dir / name}: missing (a CTranslate2 Whisper needs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(parts) == 1:
        (out_dir / "model.bin").symlink_to(Path(parts[0]).resolve())
    else:
        assemble(parts, out_dir / "model.bin")
    for name in META_FILES:
        if (meta_dir / name).is_file():
            shutil.copyfile(meta_dir / name, out_dir / name)
    return out_dir


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
    from asrcompress.models.ct2_whisper import convert_ct2_whisper  # torch: only where a model is built

    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = ct2_directory(parts, meta, Path(tmp) / "ct2")
        record = convert_ct2_whisper(ct2_dir, out_dir, expected_sha256=str(spec["sha256"]),
                                     source=list(files))  # package:path, not a temporary path
    record.update({"name": name, "packages": sorted({f.split(":", 1)[0] for f in files})})
    return record
