"""Resolve a ``--data`` argument to a :class:`TaskData`.

- ``arith`` / ``arith:test``: the embedded task's held-out split; ``arith:train``: its training stream
  (likewise ``pairsum``, the pair-sum task; see ``laser_rl.tasks.embedded``).
- ``math500``, ``amc23``, ``aime24``, ``aime25``, ``OlympiadBench``: the bundled math benchmarks.
- anything else: a file or folder path (JSONL / parquet / Hugging Face ``datasets`` folder).

Option ``verifier``: a name (``auto``, ``math``, ``exact``, ``arith``; see
:mod:`laser_rl.rewards.registry`) or a verifier object, replacing the data's own verifier.
"""

from __future__ import annotations

from typing import Any

from laser_rl.tasks.base import TaskData


def load_task_data(spec: str, **options: Any) -> TaskData:
    verifier = options.pop("verifier", None)
    if isinstance(verifier, str):
        from laser_rl.rewards.registry import make_verifier

        verifier = make_verifier(verifier)
    data = _load(spec, **options)
    if verifier is not None:
        data.verifier = verifier
    return data


def _load(spec: str, **options: Any) -> TaskData:
    from laser_rl.tasks.embedded import is_embedded_task, load_embedded_task

    if is_embedded_task(spec):
        return load_embedded_task(spec, **options)
    name = spec.partition(":")[0]
    from laser_rl.tasks.math import BENCHMARKS, load_benchmark

    if name.lower() in {b.lower() for b in BENCHMARKS}:
        return load_benchmark(name, **options)
    from laser_rl.tasks.files import load_file_data

    return load_file_data(spec, **options)
