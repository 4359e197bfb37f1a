"""An exclusive lock on a run folder (``output_dir``), held by the main process for the whole run.

Why a kernel lock and not a marker file: two ``laser train`` runs started half a second apart into
one folder both passed the "is this folder free?" checks (neither had written anything yet) and
then interleaved their steps in one metrics.jsonl. ``fcntl.flock`` on ``<output_dir>/.laser-train.lock``
is atomic, so exactly one run gets the folder; and the kernel drops the lock when its holder's file
descriptor closes, which includes a process killed by SIGKILL or the OOM killer. A lock file left
behind by a killed run is therefore only a file: it never blocks ``--resume`` or a new run.

The file is never deleted (deleting it would let a run that opened the old file and a run that
created a new one both hold "the" lock). A refused run writes nothing: it opens the file without
truncating it, fails to lock it, reads the holder's pid/host/start time for the message and leaves.

Only the main process (global rank 0) takes the lock; the other ranks write nothing of their own
into the folder before rank 0 has created it, so they need no lock of their own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from laser_rl.errors import LaserError

LOCK_FILE = ".laser-train.lock"  # the trainer's foreign-files check must ignore this name


def _holder(fd: int) -> str:
    """The holder's record from the lock file, as words for an error message."""
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["started"])))
        return f"pid {info['pid']} on {info['host']}, started {when}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its holder is still setting up"  # the holder locks first, then writes its record


class RunDirLock:
    """``fcntl.flock`` on ``<out>/LOCK_FILE`` (see the module docstring).

    ``acquire()`` creates ``out`` if needed, takes the lock without waiting and records this
    process in the file; it raises ``LaserError`` at once when another process holds it.
    ``release()`` (or leaving the ``with`` block, dropping the object, or the process dying) frees
    it, so the holder keeps a reference for as long as the run lasts.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: run without the guard rather than not at all
            warnings.warn("fcntl is not available here: the output_dir is not locked against a second run", stacklevel=2)
            return self
        if self._fd is not None:
            return self
        if self.out.exists() and not self.out.is_dir():
            raise LaserError(f"output_dir {self.out}: exists and is not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            # no O_TRUNC: a refused run must not wipe the holder's record
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise LaserError(f"output_dir {self.out}: cannot create the run lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = _holder(fd)
                os.close(fd)
                raise LaserError(
                    f"output_dir {self.out} is in use by another laser train run ({who}); "
                    "wait for it to finish or choose another output_dir"
                ) from None
            os.close(fd)  # e.g. a file system without locks (ENOLCK): warn, as without fcntl
            warnings.warn(f"cannot lock {self.path} ({e.strerror}): the output_dir is not guarded against a second run",
                          stacklevel=2)
            return self
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (the file stays: see the module docstring)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __del__(self) -> None:  # a holder dropped without release() (e.g. a constructor that raised)
        self.release()

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_dir(out: str | os.PathLike[str], *, main: bool = True) -> Iterator[RunDirLock | None]:
    """Hold ``out`` for the block: the lock on the main process, nothing on the others.

    Take it before anything else looks into or writes to the folder (the "already holds a run"
    and foreign-files checks included), so two runs cannot both pass them. Raises ``LaserError``
    (one line, naming the holder) when another run holds the folder.
    """
    if not main:
        yield None
        return
    with RunDirLock(out) as lock:
        yield lock
