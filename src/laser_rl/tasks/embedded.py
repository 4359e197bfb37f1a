"""The embedded tasks (generated in-process, exact verifiers, a character tokenizer): one owner for
which names they are and how a model folder's ``task.json`` selects one.

A task config (``ArithConfig``, ``PairSumConfig``) offers what ``laser base`` needs: ``name``,
``alphabet``, ``validate()``, ``max_prompt_tokens()``, ``max_response_tokens()``,
``train_problem(seed, index)``, ``sft_target(problem, rng)``, ``verifier()`` and ``to_dict()``.
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
#: ``--data`` names of the embedded tasks; their options live in the model folder's task.json.
EMBEDDED_TASKS = ("arith", "pairsum")


def is_embedded_task(spec: str) -> bool:
    """Whether a ``--data`` spec (``arith``, ``pairsum:train``...) names an embedded task."""
    return spec.partition(":")[0] in EMBEDDED_TASKS


def _config_class(name: Any, where: str) -> Any:
    if name == "arith":
        from laser_rl.tasks.arith import ArithConfig

        return ArithConfig
    if name == "pairsum":
        from laser_rl.tasks.pairsum import PairSumConfig

        return PairSumConfig
    raise LaserError(f"{where}: unknown task name {name!r} (known: {', '.join(EMBEDDED_TASKS)})")


def task_config_from_dict(data: Mapping[str, Any], where: str = "task") -> Any:
    """A task config from its dict; ``name`` selects the task (``arith`` when absent, as in old files)."""
    return _config_class(data.get("name", "arith"), where).from_dict(data, where=where)


def default_task_config(name: str) -> Any:
    """The default config of the embedded task ``name``."""
    return _config_class(name, "--task")()


def save_task(folder: str | Path, cfg: Any) -> None:
    """Write ``task.json`` into ``folder`` (a model folder) so later commands rebuild the same task."""
    from laser_rl.io import write_json_atomic

    write_json_atomic(Path(folder) / TASK_FILENAME, cfg.to_dict())


def load_task_config(folder: str | Path) -> Any | None:
    """The task saved in a model folder's ``task.json`` (any embedded task); ``None`` when it has none."""
    path = Path(folder) / TASK_FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LaserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise LaserError(f"{path}: expected a JSON object")
    return task_config_from_dict(data, where=str(path))


def load_embedded_task(spec: str, **options: Any) -> TaskData:
    """``NAME[:split]`` of an embedded task → its :class:`TaskData` (options as ``load_arith``)."""
    name, _, split = spec.partition(":")
    if name == "arith":
        from laser_rl.tasks.arith import load_arith

        return load_arith(split or "test", **options)
    if name == "pairsum":
        from laser_rl.tasks.pairsum import load_pairsum

        return load_pairsum(split or "test", **options)
    raise LaserError(f"--data {spec}: not an embedded task (known: {', '.join(EMBEDDED_TASKS)})")


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
        saved = load_task_config(model_dir)
        if saved is not None and not isinstance(saved, cls):
            raise LaserError(f"{Path(model_dir) / TASK_FILENAME}: the model's task is {saved.name!r}, not {name!r}")
        if saved is not None:
            base = asdict(saved)
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
