"""real_model@<name>: a real pre-trained Whisper (CTranslate2 files from installed packages) as a
``save_pretrained`` model + processor directory, its sha256 verified.

    python stages/real_model.py <name> <out-dir> <record-json>
"""

from __future__ import annotations

import sys

from asrcompress.config import REAL_MODEL_SCHEMA, check, load_params
from asrcompress.io import log, setup_logging, write_json
from asrcompress.models.real_checkpoints import build_real_checkpoint


def main(name: str, out_dir: str, record_path: str) -> None:
    setup_logging()
    cfg = load_params()
    record = build_real_checkpoint(name, check(cfg, f"real_models.{name}", REAL_MODEL_SCHEMA), out_dir)
    write_json(record_path, record)
    log.info("real_model@%s: %s (sha256 %s…, %s) -> %s, %.2f M parameters", name, record["packages"],
             record["source_sha256"][:12], "/".join(record["stored_dtypes"]), out_dir, record["params"] / 1e6)


if __name__ == "__main__":
    main(*sys.argv[1:])
