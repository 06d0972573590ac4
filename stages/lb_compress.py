"""lb_compress@<entry>: one leaderboard entry's compression (params ``leaderboard.entries.<entry>``).

    python stages/lb_compress.py <entry> <model-out-dir> <record-json>

Loads the entry's input model, runs its method module's ``board_compress`` (compress/board.py), and writes a
``save_compressed`` directory (reloadable, sha256-checked) and the compression record (the method's own
figures, its CPU and wall time). Entries are checked before any model or data is read.
"""

from __future__ import annotations

import sys

from asrcompress.compress.board import run_entry
from asrcompress.compress.checkpoint import load_compressed, save_compressed
from asrcompress.config import load_params
from asrcompress.io import log, setup_logging, write_json


def main(key: str, out_dir: str, record_path: str) -> None:
    setup_logging()
    cfg = load_params()
    model, processor, record = run_entry(cfg, key)
    save_compressed(model, out_dir, record["method"].rsplit(".", 1)[-1], cfg["leaderboard"]["entries"][key],
                    extra=record, processor=processor)
    load_compressed(out_dir)  # it must reload (checksums, structure, int8 record)
    write_json(record_path, record)
    log.info("lb_compress@%s: %s -> %s in %.1f s CPU (%.1f s wall)", key, record["method"], out_dir,
             record["compress_cpu_s"], record["compress_wall_s"])


if __name__ == "__main__":
    main(*sys.argv[1:])
