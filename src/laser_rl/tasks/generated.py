"""What every generated (embedded) task shares: the fixed held-out split, the resumable training stream
that never yields a test prompt, and the ``task.json`` record a model folder keeps of its task.

The tasks (:mod:`~laser_rl.tasks.arith`, :mod:`~laser_rl.tasks.pairsum`) import this module; the registry of
their names (:mod:`~laser_rl.tasks.embedded`) imports the tasks. Nothing here knows a task by name, so
the imports run one way (no cycle).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.tasks.base import Problem, TaskData

#: Draws per wanted problem before giving up (a range too narrow for distinct prompts).
MAX_ATTEMPTS = 1000
Draw = Callable[[Any, random.Random], Problem]

TASK_FILENAME = "task.json"
#: The task of a ``task.json`` written before records named their task (the first embedded task).
LEGACY_TASK_NAME = "arith"


def save_task(folder: str | Path, cfg: Any) -> None:
    """Write ``task.json`` into ``folder`` (a model folder) so later commands rebuild the same task."""
    from laser_rl.io import write_json_atomic

    write_json_atomic(Path(folder) / TASK_FILENAME, cfg.to_dict())


def read_task_record(folder: str | Path) -> tuple[dict[str, Any], str] | None:
    """(the ``task.json`` record, its path for messages) of a model folder; ``None`` when it has none."""
    path = Path(folder) / TASK_FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LaserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise LaserError(f"{path}: expected a JSON object")
    return data, str(path)


# ------------------------------------------------------------------ held-out split and training stream


@functools.lru_cache(maxsize=16)
def held_out_split(name: str, cfg: Any, draw: Draw) -> tuple[tuple[Problem, ...], frozenset[str]]:
    """The task's fixed held-out split (``cfg.test_size`` distinct prompts, a function of ``cfg`` alone)
    and the set of its prompts, which the training stream never yields."""
    rng = random.Random(f"{name}-test:{cfg.seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < cfg.test_size:
        attempts += 1
        if attempts > MAX_ATTEMPTS * max(cfg.test_size, 1):
            raise LaserError(f"{name} task: could not draw {cfg.test_size} distinct test prompts; widen the ranges")
        p = draw(cfg, rng)
        if p.problem not in seen:
            seen.add(p.problem)
            problems.append(p)
    return tuple(problems), frozenset(seen)


def stream_problem(name: str, cfg: Any, draw: Draw, seed: int, index: int) -> Problem:
    """Problem number ``index`` of the training stream ``seed``: fixed by (seed, index), never a test prompt."""
    test = held_out_split(name, cfg, draw)[1]
    for attempt in range(MAX_ATTEMPTS):
        p = draw(cfg, random.Random(f"{name}-train:{seed}:{index}:{attempt}"))
        if p.problem not in test:
            return p
    raise LaserError(f"{name} task: the training stream finds only test prompts; widen the ranges")


def problem_stream(name: str, cfg: Any, draw: Draw, seed: int, start: int = 0) -> Iterator[Problem]:
    """Endless training problems from position ``start`` (resumable: position i is fixed by (seed, i))."""
    if start < 0:
        raise LaserError(f"{name} task: stream start must be >= 0, got {start}")
    held_out_split(name, cfg, draw)  # build (and validate) the split before the first draw
    index = start
    while True:
        yield stream_problem(name, cfg, draw, seed, index)
        index += 1


# ------------------------------------------------------------------ task.json records


def task_from_dict(cls: type, data: Mapping[str, Any], where: str, name: str, version: int) -> Any:
    """Rebuild a task config from its ``to_dict`` record: the name and format version must match, and an
    unknown key is an error naming ``where``."""
    from dataclasses import fields

    data = dict(data)
    found = data.pop("name", name)
    if found != name:
        raise LaserError(f"{where}: task name is {found!r}, expected {name!r}")
    found_version = data.pop("version", version)
    if found_version != version:
        raise LaserError(f"{where}: unsupported task format version {found_version!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LaserError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except LaserError as e:
        raise LaserError(f"{where}: {str(e).removeprefix(f'{name} task: ')}") from None


def load_task(
    cls: type,
    name: str,
    split: str,
    options: dict[str, Any],
    held_out: Callable[[Any], list[Problem]],
    stream: Callable[[Any, int, int], Iterator[Problem]],
) -> TaskData:
    """The registry entry point of an embedded task: ``NAME`` / ``NAME:test`` → the held-out split,
    ``NAME:train`` → the endless training stream.

    ``options``: ``config`` (a ``cls`` or its dict), ``model_dir`` (a model folder whose ``task.json``
    defines the task; ignored when it has none) and/or any ``cls`` field (overrides). Precedence:
    explicit fields > ``config`` > ``model_dir`` > defaults.
    """
    from dataclasses import asdict, fields

    base: dict[str, Any] = {}
    model_dir = options.pop("model_dir", None)
    if model_dir is not None:
        record = read_task_record(model_dir)
        if record is not None:
            data, where = record
            found = data.get("name", LEGACY_TASK_NAME)
            if found != name:
                raise LaserError(f"{where}: the model's task is {found!r}, not {name!r}")
            base = asdict(cls.from_dict(data, where=where))
    config = options.pop("config", None)
    if isinstance(config, cls):
        base = asdict(config)
    elif isinstance(config, Mapping):
        base = asdict(cls.from_dict(config))
    elif config is not None:
        raise LaserError(f"{name} task: config must be a {cls.__name__} or a dict, got {type(config).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LaserError(f"{name} task: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    cfg = cls(**{**base, **options})
    if split in ("", "test"):
        return TaskData(name=f"{name}:test", verifier=cfg.verifier(), prompt_style="raw", problems=held_out(cfg))
    if split == "train":
        return TaskData(name=f"{name}:train", verifier=cfg.verifier(), prompt_style="raw",
                        stream=lambda seed, start=0: stream(cfg, seed, start))
    raise LaserError(f"unknown split {split!r} of task {name!r} (use {name}:test or {name}:train)")
