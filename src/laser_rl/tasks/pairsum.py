"""The pair-sum task: an embedded task where checking an answer is easier than producing it (issue 18).

Prompt ``[17,42,9,33,25]50=``: a list of distinct numbers and a target. Response ``17+33=50;#17,33``
followed by EOS: the pair (in list order), its sum written out, and the chosen pair after ``#``.
Exactly one pair of the list sums to the target, so the answer is unique and voting groups are exact.

Finding the pair is a search the tiny model can only guess at, but checking a written response is a
local copy-and-compare: does the sum after ``=`` equal the target in the prompt? That is the
situation self-verification is for (docs/research/self-verification.md, round 4).

**SFT data with honest wrong guesses** (``sft_wrong_rate``): if every SFT response were correct, the
written sum would always equal the target and the model would learn to *copy* the target instead of
adding, so a wrong pair would be written with a false sum (``17+42=50``) and the check would need
the addition itself. A fraction ``sft_wrong_rate`` of SFT responses therefore picks a wrong pair and
writes its true sum (``17+42=59;#17,42``), as a corpus of attempts would. It affects only the base
model's training data (:meth:`PairSumConfig.sft_target`); the test split, the training stream and
the verifier never see it. The self-reward token ``<z>`` is never part of any of this text.

**Check text** (``check_text``, a secondary lever of issue 18): the response also writes the
comparison of its sum with the target in words, ``17+33=50;ok;#17,33`` / ``17+42=59;no;#17,42``, as
pretraining corpora contain self-checks. The model learns to write it in SFT; whether the token
after EOS links it to correctness is still left to LaSeR's RL (the verifier ignores the check text).

Splits work like :mod:`laser_rl.tasks.arith`: a seeded test split of ``test_size`` distinct prompts,
and an endless training stream addressed by ``(seed, index)`` that rejects every test prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from math import comb
from typing import Any, ClassVar

from laser_rl.errors import LaserError
from laser_rl.tasks.base import Problem, TaskData
from laser_rl.tasks.char_tokenizer import DEFAULT_ALPHABET
from laser_rl.tasks.generated import (
    MAX_ATTEMPTS,
    held_out_split,
    load_task,
    problem_stream,
    stream_problem,
    task_from_dict,
)

TASK_NAME = "pairsum"
_FORMAT_VERSION = 1
#: The arithmetic alphabet plus the list brackets and the separator, appended so every arith character
#: keeps its token id; ``CHECK_LETTERS`` follow only when the responses write check text.
ALPHABET = DEFAULT_ALPHABET + ",[]"
CHECK_LETTERS = "okn"
MAX_VALUE_LIMIT = 10**6
MAX_NUMBERS_LIMIT = 16

_PROMPT_RE = re.compile(r"\[(\d+(?:,\d+)+)\](\d+)=")
_CANONICAL_INT = r"(?:0|[1-9][0-9]*)"
_PAIR_RE = re.compile(rf"({_CANONICAL_INT}),({_CANONICAL_INT})")


@dataclass(frozen=True)
class PairSumConfig:
    """Difficulty, SFT-data and split settings of the pair-sum task (all saved in ``task.json``)."""

    name: ClassVar[str] = TASK_NAME

    min_numbers: int = 5
    max_numbers: int = 6
    min_value: int = 10  # list numbers are distinct, drawn uniformly from [min_value, max_value]
    max_value: int = 99
    sft_wrong_rate: float = 0.3  # fraction of SFT responses that write a wrong pair with its true sum
    check_text: bool = False  # responses write ";ok;" / ";no;" (sum == target?) before the answer
    test_size: int = 1000
    seed: int = 0  # seeds the held-out test split

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``LaserError`` naming the first invalid field."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "sft_wrong_rate":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                    raise LaserError(f"pairsum task: sft_wrong_rate must be a number in [0, 1), got {v!r}")
            elif f.name == "check_text":
                if not isinstance(v, bool):
                    raise LaserError(f"pairsum task: check_text must be true or false, got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool):
                raise LaserError(f"pairsum task: {f.name} must be an integer, got {v!r}")
        if not 3 <= self.min_numbers <= MAX_NUMBERS_LIMIT:
            raise LaserError(
                f"pairsum task: min_numbers must be between 3 and {MAX_NUMBERS_LIMIT}, got {self.min_numbers}"
            )
        if not self.min_numbers <= self.max_numbers <= MAX_NUMBERS_LIMIT:
            raise LaserError(
                f"pairsum task: max_numbers must be between min_numbers ({self.min_numbers}) and "
                f"{MAX_NUMBERS_LIMIT}, got {self.max_numbers}"
            )
        if self.min_value < 0:
            raise LaserError(f"pairsum task: min_value must be >= 0, got {self.min_value}")
        if not self.min_value <= self.max_value <= MAX_VALUE_LIMIT:
            raise LaserError(
                f"pairsum task: max_value must be between min_value ({self.min_value}) and {MAX_VALUE_LIMIT}, "
                f"got {self.max_value}"
            )
        if self.max_value - self.min_value + 1 < 2 * self.max_numbers:
            raise LaserError(
                f"pairsum task: the value range {self.min_value}..{self.max_value} is too small for "
                f"{self.max_numbers} distinct numbers (need at least 2 x max_numbers values)"
            )
        if self.test_size < 0:
            raise LaserError(f"pairsum task: test_size must be >= 0, got {self.test_size}")
        if self.seed < 0:
            raise LaserError(f"pairsum task: seed must be >= 0, got {self.seed}")
        space = comb(self.max_value - self.min_value + 1, self.min_numbers)
        if space < 10 * max(self.test_size, 1):
            raise LaserError(
                f"pairsum task: only about {space} distinct lists with min_numbers={self.min_numbers} and values "
                f"{self.min_value}..{self.max_value}; need at least 10 x test_size ({self.test_size})"
            )

    @property
    def alphabet(self) -> str:
        """The tokenizer's characters (the check words' letters only when ``check_text`` is on, so the
        vocabulary, hence the model's initialisation, is unchanged without it)."""
        return ALPHABET + (CHECK_LETTERS if self.check_text else "")

    def max_prompt_tokens(self) -> int:
        """Longest possible prompt in characters (= tokens of the character tokenizer)."""
        value, total = len(str(self.max_value)), len(str(2 * self.max_value))
        return self.max_numbers * (value + 1) + 1 + total + 1  # '[' numbers ',' ']' target '='

    def max_response_tokens(self) -> int:
        """Longest possible response in characters, plus one for EOS: a safe ``max_new_tokens``."""
        value, total = len(str(self.max_value)), len(str(2 * self.max_value))
        check = 3 if self.check_text else 0  # "ok;"
        return (2 * value + 1 + 1 + total + 1) + check + (1 + 2 * value + 1) + 1  # "a+b=s;" "#a,b" EOS

    def to_dict(self) -> dict[str, Any]:
        """Serialisable description (``task.json``), enough to rebuild the same task and test split."""
        return {"name": TASK_NAME, "version": _FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "pairsum task") -> PairSumConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming ``where``."""
        return task_from_dict(cls, data, where, TASK_NAME, _FORMAT_VERSION)

    # The embedded-task interface (laser_rl.tasks.embedded) used by `laser base`.

    def train_problem(self, seed: int, index: int) -> Problem:
        return train_problem(self, seed, index)

    def verifier(self) -> PairSumVerifier:
        return PairSumVerifier()

    def sft_target(self, problem: Problem, rng: random.Random | None = None) -> str:
        """The SFT response for ``problem``: the solution, or with probability ``sft_wrong_rate`` an
        honestly written wrong pair (module docstring); always the solution when ``rng`` is None."""
        if rng is not None and self.sft_wrong_rate and rng.random() < self.sft_wrong_rate:
            numbers, _ = parse_prompt(problem.problem)
            right = {int(v) for v in problem.answer.split(",")}
            pairs = [(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1 :] if {a, b} != right]
            a, b = rng.choice(pairs)
            return _response(a, b, _target(problem.problem) if self.check_text else None)
        return solution(problem.problem, self.check_text)


# ----------------------------------------------------------------------------------------- problems


def _response(a: int, b: int, target: int | None = None) -> str:
    """``a+b=s;#a,b``; with a ``target``, the check text ``ok;`` / ``no;`` after the sum."""
    check = "" if target is None else ("ok;" if a + b == target else "no;")
    return f"{a}+{b}={a + b};{check}#{a},{b}"


_VERDICT_RE = re.compile(r";(ok|no);")


def read_verdict(response: str) -> float | None:
    """The response's own check text (``check_text``): ``;ok;`` → 1.0, ``;no;`` → 0.0, none → None (the
    last one counts). The task's verdict reader (``TaskData.verdict``), a free baseline in evaluation."""
    found = _VERDICT_RE.findall(response)
    return None if not found else 1.0 if found[-1] == "ok" else 0.0


def _target(prompt: str) -> int:
    return parse_prompt(prompt)[1]


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """``([17, 42, 9, 33, 25], 50)`` from ``[17,42,9,33,25]50=`` (``LaserError`` if not a prompt)."""
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise LaserError(f"pairsum task: not a pair-sum prompt: {prompt!r}")
    return [int(v) for v in m.group(1).split(",")], int(m.group(2))


def _pairs_summing_to(numbers: list[int], target: int) -> list[tuple[int, int]]:
    return [(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1 :] if a + b == target]


def _draw(cfg: PairSumConfig, rng: random.Random) -> Problem:
    for _ in range(MAX_ATTEMPTS):
        n = rng.randint(cfg.min_numbers, cfg.max_numbers)
        numbers = rng.sample(range(cfg.min_value, cfg.max_value + 1), n)
        sums: dict[int, list[tuple[int, int]]] = {}
        for i, a in enumerate(numbers):
            for b in numbers[i + 1 :]:
                sums.setdefault(a + b, []).append((a, b))
        unique = [pairs[0] for pairs in sums.values() if len(pairs) == 1]
        if unique:
            a, b = rng.choice(unique)
            prompt = "[" + ",".join(map(str, numbers)) + f"]{a + b}="
            return Problem(problem=prompt, answer=f"{a},{b}", meta={"n_numbers": n})
    raise LaserError("pairsum task: could not draw a list with a uniquely summing pair; widen the value range")


def held_out_problems(cfg: PairSumConfig) -> list[Problem]:
    """The fixed held-out split: ``cfg.test_size`` distinct problems determined by ``cfg`` alone."""
    return list(held_out_split("pairsum", cfg, _draw)[0])


def train_problem(cfg: PairSumConfig, seed: int, index: int) -> Problem:
    """Problem number ``index`` of the training stream ``seed``: never a test-split prompt."""
    return stream_problem("pairsum", cfg, _draw, seed, index)


def train_stream(cfg: PairSumConfig, seed: int, start: int = 0) -> Iterator[Problem]:
    """Endless training problems from position ``start`` (resumable: position i is fixed by (seed, i))."""
    return problem_stream("pairsum", cfg, _draw, seed, start)


def solution(prompt: str, check_text: bool = False) -> str:
    """The reference response (without EOS): ``solution("[17,42,9,33,25]50=") == "17+33=50;#17,33"``
    (``"17+33=50;ok;#17,33"`` with ``check_text``)."""
    numbers, target = parse_prompt(prompt)
    pairs = _pairs_summing_to(numbers, target)
    if len(pairs) != 1:
        raise LaserError(f"pairsum task: {prompt!r} has {len(pairs)} pairs summing to {target}, expected one")
    return _response(*pairs[0], target if check_text else None)


# ----------------------------------------------------------------------------------------- verifier


def canonical_pair(text: str) -> str | None:
    """``"17,33"`` for ``"17,33"`` or ``"33,17"`` (sorted, canonical integers); ``None`` if not a pair.

    Strict like the arith task: ``07,33``, ``17, 33``, ``17,33;`` or a single number are not pairs.
    Leading/trailing whitespace is ignored.
    """
    m = _PAIR_RE.fullmatch(text.strip())
    if m is None:
        return None
    a, b = sorted((int(m.group(1)), int(m.group(2))))
    return f"{a},{b}"


class PairSumVerifier:
    """Exact verifier: the answer is the pair after the **last** ``#``, compared as an unordered pair.

    The task guarantees that exactly one pair of the list sums to the target, and the stored answer is
    that pair, so "same unordered pair as the answer" is exactly "a pair of list numbers summing to the
    target". The written sum (``=50``) is the response's own work and is not graded. A pair that uses
    one number twice (``25,25``) never equals the answer, whose numbers are distinct.
    """

    def extract_answer(self, response: str) -> str | None:
        _, sep, tail = response.rpartition("#")
        return canonical_pair(tail) if sep else None

    def reward(self, response: str, answer: str) -> float:
        got = self.extract_answer(response)
        return 1.0 if got is not None and self.same_answer(got, answer) else 0.0

    def same_answer(self, a: str, b: str) -> bool:
        ca, cb = canonical_pair(a), canonical_pair(b)
        return ca is not None and ca == cb


# ----------------------------------------------------------------------------------------- loading


def load_pairsum(split: str = "test", **options: Any) -> TaskData:
    """The registry entry point: ``pairsum`` / ``pairsum:test`` → the test split, ``pairsum:train`` → the stream
    (options: :func:`laser_rl.tasks.generated.load_task`)."""
    data = load_task(PairSumConfig, TASK_NAME, split, options, held_out_problems, train_stream)
    data.verdict = read_verdict
    return data
