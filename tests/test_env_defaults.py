"""Issue 19, item 6: a plain `dvc repro` / `dvc exp run` (no `make`, so none of the Makefile's
exports) computes with the same kernels and offline flags: importing `asrcompress` sets them.

Each check runs a fresh interpreter whose environment lacks every variable the Makefile exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asrcompress import RUN_ENV

MAKEFILE_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "PYTHONHASHSEED", "DVC_NO_ANALYTICS")

PROBE = """
import json, os
{imports}
import huggingface_hub.constants as hub
print(json.dumps({{"cpu": torch.backends.cpu.get_cpu_capability(), "hub_offline": hub.HF_HUB_OFFLINE,
                  "env": {{k: os.environ.get(k) for k in {names!r}}}}}))
"""


def _probe(imports: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MAKEFILE_ENV}
    env.update(extra)
    code = PROBE.format(imports=imports, names=MAKEFILE_ENV)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_makefile_and_package_agree() -> None:
    makefile = open(os.path.join(os.path.dirname(__file__), "..", "Makefile")).read()
    for name in MAKEFILE_ENV:
        assert name in RUN_ENV
        assert f"export {name} " in makefile  # the Makefile still exports it (same value, checked below)
    for line in makefile.splitlines():
        if line.startswith("export ") and line.split()[1] in RUN_ENV:
            assert line.split()[-1] == RUN_ENV[line.split()[1]], line


@pytest.mark.parametrize("imports", ["import asrcompress, torch",
                                     # stages that import torch and transformers first (pretrain.py)
                                     "import torch, transformers\nimport asrcompress.config"])
def test_fresh_interpreter_without_make_gets_the_run_environment(imports: str) -> None:
    got = _probe(imports)
    assert got["cpu"] == "AVX2"
    assert got["hub_offline"] is True
    assert got["env"] == {k: RUN_ENV[k] for k in MAKEFILE_ENV}


def test_an_exported_value_still_wins() -> None:
    got = _probe("import asrcompress, torch", ATEN_CPU_CAPABILITY="default", HF_HUB_OFFLINE="0",
                 TRANSFORMERS_OFFLINE="0")
    assert got["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert got["hub_offline"] is False
