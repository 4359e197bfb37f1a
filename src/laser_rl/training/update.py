"""One optimiser pass over an RL step's batch (PPO epochs × mini-batches × micro-batches), as a function.

The trainer calls :func:`update_policy`; so do the sharding tests (``tests/fsdp_worker.py``), which is
why it takes its process-group operations as a :class:`Collective` instead of an ``Accelerator``:
the same code runs in one process, under DDP and under FSDP2.

Loss normalisers are global: each micro-batch's loss is divided by the whole mini-batch's token (or
row) count and MSE weight sum over all ranks, divided by the world size because DDP/FSDP average the
gradients over ranks. So accumulating micro-batches, or splitting the batch over ranks, gives the
full-batch gradient.

The NaN check is agreed by all ranks (one all-reduce of a per-rank flag) *before* any rank raises or
calls backward: a rank that stopped alone would leave the others waiting in the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from laser_rl.core import laser as core
from laser_rl.core.is_correction import ISMode, is_weights, rollout_logprob_diff
from laser_rl.errors import LaserError
from laser_rl.score_params import ScoreParams
from laser_rl.training.batch import Sequences, TrainBatch
from laser_rl.training.policy import PolicyOutput


@dataclass
class UpdateStats:
    """What one optimiser pass over a batch reports (means over its optimiser steps)."""

    policy_loss: float = 0.0
    sr_loss: float = 0.0
    clip_fraction: float = 0.0
    dual_clip_fraction: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0  # mean policy entropy (nats) over response tokens, from the update's forwards
    grad_norm: float = 0.0
    # sampler/trainer mismatch (core.is_correction), over response tokens: mean |Δ log-prob| between the first
    # training forward and the rollout's log-probs, and the mean importance weight applied (1 = none)
    rollout_logprob_diff: float = 0.0
    is_weight_mean: float = 1.0

    def add_micro_batch(self, terms: core.LaserLossTerms, out: PolicyOutput, mask: Tensor, share: float) -> None:
        """Losses add up over micro-batches (they are normalised by the whole mini-batch); token
        statistics are weighted by ``share``, the micro-batch's fraction of the mini-batch's tokens,
        so they equal the whole mini-batch's."""
        self.policy_loss += float(terms.policy.detach())
        self.sr_loss += float(terms.mse.detach())
        self.clip_fraction += float(terms.stats["clip_fraction"]) * share
        self.dual_clip_fraction += float(terms.stats["dual_clip_fraction"]) * share
        self.kl += float(terms.stats["kl"]) * share
        self.entropy += float(out.entropy[mask].mean()) * share if bool(mask.any()) else 0.0

    def averaged(self, n_updates: int) -> UpdateStats:
        return UpdateStats(**{k: v / max(n_updates, 1) for k, v in asdict(self).items()})


def _identity(t: Tensor) -> Tensor:
    return t


def _plain_backward(t: Tensor) -> None:
    t.backward()


@dataclass
class Collective:
    """The process-group operations an update needs; the defaults are those of one process.

    ``reduce_sum``: all-reduce (sum) of a tensor over ranks. ``accumulate``: the context a micro-batch
    whose gradients must not be reduced yet runs in (DDP ``no_sync``). ``clip``: clip the global
    gradient norm to its argument and return the norm (a plain tensor).
    """

    rank: int = 0
    world: int = 1
    reduce_sum: Callable[[Tensor], Tensor] = _identity
    backward: Callable[[Tensor], None] = _plain_backward
    accumulate: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    clip: Callable[[float], Tensor] | None = None

    def ranks_where(self, flag: bool, device: torch.device) -> list[int]:
        """The ranks where ``flag`` holds, known to every rank (a collective: every rank calls it)."""
        flags = torch.zeros(self.world, device=device)
        flags[self.rank] = float(flag)
        return [int(i) for i in torch.nonzero(self.reduce_sum(flags)).flatten().tolist()]


@dataclass(frozen=True)
class UpdateSettings:
    """The loss and batching settings of an update (from ``loss.*``, ``optim.max_grad_norm``, ``guard.nan_check``)."""

    loss: core.PolicyLossConfig
    temperature: float = 1.0
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 0  # rows per forward (0 = the whole mini-batch)
    max_grad_norm: float = 0.0  # 0 = no clipping
    nan_check: bool = True
    compute_dtype: torch.dtype | None = None  # autocast dtype of the forwards (None: the weights' dtype)
    is_correction: ISMode = "none"  # truncated importance sampling of the PG term (rollout.is_correction)
    is_clip: float = 2.0

    @property
    def on_policy(self) -> bool:
        """One epoch, one mini-batch: the old log-probs are the current ones (detached)."""
        return self.ppo_epochs == 1 and self.mini_batches == 1

    @classmethod
    def from_config(cls, cfg: Any, compute_dtype: torch.dtype | None = None,
                    is_correction: ISMode | None = None) -> UpdateSettings:
        """``is_correction`` overrides ``rollout.is_correction`` (the trainer passes "none" for engine hf)."""
        lo, r = cfg.loss, cfg.rollout
        return cls(
            loss=core.PolicyLossConfig(lo.clip_low, lo.clip_high, lo.aggregation, lo.kl_coef, lo.clip_ratio_c),
            temperature=cfg.rollout.temperature, ppo_epochs=lo.ppo_epochs, mini_batches=lo.mini_batches,
            micro_batch_size=lo.micro_batch_size, max_grad_norm=cfg.optim.max_grad_norm,
            nan_check=cfg.guard.nan_check, compute_dtype=compute_dtype,
            is_correction=r.is_correction if is_correction is None else is_correction, is_clip=r.is_clip,
        )


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for a forward: autocast to ``dtype`` (float32 master weights), or nothing."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def policy_forward(
    policy: nn.Module, seq: Sequences, temperature: float, with_score: bool = True
) -> PolicyOutput:
    """``PolicyWithScore``'s forward on the sequences ``seq``."""
    return policy(seq.input_ids, seq.attention_mask, seq.position_ids, seq.pred_mask,
                  seq.eos_column, seq.finished, temperature, with_score)


@torch.no_grad()
def forward_in_micro_batches(
    policy: nn.Module, seq: Sequences, *, temperature: float, micro_batch_size: int = 0,
    with_score: bool = True, compute_dtype: torch.dtype | None = None,
) -> PolicyOutput:
    """A no-grad forward over ``seq`` in slices of at most ``micro_batch_size`` rows (0 = all at once):
    the old-log-prob recompute and the reference pass, which would otherwise run the whole batch in one
    forward. Returns full-width ``[B, L-1]`` token log-probs (0 outside ``pred_mask``) and ``[B]`` lp_z."""
    B = seq.input_ids.shape[0]
    device = seq.input_ids.device
    if not micro_batch_size or micro_batch_size >= B:
        with autocast(device, compute_dtype):
            return policy_forward(policy, seq, temperature, with_score)
    token_logprobs = torch.zeros(seq.pred_mask.shape, dtype=torch.float32, device=device)  # [B, L-1]
    entropy = torch.zeros_like(token_logprobs)  # [B, L-1]
    lp_z = torch.full((B,), float("nan"), dtype=torch.float32, device=device)  # [B]
    for rows in torch.arange(B, device=device).split(micro_batch_size):
        with autocast(device, compute_dtype):
            out = policy_forward(policy, seq.select(rows), temperature, with_score)
        token_logprobs[rows, : out.token_logprobs.shape[1]] = out.token_logprobs
        entropy[rows, : out.entropy.shape[1]] = out.entropy
        lp_z[rows] = out.lp_z
    return PolicyOutput(token_logprobs, lp_z, entropy)


def micro_batch_loss(
    out: PolicyOutput,
    sub: TrainBatch,
    config: core.PolicyLossConfig,
    *,
    alpha: float | None,
    score: ScoreParams | None,
    normalizer: torch.Tensor | float,
    weight_sum: torch.Tensor | float,
    on_policy: bool = True,
    is_weights: Tensor | None = None,
) -> core.LaserLossTerms:
    """The LaSeR loss of one micro-batch from its forward ``out`` (``alpha=None``: plain GRPO).

    The score comes from the same forward (``out.lp_z``); on-policy (one epoch, one mini-batch) the old
    log-probs are the detached current ones. ``normalizer`` / ``weight_sum``: the whole mini-batch's token
    (or row) count and MSE weight sum, divided by the number of processes.

    ``is_weights`` ``[B, T]`` (detached; :func:`~laser_rl.core.is_correction.is_weights`): truncated importance
    weights of the policy-gradient term, verl's ``pg_losses * w`` (``core.policy_loss``'s ``token_weights``);
    the KL and MSE terms are not weighted.
    """
    scores = None
    if alpha is not None:
        if score is None:
            raise LaserError("the self-reward MSE needs score parameters (z, beta_v, c_ref)")
        scores = score.score(out.lp_z, sub.ref_lp_z)
    lp = out.token_logprobs  # [B, T]
    old = lp.detach() if on_policy else sub.seq.old_logprobs
    return core.laser_loss(
        lp, old, sub.advantages, sub.seq.pred_mask, config, normalizer=normalizer, alpha=alpha,
        scores=scores, rewards=sub.rewards, finished=sub.seq.finished, mse_weights=sub.mse_weights,
        mse_weight_sum=weight_sum, ref_logprobs=sub.ref_logprobs, token_weights=is_weights,
    )


def clip_grad_norm(parameters: Any, max_norm: float) -> Tensor:
    """Clip the global gradient norm; returns it as a plain tensor (also for FSDP2's DTensor gradients)."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def update_policy(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    settings: UpdateSettings,
    *,
    alpha: float | None,
    score: ScoreParams | None,
    comm: Collective | None = None,
    generator: torch.Generator | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    stop_message: Callable[[str], str] = str,
) -> UpdateStats:
    """``ppo_epochs`` passes over ``batch`` in ``mini_batches`` optimiser steps, each accumulated over
    micro-batches of ``micro_batch_size`` rows. ``alpha`` weighs the MSE term (``None``: plain GRPO).

    ``scheduler`` (if any) steps once per optimiser step. A non-finite loss or gradient norm on any
    rank stops every rank with the same :class:`LaserError` (``stop_message`` adds context to it).
    """
    comm = comm or Collective()
    B = batch.seq.input_ids.shape[0]
    device = batch.seq.input_ids.device
    s = settings
    pred = batch.seq.pred_mask
    rollout_lp = batch.seq.old_logprobs  # [B, L-1] the sampler's log-probs (build_sequences)
    weights: Tensor | None = None  # [B, L-1] off-policy: the whole batch's IS weights, from the recompute
    diff, w_mean = 0.0, 1.0
    if not s.on_policy:  # old log-probs from the same code path as the update (not the sampler's)
        recomputed = forward_in_micro_batches(policy, batch.seq, temperature=s.temperature,
                                              micro_batch_size=s.micro_batch_size, with_score=False,
                                              compute_dtype=s.compute_dtype).token_logprobs
        batch = replace(batch, seq=replace(batch.seq, old_logprobs=recomputed))
        diff = rollout_logprob_diff(recomputed, rollout_lp, pred)
        if s.is_correction != "none":  # verl: weights from the recomputed old log-probs, once per batch
            weights = is_weights(recomputed, rollout_lp, pred, s.is_correction, s.is_clip)
            w_mean = float(weights[pred].mean()) if bool(pred.any()) else 1.0
    total = UpdateStats()
    n_updates = 0
    micro = s.micro_batch_size or B
    for _ in range(s.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(device) if s.mini_batches > 1 else torch.arange(B, device=device)
        for mb in order.chunk(s.mini_batches):
            pm = batch.seq.pred_mask[mb]
            count = pm.sum().float() if s.loss.aggregation == "token-mean" else (pm.sum(dim=1) > 0).sum().float()
            # DDP averages gradients over processes, hence the division by the world size
            normalizer = comm.reduce_sum(count) / comm.world
            w_sum = comm.reduce_sum(batch.mse_weights[mb].sum()) / comm.world
            chunks = mb.split(micro)
            local_tokens = max(int(pm.sum()), 1)
            for i, rows in enumerate(chunks):
                sub = batch.select(rows)
                last = i == len(chunks) - 1
                with contextlib.nullcontext() if last else comm.accumulate():
                    with autocast(device, s.compute_dtype):
                        out = policy_forward(policy, sub.seq, s.temperature, with_score=alpha is not None)
                    w = None
                    share = int(sub.seq.pred_mask.sum()) / local_tokens if len(chunks) > 1 else 1.0
                    if s.on_policy:  # this is the first forward: Δ and the weights come from it
                        lp, sub_rollout, m = out.token_logprobs.detach(), sub.seq.old_logprobs, sub.seq.pred_mask
                        diff += rollout_logprob_diff(lp, sub_rollout, m) * share
                        if s.is_correction != "none":
                            w = is_weights(lp, sub_rollout, m, s.is_correction, s.is_clip)
                            w_mean += (float(w[m].mean()) - 1.0) * share if bool(m.any()) else 0.0
                    elif weights is not None:
                        w = weights[rows][:, : sub.seq.pred_mask.shape[1]]
                    terms = micro_batch_loss(out, sub, s.loss, alpha=alpha, score=score, normalizer=normalizer,
                                             weight_sum=w_sum, on_policy=s.on_policy, is_weights=w)
                    if s.nan_check:
                        bad = comm.ranks_where(not bool(torch.isfinite(terms.total)), device)
                        if bad:
                            raise LaserError(stop_message(f"loss is not finite on {_ranks(bad)}"))
                    comm.backward(terms.total)
                total.add_micro_batch(terms, out, sub.seq.pred_mask, share)
            max_norm = s.max_grad_norm if s.max_grad_norm > 0 else float("inf")
            grad_norm = comm.clip(max_norm) if comm.clip is not None else clip_grad_norm(policy.parameters(), max_norm)
            if s.nan_check and not torch.isfinite(grad_norm):  # the global norm: every rank sees the same
                raise LaserError(stop_message(f"gradient norm is {float(grad_norm)}"))
            total.grad_norm += float(grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            n_updates += 1
    return replace(total.averaged(n_updates), rollout_logprob_diff=diff, is_weight_mean=w_mean)


def lr_factor(i: int, *, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier after ``i`` optimiser steps (``LambdaLR``'s lambda).

    Ours rather than transformers' ``get_scheduler``: its warm-up starts at lr 0 (a wasted first
    step; ours starts at lr/warmup as verl's does) and its linear decay has no floor (``min_lr_ratio``).
    Warm-up is linear over ``warmup_steps`` optimiser steps; then constant, or cosine/linear decay
    from lr to ``min_lr_ratio`` × lr at ``total_steps``.
    """
    import math

    if warmup_steps and i < warmup_steps:
        return (i + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (i - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of ``cfg.optim``, stepped once per optimiser step: ``train.steps`` RL steps ×
    ``loss.ppo_epochs`` × ``loss.mini_batches`` steps in all, so ``optim.warmup_steps`` counts optimiser steps."""
    o = cfg.optim
    total = cfg.train.steps * cfg.loss.ppo_epochs * cfg.loss.mini_batches

    def factor(i: int) -> float:
        return lr_factor(i, schedule=o.lr_scheduler, warmup_steps=o.warmup_steps, total_steps=total,
                         min_lr_ratio=o.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
