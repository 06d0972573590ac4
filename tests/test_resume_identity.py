"""Issue 17 (items 1, 2, 6): a checkpoint resumes only the very same computation, a finished run leaves none
behind, and the checkpoint directory is saved atomically, locked while training and read defensively."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_whisper

import asrcompress.train.loop as loop
from asrcompress.train.loop import TrainConfig, TrainingError, data_digest, train

CFG = TrainConfig(max_steps=4, batch_size=4, lr=1e-3, checkpoint_every=100, num_threads=1, seed=3)


def _rows(n: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"id": f"u{i}", "x": torch.randn(80, 100, generator=gen), "y": torch.randint(3, 300, (6,), generator=gen)}
            for i in range(n)]


def _collate(items):
    return {"input_features": torch.stack([r["x"] for r in items]), "labels": torch.stack([r["y"] for r in items])}


def _stop_after_2(model, step):  # Ctrl-C arriving during step 2: checkpoint at step 2, then stop
    if step == 1:
        os.kill(os.getpid(), signal.SIGINT)


def _run(tmp_path: Path, model=None, **kw) -> dict:
    model = model if model is not None else make_tiny_whisper(0)
    return train(model, _rows(), _collate, CFG, tmp_path / "ck", tmp_path / "loss.csv", **kw)


def _interrupted(tmp_path: Path, model=None) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, model, after_step=_stop_after_2)
    assert (tmp_path / "ck" / "trainer_state.json").is_file()


def test_audio_content_is_part_of_the_data_identity():
    """Same ids, texts and lengths, other samples (e.g. another synth.snr_db): another digest."""
    rng = np.random.default_rng(0)
    clean = rng.standard_normal(1600).astype(np.float32)
    noise = rng.standard_normal(1600).astype(np.float32)

    def rows(snr_scale: float) -> list[dict]:
        return [{"id": "a", "text": "hello", "audio": {"array": clean + snr_scale * noise, "sampling_rate": 16000}}]

    assert data_digest(rows(0.1)) == data_digest(rows(0.1))
    assert data_digest(rows(0.1)) != data_digest(rows(0.5))
    as_list = [{"id": "a", "text": "hello", "audio": {"array": list(map(float, clean + 0.1 * noise)),
                                                      "sampling_rate": 16000}}]
    assert data_digest(as_list) == data_digest(rows(0.1))  # float32 samples, whatever the container


def test_finished_run_removes_its_checkpoint_and_a_rerun_starts_fresh(tmp_path):
    first = _run(tmp_path)
    assert first["resumed_from"] == 0 and not (tmp_path / "ck").exists()
    assert len(np.loadtxt(tmp_path / "loss.csv", delimiter=",", skiprows=1)) == CFG.max_steps
    again = _run(tmp_path)
    assert again["resumed_from"] == 0 and again["final_loss"] == first["final_loss"]


def test_changed_attn_implementation_is_not_resumed(tmp_path, capsys):
    _interrupted(tmp_path)
    other = make_tiny_whisper(0)
    other.config._attn_implementation = "eager" if other.config._attn_implementation != "eager" else "sdpa"
    assert _run(tmp_path, other)["resumed_from"] == 0
    out = capsys.readouterr().out
    assert f"checkpoint in {tmp_path / 'ck'} is for another run (differs in: config)" in out


def test_changed_training_code_is_not_resumed(tmp_path, capsys, monkeypatch):
    _interrupted(tmp_path)
    monkeypatch.setattr(loop, "code_digest", lambda: "edited-source")
    assert _run(tmp_path)["resumed_from"] == 0
    assert "differs in: code" in capsys.readouterr().out


def test_same_run_resumes_and_changed_data_starts_fresh(tmp_path, capsys):
    _interrupted(tmp_path)
    assert _run(tmp_path)["resumed_from"] == 2  # the very same computation resumes
    _interrupted(tmp_path)
    rows = _rows()
    rows[0] = {**rows[0], "x": rows[0]["x"] + 1.0}  # same ids and shapes, other features
    summary = train(make_tiny_whisper(0), rows, _collate, CFG, tmp_path / "ck", tmp_path / "loss.csv")
    assert summary["resumed_from"] == 0
    assert "differs in: data): starting fresh" in capsys.readouterr().out


def test_second_run_on_a_locked_checkpoint_directory_fails_naming_it_and_the_holder(tmp_path):
    lock = tmp_path / "ck.lock"
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("424242\n")
        f.flush()
        with pytest.raises(TrainingError, match=rf"{tmp_path / 'ck'} is in use by another training run \(pid 424242"):
            _run(tmp_path)
    assert _run(tmp_path)["resumed_from"] == 0  # released: the next run goes ahead


def test_crash_between_removing_the_old_and_renaming_the_new_checkpoint_is_recovered(tmp_path, capsys):
    """The state an interrupted save left: only the complete new checkpoint, still under ``.tmp``."""
    _interrupted(tmp_path)
    (tmp_path / "ck").rename(tmp_path / "ck.tmp")
    assert _run(tmp_path)["resumed_from"] == 2
    assert "recovered the new checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "ck.tmp").exists()


def test_crash_after_renaming_the_old_checkpoint_aside_is_recovered(tmp_path, capsys):
    _interrupted(tmp_path)
    (tmp_path / "ck").rename(tmp_path / "ck.old")
    assert _run(tmp_path)["resumed_from"] == 2
    assert "recovered the previous checkpoint" in capsys.readouterr().out
    _interrupted(tmp_path)  # an incomplete new one beside a complete one: the complete one is kept
    shutil.copytree(tmp_path / "ck", tmp_path / "ck.tmp")
    (tmp_path / "ck.tmp" / "trainer_state.json").unlink()
    assert _run(tmp_path)["resumed_from"] == 2
    assert not (tmp_path / "ck.tmp").exists()


def test_truncated_trainer_state_starts_fresh_naming_the_file(tmp_path, capsys):
    _interrupted(tmp_path)
    state = tmp_path / "ck" / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    assert _run(tmp_path)["resumed_from"] == 0
    assert f"{state} is missing, truncated or corrupt: starting fresh" in capsys.readouterr().out
