"""The embedded tasks (generated in-process, exact verifiers, a character tokenizer): the one registry of
their names, and how a model folder's ``task.json`` selects one.

A task config (``ArithConfig``, ``PairSumConfig``) offers what ``laser base`` needs: ``name``,
``alphabet``, ``validate()``, ``max_prompt_tokens()``, ``max_response_tokens()``,
``train_problem(seed, index)``, ``sft_target(problem, rng)``, ``verifier()`` and ``to_dict()``. What the
tasks share (held-out split, training stream, ``task.json``) is :mod:`laser_rl.tasks.generated`, which
knows no task by name: the tasks import it, this registry imports the tasks, and nothing imports back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.tasks.arith import ArithConfig, load_arith
from laser_rl.tasks.base import TaskData
from laser_rl.tasks.generated import (  # re-exported: the tasks' shared machinery
    LEGACY_TASK_NAME,
    MAX_ATTEMPTS,
    TASK_FILENAME,
    held_out_split,
    load_task,
    problem_stream,
    read_task_record,
    save_task,
    stream_problem,
    task_from_dict,
)
from laser_rl.tasks.pairsum import PairSumConfig, load_pairsum

__all__ = [
    "EMBEDDED_TASKS", "MAX_ATTEMPTS", "TASKS", "TASK_FILENAME", "default_task_config", "held_out_split",
    "is_embedded_task", "load_embedded_task", "load_task", "load_task_config", "problem_stream", "save_task",
    "stream_problem", "task_config_from_dict", "task_from_dict",
]

#: name -> (config class, loader of ``NAME[:split]``): the one list of the embedded tasks.
TASKS: dict[str, tuple[type, Callable[..., TaskData]]] = {
    ArithConfig.name: (ArithConfig, load_arith),
    PairSumConfig.name: (PairSumConfig, load_pairsum),
}
#: ``--data`` names of the embedded tasks; their options live in the model folder's task.json.
EMBEDDED_TASKS = tuple(TASKS)


def is_embedded_task(spec: str) -> bool:
    """Whether a ``--data`` spec (``arith``, ``pairsum:train``...) names an embedded task."""
    return spec.partition(":")[0] in TASKS


def _config_class(name: Any, where: str) -> Any:
    if name not in TASKS:
        raise LaserError(f"{where}: unknown task name {name!r} (known: {', '.join(EMBEDDED_TASKS)})")
    return TASKS[name][0]


def task_config_from_dict(data: Mapping[str, Any], where: str = "task") -> Any:
    """A task config from its dict; ``name`` selects the task (``arith`` when absent, as in old files)."""
    return _config_class(data.get("name", LEGACY_TASK_NAME), where).from_dict(data, where=where)


def default_task_config(name: str) -> Any:
    """The default config of the embedded task ``name``."""
    return _config_class(name, "--task")()


def load_task_config(folder: str | Path) -> Any | None:
    """The task saved in a model folder's ``task.json`` (any embedded task); ``None`` when it has none."""
    record = read_task_record(folder)
    return None if record is None else task_config_from_dict(record[0], where=record[1])


def load_embedded_task(spec: str, **options: Any) -> TaskData:
    """``NAME[:split]`` of an embedded task → its :class:`TaskData` (options as ``load_arith``)."""
    name, _, split = spec.partition(":")
    if name not in TASKS:
        raise LaserError(f"--data {spec}: not an embedded task (known: {', '.join(EMBEDDED_TASKS)})")
    return TASKS[name][1](split or "test", **options)
