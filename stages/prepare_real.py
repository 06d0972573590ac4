"""prepare_real@<corpus>: a folder of real recordings (``real_corpora.<key>.dir``) as a DatasetDict.

    python stages/prepare_real.py <corpus-key> <out-dir> <stats-json>

The folder is read in place (``../shared/realspeech/...`` by default) and never copied into the
repository; only the converted corpus under ``data/`` (DVC-tracked, not in git) holds its audio.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asrcompress.config import REAL_CORPUS_SCHEMA, check, derive_seed, get, load_params
from asrcompress.data.local_corpus import load_local_corpus
from asrcompress.io import log, setup_logging, write_json


def main(key: str, out_dir: str, stats_path: str) -> None:
    setup_logging()
    cfg = load_params()
    spec = check(cfg, f"real_corpora.{key}", REAL_CORPUS_SCHEMA)
    seed = get(cfg, "seed", int)
    directory = Path(spec["dir"])
    if not directory.is_dir():
        raise SystemExit(
            f"real_corpora.{key}.dir: {directory.resolve()} does not exist. The real track reads real "
            "recordings from ../shared/realspeech/<set>/ (audio/<id>.flac, transcripts.tsv, manifest.tsv) "
            "beside this repository; put that folder there, or point real_corpora.{key}.dir at your own "
            "recordings of that shape. The smoke graph does not need it (`make repro` skips the real track "
            "when the folder is missing).".replace("{key}", key))
    ds, stats = load_local_corpus(directory, language=spec["language"], splits=spec.get("splits"),
                                  seed=derive_seed(seed, "prepare_real", key), max_items=spec.get("max_items"),
                                  speaker_from_id=spec.get("speaker_from_id") or "none")
    ds.save_to_disk(out_dir)
    write_json(stats_path, {"corpus": key, **stats, "directory": str(directory)})  # as in params, not machine-specific
    log.info("prepare_real@%s: %s -> %s (%s)", key, directory, out_dir,
             ", ".join(f"{s}={ds[s].num_rows}" for s in ds))


if __name__ == "__main__":
    main(*sys.argv[1:])
