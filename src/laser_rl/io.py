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
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError

#: The configs shipped inside the package (demo, paper, accelerate); the repository's configs/ links here.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


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


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain ``open``/``mkdir`` would.

    Some writers create private files: safetensors' ``save_file`` writes ``model.safetensors`` with
    mode 0600 whatever the umask, and ``tempfile`` makes 0700 folders. Outputs are meant to be
    shared like any other file, so: folders and executables ``0o777 & ~umask``, other files
    ``0o666 & ~umask``. Links are left alone.
    """
    keep = ~current_umask()
    root = Path(path)
    if not root.exists():
        return
    for p in [root, *(root.rglob("*") if root.is_dir() and not root.is_symlink() else ())]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or bool(p.stat().st_mode & 0o111)
        os.chmod(p, (0o777 if executable else 0o666) & keep)


#: A Hugging Face hub id: ``owner/name`` (letters, digits, ``-``, ``_``, ``.``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Suffixes of the data files ``--data`` reads; no hub id is written with one.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_local_path(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a local file or folder rather than a hub id (models, tokenizers, data).

    Local: it exists; or it is written like a path — it starts with ``.``, ``/`` or ``~``, has a
    data-file suffix, a separator a hub id cannot have (``\\``, two or more ``/``), or other
    characters a hub id cannot have; or it has no ``owner/`` part (its folder is the current one) or
    its ``owner`` folder exists here. Only a bare ``owner/name`` with no local ``owner`` folder is
    sent to the hub, so a mistyped path fails at once with "not found" instead of after the hub
    client's network retries.
    """
    s = os.fspath(spec)
    if Path(s).expanduser().exists() or s.startswith((".", "/", "~")):
        return True
    if s.lower().endswith(DATA_FILE_SUFFIXES) or not _HUB_ID.match(s):
        return True
    return Path(s).parent.is_dir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and folders, so a crash never leaves a half-written output behind. What the
    block wrote gets the umask's modes (:func:`apply_umask`), like any file written in place.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        apply_umask(target)
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
            # Parse without the line break: with it, an error at the end of a cut-off line is placed
            # at "line 2, column 1" of the one-line document, i.e. reported as column 1.
            text = line.rstrip("\r\n")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                at_end = " (end of line)" if e.pos >= len(text) else ""
                raise LaserError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.pos + 1}{at_end})") from None
            if not isinstance(obj, dict):
                raise LaserError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
            locations.append(f"{p}:{lineno}")
    return records, locations
