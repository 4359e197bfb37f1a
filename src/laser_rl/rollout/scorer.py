"""Teacher-forced self-reward scoring of existing (prompt ids, response ids) pairs.

For responses generated elsewhere (another engine, an older run), the score input
``lp_z = log_softmax(logits at the EOS position)[z]`` needs one forward pass over
prompt + response (+ EOS). It takes token ids, never text: re-tokenising decoded text (as the
reference evaluation does) can change the ids and therefore the score.

Every sequence in a batch is left-padded so that its EOS lands on the last position; the model
then only has to compute logits at that one position (``logits_to_keep=1``), in float32, instead of
materialising [batch, length, vocab] logits. Going through the model's own head keeps any logit
scaling or soft-capping it applies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch

from laser_rl.core.laser import find_eos
from laser_rl.errors import LaserError
from laser_rl.rollout.sampler import (
    as_id_rows,
    check_ids_in_vocab,
    check_token_id,
    check_token_ids,
    context_length,
    left_pad,
    model_device,
    supports_logits_to_keep,
    vocab_size,
)


def score_responses(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    z_id: int,
    pad_id: int,
    stop_ids: Iterable[int],
    eos_id: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """Return lp_z[N] (float32, on the model's device) for N (prompt, response) id pairs.

    A response is cut after its first stop id (the sampler stops there too); a response with no
    stop id gets ``eos_id`` appended, so every response is scored after an EOS token.
    """
    vocab = vocab_size(model)
    z_id = check_token_id(z_id, vocab, "z_id")
    pad_id = check_token_id(pad_id, vocab, "pad_id")
    eos_id = check_token_id(eos_id, vocab, "eos_id")
    stops = check_token_ids(stop_ids, vocab, "stop_ids")
    if eos_id not in stops:
        raise LaserError(f"eos_id={eos_id} must be one of stop_ids {sorted(stops)}")
    if z_id in stops:
        raise LaserError(f"z_id={z_id} is also a stop id: the self-reward token must differ from EOS")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LaserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    p_rows = as_id_rows(prompts, "prompt")
    r_rows = as_id_rows(responses, "response")
    if len(p_rows) != len(r_rows):
        raise LaserError(f"got {len(p_rows)} prompts but {len(r_rows)} responses")
    seqs = _sequences_ending_in_eos(p_rows, r_rows, stops, eos_id, vocab, context_length(model))
    return _lp_z_at_last_position(model, seqs, z_id, pad_id, batch_size)


def _sequences_ending_in_eos(
    p_rows: list[list[int]], r_rows: list[list[int]], stops: frozenset[int], eos_id: int, vocab: int, ctx: int | None
) -> list[list[int]]:
    """prompt + response cut after its first stop id (or + ``eos_id`` when it has none), checked
    against the vocabulary and the model's context."""
    seqs: list[list[int]] = []
    for i, (p, r) in enumerate(zip(p_rows, r_rows)):
        if not p:
            raise LaserError(f"prompt row {i} is empty")
        check_ids_in_vocab(p, vocab, f"prompt row {i}")
        check_ids_in_vocab(r, vocab, f"response row {i}")
    for i, (p, r, cut) in enumerate(zip(p_rows, r_rows, _first_stop_columns(r_rows, stops))):
        resp = r[: cut + 1] if cut >= 0 else [*r, eos_id]
        seq = p + resp
        if ctx is not None and len(seq) > ctx:
            raise LaserError(
                f"row {i}: prompt + response + EOS is {len(seq)} tokens, longer than the model's "
                f"context of {ctx} positions"
            )
        seqs.append(seq)
    return seqs


def _first_stop_columns(rows: list[list[int]], stops: frozenset[int]) -> list[int]:
    """Column of each row's first stop id, −1 where it has none (:func:`laser_rl.core.laser.find_eos`, the
    one owner of where a response ends, on the right-padded rows)."""
    if not rows:
        return []
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = max(1, int(lengths.max()))
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # [N, width]
    ids = torch.zeros(mask.shape, dtype=torch.long)
    ids[mask] = torch.tensor([v for r in rows for v in r], dtype=torch.long)
    return find_eos(ids, sorted(stops), mask, allow_no_stops=True).eos_index.tolist()


def _lp_z_at_last_position(
    model: torch.nn.Module, seqs: list[list[int]], z_id: int, pad_id: int, batch_size: int
) -> torch.Tensor:
    """log_softmax(logits at each sequence's last token)[z], in float32: lp_z[N] in the order of ``seqs``."""
    lp, _ = last_token_logprobs(model, seqs, [z_id], pad_id, batch_size)
    return lp[:, 0].to(model_device(model))


def last_token_logprobs(
    model: torch.nn.Module, seqs: list[list[int]], token_ids: Sequence[int], pad_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(logits after each sequence's last token)[token_ids] in float32, ``[N, len(token_ids)]`` on
    the CPU in the order of ``seqs``, and each sequence's share of its batch's wall time in seconds ``[N]``.

    The one batched "read the next-token distribution after a whole sequence" pass: the teacher-forced score
    (z after x + y + EOS) and generative self-verification (yes/no after x + y + template) both call it.
    Longest sequences are batched together (little padding); left padding puts every sequence's end on the
    last position, the only one whose logits are kept."""
    n = len(seqs)
    out = torch.full((n, len(token_ids)), float("nan"), dtype=torch.float32)
    seconds = torch.zeros(n, dtype=torch.float64)
    if n == 0:
        return out, seconds
    device = model_device(model)
    order = sorted(range(n), key=lambda i: -len(seqs[i]))
    keep_kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    wanted = torch.tensor(list(token_ids), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = order[start : start + batch_size]
                t0 = time.perf_counter()
                ids, mask, _ = left_pad([seqs[i] for i in chunk], pad_id, 0, device)  # [b, L]
                positions = (mask.long().cumsum(dim=1) - 1).clamp_(min=0)
                logits = model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **keep_kwargs
                ).logits[:, -1].float()  # [b, V]
                if int(wanted.max()) >= logits.shape[-1]:
                    raise LaserError(f"token id {int(wanted.max())} is beyond the model's {logits.shape[-1]} output logits")
                lp = logits[:, wanted] - torch.logsumexp(logits, dim=-1, keepdim=True)  # [b, k]
                index = torch.tensor(chunk)
                out[index] = lp.cpu()
                seconds[index] = (time.perf_counter() - t0) / len(chunk)
    finally:
        model.train(was_training)
    return out, seconds
