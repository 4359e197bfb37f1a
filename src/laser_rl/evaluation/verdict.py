"""The written verdict: what a response says about its own correctness, read from its text.

Some responses end their work with a self-check (the pair-sum task's ``;ok;`` / ``;no;``, a math
solution's "the answer is correct"). Reading that word costs nothing and needs no training, so it
is the first free baseline a learned self-verification score has to beat (issue 24).

A *verdict reader* maps a response's text to ``1.0`` (the response says it is right), ``0.0`` (it
says it is wrong) or ``None`` (it says neither). A task defines its own (``TaskData.verdict``, e.g.
:func:`laser_rl.tasks.pairsum.read_verdict`); for other data :func:`pattern_reader` builds one from a
regular expression (``laser eval|metrics --verdict-pattern``).

How the metrics use it (:mod:`laser_rl.evaluation.metrics`, record field ``verdicts``):

- AUROC, within-problem AUROC, hm(TPR, TNR) and best-of-k read the verdict as a score: 1, 0, and
  ``UNDEFINED_VERDICT_SCORE`` (0.5) for no verdict — so "no verdict" ranks between a "yes" and a
  "no", and is *predicted incorrect* (a score must be > 0.5 to predict correct);
- the verdict-weighted vote gives each response weight 1 if its verdict is yes, else 0 (no verdict
  weighs 0); when no answered response among the first k says yes, it is the plain majority vote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from laser_rl.errors import LaserError

VerdictReader = Callable[[str], "float | None"]

#: Words a ``--verdict-pattern`` group may capture (compared lower-cased, surrounding space removed).
YES_WORDS = frozenset({"yes", "y", "ok", "correct", "right", "true", "valid"})
NO_WORDS = frozenset({"no", "n", "incorrect", "wrong", "false", "invalid"})
#: The ``--verdict-pattern`` help text of the commands (one owner of the word lists' description).
PATTERN_HELP = (
    "the last match's first group must be a yes word (" + "/".join(sorted(YES_WORDS)) + ") or a no word ("
    + "/".join(sorted(NO_WORDS)) + "), compared lower-cased; anything else is no verdict"
)
#: The score of a response without a verdict (AUROC, hm, best-of-k): between "no" (0) and "yes" (1).
UNDEFINED_VERDICT_SCORE = 0.5
VERDICT_FIELD = "verdicts"


class PatternVerdict:
    """A verdict reader from a regular expression with one capturing group.

    The **last** match in the response decides (a response may revise itself); its first group,
    lower-cased and stripped, must be one of :data:`YES_WORDS` (→ 1) or :data:`NO_WORDS` (→ 0);
    any other word, or no match, is no verdict (``None``). Example: ``r"verdict: (\\w+)"``.
    """

    def __init__(self, pattern: str, where: str = "--verdict-pattern") -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as e:
            raise LaserError(f"{where}: not a valid regular expression ({e})") from None
        if self.regex.groups < 1:
            raise LaserError(f"{where}: {pattern!r} needs a capturing group around the verdict word, e.g. 'verdict: (\\w+)'")
        self.pattern = pattern

    def __call__(self, response: str) -> float | None:
        matches = list(self.regex.finditer(response))
        last = matches[-1] if matches else None
        if last is None or last.group(1) is None:
            return None
        word = last.group(1).strip().lower()
        return 1.0 if word in YES_WORDS else 0.0 if word in NO_WORDS else None

    def __repr__(self) -> str:
        return f"PatternVerdict({self.pattern!r})"


def pattern_reader(pattern: str | None, where: str = "--verdict-pattern") -> PatternVerdict | None:
    """:class:`PatternVerdict` for a pattern, ``None`` for no pattern (the option is off by default)."""
    return None if pattern is None else PatternVerdict(pattern, where)


def read_verdicts(responses: Sequence[str], reader: VerdictReader) -> list[float | None]:
    """One verdict per response (1.0, 0.0 or None)."""
    return [reader(text) for text in responses]


def attach_verdicts(records: Sequence[Mapping[str, Any]], reader: VerdictReader) -> list[dict[str, Any]]:
    """Copies of ``records`` with the field ``verdicts`` read from their ``responses`` by ``reader``."""
    out = []
    for r in records:
        responses = r.get("responses")
        if not isinstance(responses, list) or not all(isinstance(t, str) for t in responses):
            out.append(dict(r))  # validate_record names the bad field
            continue
        out.append({**r, VERDICT_FIELD: read_verdicts(responses, reader)})
    return out


__all__ = [
    "NO_WORDS",
    "PATTERN_HELP",
    "PatternVerdict",
    "UNDEFINED_VERDICT_SCORE",
    "VERDICT_FIELD",
    "VerdictReader",
    "YES_WORDS",
    "attach_verdicts",
    "pattern_reader",
    "read_verdicts",
]
