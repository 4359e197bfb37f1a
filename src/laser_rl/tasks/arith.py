"""The embedded task: chain arithmetic with a short chain of thought and an exact verifier.

Prompt ``63-15+43+75=``, response ``63-15=48;48+43=91;91+75=166;#166`` followed by EOS. The task
exists so that the whole LaSeR pipeline runs for real without a GPU or a model hub: a tiny model can
learn it to an imperfect accuracy (room for RL), and the verifier is exact.

Generation is seeded and reproducible:

- the **test split** is ``test_size`` distinct prompts drawn from ``random.Random("arith-test:<seed>")``
  (``seed`` = the task's seed, saved in ``task.json``), so a model folder rebuilds the same split;
- the **training stream** ``stream(seed, start)`` yields problem ``i`` from its own RNG seeded by
  ``(seed, i)``, so training can resume at any data position in O(1), and it **rejects every prompt of
  the test split**: training and test prompts are disjoint by construction.

Answers: the integer after the last ``#``, strictly canonical (see :class:`ArithVerifier`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from laser_rl.errors import LaserError
from laser_rl.tasks.base import Problem, TaskData
from laser_rl.tasks.char_tokenizer import DEFAULT_ALPHABET
from laser_rl.tasks.generated import (
    held_out_split,
    load_task,
    problem_stream,
    read_task_record,
    stream_problem,
    task_from_dict,
)
from laser_rl.tasks.generated import save_task as save_generated_task

TASK_NAME = "arith"
_FORMAT_VERSION = 1
#: Operators the character tokenizer can write. ``*`` etc. would need a bigger alphabet.
SUPPORTED_OPS = "+-"
#: Keeps numbers (and so sequences) short enough for a tiny model and a 64-token budget by default.
MAX_VALUE_LIMIT = 10**6
MAX_OPERANDS_LIMIT = 32

_PROMPT_RE = re.compile(r"(\d+)((?:[+-]\d+)+)=")
_TERM_RE = re.compile(r"([+-])(\d+)")
_CANONICAL_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")


@dataclass(frozen=True)
class ArithConfig:
    """Difficulty and split settings of the arithmetic task (all saved in ``task.json``)."""

    name: ClassVar[str] = TASK_NAME
    alphabet: ClassVar[str] = DEFAULT_ALPHABET

    min_operands: int = 3
    max_operands: int = 5
    min_value: int = 10  # operands are drawn uniformly from [min_value, max_value]
    max_value: int = 99
    ops: str = "+-"
    # Write a '-' as '+' when subtracting would make the running total negative, so every number
    # in a chain stays non-negative (fewer symbols to learn, same difficulty otherwise).
    no_negative: bool = True
    # > 0: clock arithmetic, every result is taken mod this (``3+9=2`` for 10). Each step's check is
    # then a local, carry-free comparison, the "structural errors" variant of issue 9's research.
    modulus: int = 0
    test_size: int = 1000
    seed: int = 0  # seeds the held-out test split

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``LaserError`` naming the first invalid field."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "ops":
                if not isinstance(v, str):
                    raise LaserError(f"arith task: ops must be a string, got {v!r}")
            elif f.name == "no_negative":
                if not isinstance(v, bool):
                    raise LaserError(f"arith task: no_negative must be true or false, got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool):
                raise LaserError(f"arith task: {f.name} must be an integer, got {v!r}")
        if not 2 <= self.min_operands <= MAX_OPERANDS_LIMIT:
            raise LaserError(
                f"arith task: min_operands must be between 2 and {MAX_OPERANDS_LIMIT}, got {self.min_operands}"
            )
        if not self.min_operands <= self.max_operands <= MAX_OPERANDS_LIMIT:
            raise LaserError(
                f"arith task: max_operands must be between min_operands ({self.min_operands}) and "
                f"{MAX_OPERANDS_LIMIT}, got {self.max_operands}"
            )
        if self.min_value < 0:
            raise LaserError(f"arith task: min_value must be >= 0, got {self.min_value}")
        if not self.min_value <= self.max_value <= MAX_VALUE_LIMIT:
            raise LaserError(
                f"arith task: max_value must be between min_value ({self.min_value}) and {MAX_VALUE_LIMIT}, "
                f"got {self.max_value}"
            )
        if not self.ops or any(c not in SUPPORTED_OPS for c in self.ops) or len(set(self.ops)) != len(self.ops):
            raise LaserError(
                f"arith task: ops must be distinct characters from {SUPPORTED_OPS!r}, got {self.ops!r}"
            )
        if self.modulus < 0 or self.modulus == 1:
            raise LaserError(f"arith task: modulus must be 0 (off) or >= 2, got {self.modulus}")
        if self.test_size < 0:
            raise LaserError(f"arith task: test_size must be >= 0, got {self.test_size}")
        if self.seed < 0:
            raise LaserError(f"arith task: seed must be >= 0, got {self.seed}")
        # The test split and the training stream must both have room: require at least ten times
        # more possible prompts than test prompts (an upper bound; the no_negative rule merges some).
        space = self.prompt_space_upper_bound()
        if space < 10 * max(self.test_size, 1):
            raise LaserError(
                f"arith task: at most {space} distinct prompts with min/max_operands={self.min_operands}/"
                f"{self.max_operands}, min/max_value={self.min_value}/{self.max_value}, ops={self.ops!r}; "
                f"need at least 10 x test_size ({self.test_size}): widen the ranges or lower test_size"
            )

    def prompt_space_upper_bound(self) -> int:
        """An upper bound on the number of distinct prompts (values^n · ops^(n−1), summed over n)."""
        v = self.max_value - self.min_value + 1
        k = len(self.ops)
        return sum(v**n * k ** (n - 1) for n in range(self.min_operands, self.max_operands + 1))

    def max_prompt_tokens(self) -> int:
        """Longest possible prompt in characters (= tokens of the character tokenizer)."""
        return self.max_operands * len(str(self.max_value)) + self.max_operands  # ops and '='

    def max_response_tokens(self) -> int:
        """Longest possible response in characters, plus one for EOS: a safe ``max_new_tokens``."""
        if self.modulus:
            total = len(str(self.modulus - 1))
        else:
            total = len(str(self.max_operands * self.max_value)) + (0 if self.no_negative else 1)
        value = len(str(self.max_value))
        step = total + 1 + value + 1 + total + 1  # "a-b=c;"
        return (self.max_operands - 1) * step + 1 + total + 1  # steps, '#', answer, EOS

    def to_dict(self) -> dict[str, Any]:
        """Serialisable description (``task.json``), enough to rebuild the same task and test split."""
        return {"name": TASK_NAME, "version": _FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "arith task") -> ArithConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming ``where``."""
        return task_from_dict(cls, data, where, TASK_NAME, _FORMAT_VERSION)

    # The embedded-task interface (laser_rl.tasks.embedded) used by `laser base`.

    def train_problem(self, seed: int, index: int) -> Problem:
        return train_problem(self, seed, index)

    def verifier(self) -> ArithVerifier:
        return ArithVerifier()

    def sft_target(self, problem: Problem, rng: random.Random | None = None) -> str:
        """The SFT response for ``problem``: always the reference solution (``rng`` is unused)."""
        return solution(problem.problem, self.modulus)


# ----------------------------------------------------------------------------------------- problems


def _draw(cfg: ArithConfig, rng: random.Random) -> Problem:
    n = rng.randint(cfg.min_operands, cfg.max_operands)
    values = [rng.randint(cfg.min_value, cfg.max_value) for _ in range(n)]
    total = values[0]
    text = [str(total)]
    for v in values[1:]:
        op = rng.choice(cfg.ops)
        if op == "-" and cfg.no_negative and not cfg.modulus and total - v < 0:
            op = "+"
        total = _apply(total, op, v, cfg.modulus)
        text.append(f"{op}{v}")
    return Problem(problem="".join(text) + "=", answer=str(total), meta={"n_operands": n})


def held_out_problems(cfg: ArithConfig) -> list[Problem]:
    """The fixed held-out split: ``cfg.test_size`` distinct problems determined by ``cfg`` alone."""
    return list(held_out_split("arith", cfg, _draw)[0])


def train_problem(cfg: ArithConfig, seed: int, index: int) -> Problem:
    """Problem number ``index`` of the training stream ``seed``: never a test-split prompt."""
    return stream_problem("arith", cfg, _draw, seed, index)


def train_stream(cfg: ArithConfig, seed: int, start: int = 0) -> Iterator[Problem]:
    """Endless training problems from position ``start`` (resumable: position i is fixed by (seed, i))."""
    return problem_stream("arith", cfg, _draw, seed, start)


def _apply(total: int, op: str, value: int, modulus: int) -> int:
    new = total + value if op == "+" else total - value
    return new % modulus if modulus else new


def solution(prompt: str, modulus: int = 0) -> str:
    """The reference chain of thought for a prompt (without EOS): the SFT target.

    ``solution("63-15+43+75=") == "63-15=48;48+43=91;91+75=166;#166"``. The prompt's operators are
    used as written (the no-negative flip already happened when the prompt was generated). With a
    ``modulus`` every result is reduced: ``solution("7+5+9=", 10) == "7+5=2;2+9=1;#1"``.
    """
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise LaserError(f"arith task: not a chain-arithmetic prompt: {prompt!r}")
    total = int(m.group(1))
    steps = []
    for op, v in _TERM_RE.findall(m.group(2)):
        new = _apply(total, op, int(v), modulus)
        steps.append(f"{total}{op}{v}={new};")
        total = new
    return "".join(steps) + f"#{total}"


# ----------------------------------------------------------------------------------------- verifier


def canonical_int(text: str) -> str | None:
    """``text`` if it is a canonically written integer (``0``, ``166``, ``-48``), else ``None``.

    Strict on purpose: the task teaches one way to write a number, so ``007``, ``+7``, ``-0``,
    ``1,000``, ``7.0`` or ``7 `` with inner junk are not answers. Leading/trailing whitespace is
    ignored (decoders of other tokenizers may add it).
    """
    s = text.strip()
    if _CANONICAL_INT_RE.fullmatch(s) is None or s == "-0":
        return None
    return s


class ArithVerifier:
    """Exact verifier: the answer is the canonical integer after the **last** ``#``.

    - no ``#`` → no answer (reward 0);
    - several ``#`` → only the text after the last one counts (``#12#34`` answers 34);
    - the text after it must be a canonical integer and nothing else: ``#007`` (leading zeros),
      ``#12;``, ``#1a``, ``#`` → no answer (reward 0). Leading zeros are rejected rather than
      compared as integers because the model is trained to write canonical numbers, and an exact
      string rule keeps voting groups unambiguous;
    - negative answers (``#-5``) are accepted (the task produces them when ``no_negative`` is off).

    Decode responses with ``skip_special_tokens=True``: a trailing ``<eos>`` text is not stripped.
    """

    def extract_answer(self, response: str) -> str | None:
        head, sep, tail = response.rpartition("#")
        if not sep:
            return None
        return canonical_int(tail)

    def reward(self, response: str, answer: str) -> float:
        got = self.extract_answer(response)
        return 1.0 if got is not None and self.same_answer(got, answer) else 0.0

    def same_answer(self, a: str, b: str) -> bool:
        ca, cb = canonical_int(a), canonical_int(b)
        return ca is not None and ca == cb


# ----------------------------------------------------------------------------------------- loading


def save_task(folder: str | Path, cfg: ArithConfig) -> None:
    """Write ``task.json`` into ``folder`` (a model folder) so later commands rebuild the same task."""
    save_generated_task(folder, cfg)


def load_task_config(folder: str | Path) -> ArithConfig | None:
    """The arith task saved in a model folder's ``task.json``; ``None`` when the folder has none."""
    record = read_task_record(folder)
    return None if record is None else ArithConfig.from_dict(record[0], where=record[1])


def load_arith(split: str = "test", **options: Any) -> TaskData:
    """The registry entry point: ``arith`` / ``arith:test`` → the test split, ``arith:train`` → the stream
    (options: :func:`laser_rl.tasks.generated.load_task`)."""
    return load_task(ArithConfig, TASK_NAME, split, options, held_out_problems, train_stream)
