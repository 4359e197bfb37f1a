"""A resumable source of training problems: its state is one integer, the number of problems taken."""

from __future__ import annotations

import random
from collections.abc import Iterator

from laser_rl.tasks.base import Problem, TaskData


class ProblemSource:
    """Yields problems in a fixed order determined by ``seed``; ``position`` restores it exactly.

    An endless stream (``TaskData.stream``) is read from ``position``; a finite split is visited in
    epochs, each a fresh seeded permutation (or the file order when ``shuffle`` is off).
    ``drop_last_of``: when set to the batch size (problems per step), each epoch keeps only its
    whole batches and drops the last ``len % batch`` problems of its permutation, as verl's
    dataloader does (``drop_last=True``); otherwise a partial batch is completed from the next epoch.
    """

    def __init__(self, data: TaskData, seed: int, shuffle: bool = True, position: int = 0,
                 drop_last_of: int | None = None) -> None:
        self.data = data
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self.drop_last_of = drop_last_of
        self._iter: Iterator[Problem] | None = None
        self._order: list[int] = []
        self._epoch = -1

    def take(self, k: int) -> list[Problem]:
        return [self._next() for _ in range(k)]

    def epoch_length(self) -> int:
        """Problems visited per epoch of a finite split (its size, less the dropped partial batch)."""
        problems = self.data.problems
        assert problems is not None
        n = len(problems)
        if self.drop_last_of and n >= self.drop_last_of:
            return n - n % self.drop_last_of
        return n

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
        epoch, index = divmod(self.position, self.epoch_length())
        if epoch != self._epoch:
            self._order = list(range(len(problems)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        self.position += 1
        return problems[self._order[index]]
