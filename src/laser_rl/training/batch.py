"""The training batch of spec §2.3: prompt + response with z appended after EOS, right-padded, plus
the per-row targets of one RL step (final advantages, verifier rewards, MSE weights, reference outputs).

Built in two stages because the reference model's forward (KL, ``laser.reference: model`` scores)
runs on the sequences before the final advantages exist: :func:`build_sequences` → reference pass →
advantages → :class:`TrainBatch`. Nothing is written into a batch after it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from laser_rl.core.laser import append_self_reward_token
from laser_rl.rollout.sampler import Rollout


@dataclass
class Sequences:
    """The input of one policy forward (``PolicyWithScore``)."""

    input_ids: Tensor  # [B, L] prompt + response (+ z after EOS), right-padded
    attention_mask: Tensor  # [B, L]
    position_ids: Tensor  # [B, L]
    pred_mask: Tensor  # [B, L-1] bool: column t predicts a response token (policy-gradient mask; never z)
    eos_column: Tensor  # [B] long: EOS column (-1 when truncated); its logits predict z
    finished: Tensor  # [B] bool
    old_logprobs: Tensor  # [B, L-1] float32: rollout-time token log-probs aligned with pred_mask

    def select(self, rows: Tensor) -> Sequences:
        """The rows ``rows`` (micro-batching), trimmed to their longest row."""
        parts = {f.name: getattr(self, f.name)[rows] for f in fields(self)}
        length = max(int(parts["attention_mask"].sum(dim=1).max()) if rows.numel() else 1, 2)
        for key in ("input_ids", "attention_mask", "position_ids"):
            parts[key] = parts[key][:, :length]
        for key in ("pred_mask", "old_logprobs"):
            parts[key] = parts[key][:, : length - 1]
        return Sequences(**parts)

    def to(self, device: torch.device) -> Sequences:
        return Sequences(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class TrainBatch:
    """One RL step's batch: the sequences and what the loss needs per row."""

    seq: Sequences
    advantages: Tensor  # [B] float32: the final A' (Eq. 4, then Eq. 15 after the warm-ups)
    rewards: Tensor  # [B] float32 verifier rewards r_v
    mse_weights: Tensor  # [B] float32 class-balance weights counted over the whole (all-process) batch
    ref_logprobs: Tensor | None = None  # [B, L-1] float32: the frozen reference model's token log-probs
    ref_lp_z: Tensor | None = None  # [B] float32: its lp_z (laser.reference: model)

    def select(self, rows: Tensor) -> TrainBatch:
        seq = self.seq.select(rows)
        width = seq.pred_mask.shape[1]
        return replace(
            self, seq=seq, advantages=self.advantages[rows], rewards=self.rewards[rows],
            mse_weights=self.mse_weights[rows],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[rows][:, :width],
            ref_lp_z=None if self.ref_lp_z is None else self.ref_lp_z[rows],
        )


def build_sequences(
    prompts: Sequence[Sequence[int]], rollout: Rollout, *, pad_id: int, z_id: int, stop_ids: Sequence[int] | None = None
) -> Sequences:
    """Concatenate each prompt with its response without gaps, right-pad, and append z after EOS.

    The end of each response comes from the rollout (``finished`` and ``response_mask``, which covers
    the stop token): where a response ends is decided once, by whoever generated it.
    """
    response_ids, response_mask = rollout.response_ids, rollout.response_mask
    B, T = response_ids.shape
    if len(prompts) != B:
        raise ValueError(f"prompts has {len(prompts)} rows, response_ids has {B}")
    device = response_ids.device
    prompt_pad = pad_sequence([torch.tensor(p, dtype=torch.long) for p in prompts], batch_first=True, padding_value=pad_id)
    prompt_pad = prompt_pad.to(device)
    p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    r_len = response_mask.sum(dim=1)
    finished = rollout.finished.bool()
    total = p_len + r_len
    L = int(total.max())
    col = torch.arange(L, device=device).unsqueeze(0)  # [1, L]
    in_prompt = col < p_len.unsqueeze(1)
    in_resp = (col >= p_len.unsqueeze(1)) & (col < total.unsqueeze(1))
    p_idx = col.clamp(max=prompt_pad.shape[1] - 1).expand(B, L)
    r_idx = (col - p_len.unsqueeze(1)).clamp(0, max(T - 1, 0))
    ids = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    ids = torch.where(in_prompt, prompt_pad.gather(1, p_idx), ids)
    if T:
        ids = torch.where(in_resp, response_ids.gather(1, r_idx), ids)
    attention = (in_prompt | in_resp).long()
    positions = col.expand(B, L).clone()
    eos_column = torch.where(finished, total - 1, torch.full_like(p_len, -1))  # the stop token closes the mask
    appended = append_self_reward_token(ids, attention, positions, eos_column, finished, z_id, pad_id, stop_ids)
    L2 = appended.input_ids.shape[1]
    col2 = torch.arange(L2 - 1, device=device).unsqueeze(0)
    # column t predicts token t+1; response tokens sit at columns [p_len, total)
    pred_mask = (col2 + 1 >= p_len.unsqueeze(1)) & (col2 + 1 < total.unsqueeze(1))
    old = torch.zeros(B, L2 - 1, dtype=torch.float32, device=device)
    old = old.masked_scatter(pred_mask, rollout.logprobs.float()[response_mask.bool()])
    return Sequences(
        input_ids=appended.input_ids,
        attention_mask=appended.attention_mask,
        position_ids=appended.position_ids,
        pred_mask=pred_mask,
        eos_column=eos_column,
        finished=finished,
        old_logprobs=old,
    )
