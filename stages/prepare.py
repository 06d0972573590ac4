"""prepare@<corpus>: build one corpus (synthesised or from the hub) as a DatasetDict on disk.

    python stages/prepare.py <corpus-key> <out-dir> <stats-json>
"""

from __future__ import annotations

import sys

from asrcompress.config import check_corpus, check_whisper, get, load_params
from asrcompress.data.corpus import build_synthetic_corpus, save_corpus
from asrcompress.io import log, setup_logging, write_json


def main(key: str, out_dir: str, stats_path: str) -> None:
    setup_logging()
    cfg = load_params()
    corpus = check_corpus(cfg, key)  # with `synth` and sizes >= 0 for a synthetic corpus (0 = an empty split)
    source, sizes = corpus["source"], corpus["sizes"]
    seed = get(cfg, "seed", int)
    if source == "synth":
        window = check_whisper(cfg)["chunk_length_s"]
        ds, stats = build_synthetic_corpus(corpus["language"], sizes, seed, get(cfg, "synth", dict),
                                           max_seconds=window - 0.25)
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
