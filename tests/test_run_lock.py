"""The run-folder lock (training/run_lock.py): one run per output_dir, a killed holder never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from laser_rl.errors import LaserError
from laser_rl.training.run_lock import LOCK_FILE, RunDirLock, hold_run_dir

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")

# A second process that takes the lock, says so, and keeps it until killed (no torch import: fast).
HOLDER = textwrap.dedent("""
    import sys, time
    from laser_rl.training.run_lock import RunDirLock
    lock = RunDirLock(sys.argv[1]).acquire()  # kept: a dropped RunDirLock releases
    print("held", flush=True)
    time.sleep(600)
""")


def _start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def test_a_second_process_is_refused_at_once_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    holder = _start_holder(out)
    try:
        (out / "config.yaml").write_text("x: 1\n")  # what the holder's run has written so far
        before = _snapshot(out)
        t0 = time.perf_counter()
        with pytest.raises(LaserError) as err, hold_run_dir(out):
            pytest.fail("the lock must not be granted while another process holds it")
        assert time.perf_counter() - t0 < 1.0  # refused immediately, not after waiting
        msg = str(err.value)
        assert "\n" not in msg and f"output_dir {out} is in use by another laser train run" in msg
        assert f"pid {holder.pid}" in msg and "started" in msg and "choose another output_dir" in msg
        assert _snapshot(out) == before  # the holder's record and files untouched, nothing added
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_sigkilled_run_does_not_block_the_next(tmp_path):
    out = tmp_path / "run"
    holder = _start_holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the stale file is still there
    with hold_run_dir(out) as lock:
        assert lock.held
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()  # now records this process


def test_one_process_twice_release_and_the_other_ranks(tmp_path):
    out = tmp_path / "run"
    first = RunDirLock(out).acquire()
    with pytest.raises(LaserError, match=f"pid {os.getpid()}"):
        RunDirLock(out).acquire()  # flock is per open file: a second Trainer in the same process is refused too
    first.release()
    assert not first.held
    with hold_run_dir(out) as again:
        assert again.held
    RunDirLock(out).acquire()  # dropped at once: the garbage collector frees it, nothing stays locked
    with hold_run_dir(out) as again:
        assert again.held
    other = tmp_path / "other"
    with hold_run_dir(other, main=False) as lock:  # ranks > 0 take nothing and create nothing
        assert lock is None
    assert not other.exists()


def test_output_dir_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(LaserError, match="exists and is not a folder"):
        RunDirLock(f).acquire()


# ------------------------------------------------------------------ the real CLI (needs the trainer wired)


@pytest.mark.slow
def test_two_laser_train_runs_into_one_folder_half_a_second_apart(tiny_model_dir, tmp_path):
    """The regression: both runs exited 0 and interleaved their steps in one metrics.jsonl. Now exactly one
    runs (whichever took the lock first) and the other exits 2 with one line, touching nothing."""
    from test_trainer import DEMO_CONFIG, fast_overrides

    out = tmp_path / "one_folder"
    cmd = [sys.executable, "-m", "laser_rl.cli", "train", "--config", DEMO_CONFIG,
           *fast_overrides(tiny_model_dir, out, steps=3)]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], [(rc, err[-2000:]) for rc, _, err in results]
    refused = next(err for rc, _, err in results if rc == 2)
    assert "is in use by another laser train run" in refused and len(refused.strip().splitlines()) == 1, refused
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
