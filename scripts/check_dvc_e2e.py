"""End-to-end check of training under DVC in a scratch clone (issue 17, "What it must show").

    python scripts/check_dvc_e2e.py [--branch BRANCH] [--stage finetune@whisper_en] [--keep]

Clones the committed ``BRANCH`` of this repository (``git clone``) into a temporary folder, points the
clone at this checkout's DVC cache (nothing is retrained upstream: the stage's inputs are checked out
from the cache), shrinks the stage's training section in the clone's params.yaml, and checks:

1. a fresh ``dvc repro -s <stage>`` trains and records the model;
2. the same command again, nothing changed: DVC skips the stage and the model is unchanged;
3. a changed training param (``train.lr``): the stage re-runs and the weights change;
4. a run killed with SIGKILL after its first checkpoint, then ``dvc repro -s`` again: the run resumes
   from that checkpoint (``resumed_from`` > 0) and ends with tensors bit-identical to an uninterrupted
   run of the same params (``dvc repro -f --no-run-cache``).

Exit status 0 if every check holds. It trains the tiny smoke model for a few dozen steps (a few minutes
on a loaded 2-core machine); it is a manual check, not part of the test suite or CI.

Recorded once (branch wave/rel, 2026-11-29; times from a 2-core machine shared with four other jobs):

    1. fresh run                     dvc repro -s finetune@whisper_en   [79 s]   weights db4f8bd5750b9f24
    2. nothing changed               dvc repro -s finetune@whisper_en   [4 s]    skipped
    3. train.lr doubled              dvc repro -s finetune@whisper_en   [136 s]  weights 6d6d54dd75b9ab6e
    4. SIGKILL to stages/finetune.py after the checkpoint at step 6 (42 s in; dvc exit 255), then
                                     dvc repro -s finetune@whisper_en   [48 s]   resumed_from 6, b90eaeb19d757a84
       uninterrupted: dvc repro -f --no-run-cache -s ...                [107 s]  resumed_from 0, b90eaeb19d757a84
    PASS x5 (skipped + same weights; re-run + different weights; resumed from the checkpoint; resumed
    tensors bit-identical to the uninterrupted run's; both differ from step 3's), 427 s in all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"finetune": "checkpoints/finetune/{key}"}


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    t = time.monotonic()
    proc = subprocess.run(args, cwd=cwd, text=True, capture_output=True)
    print(f"  $ {' '.join(args)}   [{time.monotonic() - t:.0f} s, exit {proc.returncode}]", flush=True)
    if check and proc.returncode:
        sys.exit(f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tensors(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        sys.exit(f"no safetensors weights in {model_dir}")
    return out


def digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors(model_dir).items()):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def identical(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def set_train(repo: Path, section: str, **values: Any) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw[section].update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], text=True, capture_output=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--branch", default=subprocess.run(["git", "branch", "--show-current"], cwd=ROOT, text=True,
                                                       capture_output=True).stdout.strip())
    ap.add_argument("--stage", default="finetune@whisper_en")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    kind, key = args.stage.split("@")
    section = {"finetune": "train"}[kind]
    ckpt = CHECKPOINTS[kind].format(key=key)
    model_dir = f"data/models/{key}"
    metrics = f"reports/train/{key}.json"

    scratch = Path(tempfile.mkdtemp(prefix="asrc-dvc-e2e-"))
    repo = scratch / "repo"
    cache = sh(["dvc", "cache", "dir"], ROOT).stdout.strip()
    t0 = time.monotonic()
    print(f"scratch clone of {args.branch} in {repo}; DVC cache {cache}")
    sh(["git", "clone", "-q", "--branch", args.branch, str(ROOT), str(repo)], scratch)
    sh(["dvc", "config", "--local", "cache.dir", cache], repo)
    sh(["dvc", "config", "--local", "cache.type", "hardlink,copy"], repo)
    sh(["dvc", "checkout", "pretrain", "tokenizer", "prepare@en"], repo)
    # a short run with several checkpoints; batch 8 keeps a step cheap on a loaded machine
    set_train(repo, section, max_steps=args.steps, checkpoint_every=max(1, args.steps // 4), batch_size=8,
              warmup_steps=2, num_threads=2)
    results: dict[str, bool] = {}

    print("1. fresh run")
    first = sh(["dvc", "repro", "-s", args.stage], repo)
    w1 = tensors(repo / model_dir)
    print(f"   weights {digest(repo / model_dir)}")

    print("2. nothing changed: the stage is skipped")
    again = sh(["dvc", "repro", "-s", args.stage], repo)
    skipped = "didn't change, skipping" in (again.stdout + again.stderr) and "Running stage" not in again.stdout
    results["unchanged -> skipped, same weights"] = skipped and identical(w1, tensors(repo / model_dir))

    print("3. a training param changed: re-run, new weights")
    lr = yaml.safe_load((repo / "params.yaml").read_text())[section]["lr"]
    set_train(repo, section, lr=lr * 2)
    changed = sh(["dvc", "repro", "-s", args.stage], repo)
    w2 = tensors(repo / model_dir)
    print(f"   weights {digest(repo / model_dir)}")
    results["param changed -> re-run, weights differ"] = "Running stage" in changed.stdout and not identical(w1, w2)

    print("4. killed after its first checkpoint, then re-run: resumes to the uninterrupted run's weights")
    set_train(repo, section, lr=lr * 3)  # params no run has seen: no run-cache entry to restore
    state = repo / ckpt / "trainer_state.json"
    proc = subprocess.Popen(["dvc", "repro", "-s", args.stage], cwd=repo, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    t = time.monotonic()
    while not state.is_file():
        if proc.poll() is not None:
            sys.exit(f"the stage ended before its first checkpoint:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    step = json.loads(state.read_text()).get("step")
    victims = [p for p in descendants(proc.pid) if f"stages/{kind}.py" in cmdline(p) and "accelerate" not in cmdline(p)]
    if not victims:
        sys.exit("no training process found under dvc")
    trainer = victims[-1]
    name = cmdline(trainer)
    os.kill(trainer, signal.SIGKILL)
    out = proc.communicate()[0]
    print(f"   SIGKILL to pid {trainer} ({name.split(' ')[1] if ' ' in name else name}) after the checkpoint at "
          f"step {step}, {time.monotonic() - t:.0f} s in; dvc exit {proc.returncode}; last line: "
          f"{out.strip().splitlines()[-1] if out.strip() else ''}")
    killed_ok = proc.returncode != 0 and state.is_file()
    resumed = sh(["dvc", "repro", "-s", args.stage], repo)
    resumed_from = json.loads((repo / metrics).read_text()).get("resumed_from")
    w3 = tensors(repo / model_dir)
    print(f"   resumed run: resumed_from {resumed_from}, weights {digest(repo / model_dir)}; "
          f"checkpoint left: {(repo / ckpt).exists()}")
    sh(["dvc", "repro", "-f", "--no-run-cache", "-s", args.stage], repo)
    w4 = tensors(repo / model_dir)
    print(f"   uninterrupted run: resumed_from {json.loads((repo / metrics).read_text()).get('resumed_from')}, "
          f"weights {digest(repo / model_dir)}")
    results["killed run -> resumed from its checkpoint"] = killed_ok and bool(resumed_from) and \
        "resuming from step" in resumed.stdout + resumed.stderr
    results["resumed weights bit-identical to uninterrupted"] = identical(w3, w4)
    results["interrupted/uninterrupted differ from the earlier params"] = not identical(w3, w2)

    print(f"\nscratch check done in {time.monotonic() - t0:.0f} s (first run {first.stdout.count('Running stage')} "
          f"stage(s))")
    for name, ok in results.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if not args.keep:
        subprocess.run(["chmod", "-R", "u+w", str(scratch)])
        subprocess.run(["rm", "-rf", str(scratch)])
    else:
        print(f"kept {scratch}")
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
