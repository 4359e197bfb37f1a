"""The collapse guard: stop a run whose accuracy or response length falls far below where it started.

Accuracy: the evaluation accuracy against the first evaluation when evaluations run, and always the
running mean of the training reward against its mean over the first steps. Length: the batch's mean
response length against the first step's. A check must fail ``guard.collapse_patience`` times in a row.

The check is a pure function of the step's global metrics and the guard's state; the trainer decides
on rank 0 and broadcasts the decision, so every rank stops at the same step with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from laser_rl.errors import LaserError

GUARD_WINDOW = 10  # steps averaged for the training-reward baseline and its running mean


@dataclass
class GuardState:
    """Collapse guard bookkeeping (saved in the checkpoint)."""

    start_reward: list[float] = field(default_factory=list)  # training reward of the first steps
    start_length: float | None = None  # mean response length at the first step
    ema_reward: float | None = None
    eval_baseline: float | None = None  # the first evaluation's accuracy
    bad_length: int = 0
    bad_reward: int = 0
    bad_eval: int = 0


def check_collapse(gc: Any, gs: GuardState, m: dict[str, Any]) -> str | None:
    """Update ``gs`` with the step's metrics ``m``; the reasons to stop (``None``: carry on).

    ``gc``: the ``guard`` config section (``collapse_ratio``, ``length_collapse_ratio``, ``collapse_patience``).
    """
    fails: list[str] = []
    if gc.length_collapse_ratio > 0:
        if gs.start_length is None:
            gs.start_length = m["response_length"]
        low = m["response_length"] < gc.length_collapse_ratio * gs.start_length
        gs.bad_length = gs.bad_length + 1 if low else 0
        if gs.bad_length >= gc.collapse_patience:
            fails.append(f"mean response length {m['response_length']:.1f} < {gc.length_collapse_ratio} × "
                         f"start {gs.start_length:.1f}")
    if gc.collapse_ratio > 0:
        if len(gs.start_reward) < GUARD_WINDOW:
            gs.start_reward.append(m["reward_mean"])
        else:
            a = 2.0 / (GUARD_WINDOW + 1)
            gs.ema_reward = m["reward_mean"] if gs.ema_reward is None else (1 - a) * gs.ema_reward + a * m["reward_mean"]
            r0 = sum(gs.start_reward) / len(gs.start_reward)
            gs.bad_reward = gs.bad_reward + 1 if gs.ema_reward < gc.collapse_ratio * r0 else 0
            if gs.bad_reward >= gc.collapse_patience:
                fails.append(f"training reward (running mean) {gs.ema_reward:.3f} < {gc.collapse_ratio} × start {r0:.3f}")
        if "eval_accuracy" in m:
            if gs.eval_baseline is None:
                gs.eval_baseline = m["eval_accuracy"]
            gs.bad_eval = gs.bad_eval + 1 if m["eval_accuracy"] < gc.collapse_ratio * gs.eval_baseline else 0
            if gs.bad_eval >= gc.collapse_patience:
                fails.append(f"eval accuracy {m['eval_accuracy']:.3f} < {gc.collapse_ratio} × "
                             f"first eval {gs.eval_baseline:.3f}")
    return "; ".join(fails) if fails else None


def rank0_outcome(world: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; every rank gets rank 0's result, or raises rank 0's LaserError, so that
    ranks agree (and none waits in a collective for a rank that stopped). The one rule every cross-rank
    decision of ``laser train`` goes through: the run lock, c_ref, the collapse guard."""
    try:
        outcome: tuple[Any, str | None] = (fn(), None)
    except LaserError as e:
        outcome = (None, str(e))
    if world > 1:
        from accelerate.utils import broadcast_object_list

        box = [outcome]
        broadcast_object_list(box, from_process=0)
        outcome = box[0]
    if outcome[1] is not None:
        raise LaserError(outcome[1])
    return outcome[0]
