"""The five math benchmarks of the paper, loadable by name (``--data math500``, case-insensitive).

The files are the reference repository's test splits (github.com/RUCBM/LaSeR, MIT; source and
licence in ``benchmarks/README.md`` and ``benchmarks/LICENSE`` beside this module), one JSON object
per line with ``problem`` and ``answer`` (aime25's answers are ints: cast to str). They ship inside
the package (package data, read through :mod:`importlib.resources`), so an installed wheel serves
them from anywhere. The folder holding ``<name>/test.jsonl`` is, in this order:

1. the ``data_dir`` option (``load_benchmark("math500", data_dir=...)``);
2. the environment variable ``LASER_BENCHMARKS_DIR`` (an error if it names a missing folder);
3. the bundled copy (``laser_rl/tasks/benchmarks``).

Problems are chat-style prompts (spec §4 instruction) verified by
:class:`~laser_rl.rewards.math_verifier.MathVerifier`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.tasks.base import TaskData

ENV_VAR = "LASER_BENCHMARKS_DIR"
#: Package-data folder of the bundled benchmarks, inside ``laser_rl.tasks``.
_BUNDLED = "benchmarks"


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


def _known_benchmark(name: str) -> Benchmark:
    bench = find_benchmark(name)
    if bench is None:
        raise LaserError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return bench


def _override_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The benchmarks folder named by ``data_dir`` or ``$LASER_BENCHMARKS_DIR``; None = the bundled copy."""
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
    return None


@contextlib.contextmanager
def benchmark_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A real path of the benchmark's JSONL file while the block runs (module docstring: search order).

    ``LaserError`` for an unknown name or a missing file. The bundled copy goes through
    :func:`importlib.resources.as_file`, which also works when the package is not a plain folder.
    """
    bench = _known_benchmark(name)
    folder = _override_dir(data_dir)
    if folder is not None:
        path = folder / bench.name / bench.filename
        if not path.is_file():
            raise LaserError(f"benchmark {bench.name}: {path} not found")
        yield path
        return
    resource = resources.files("laser_rl.tasks").joinpath(_BUNDLED, bench.name, bench.filename)
    if not resource.is_file():
        raise LaserError(
            f"benchmark {bench.name}: the bundled file {_BUNDLED}/{bench.name}/{bench.filename} is missing "
            f"from the laser_rl package (a broken install?); set ${ENV_VAR} to a folder holding it"
        )
    with resources.as_file(resource) as path:
        yield path


def load_benchmark(name: str, **options: Any) -> TaskData:
    """Load a bundled benchmark as a finite ``chat``-style split verified by ``MathVerifier``.

    Options: ``data_dir`` (the benchmarks folder), ``limit`` (first N problems), ``verifier``
    (another verifier, e.g. ``MathVerifier(require_single_boxed=True)``). Answers are strings.
    """
    from laser_rl.tasks.files import load_file_data

    data_dir = options.pop("data_dir", None)
    bench = _known_benchmark(name)
    allowed = {"limit", "verifier"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LaserError(
            f"benchmark {bench.name}: unknown option(s) {', '.join(unknown)} (known: data_dir, limit, verifier)"
        )
    with benchmark_file(bench.name, data_dir) as path:
        data = load_file_data(str(path), name=bench.name, **options)
    data.prompt_style = "chat"
    for p in data.problems or ():
        p.meta.setdefault("benchmark", bench.name)
    return data
