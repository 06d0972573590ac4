"""prepare@<corpus>: build one corpus (synthesised or from the hub) as a DatasetDict on disk.

    python stages/prepare.py <corpus-key> <out-dir> <stats-json>
"""

from __future__ import annotations

import sys

from asrcompress.config import ParamError, get, load_params
from asrcompress.data.corpus import build_synthetic_corpus, save_corpus
from asrcompress.io import log, setup_logging, write_json


def main(key: str, out_dir: str, stats_path: str) -> None:
    setup_logging()
    cfg = load_params()
    corpus = get(cfg, f"corpora.{key}", dict)
    source = get(corpus, "source", str)
    sizes = {s: get(cfg, f"corpora.{key}.sizes.{s}", int) for s in ("train", "dev", "test")}
    if source == "synth":
        for split, n in sizes.items():  # 0 = an empty split (e.g. an evaluation-only corpus), still written
            if n < 0:
                raise ParamError(f"params.yaml: corpora.{key}.sizes.{split}: must be >= 0 for a synthetic "
                                 f"corpus, got {n}")
        window = get(cfg, "whisper.chunk_length_s", int)
        if window < 1:
            raise ParamError(f"params.yaml: whisper.chunk_length_s: must be >= 1 (seconds), got {window}")
        ds, stats = build_synthetic_corpus(get(corpus, "language", str), sizes, get(cfg, "seed", int),
                                           get(cfg, "synth", dict), max_seconds=window - 0.25)
    else:
        from datasets import DatasetDict

        from asrcompress.data.hub_loaders import load_corpus_with_stats

        ds, stats = DatasetDict(), {"source": source}
        for split, n in sizes.items():
            ds[split], split_stats = load_corpus_with_stats(source, split, max_items=n)
            stats[split] = split_stats.to_dict()
    save_corpus(ds, out_dir)
    write_json(stats_path, stats)
    log.info("prepare@%s: %s -> %s (%s)", key, source, out_dir,
             ", ".join(f"{s}={ds[s].num_rows}" for s in ds))


if __name__ == "__main__":
    main(*sys.argv[1:])
