"""asrcompress: DVC-reproducible compression of speech recognition models.

Importing the package sets the run environment the Makefile exports, so that a plain ``dvc repro``
or ``dvc exp run`` (no ``make``) computes the same floats as ``make repro`` (issue 19, item 6).
Only defaults (``os.environ.setdefault``): a value the user exports still wins, as it does with
``make``'s ``?=``. Every stage script imports ``asrcompress`` before it runs a tensor op, and the
variables are read lazily (ATen picks its kernels at the first dispatch, MKL and oneDNN at their
first call), so setting them here is early enough even when ``torch`` was imported first
(tests/test_env_defaults.py checks it in a fresh interpreter). Child processes (``accelerate``
workers, the measurement probes) inherit them.

``PYTHONHASHSEED`` cannot take effect in an interpreter that is already running; it is set here for
the child processes only. No result depends on it: ``config.derive_seed`` seeds ``random.Random``
with a string, which CPython hashes with SHA-512, not with ``hash()``.
"""

import os

RUN_ENV: dict[str, str] = {
    # the same kernels on any x86-64 CPU with AVX2 (Makefile: "The same float results ...")
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # never reach the network: every model, tokenizer and corpus is local or already cached
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DVC_NO_ANALYTICS": "1",
    "PYTHONHASHSEED": "0",
}

for _name, _value in RUN_ENV.items():
    os.environ.setdefault(_name, _value)
del _name, _value


def _offline_after_import() -> None:
    """huggingface_hub and datasets read their offline flags once, at import: a stage that imported
    them before ``asrcompress`` is switched to offline here too (when the environment says so)."""
    import sys

    def on(name: str) -> bool:
        return os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}

    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and (on("HF_HUB_OFFLINE") or on("TRANSFORMERS_OFFLINE")):
        hub.HF_HUB_OFFLINE = True
    ds = sys.modules.get("datasets.config")
    if ds is not None and on("HF_DATASETS_OFFLINE"):
        ds.HF_HUB_OFFLINE = ds.HF_DATASETS_OFFLINE = True


_offline_after_import()
