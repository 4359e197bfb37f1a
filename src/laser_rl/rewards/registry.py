"""The verifier a name stands for (``--verifier``, ``data.verifier``): the one place that maps them.

- ``auto``: the data's own verifier (math for benchmarks and data files, arith for the embedded task);
- ``math``: :class:`~laser_rl.rewards.math_verifier.MathVerifier` (last ``\\boxed{}``, symbolic equivalence);
- ``exact``: :class:`~laser_rl.rewards.exact.ExactVerifier` (string equality of the final answer);
- ``arith``: :class:`~laser_rl.tasks.arith.ArithVerifier` (the canonical integer after the last ``#``).
"""

from __future__ import annotations

from laser_rl.errors import LaserError
from laser_rl.tasks.base import Verifier

VERIFIER_CHOICES = ("auto", "math", "exact", "arith")


def make_verifier(name: str, *, where: str = "--verifier") -> Verifier | None:
    """The verifier called ``name``; ``None`` for ``auto`` (keep the data's own). ``where`` names the flag/key."""
    if name == "auto":
        return None
    if name == "math":
        from laser_rl.rewards.math_verifier import MathVerifier

        return MathVerifier()
    if name == "exact":
        from laser_rl.rewards.exact import ExactVerifier

        return ExactVerifier()
    if name == "arith":
        from laser_rl.tasks.arith import ArithVerifier

        return ArithVerifier()
    raise LaserError(f"{where} must be one of {', '.join(VERIFIER_CHOICES)}, got {name!r}")
