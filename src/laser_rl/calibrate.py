"""Measure c_ref: the mean of log π_ref(z | x, y, EOS) on the initial model (spec §1).

LaSeR's score r_s = β_v·(log π(z | x, y, EOS) − c_ref) replaces the reference model's log-prob of z
by a constant, because for a never-emitted z that log-prob is practically the same for every input
(paper: −23.11 ± 0.04 on Qwen2.5-7B-Base). This module samples responses from the model, reads
lp_z after each finished response (in the sampling loop, one step after EOS), and returns its mean
and standard deviation. ``laser calibrate`` prints them; the trainer calls :func:`calibrate_c_ref`
for ``c_ref: auto`` before step 1.

Truncated responses have no EOS and therefore no score; they are left out. If too few responses
finish, the estimate is refused (more ``max_new_tokens`` is the usual fix).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from laser_rl.errors import LaserError

if TYPE_CHECKING:
    from laser_rl.rollout import SamplingConfig


@dataclass
class Calibration:
    """The measurement and what it suggests."""

    mean: float  # mean log π(z | x, y, EOS) over finished responses
    std: float  # its standard deviation across responses (unbiased)
    count: int  # finished responses measured
    total: int  # responses sampled
    truncated: int  # responses without a stop token (no score)

    def suggested_c_ref(self, decimals: int = 2) -> float:
        return round(self.mean, decimals)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select(prompts: Sequence[Any], n: int, seed: int) -> list[Any]:
    """A seeded subset of ``n`` prompts (all of them when there are fewer), in their original order."""
    if n < 1:
        raise LaserError(f"--n must be >= 1, got {n}")
    if len(prompts) <= n:
        return list(prompts)
    keep = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in keep]


def measure_self_reward_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int] | str],
    *,
    z_id: int,
    stop_ids: Sequence[int],
    pad_id: int,
    n: int = 300,
    samples_per_problem: int = 1,
    max_new_tokens: int = 1024,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    style: str = "chat",
    min_finished: int | None = None,
    config: SamplingConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine_name: str = "hf",
) -> tuple[Calibration, list[float]]:
    """Sample ``samples_per_problem`` responses for ``n`` prompts; return the summary and every lp_z.
    ``engine_name``: the generation engine (:data:`laser_rl.rollout.engine.ENGINES`).

    ``prompts``: token-id lists, or problem strings (built with the shared prompt builder in
    ``style``). ``config`` (a :class:`SamplingConfig`, e.g. the training rollout's) replaces
    ``temperature`` / ``top_p`` / ``max_new_tokens``. ``min_finished`` (default: 2 and at least
    10 % of the responses) guards against estimating c_ref from a handful of unusually short
    responses.
    """
    import torch

    from laser_rl.rollout import SamplingConfig
    from laser_rl.rollout.engine import build_engine, never_sampled_ids
    from laser_rl.rollout.pipeline import generate
    from laser_rl.rollout.sampler import model_device, vocab_size

    if samples_per_problem < 1:
        raise LaserError(f"--samples-per-problem must be >= 1, got {samples_per_problem}")
    if batch_size < 1:
        raise LaserError(f"--batch-size must be >= 1, got {batch_size}")
    chosen = _select(prompts, n, seed)
    if not chosen:
        raise LaserError("no prompts to calibrate on")
    if isinstance(chosen[0], str):
        from laser_rl.integrations.hf import build_prompts

        chosen = build_prompts(tokenizer, chosen, style)  # type: ignore[arg-type]
    rows = [list(p) for p in chosen for _ in range(samples_per_problem)]
    if config is None:
        config = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    stops = [int(s) for s in stop_ids]
    suppress = never_sampled_ids(len(tokenizer), vocab_size(model), stops, pad_id)
    engine = build_engine(engine_name, model, pad_id=pad_id, stop_ids=stops, z_id=z_id, suppress_ids=suppress)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    rollout = generate(engine, rows, config, batch_size=batch_size, generator=generator, progress=progress)
    lp = rollout.lp_z[rollout.finished].float().cpu()
    finished = int(rollout.finished.sum())
    total = len(rows)
    need = min_finished if min_finished is not None else max(2, math.ceil(0.1 * total))
    if finished < max(need, 1):
        raise LaserError(
            f"only {finished} of {total} sampled responses ended with a stop token within "
            f"max_new_tokens={config.max_new_tokens} (need at least {need}): raise --max-new-tokens "
            "(truncated responses have no EOS, hence no self-reward score)"
        )
    if not torch.isfinite(lp).all():
        raise LaserError("non-finite log π(z | x, y, EOS) measured: check the model's dtype and weights")
    std = float(lp.std(correction=1)) if lp.numel() > 1 else 0.0
    summary = Calibration(
        mean=float(lp.mean()), std=std, count=int(lp.numel()), total=total, truncated=total - finished
    )
    return summary, lp.tolist()


def calibrate_c_ref(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int] | str], **options: Any) -> tuple[float, float, int]:
    """``(mean, std, count)`` of log π(z | x, y, EOS) over finished sampled responses: c_ref = mean.

    The trainer's ``c_ref: auto`` calls this on the initial policy before step 1; ``options`` are
    the keyword arguments of :func:`measure_self_reward_logprobs`.
    """
    summary, _ = measure_self_reward_logprobs(model, tokenizer, prompts, **options)
    return summary.mean, summary.std, summary.count
