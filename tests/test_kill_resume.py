"""Crash safety end to end: SIGKILL ``examples/train_mdgr.py`` at a random moment, then
``--resume`` must finish and give exactly what an uninterrupted run gives.

The moment is drawn from a seeded generator (``MDGR_KILL_SEED`` picks another) between
the first epoch's log line of an uninterrupted run and its end, so the kill lands while
epochs run, checkpoints and the log are written or the test metrics are computed. Equal
means: the metrics JSON (timing fields aside), every epoch's log line, and the weights of
``best.pt`` and ``last.pt``; no ``*.tmp`` file is left. The uninterrupted and the
interrupted run each get their own fresh cache folder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_mdgr.py"
ARGS = ["--synthetic-users", "80", "--synthetic-items", "200", "--synthetic-topics", "3",
        "--epochs", "50", "--patience", "99", "--m", "1", "--k", "2", "--dim", "8",
        "--no-progress", "--threads", "1"]
#: Fields that measure time, not results.
TIMING = {"train_seconds", "epoch_seconds"}


def command(folder: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *ARGS, "--cache-dir", str(cache),
            "--out", str(folder / "run"), "--metrics-json", str(folder / "metrics.json"),
            *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    return value


def epochs_logged(run: Path) -> dict[int, dict]:
    """The last log line of every epoch (a resumed run repeats the interrupted epoch)."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[entry["epoch"]] = without_timing(entry)
    return out


def uninterrupted(folder: Path) -> tuple[float, float]:
    """Run to the end; returns (seconds until the first epoch is logged, total seconds)."""
    began = time.monotonic()
    proc = start(command(folder, folder / "cache"))
    first = None
    while proc.poll() is None:
        if first is None and (folder / "run" / "log.jsonl").exists():
            first = time.monotonic() - began
        time.sleep(0.02)
    total = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr.read()
    return (first if first is not None else 0.5 * total), total


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_matches(tmp_path):
    seed = int(os.environ.get("MDGR_KILL_SEED", "31"))
    rng = random.Random(seed)
    straight = tmp_path / "straight"
    first, total = uninterrupted(straight)

    killed = tmp_path / "killed"
    cache = killed / "cache"
    low, high = first, 0.95 * total
    attempts = 0
    while attempts < 4:  # a slower or faster machine: draw again, earlier
        attempts += 1
        delay = rng.uniform(low, high)
        proc = start(command(killed, cache))
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        # it finished before the kill: start over in a clean folder, with an earlier moment
        assert proc.returncode == 0, proc.stderr.read()
        for path in sorted(killed.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        high = delay
    if proc.returncode == 0:
        pytest.fail(f"the run always finished before the kill (seed {seed})")
    assert proc.returncode == -signal.SIGKILL  # (metrics.json may be there: a late kill)
    log = killed / "run" / "log.jsonl"
    logged = len(epochs_logged(killed / "run")) if log.exists() else 0

    resumed = subprocess.run(command(killed, cache, "--resume"), cwd=REPO, env=environment(),
                             capture_output=True, text=True, timeout=300)
    where = (f"seed {seed}: killed after {delay:.2f}s of {total:.2f}s, {logged} epochs "
             f"logged (attempt {attempts})")
    print(where)
    assert resumed.returncode == 0, f"{where}\n{resumed.stderr}"

    want = json.loads((straight / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert without_timing(got) == without_timing(want), where
    assert epochs_logged(killed / "run") == epochs_logged(straight / "run"), where
    for name in ("best.pt", "last.pt"):
        a = torch.load(straight / "run" / name, map_location="cpu", weights_only=False)
        b = torch.load(killed / "run" / name, map_location="cpu", weights_only=False)
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), (name, key, where)
    assert not list((killed / "run").glob("*.tmp")), where
