"""LaSeR mathematics, pure tensors (no model code, no I/O).

Every function names the paper equation (arXiv 2510.14943) or the spec section
(`shared/docs/laser-spec.md`) it implements. Shapes: ``B`` rows (responses), ``T`` response
length, ``L`` full sequence length (prompt + response), ``G`` groups (prompts).

Conventions:
- ``finished[b]``: row b's response ended with a stop id (EOS). ``truncated = ~finished``: it hit the
  length limit (or is empty) and gets no self-reward score.
- Steps are counted from 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from laser_rl.core import (  # the shared facts' torch-free owners; re-exported for callers of this module
    AGGREGATIONS,
    CORRECT_THRESHOLD,
    correct_target_logprob,  # noqa: F401
    derive_beta_v,  # noqa: F401
    is_correct,
)

#: |log π − log π_old| and |log π_ref − log π| are clamped to this before exponentiating (verl's
#: bound): one stale token would otherwise make the ratio, hence the loss, unbounded (e^25 ≈ 7e10).
LOG_RATIO_CLAMP = 20.0
#: The k3 KL estimate per token is clamped to [−KL_CLAMP, KL_CLAMP] (verl's low_var_kl bound).
KL_CLAMP = 10.0

# --------------------------------------------------------------------------------------------
# validation helpers


def _check_1d(name: str, t: Tensor, size: int | None = None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(getattr(t, 'shape', ()))}")
    if size is not None and t.shape[0] != size:
        raise ValueError(f"{name} has {t.shape[0]} rows, expected {size}")


def _check_2d(name: str, t: Tensor, shape: tuple[int, int] | None = None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got shape {tuple(getattr(t, 'shape', ()))}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")


def _check_beta_v(beta_v: float) -> None:
    if not (isinstance(beta_v, (int, float)) and math.isfinite(beta_v) and beta_v > 0):
        raise ValueError(f"beta_v must be a positive finite number, got {beta_v!r}")


def _stop_tensor(stop_ids: Sequence[int] | Tensor, device: torch.device, allow_empty: bool = False) -> Tensor:
    stop = torch.as_tensor(list(stop_ids) if isinstance(stop_ids, (set, frozenset)) else stop_ids,
                           dtype=torch.long, device=device).flatten()
    if stop.numel() == 0 and not allow_empty:
        raise ValueError("stop_ids must contain at least one token id")
    return stop


# --------------------------------------------------------------------------------------------
# spec §2.1: where each response ends


@dataclass
class EosInfo:
    eos_index: Tensor  # [B] long: column of the first stop id in the response, -1 if none
    finished: Tensor  # [B] bool: the response ended with a stop id
    truncated: Tensor  # [B] bool: no stop id (length limit hit, or empty response)
    lengths: Tensor  # [B] long: response tokens up to and including the first stop id
    response_mask: Tensor  # [B, T] bool: valid tokens up to and including the first stop id


def find_eos(
    response_ids: Tensor,
    stop_ids: Sequence[int] | Tensor,
    response_mask: Tensor | None = None,
    *,
    allow_no_stops: bool = False,
) -> EosInfo:
    """Locate the end of every response from a *set* of stop ids (spec §2.1, defect §7.2): the one
    owner of "where a response ends" (the sampler, the teacher-forced scorer and the TRL adapter call it).

    Never assumes EOS == pad: padding is described by ``response_mask`` (``[B, T]`` bool, True for
    generated tokens); without it every column counts as generated. Tokens after the first stop id
    are excluded from the returned mask. ``allow_no_stops``: an empty stop set is allowed (no row
    finishes: the sampler's "run every row to max_new_tokens"); otherwise it is an error.
    """
    _check_2d("response_ids", response_ids)
    B, T = response_ids.shape
    if response_mask is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=response_ids.device)
    else:
        _check_2d("response_mask", response_mask, (B, T))
        valid = response_mask.bool()
    is_stop = torch.isin(response_ids, _stop_tensor(stop_ids, response_ids.device, allow_no_stops)) & valid
    finished = is_stop.any(dim=1)
    # argmax over a 0/1 tensor returns the first maximum, i.e. the first stop id.
    first = is_stop.to(torch.int8).argmax(dim=1)
    eos_index = torch.where(finished, first, torch.full_like(first, -1))
    cols = torch.arange(T, device=response_ids.device)
    up_to_eos = cols.unsqueeze(0) <= eos_index.unsqueeze(1)
    mask = torch.where(finished.unsqueeze(1), up_to_eos & valid, valid)
    return EosInfo(eos_index, finished, ~finished, mask.sum(dim=1), mask)


# --------------------------------------------------------------------------------------------
# spec §2.3: append z right after EOS


@dataclass
class AppendedBatch:
    input_ids: Tensor  # [B, L'] long, L' = L or L + 1
    attention_mask: Tensor  # [B, L']
    position_ids: Tensor  # [B, L'] long
    z_position: Tensor  # [B] long: column of z, -1 for unfinished rows


def append_self_reward_token(
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    eos_position: Tensor,
    finished: Tensor,
    z_id: int,
    pad_id: int,
    stop_ids: Sequence[int] | Tensor | None = None,
) -> AppendedBatch:
    """Place z at column ``eos_position + 1`` of every finished row of a right-padded batch (spec §2.3).

    z gets attention and position ``position_ids[eos] + 1``, so the logits at the EOS column predict
    z and a shifted gather of the input ids yields lp_z = log π(z | x, y, EOS) with the same
    operation as the policy log-probs. When a finished row's EOS sits in the last column the batch
    grows by one padding column instead of dropping the row. Unfinished rows are left unchanged.

    Shapes: input_ids/attention_mask/position_ids ``[B, L]``, eos_position/finished ``[B]``.
    """
    _check_2d("input_ids", input_ids)
    B, L = input_ids.shape
    _check_2d("attention_mask", attention_mask, (B, L))
    _check_2d("position_ids", position_ids, (B, L))
    _check_1d("eos_position", eos_position, B)
    _check_1d("finished", finished, B)
    if z_id == pad_id:
        raise ValueError(f"z_id ({z_id}) must differ from pad_id")
    if stop_ids is not None and bool(torch.isin(torch.tensor([z_id]), _stop_tensor(stop_ids, "cpu"))):
        raise ValueError(f"z_id ({z_id}) must not be a stop id")
    finished = finished.bool()
    if finished.any():
        eos_f = eos_position[finished]
        if bool(((eos_f < 0) | (eos_f >= L)).any()):
            raise ValueError(f"eos_position must lie in [0, {L}) for finished rows")
    if bool(((eos_position + 1 == L) & finished).any()):
        input_ids = torch.cat([input_ids, input_ids.new_full((B, 1), pad_id)], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_zeros((B, 1))], dim=1)
        position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
        L += 1
    z_position = torch.where(finished, eos_position + 1, torch.full_like(eos_position, -1))
    at_z = (torch.arange(L, device=input_ids.device).unsqueeze(0) == z_position.unsqueeze(1)) & finished.unsqueeze(1)
    if bool((attention_mask.bool() & at_z).any()):
        raise ValueError("the column after EOS must be padding (attention_mask 0) in a right-padded batch")
    rows = torch.arange(B, device=input_ids.device)
    eos_pos_ids = position_ids[rows, eos_position.clamp(min=0)]
    return AppendedBatch(
        input_ids=torch.where(at_z, torch.full_like(input_ids, z_id), input_ids),
        attention_mask=torch.where(at_z, torch.ones_like(attention_mask), attention_mask),
        position_ids=torch.where(at_z, (eos_pos_ids + 1).unsqueeze(1).expand_as(position_ids), position_ids),
        z_position=z_position,
    )


# --------------------------------------------------------------------------------------------
# spec §1 / §2.5: the score


def self_reward_score(lp_z: Tensor, beta_v: float, c_ref: float) -> Tensor:
    """r_s = β_v · (log π_θ(z | x, y, EOS) − c_ref)   (paper Eq. 12 with π_ref(z|·) ≈ exp(c_ref)).

    ``lp_z``: ``[B]`` float32 log-probs of z at the EOS position (NaN allowed for unfinished rows).
    """
    _check_beta_v(beta_v)
    if not math.isfinite(c_ref):
        raise ValueError(f"c_ref must be finite, got {c_ref!r}")
    return beta_v * (lp_z - c_ref)


def unfinished_score_zero(scores: Tensor, finished: Tensor) -> Tensor:
    """``scores`` ``[B]`` with 0 where a row did not finish: a response without EOS has no self-reward
    score (its lp_z is NaN), so it is predicted incorrect, carries no vote and no self-reward advantage.
    The one owner of this rule (``ScoreParams.score``, :func:`self_reward_advantages`, the TRL adapter)."""
    return torch.where(finished.bool(), scores, torch.zeros_like(scores))


def self_reward_score_with_reference(lp_z: Tensor, lp_z_ref: Tensor, beta_v: float) -> Tensor:
    """r_s = β_v · (log π_θ(z | x, y, EOS) − log π_ref(z | x, y, EOS))   (paper Eq. 12, reference model)."""
    _check_beta_v(beta_v)
    if lp_z.shape != lp_z_ref.shape:
        raise ValueError(f"lp_z_ref has shape {tuple(lp_z_ref.shape)}, expected {tuple(lp_z.shape)}")
    return beta_v * (lp_z - lp_z_ref)


# --------------------------------------------------------------------------------------------
# spec §2.6: class-balanced MSE (Eq. 14)


def class_balance_weights(
    rewards: Tensor,
    finished: Tensor,
    class_balanced: bool = True,
    correct_threshold: float = CORRECT_THRESHOLD,
    class_counts: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Per-row MSE weights ``[B]`` (Eq. 14): w_c = N/(2N_c) for correct, w_i = N/(2N_i) for incorrect.

    Counts run over the finished rows of the whole batch; a missing class gets weight 0; truncated
    rows get 0. ``class_balanced=False`` gives weight 1 to every finished row. When the batch is
    spread over several processes, pass the global (N_c, N_i) as ``class_counts``.
    """
    _check_1d("rewards", rewards)
    return class_balance_weights_from_correct(
        is_correct(rewards, correct_threshold), finished, class_balanced, class_counts, dtype=rewards.dtype
    )


def class_balance_weights_from_correct(
    correct: Tensor,
    finished: Tensor,
    class_balanced: bool = True,
    class_counts: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`class_balance_weights` for rows already classified (``correct`` ``[B]`` bool, e.g. a
    rollout batch's ``correct``), so that the reward threshold is applied once, where rewards are verified."""
    _check_1d("correct", correct)
    _check_1d("finished", finished, correct.shape[0])
    fin = finished.bool()
    if not class_balanced:
        return fin.to(dtype)
    correct = correct.bool() & fin
    incorrect = ~correct & fin
    if class_counts is None:
        n_c, n_i = correct.sum().to(dtype), incorrect.sum().to(dtype)
    else:
        n_c, n_i = (torch.as_tensor(c, dtype=dtype, device=correct.device) for c in class_counts)
    n = n_c + n_i
    w_c = torch.where(n_c > 0, n / (2 * n_c.clamp(min=1)), torch.zeros_like(n))
    w_i = torch.where(n_i > 0, n / (2 * n_i.clamp(min=1)), torch.zeros_like(n))
    zero = torch.zeros(correct.shape, dtype=dtype, device=correct.device)
    return torch.where(correct, w_c, torch.where(incorrect, w_i, zero))


def class_balanced_mse(
    scores: Tensor,
    rewards: Tensor,
    finished: Tensor,
    class_balanced: bool = True,
    weights: Tensor | None = None,
    weight_sum: Tensor | float | None = None,
    correct_threshold: float = CORRECT_THRESHOLD,
) -> Tensor:
    """L_sr = Σ_b w_b (r_s,b − r_v,b)² / Σ_b w_b over finished rows (Eq. 14, spec §2.6).

    Normalised by the weights rather than the micro-batch size (the reference code's choice), so
    the loss scale does not depend on the truncation rate or the micro-batch size. For gradient
    accumulation pass ``weights`` and ``weight_sum`` computed over the whole batch with
    :func:`class_balance_weights`. ``scores``/``rewards``/``finished``: ``[B]``; returns a scalar
    (0 with a gradient path when no row is finished). NaN scores of unfinished rows are ignored.
    """
    _check_1d("scores", scores)
    B = scores.shape[0]
    _check_1d("rewards", rewards, B)
    _check_1d("finished", finished, B)
    if weights is None:
        weights = class_balance_weights(rewards, finished, class_balanced, correct_threshold)
    else:
        _check_1d("weights", weights, B)
    fin = finished.bool()
    sq = torch.where(fin, (scores - rewards.to(scores.dtype)) ** 2, torch.zeros_like(scores))
    w = torch.where(fin, weights.to(scores.dtype), torch.zeros_like(scores))
    total = w.sum() if weight_sum is None else torch.as_tensor(weight_sum, dtype=scores.dtype)
    return (w * sq).sum() / total.clamp(min=torch.finfo(scores.dtype).tiny)


# --------------------------------------------------------------------------------------------
# spec §2.4, §2.7: group statistics and advantages


def _check_groups(group_index: Tensor, size: int) -> int:
    _check_1d("group_index", group_index, size)
    if group_index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"group_index must be an integer tensor, got {group_index.dtype}")
    if size and int(group_index.min()) < 0:
        raise ValueError("group_index must be non-negative")
    return int(group_index.max()) + 1 if size else 0


def group_mean_std(values: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group mean, unbiased std (n − 1; 0 for a group of one) and size, each ``[G]``.

    Accumulated in float64 and returned in ``values.dtype``: float32 rewards are exact in float64,
    so a group of equal values gets a std of exactly 0 (in float32 eight 0.7s give 6e-8).
    """
    G = _check_groups(group_index, values.shape[0])
    gi = group_index.long()
    v = values.double()
    count = v.new_zeros(G).index_add_(0, gi, torch.ones_like(v))
    mean = v.new_zeros(G).index_add_(0, gi, v) / count.clamp(min=1)
    sq = v.new_zeros(G).index_add_(0, gi, (v - mean[gi]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return mean.to(values.dtype), std.to(values.dtype), count.to(values.dtype)


def _group_all_equal(values: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
    """``[G]`` bool: every value of the group is identical (exactly, not up to rounding)."""
    gi = group_index.long()
    hi = values.new_full((num_groups,), -math.inf).scatter_reduce(0, gi, values, "amax")
    lo = values.new_full((num_groups,), math.inf).scatter_reduce(0, gi, values, "amin")
    return hi == lo


def grpo_advantages(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """A_i = (r_i − mean_g r) / (std_g r + ε) with the unbiased std (Eq. 4, spec §2.4).

    ``rewards``: ``[B]``; ``group_index``: ``[B]`` integer, the prompt each row answers.
    A = 0 exactly for a group whose rewards are all equal, whatever their value (statistics in
    float64, plus an exact all-equal test, so rounding never fakes a signal), and for a group of size
    1 — where verl uses mean 0, std 1 (A = r/(1 + ε)); a lone response carries no relative signal.
    """
    _check_1d("rewards", rewards)
    mean, std, count = group_mean_std(rewards.double(), group_index)
    gi = group_index.long()
    adv = (rewards.double() - mean[gi]) / (std[gi] + eps)
    flat = _group_all_equal(rewards, group_index, mean.shape[0]) | (count <= 1)
    return torch.where(flat[gi], torch.zeros_like(adv), adv).to(rewards.dtype)


def self_reward_advantages(
    advantages: Tensor,
    scores: Tensor,
    finished: Tensor,
    group_index: Tensor,
    tau: float,
    filter_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Mix self-reward advantages into the verifier advantages (Eq. 15, spec §2.7).

    ŝ = clamp(r_s, 0, 1) (0 for unfinished rows); in a group whose std(ŝ) > ``filter_threshold``,
    S_i = (ŝ_i − mean_g ŝ) / std_g ŝ, elsewhere S_i = A_i; A'_i = (1 − τ)·A_i + τ·S_i.
    ``scores`` are the rollout-time r_s (``[B]``). Returns (A' ``[B]``, group_passed ``[G]`` bool).
    """
    _check_1d("advantages", advantages)
    B = advantages.shape[0]
    _check_1d("scores", scores, B)
    _check_1d("finished", finished, B)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    if filter_threshold < 0:
        raise ValueError(f"filter_threshold must be >= 0, got {filter_threshold}")
    s_hat = unfinished_score_zero(scores.clamp(0.0, 1.0), finished).to(advantages.dtype)
    mean, std, _ = group_mean_std(s_hat, group_index)
    passed = std > filter_threshold
    gi = group_index.long()
    s_adv = torch.where(passed[gi], (s_hat - mean[gi]) / std[gi].clamp(min=1e-12), advantages)
    return (1.0 - tau) * advantages + tau * s_adv, passed


# --------------------------------------------------------------------------------------------
# spec §3: warm-up schedule


@dataclass(frozen=True)
class LaserPhase:
    mse: bool  # train the self-reward MSE term
    integration: bool  # mix self-reward advantages into the policy advantages


def laser_phase(step: int, reasoning_warmup_steps: int, self_reward_warmup_steps: int) -> LaserPhase:
    """Spec §3: plain GRPO while step ≤ w_r; MSE only while w_r < step ≤ w_r + w_sr; then both."""
    if reasoning_warmup_steps < 0 or self_reward_warmup_steps < 0:
        raise ValueError("warm-up step counts must be >= 0")
    if step <= reasoning_warmup_steps:
        return LaserPhase(mse=False, integration=False)
    return LaserPhase(mse=True, integration=step > reasoning_warmup_steps + self_reward_warmup_steps)


def alpha_schedule(step: int, alpha: float, reasoning_warmup_steps: int, alpha_warmup_steps: int) -> float:
    """α of the MSE term at ``step`` (1-based): 0 during the reasoning warm-up, then a linear ramp.

    Not in the paper (which uses a constant α). α = alpha · min(1, (step − w_r) / w_α) for
    step > w_r; ``alpha_warmup_steps = 0`` gives the paper's constant α.
    """
    if alpha_warmup_steps < 0 or reasoning_warmup_steps < 0:
        raise ValueError("warm-up step counts must be >= 0")
    since = step - reasoning_warmup_steps
    if since <= 0:
        return 0.0
    if alpha_warmup_steps == 0:
        return alpha
    return alpha * min(1.0, since / alpha_warmup_steps)


# --------------------------------------------------------------------------------------------
# spec §2.8: PPO-clip policy loss


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    normalizer: float | Tensor | None = None,
    clip_ratio_c: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip loss with asymmetric clipping (ε_low, ε_high), optional dual-clip and k3 KL term.

    Per token: ρ = exp(clamp(log π − log π_old, ±20)); ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high));
    with dual-clip (``clip_ratio_c`` = c > 1, verl's ``clip_ratio_c``) ℓ = min(ℓ, −A·c) where A < 0,
    so a token whose ratio exploded under a negative advantage cannot dominate the batch;
    ``token_weights`` w ``[B, T]`` (constants, e.g. the truncated importance weights of
    :mod:`~laser_rl.core.is_correction`) scale the policy-gradient term only: ℓ ← w·ℓ (verl's
    ``pg_losses * rollout_is_weights``; the KL term stays unweighted, as in verl and TRL);
    [+ β_KL · clamp(e^d − d − 1, ±10) with d = clamp(log π_ref − log π, ±20)].
    Aggregation over the ``[B, T]`` token losses with ``mask``:
    - ``token-mean``: Σ ℓ / #tokens (default; the paper's);
    - ``seq-mean-token-mean``: mean over rows of each row's token mean;
    - ``seq-mean-token-sum``: mean over rows of each row's token sum (Dr. GRPO).
    ``normalizer`` replaces the local denominator (#tokens or #rows) so micro-batches of one
    mini-batch add up to the full-batch loss. Rows with no tokens contribute nothing.
    Returns (loss, stats) with stats ``clip_fraction``, ``dual_clip_fraction``, ``kl``, ``ratio_mean``
    (detached, token means).
    """
    _check_2d("logprobs", logprobs)
    B, T = logprobs.shape
    _check_2d("old_logprobs", old_logprobs, (B, T))
    _check_2d("mask", mask, (B, T))
    _check_1d("advantages", advantages, B)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if clip_low < 0 or clip_high < 0:
        raise ValueError("clip_low and clip_high must be >= 0")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or None = off), got {clip_ratio_c}")
    m = mask.to(logprobs.dtype)
    zero = torch.zeros_like(logprobs)
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual = torch.zeros_like(mask, dtype=torch.bool)
    if clip_ratio_c is not None:
        bound = -adv * clip_ratio_c
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    if token_weights is not None:
        _check_2d("token_weights", token_weights, (B, T))
        per_token = per_token * token_weights.detach().to(per_token.dtype)
    kl = zero
    if ref_logprobs is not None:
        _check_2d("ref_logprobs", ref_logprobs, (B, T))
        d = torch.where(mask.bool(), ref_logprobs - logprobs, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = (d.exp() - d - 1.0).clamp(-KL_CLAMP, KL_CLAMP)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    per_token = per_token * m
    n_tok = m.sum()
    if aggregation == "token-mean":
        denom = n_tok if normalizer is None else torch.as_tensor(normalizer, dtype=logprobs.dtype)
        loss = per_token.sum() / denom.clamp(min=1)
    else:
        row_tokens = m.sum(dim=1)
        row = per_token.sum(dim=1)
        if aggregation == "seq-mean-token-mean":
            row = row / row_tokens.clamp(min=1)
        n_rows = (row_tokens > 0).sum().to(logprobs.dtype)
        denom = n_rows if normalizer is None else torch.as_tensor(normalizer, dtype=logprobs.dtype)
        loss = row.sum() / denom.clamp(min=1)
    with torch.no_grad():
        n = n_tok.clamp(min=1)
        stats = {
            "clip_fraction": ((clipped > unclipped).to(m.dtype) * m).sum() / n,
            "dual_clip_fraction": (dual.to(m.dtype) * m).sum() / n,
            "kl": (kl * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# spec §2.8: the full LaSeR loss of one micro-batch


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of :func:`policy_loss` (the trainer's ``loss.*`` keys of the same names)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    clip_ratio_c: float | None = None


@dataclass
class LaserLossTerms:
    total: Tensor  # scalar: policy + α·mse, what is back-propagated
    policy: Tensor  # scalar: the PPO-clip term (+ β_KL·KL)
    mse: Tensor  # scalar: the class-balanced self-reward MSE L_sr (0 without the MSE)
    stats: dict[str, Tensor]  # policy_loss's detached token statistics


def laser_loss(
    token_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: PolicyLossConfig,
    *,
    normalizer: float | Tensor | None = None,
    alpha: float | None = None,
    scores: Tensor | None = None,
    rewards: Tensor | None = None,
    finished: Tensor | None = None,
    mse_weights: Tensor | None = None,
    mse_weight_sum: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> LaserLossTerms:
    """loss = PPO-clip(A') + α·L_sr (spec §2.8; L_sr is Eq. 14); ``alpha=None`` = plain GRPO (no MSE).

    ``token_logprobs``/``old_logprobs``/``mask``/``ref_logprobs``/``token_weights`` ``[B, T]`` (the weights
    scale the PPO-clip term's tokens, :func:`policy_loss`); ``advantages`` ``[B]`` the
    final A' (after Eq. 15); ``scores`` ``[B]`` r_s from the *same* forward as ``token_logprobs``
    (differentiable through lp_z); ``rewards``/``finished``/``mse_weights`` ``[B]``. For gradient
    accumulation pass the whole batch's ``normalizer`` and ``mse_weight_sum``, so the micro-batch
    losses add up to the full-batch loss.
    """
    pg, stats = policy_loss(
        token_logprobs, old_logprobs, advantages, mask, config.clip_low, config.clip_high, config.aggregation,
        ref_logprobs=ref_logprobs, kl_coef=config.kl_coef, normalizer=normalizer, clip_ratio_c=config.clip_ratio_c,
        token_weights=token_weights,
    )
    mse = pg.new_zeros(())
    if alpha is not None:
        if scores is None or rewards is None or finished is None:
            raise ValueError("the MSE term (alpha set) needs scores, rewards and finished")
        mse = class_balanced_mse(scores, rewards, finished, weights=mse_weights, weight_sum=mse_weight_sum)
    return LaserLossTerms(pg + (alpha or 0.0) * mse, pg, mse, stats)
