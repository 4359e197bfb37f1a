"""The interfaces every task plugs into: problems, a verifier, and how prompts are built."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Problem:
    """One verifiable problem. ``problem`` is the bare question (no template), ``answer`` the ground truth."""

    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Verifier(Protocol):
    """Turns a decoded response into a verifier reward r_v and groups answers for voting."""

    def extract_answer(self, response: str) -> str | None:
        """The final answer the response commits to, or ``None`` when it gives none."""
        ...

    def reward(self, response: str, answer: str) -> float:
        """Verifier reward r_v (1.0 correct, 0.0 otherwise; real values allowed)."""
        ...

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are equivalent (used to group votes)."""
        ...


PromptStyle = Literal["raw", "chat"]


@dataclass
class TaskData:
    """A dataset as the trainer and the evaluator see it.

    Exactly one of ``problems`` (a finite split) and ``stream`` (an endless, seeded generator of
    training problems, ``stream(seed, start)`` yielding problems from position ``start``) is set.
    ``prompt_style`` says how prompts are built: ``raw`` feeds the problem text as is (the embedded
    task's character tokenizer), ``chat`` applies the model's chat template and instruction (spec §4).
    ``verdict`` (optional) reads the verdict a response writes about itself: 1.0 (says right), 0.0
    (says wrong) or None (says neither); the evaluation reports it as a free baseline
    (:mod:`laser_rl.evaluation.verdict`).
    """

    name: str
    verifier: Verifier
    prompt_style: PromptStyle = "chat"
    problems: Sequence[Problem] | None = None
    stream: Callable[[int, int], Iterator[Problem]] | None = None
    verdict: Callable[[str], float | None] | None = None

    def __post_init__(self) -> None:
        if (self.problems is None) == (self.stream is None):
            raise ValueError("TaskData needs exactly one of `problems` and `stream`")
