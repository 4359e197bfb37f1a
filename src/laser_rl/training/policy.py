"""One forward pass that yields both the policy's token log-probs and the self-reward input lp_z.

The wrapper is an ``nn.Module`` whose ``forward`` does all the work, so DDP/FSDP (through
accelerate) see every parameter used inside ``forward`` and synchronise gradients as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, inv_temp: Tensor) -> Tensor:
    logits = F.linear(hidden, weight, bias).float() * inv_temp.unsqueeze(1)
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=-1)


def chunked_token_logprobs(
    hidden: Tensor, head: nn.Linear, targets: Tensor, temperature: float | Tensor = 1.0, chunk_size: int = 1024
) -> Tensor:
    """log softmax(head(hidden) / T)[target] for ``hidden`` ``[N, H]``, ``targets`` ``[N]`` → ``[N]`` float32.

    ``temperature`` is a number or a per-row ``[N]`` tensor. Logits are materialised in float32 one
    chunk of ``chunk_size`` rows at a time and recomputed in the backward pass (activation
    checkpointing), so memory stays O(chunk × vocab) instead of O(tokens × vocab).
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    temp = torch.as_tensor(temperature, dtype=torch.float32, device=hidden.device).expand(hidden.shape[0])
    inv_temp = 1.0 / temp
    pieces = []
    for h, t, it in zip(hidden.split(chunk_size), targets.split(chunk_size), inv_temp.split(chunk_size)):
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, head.weight, head.bias, t, it, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, head.weight, head.bias, t, it))
    return torch.cat(pieces)


@dataclass
class PolicyOutput:
    token_logprobs: Tensor  # [B, L-1] float32: log π(input_ids[:, t+1] | ≤ t) / T where pred_mask, else 0
    lp_z: Tensor  # [B] float32: untempered log π(z | x, y, EOS) at eos_column, NaN where not finished


class PolicyWithScore(nn.Module):
    """Wrap a Hugging Face causal LM; see :meth:`forward`."""

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        pred_mask: Tensor,
        eos_column: Tensor,
        finished: Tensor,
        temperature: float = 1.0,
        with_score: bool = True,
    ) -> PolicyOutput:
        """One pass over a right-padded batch with z already appended after EOS (spec §2.3).

        - ``pred_mask`` ``[B, L-1]``: True at column t when token t+1 is a response token (the
          policy-gradient mask; the z column is never in it).
        - ``eos_column`` ``[B]``: column of EOS; the logits there predict z = ``input_ids[eos+1]``.
        - Token log-probs use logits / ``temperature`` (the sampling distribution); lp_z always
          uses untempered float32 logits (spec §7.4). ``with_score=False`` skips lp_z (all NaN).
        """
        decoder = self.model.get_decoder()
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [B, L, H]
        head = self.model.get_output_embeddings()
        B, L = input_ids.shape
        # The EOS column predicts the appended z, so lp_z is the same shifted gather as the token
        # log-probs: both go through one chunked head pass (z rows untempered, spec §7.4).
        cols = torch.arange(L - 1, device=input_ids.device).unsqueeze(0)
        eos_mask = (cols == eos_column.unsqueeze(1)) & finished.unsqueeze(1) if with_score else torch.zeros_like(pred_mask)
        select = pred_mask | eos_mask
        is_z = eos_mask[select]
        temps = torch.where(is_z, 1.0, float(temperature))
        lp = chunked_token_logprobs(hidden[:, :-1][select], head, input_ids[:, 1:][select], temps, self.chunk_size)
        token_logprobs = hidden.new_zeros(pred_mask.shape, dtype=torch.float32).masked_scatter(pred_mask, lp[~is_z])
        lp_z = torch.full((B,), float("nan"), dtype=torch.float32, device=input_ids.device)
        if with_score:
            lp_z = lp_z.masked_scatter(finished, lp[is_z])
        return PolicyOutput(token_logprobs, lp_z)
