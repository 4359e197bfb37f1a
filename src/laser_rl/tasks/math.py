"""The five math benchmarks of the paper, loadable by name (``--data math500``, case-insensitive).

The files are the reference repository's test splits (MIT), one JSON object per line with
``problem`` and ``answer`` (aime25's answers are ints: cast to str). They are *not* shipped inside
the package: they live in the project's shared data folder, found in this order:

1. the ``data_dir`` option (``load_benchmark("math500", data_dir=...)``);
2. the environment variable ``LASER_BENCHMARKS_DIR`` (an error if it names a missing folder);
3. ``../shared/data/benchmarks`` relative to the repository root (a source checkout), then
   relative to the current directory.

Each benchmark is ``<folder>/<name>/test.jsonl``. Problems are chat-style prompts (spec §4
instruction) verified by :class:`~laser_rl.rewards.math_verifier.MathVerifier`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.tasks.base import TaskData

ENV_VAR = "LASER_BENCHMARKS_DIR"
_RELATIVE = Path("..") / "shared" / "data" / "benchmarks"


@dataclass(frozen=True)
class Benchmark:
    """A bundled benchmark: its folder name, size and the paper's samples per problem (spec §5)."""

    name: str
    size: int
    paper_n: int
    filename: str = "test.jsonl"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math500", 500, 2),
        Benchmark("amc23", 40, 32),
        Benchmark("aime24", 30, 32),
        Benchmark("aime25", 30, 32),
        Benchmark("OlympiadBench", 675, 2),
    )
}


def find_benchmark(name: str) -> Benchmark | None:
    """The benchmark called ``name`` (case-insensitive), or None."""
    lowered = name.lower()
    return next((b for key, b in BENCHMARKS.items() if key.lower() == lowered), None)


def benchmarks_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the benchmark folders (see the module docstring for the search order)."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise LaserError(f"benchmarks folder {folder} (data_dir option) not found")
        return folder
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise LaserError(f"benchmarks folder {folder} (from ${ENV_VAR}) not found")
        return folder
    repo_root = Path(__file__).resolve().parents[3]
    candidates = [repo_root / _RELATIVE, Path.cwd() / _RELATIVE]
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise LaserError(
        f"math benchmarks not found (tried {tried}); set ${ENV_VAR} to the folder that holds "
        f"{', '.join(BENCHMARKS)}"
    )


def benchmark_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the benchmark's JSONL file; ``LaserError`` for an unknown name or a missing file."""
    bench = find_benchmark(name)
    if bench is None:
        raise LaserError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    path = benchmarks_dir(data_dir) / bench.name / bench.filename
    if not path.is_file():
        raise LaserError(f"benchmark {bench.name}: {path} not found")
    return path


def load_benchmark(name: str, **options: Any) -> TaskData:
    """Load a bundled benchmark as a finite ``chat``-style split verified by ``MathVerifier``.

    Options: ``data_dir`` (the benchmarks folder), ``limit`` (first N problems), ``verifier``
    (another verifier, e.g. ``MathVerifier(require_single_boxed=True)``). Answers are strings.
    """
    from laser_rl.tasks.files import load_file_data

    path = benchmark_path(name, options.pop("data_dir", None))
    bench = find_benchmark(name)
    assert bench is not None
    allowed = {"limit", "verifier"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LaserError(
            f"benchmark {bench.name}: unknown option(s) {', '.join(unknown)} (known: data_dir, limit, verifier)"
        )
    data = load_file_data(str(path), name=bench.name, **options)
    data.prompt_style = "chat"
    for p in data.problems or ():
        p.meta.setdefault("benchmark", bench.name)
    return data
