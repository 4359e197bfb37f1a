"""A resumable source of training problems: its state is one integer, the number of problems taken."""

from __future__ import annotations

import random
from collections.abc import Iterator

from laser_rl.tasks.base import Problem, TaskData


class ProblemSource:
    """Yields problems in a fixed order determined by ``seed``; ``position`` restores it exactly.

    An endless stream (``TaskData.stream``) is read from ``position``; a finite split is visited in
    epochs, each a fresh seeded permutation (or the file order when ``shuffle`` is off).
    """

    def __init__(self, data: TaskData, seed: int, shuffle: bool = True, position: int = 0) -> None:
        self.data = data
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self._iter: Iterator[Problem] | None = None
        self._order: list[int] = []
        self._epoch = -1

    def take(self, k: int) -> list[Problem]:
        out = [self._next() for _ in range(k)]
        return out

    def _next(self) -> Problem:
        if self.data.stream is not None:
            if self._iter is None:
                self._iter = self.data.stream(self.seed, self.position)
            self.position += 1
            return next(self._iter)
        problems = self.data.problems
        assert problems is not None
        if not problems:
            raise ValueError(f"dataset {self.data.name!r} is empty")
        epoch, index = divmod(self.position, len(problems))
        if epoch != self._epoch:
            self._order = list(range(len(problems)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        self.position += 1
        return problems[self._order[index]]
