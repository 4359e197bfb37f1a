"""The generation-engine seam: what the rollout pipeline needs from whatever generates responses.

An engine turns prompt ids into a :class:`~laser_rl.rollout.sampler.Rollout` (response ids, mask,
sampled-token log-probs, finished flags and, where the engine can read it, lp_z = log π(z | x, y, EOS)).
The trainer, ``laser eval``, calibration, the base-model measurement and the benchmark all reach
generation through :func:`laser_rl.rollout.pipeline.rollout_verify_score`, so a second engine (vLLM,
a sharded model, TRL's) plugs in here and is chosen by name in :func:`build_engine`, without touching
them. An engine that cannot read lp_z inside its loop fills it teacher-forced before returning
(:func:`laser_rl.rollout.scorer.score_responses`, one forward over the finished responses), or sets
``reads_score = False`` and serves only runs without a self-reward score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from laser_rl.rollout.sampler import Rollout, SamplingConfig, sample


class GenerationEngine(Protocol):
    """Generates one response per prompt under sampling settings."""

    #: The engine returns lp_z read one step after EOS (``Rollout.lp_z``); otherwise lp_z is all NaN.
    reads_score: bool
    #: Ids that end a response (the pipeline strips them from decoded text).
    stop_ids: list[int]
    #: The id that right-pads responses (batches of different lengths are joined with it).
    pad_id: int

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        generator: torch.Generator | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> Rollout:
        """Responses for ``prompts`` (token ids). ``row_seeds`` (one per prompt) make each row's
        randomness independent of the batch it is in; otherwise ``generator`` drives the batch."""
        ...


@dataclass
class SamplerEngine:
    """The built-in KV-cache sampler (:func:`laser_rl.rollout.sampler.sample`) on a Hugging Face model.

    ``z_id`` set: lp_z is read inside the decoding loop (at most one extra step per batch) and z is
    never sampled. ``suppress_ids``: ids never sampled (pad, embedding rows beyond the tokenizer).
    """

    model: Any
    pad_id: int
    stop_ids: list[int]
    z_id: int | None = None
    suppress_ids: Sequence[int] = field(default_factory=tuple)

    @property
    def reads_score(self) -> bool:
        return self.z_id is not None

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        generator: torch.Generator | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> Rollout:
        seeding = {"generator": generator} if row_seeds is None else {"row_seeds": row_seeds}
        return sample(
            self.model, prompts, pad_id=self.pad_id, stop_ids=self.stop_ids, config=sampling, z_id=self.z_id,
            suppress_ids=self.suppress_ids, **seeding,
        )


#: Generation engines the trainer and the commands can build by name (``rollout.engine``).
ENGINES = ("hf", "vllm")


def build_engine(
    name: str, model: Any, *, pad_id: int, stop_ids: list[int], z_id: int | None, suppress_ids: Sequence[int] = (),
    vllm_options: dict[str, Any] | None = None,
) -> GenerationEngine:
    """The engine called ``name``: ``hf`` = :class:`SamplerEngine` (built in, reads lp_z in its loop);
    ``vllm`` = :class:`laser_rl.rollout.vllm_engine.VLLMEngine` on the model's folder, its weights synced
    from ``model`` (reads lp_z with a 1-token pass per finished response; ``vllm_options`` go to it)."""
    from laser_rl.errors import LaserError

    if name == "hf":
        return SamplerEngine(model, pad_id, stop_ids, z_id, tuple(suppress_ids))
    if name == "vllm":
        from laser_rl.rollout.vllm_engine import build_vllm_engine

        return build_vllm_engine(model, pad_id=pad_id, stop_ids=stop_ids, z_id=z_id, suppress_ids=suppress_ids,
                                 **(vllm_options or {}))
    raise LaserError(f"rollout.engine={name}: must be one of {', '.join(ENGINES)}")


def never_sampled_ids(tokenizer_size: int, vocab: int, stop_ids: Sequence[int], pad_id: int) -> list[int]:
    """Ids to mask when sampling: pad (unless it doubles as a stop id) and embedding rows the
    tokenizer cannot decode (Qwen's embedding is larger than its vocabulary). z is masked by the sampler."""
    stops = set(stop_ids)
    suppress = [pad_id] if pad_id not in stops else []
    return suppress + [i for i in range(tokenizer_size, vocab) if i not in stops]
