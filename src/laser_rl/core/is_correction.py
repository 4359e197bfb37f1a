"""Truncated importance sampling (TIS) for the sampler/trainer mismatch of an external rollout engine.

An engine such as vLLM samples with its own kernels (and often its own dtype), so the log-probs it
sampled with, ``rollout_logprobs``, are not bit-equal to the training forward's ``train_logprobs``
even with identical weights. The policy gradient then uses samples from a slightly different policy.
The correction reweights each response token by ρ = π_train / π_rollout, truncated from above at
``clip`` so a rare token the engine under-estimated cannot blow up the variance:

- ``token``:    ρ_t = min(exp(lp_train_t − lp_rollout_t), clip)            (verl's TIS, token level)
- ``sequence``: ρ   = min(exp(Σ_t (lp_train_t − lp_rollout_t)), clip), one weight for every token
- ``none``:     ρ = 1

Defaults follow verl (``rollout_is_level: token``, ``rollout_is_mode: truncate``,
``rollout_is_threshold: 2.0``) and TRL's token-level truncation with ``vllm_importance_sampling_cap = 2.0``.
(TRL 1.16's newer default is ``sequence_mask`` with C_max 3.0, a rejection scheme rather than truncation.)
The weights are constants of the loss (no gradient) and 0 on padding. With the built-in sampler the
two log-probs come from the same forward code, Δ is 0 and every weight is exactly 1.

The mismatch itself is logged as :data:`DIFF_METRIC` = mean |Δ log-prob| over response tokens (TRL
logs the same as ``sampling/sampling_logp_difference/mean``; verl logs the probability-space
``training/rollout_probs_diff_mean``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from laser_rl.errors import LaserError

if TYPE_CHECKING:  # the functions take tensors; the names above load without torch (the config schema uses them)
    import torch

ISMode = Literal["none", "token", "sequence"]
IS_MODES: tuple[str, ...] = ("none", "token", "sequence")
#: Default correction and truncation (verl's token-level TIS; TRL's token_truncate cap).
DEFAULT_IS_MODE: ISMode = "token"
DEFAULT_IS_CLIP = 2.0
#: The metric name of :func:`rollout_logprob_diff` in the trainer's logs.
DIFF_METRIC = "rollout/logprob_diff"


def _check(train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> None:
    if train_logprobs.shape != rollout_logprobs.shape or train_logprobs.shape != mask.shape:
        raise ValueError(
            f"train_logprobs {tuple(train_logprobs.shape)}, rollout_logprobs {tuple(rollout_logprobs.shape)} "
            f"and mask {tuple(mask.shape)} must have one shape [B, T]"
        )


def is_weights(
    train_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: ISMode = DEFAULT_IS_MODE,
    clip: float = DEFAULT_IS_CLIP,
) -> torch.Tensor:
    """Truncated importance weights [B, T] (float32, detached, 0 where ``mask`` is False).

    train_logprobs[B, T]    log π_train of the sampled tokens (the training forward, before the update)
    rollout_logprobs[B, T]  log π_rollout the engine sampled them with
    mask[B, T]              bool, response tokens
    """
    if mode not in IS_MODES:
        raise LaserError(f"rollout.is_correction must be one of {', '.join(IS_MODES)}, got {mode!r}")
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise LaserError(f"rollout.is_clip must be a number > 0, got {clip!r}")
    _check(train_logprobs, rollout_logprobs, mask)
    m = mask.bool()
    if mode == "none":
        return m.float()
    # Δ in float32 and 0 on padding (padding may hold anything, even -inf): [B, T]
    delta = (train_logprobs.detach().float() - rollout_logprobs.detach().float()).masked_fill(~m, 0.0)
    if mode == "sequence":
        delta = delta.sum(dim=1, keepdim=True).expand_as(delta)  # [B, 1] -> [B, T]
    # exp of a clamped log-ratio: never overflows, equal to min(exp(Δ), clip)
    return delta.clamp(max=math.log(clip)).exp().masked_fill(~m, 0.0)


def rollout_logprob_diff(train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |log π_train − log π_rollout| over response tokens (0.0 for an empty mask): :data:`DIFF_METRIC`."""
    _check(train_logprobs, rollout_logprobs, mask)
    m = mask.bool()
    if not m.any():
        return 0.0
    delta = (train_logprobs.detach().float() - rollout_logprobs.detach().float())[m]
    return float(delta.abs().mean())
