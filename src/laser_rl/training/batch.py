"""Turn prompts + a rollout into the right-padded training batch of spec §2.3 (z appended after EOS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from laser_rl.core.laser import append_self_reward_token, find_eos


@dataclass
class TrainBatch:
    input_ids: Tensor  # [B, L] prompt + response (+ z after EOS), right-padded
    attention_mask: Tensor  # [B, L]
    position_ids: Tensor  # [B, L]
    pred_mask: Tensor  # [B, L-1] bool: column t predicts a response token (policy-gradient mask)
    eos_column: Tensor  # [B] long: EOS column (-1 when truncated)
    finished: Tensor  # [B] bool
    old_logprobs: Tensor  # [B, L-1] float32: rollout-time token log-probs aligned with pred_mask
    advantages: Tensor  # [B] float32
    rewards: Tensor  # [B] float32 verifier rewards
    mse_weights: Tensor  # [B] float32 class-balance weights over the whole batch

    def select(self, rows: Tensor) -> TrainBatch:
        """The sub-batch of ``rows`` (micro-batching), trimmed to its longest row."""
        parts = {f.name: getattr(self, f.name)[rows] for f in fields(self)}
        length = int(parts["attention_mask"].sum(dim=1).max()) if rows.numel() else 1
        length = max(length, 2)
        for key in ("input_ids", "attention_mask", "position_ids"):
            parts[key] = parts[key][:, :length]
        for key in ("pred_mask", "old_logprobs"):
            parts[key] = parts[key][:, : length - 1]
        return TrainBatch(**parts)

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def build_train_batch(
    prompts: Sequence[Sequence[int]],
    response_ids: Tensor,
    response_mask: Tensor,
    logprobs: Tensor,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    z_id: int,
    advantages: Tensor,
    rewards: Tensor,
    mse_weights: Tensor,
) -> TrainBatch:
    """Concatenate each prompt with its response without gaps, right-pad, and append z after EOS.

    ``response_ids``/``response_mask``/``logprobs``: ``[B, T]`` as returned by the sampler.
    """
    B, T = response_ids.shape
    if len(prompts) != B:
        raise ValueError(f"prompts has {len(prompts)} rows, response_ids has {B}")
    device = response_ids.device
    eos = find_eos(response_ids, stop_ids, response_mask)
    prompt_pad = pad_sequence([torch.tensor(p, dtype=torch.long) for p in prompts], batch_first=True, padding_value=pad_id)
    prompt_pad = prompt_pad.to(device)
    p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    r_len = eos.lengths
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
    eos_column = torch.where(eos.finished, p_len + eos.eos_index, torch.full_like(p_len, -1))
    appended = append_self_reward_token(ids, attention, positions, eos_column, eos.finished, z_id, pad_id, stop_ids)
    L2 = appended.input_ids.shape[1]
    col2 = torch.arange(L2 - 1, device=device).unsqueeze(0)
    # column t predicts token t+1; response tokens sit at columns [p_len, total)
    pred_mask = (col2 + 1 >= p_len.unsqueeze(1)) & (col2 + 1 < total.unsqueeze(1))
    old = torch.zeros(B, L2 - 1, dtype=torch.float32, device=device)
    old = old.masked_scatter(pred_mask, logprobs.float()[eos.response_mask])
    return TrainBatch(
        input_ids=appended.input_ids,
        attention_mask=appended.attention_mask,
        position_ids=appended.position_ids,
        pred_mask=pred_mask,
        eos_column=eos_column,
        finished=eos.finished,
        old_logprobs=old,
        advantages=advantages.float(),
        rewards=rewards.float(),
        mse_weights=mse_weights.float(),
    )
