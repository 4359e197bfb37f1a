"""Small file helpers shared by every command: the output policy, atomic writes and JSONL with
file:line errors.

Output policy (every command): an existing output file, or a non-empty output folder, is refused
unless ``--overwrite`` is given; then it is replaced. The one exception is a folder a command resumes
(``laser eval`` resumes a folder holding its ``eval_config.json``). See :func:`check_output_file`
and :func:`check_output_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError


def check_output_file(path: str | os.PathLike[str], overwrite: bool, flag: str = "--out") -> Path:
    """Refuse to clobber a file: ``path`` must not exist unless ``overwrite`` (checked before any work)."""
    p = Path(path)
    if p.is_dir():
        raise LaserError(f"{flag} {p}: is a folder, expected a file name")
    if p.exists() and not overwrite:
        raise LaserError(f"{flag} {p}: file exists (pass --overwrite to replace it)")
    return p


def check_output_dir(
    path: str | os.PathLike[str], overwrite: bool, flag: str = "--out", resumable_marker: str | None = None
) -> Path:
    """Refuse to write into a non-empty folder unless ``overwrite``.

    ``resumable_marker``: a file name that marks the command's own folder (``eval_config.json``);
    such a folder is accepted, for the command to resume.
    """
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise LaserError(f"{flag} {out}: exists and is not a folder")
        own = resumable_marker is not None and (out / resumable_marker).is_file()
        if not overwrite and not own and any(out.iterdir()):
            raise LaserError(f"{flag} {out}: folder exists and is not empty (pass --overwrite to replace it)")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and folders, so a crash never leaves a half-written output behind.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and target.is_dir():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            target.rename(final)
            shutil.rmtree(old)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises ``LaserError`` naming ``file:line``."""
    return read_jsonl_located(path)[0]


def read_jsonl_located(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Like :func:`read_jsonl`, plus each record's ``file:line`` label for later error messages."""
    p = Path(path)
    if not p.is_file():
        raise LaserError(f"{p}: file not found")
    records: list[dict[str, Any]] = []
    locations: list[str] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LaserError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise LaserError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
            locations.append(f"{p}:{lineno}")
    return records, locations
