"""The DVC workflow the README promises, on a throw-away repository: a stage that measures a model
built from params, two branches that differ in one param, and `dvc metrics diff` / `dvc params diff`
between them showing the change; then a queued experiment sweep (`dvc exp run --queue` +
`dvc queue start`) whose results `dvc exp show` lists.

The measured model is a real (tiny) Whisper built by our own code and counted by the measurement
suite, so a change in `ffn_dim` must move the parameter count by the hand-computed amount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))

STAGE = '''\
import json, sys
import yaml
from transformers import WhisperConfig, WhisperForConditionalGeneration
from asrcompress.measure.params import count_params

p = yaml.safe_load(open("params.yaml"))["model"]
cfg = WhisperConfig(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, d_model=p["d_model"], encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=p["ffn_dim"],
                    decoder_ffn_dim=p["ffn_dim"], num_mel_bins=8, max_source_positions=16,
                    max_target_positions=16)
counts = count_params(WhisperForConditionalGeneration(cfg))
json.dump({"params": counts["params"]}, open("metrics.json", "w"))
'''

DVC_YAML = '''\
stages:
  measure:
    cmd: {python} measure.py
    deps: [measure.py]
    params: [model]
    metrics:
      - metrics.json:
          cache: false
'''


# the queue worker starts `dvc` by name: the environment's bin directory must come first on PATH
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1",
       "PATH": os.pathsep.join([str(Path(DVC).parent), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    _run(tmp_path, "git", "init", "-q", "-b", "main")
    _run(tmp_path, DVC, "init", "-q")
    _run(tmp_path, DVC, "config", "core.autostage", "true")
    (tmp_path / "measure.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    (tmp_path / "params.yaml").write_text("model:\n  d_model: 16\n  ffn_dim: 32\n")
    _run(tmp_path, DVC, "repro", "-q")
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "commit", "-qm", "base")
    return tmp_path


def _ffn_params(d_model: int, ffn_dim: int) -> int:
    """fc1 + fc2 weights and biases of one encoder and one decoder layer."""
    return 2 * (d_model * ffn_dim + ffn_dim + ffn_dim * d_model + d_model)


def test_metrics_diff_between_branches_shows_the_param_change(repo: Path) -> None:
    base = json.loads((repo / "metrics.json").read_text())["params"]
    _run(repo, "git", "checkout", "-qb", "wider-ffn")
    (repo / "params.yaml").write_text("model:\n  d_model: 16\n  ffn_dim: 64\n")
    _run(repo, DVC, "repro", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "ffn 64")

    diff = json.loads(_run(repo, DVC, "metrics", "diff", "main", "wider-ffn", "--json").stdout)
    change = diff["metrics.json"]["params"]
    assert change["old"] == base
    assert change["new"] - change["old"] == _ffn_params(16, 64) - _ffn_params(16, 32)
    params = json.loads(_run(repo, DVC, "params", "diff", "main", "wider-ffn", "--json").stdout)
    changed = params["params.yaml"]["model.ffn_dim"]
    assert (changed["old"], changed["new"]) == (32, 64)
    # an unchanged param is not listed
    assert "model.d_model" not in params["params.yaml"]


def test_queued_experiments_run_and_are_listed(repo: Path) -> None:
    for ffn in (48, 64):
        _run(repo, DVC, "exp", "run", "--queue", "-S", f"model.ffn_dim={ffn}", "-n", f"ffn{ffn}")
    # the worker outlives `dvc queue start` and inherits its stdout: a captured pipe would never close
    with open(repo / "queue.log", "w") as log:
        subprocess.run([DVC, "queue", "start", "-j", "1"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                       check=True, env=ENV)
    deadline = time.time() + 300
    while True:
        status = _run(repo, DVC, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.time() < deadline, f"queue did not finish:\n{status}\n{(repo / 'queue.log').read_text()}"
        time.sleep(2)
    assert status.count("Success") == 2, status
    show = json.loads(_run(repo, DVC, "exp", "show", "--json").stdout)
    exps = {e["name"]: e for e in show[1]["experiments"] or []}
    assert set(exps) == {"ffn48", "ffn64"}, list(exps)
    base = json.loads((repo / "metrics.json").read_text())["params"]
    for name, ffn in (("ffn48", 48), ("ffn64", 64)):
        data = exps[name]["revs"][0]["data"]
        assert data["params"]["params.yaml"]["data"]["model"]["ffn_dim"] == ffn
        assert data["metrics"]["metrics.json"]["data"]["params"] - base == _ffn_params(16, ffn) - _ffn_params(16, 32)
