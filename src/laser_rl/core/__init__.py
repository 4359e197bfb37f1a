"""LaSeR mathematics (:mod:`laser_rl.core.laser`). The facts that several layers share live here, each
once, importable without torch, so that loading or printing a config does not load torch:

- :data:`AGGREGATIONS`: how the policy loss may average its token losses;
- :data:`CORRECT_THRESHOLD` / :func:`is_correct`: a response is correct when its verifier reward > the
  threshold (the MSE's class, TPR/TNR, ``acc_list``);
- :data:`SCORE_THRESHOLD` / :func:`predicted_correct`: the model predicts "correct" when its self-reward
  score > 0.5 (the midpoint of the score's targets 0 and 1);
- :data:`DEFAULT_TARGET_LOGPROB`, :data:`HIGH_TARGET_LOGPROB`, :func:`correct_target_logprob` and
  :func:`derive_beta_v`: the log π(z) that the MSE asks of a correct response, c_ref + 1/β_v.

``is_correct`` and ``predicted_correct`` take Python numbers, NumPy arrays and torch tensors alike (``>`` only).
"""

from __future__ import annotations

import math
from typing import TypeVar

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")  # how the policy loss averages

#: Default verifier-reward threshold: a response whose reward r_v > this counts as correct.
CORRECT_THRESHOLD = 0.5
#: A self-reward score r_s > this is the model's "this response is correct" (scores are fit to 0/1).
SCORE_THRESHOLD = 0.5
#: Default log π(z | x, y, EOS) that ``beta_v: auto`` asks of a correct response (c_ref + 1/β_v).
DEFAULT_TARGET_LOGPROB = -4.0
#: Above this, a correct response's target log π(z) = c_ref + 1/β_v makes z a likely token (a warning).
HIGH_TARGET_LOGPROB = -3.0

T = TypeVar("T")


def is_correct(rewards: T, threshold: float = CORRECT_THRESHOLD) -> T:
    """Verifier rewards → correct (reward > ``threshold``); bools, floats, arrays or tensors."""
    return rewards > threshold  # type: ignore[operator,return-value]


def predicted_correct(scores: T) -> T:
    """Self-reward scores → the model's own verdict "correct" (score > :data:`SCORE_THRESHOLD`)."""
    return scores > SCORE_THRESHOLD  # type: ignore[operator,return-value]


def correct_target_logprob(c_ref: float, beta_v: float) -> float:
    """The log π(z | x, y, EOS) that the MSE asks of a correct response: c_ref + 1/β_v."""
    if not (isinstance(beta_v, (int, float)) and math.isfinite(beta_v) and beta_v > 0):
        raise ValueError(f"beta_v must be a positive finite number, got {beta_v!r}")
    return c_ref + 1.0 / beta_v


def derive_beta_v(c_ref: float, target_logprob: float = DEFAULT_TARGET_LOGPROB) -> float:
    """β_v such that a correct response's target log-prob c_ref + 1/β_v equals ``target_logprob``.

    The paper's β_v = 0.1 assumes c_ref ≈ −23; on a model whose c_ref is −12 it would push the
    target to −2, making z a likely token. Keeping c_ref + 1/β_v well below 0 keeps z improbable.
    """
    if not target_logprob > c_ref:
        raise ValueError(f"target_logprob ({target_logprob}) must exceed c_ref ({c_ref})")
    return 1.0 / (target_logprob - c_ref)

