"""Run independent phases of ``laser demo`` side by side: each task in its own one-thread worker process,
started as soon as the tasks it needs are done (``--jobs``), or all in this process in order (``--jobs 1``).

Why processes and not threads: the phases are PyTorch training/evaluation loops, each fastest on one intra-op
thread; separate processes keep each one's results identical to running it alone."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from laser_rl.errors import LaserError


@dataclass(frozen=True)
class Task:
    """One unit of demo work: ``fn(*args)`` once every task in ``needs`` has finished."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    needs: tuple[str, ...] = ()


def default_jobs() -> int:
    """``--jobs`` default: the cores this process may use, at most 2 (two arms train at once)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores))


def _timed(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float, float]:
    """(fn(*args), wall-clock start, end): time.time so that the workers' clocks agree with the parent's."""
    start = time.time()
    result = fn(*args)
    return result, start, time.time()


class _Prefixed:
    """A text stream that starts each line with a prefix: tells apart the logs of tasks running at once."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith(("\n", "\r"))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _worker_init(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def _in_worker(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float, float]:
    """Run one task in a worker process, its output lines prefixed with the task's name."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Prefixed(out, f"[{name}] "), _Prefixed(err, f"[{name}] ")
    try:
        return _timed(fn, args)
    finally:
        sys.stdout, sys.stderr = out, err


def run_tasks(tasks: list[Task], jobs: int, threads: int | None) -> dict[str, tuple[Any, float, float]]:
    """Run ``tasks`` (listed in an order that respects ``needs``): in this process one after the other
    (``jobs`` = 1), or up to ``jobs`` at a time in spawned one-process-per-task workers, each task as
    soon as its needs are done, earlier-listed first. Returns name -> (result, start, end) (time.time).
    A failing task raises here once the tasks already running have finished."""
    if jobs <= 1:
        return {t.name: _timed(t.fn, t.args) for t in tasks}
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    done: dict[str, tuple[Any, float, float]] = {}
    waiting = list(tasks)
    running: dict[Future, str] = {}
    # spawn, not fork: a forked child of a process that has run torch's thread pools can hang
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        while waiting or running:
            for task in [t for t in waiting if all(n in done for n in t.needs)][: jobs - len(running)]:
                waiting.remove(task)
                running[pool.submit(_in_worker, task.name, task.fn, task.args)] = task.name
            if not running:
                raise LaserError(f"demo tasks wait for tasks that never run: {', '.join(t.name for t in waiting)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future)] = future.result()  # re-raises a task's error
    return done
