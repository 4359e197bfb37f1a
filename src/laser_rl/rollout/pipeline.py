"""One batched rollout → verify → score pipeline, shared by training, evaluation, calibration, the
base-model measurement and the benchmark.

    prompts ──engine──▶ Rollout (ids, mask, logprobs, finished, lp_z)
            ──decode──▶ texts (stop token removed)
            ──verify──▶ rewards r_v, correct (reward > correct_threshold: the one threshold)
            ──score───▶ r_s = ScoreParams.score(lp_z, finished=…)  (0 for unfinished rows)

Rows are laid out prompt-major: ``n`` consecutive rows answer the same prompt (the GRPO group).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from laser_rl.core import CORRECT_THRESHOLD, is_correct
from laser_rl.rollout.sampler import Rollout, SamplingConfig

if TYPE_CHECKING:
    from laser_rl.rollout.engine import GenerationEngine
    from laser_rl.score_params import ScoreParams
    from laser_rl.tasks.base import Verifier

__all__ = ["CORRECT_THRESHOLD", "RolloutBatch", "concat_rollouts", "decode_responses", "generate",
           "rollout_verify_score"]


@dataclass
class RolloutBatch:
    """The verified, scored responses of one pipeline call; B rows, prompt-major (n per prompt)."""

    prompt_ids: list[list[int]]  # [B] the prompt of each row
    rollout: Rollout  # response_ids/response_mask/logprobs [B, T], finished/lp_z [B]
    texts: list[str]  # [B] decoded responses, stop token removed
    pred_answers: list[str | None]  # [B] the verifier's extracted answers
    rewards: torch.Tensor  # [B] float32 verifier rewards r_v
    correct: torch.Tensor  # [B] bool: reward > correct_threshold
    scores: torch.Tensor | None  # [B] float32 r_s, 0 for unfinished rows; None without score parameters
    group: torch.Tensor  # [B] long: index of the row's prompt

    @property
    def finished(self) -> torch.Tensor:
        return self.rollout.finished

    def to_records(self, problems: Sequence[Any], n: int, save_ids: bool = False) -> list[dict[str, Any]]:
        """One ``samples.jsonl`` record per problem (the reference pipeline's field names plus ours;
        see :mod:`laser_rl.evaluation.runner`). ``problems[j]`` answers rows ``j·n .. j·n + n − 1``."""
        import math

        from laser_rl.errors import LaserError

        scores = self.scores.tolist() if self.scores is not None else [0.0] * len(self.texts)
        bad = next((i for i, v in enumerate(scores) if not math.isfinite(v)), None)
        if bad is not None:
            raise LaserError(f"the model gave a non-finite self-reward score ({scores[bad]}) for response {bad}: "
                             "check z and c_ref")
        mean_lp, min_lp = self.logprob_summaries()
        responses = self.rollout.responses()
        finished, correct = self.finished.tolist(), self.correct.tolist()
        records = []
        for j, prob in enumerate(problems):
            sl = slice(j * n, (j + 1) * n)
            rec: dict[str, Any] = {
                "problem": prob.problem,
                "answer": prob.answer,
                "responses": self.texts[sl],
                "pred_answers": self.pred_answers[sl],
                "acc_list": correct[sl],
                "self_rewarding_scores": scores[sl],
                "finished": finished[sl],
                "response_lengths": [len(r) for r in responses[sl]],
                "mean_logprobs": mean_lp[sl],
                "min_logprobs": min_lp[sl],
            }
            if save_ids:
                rec["prompt_ids"] = list(self.prompt_ids[j * n])
                rec["response_ids"] = responses[sl]
            records.append(rec)
        return records

    def logprob_summaries(self) -> tuple[list[float], list[float]]:
        """Per-row mean and minimum sampled-token log-prob (the free confidence baselines)."""
        mask = self.rollout.response_mask
        lp = self.rollout.logprobs.float()
        mean = (lp * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        low = lp.masked_fill(~mask, float("inf")).amin(dim=1)
        return mean.tolist(), low.tolist()


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Join rollouts sampled in several generation batches (their response lengths may differ)."""
    if len(parts) == 1:
        return parts[0]
    T = max(p.response_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: float | int | bool) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return Rollout(
        response_ids=torch.cat([pad(p.response_ids, pad_id) for p in parts]),
        response_mask=torch.cat([pad(p.response_mask, False) for p in parts]),
        logprobs=torch.cat([pad(p.logprobs, 0.0) for p in parts]),
        finished=torch.cat([p.finished for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        lp_z=torch.cat([p.lp_z for p in parts]),
    )


def generate(
    engine: GenerationEngine,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Rollout:
    """Generate one response per prompt row, ``batch_size`` rows per engine call, joined into one Rollout."""
    rows = [list(p) for p in prompt_ids]
    parts = []
    for start in range(0, len(rows), batch_size):
        seeds = None if row_seeds is None else row_seeds[start : start + batch_size]
        parts.append(engine.generate(rows[start : start + batch_size], sampling, generator=generator, row_seeds=seeds))
        if progress is not None:
            progress(min(start + batch_size, len(rows)), len(rows))
    return concat_rollouts(parts, engine.pad_id)


def decode_responses(tokenizer: Any, rollout: Rollout, stop_ids: Sequence[int]) -> list[str]:
    """Response texts with the final stop token of finished rows removed (special tokens skipped)."""
    stops = set(stop_ids)
    bodies = [r[:-1] if f and r and r[-1] in stops else r for r, f in zip(rollout.responses(), rollout.finished.tolist())]
    return tokenizer.batch_decode(bodies, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def rollout_verify_score(
    engine: GenerationEngine,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    answers: Sequence[str],
    verifier: Verifier,
    *,
    sampling: SamplingConfig,
    n: int = 1,
    batch_size: int = 512,
    score: ScoreParams | None = None,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
    correct_threshold: float = CORRECT_THRESHOLD,
    progress: Callable[[int, int], None] | None = None,
) -> RolloutBatch:
    """Sample ``n`` responses per prompt, verify them against ``answers`` and score them.

    ``score``: the score parameters (None = no score, e.g. a GRPO run without z). A score that needs a
    reference model (``reference: model``) is left to the caller, which has the reference forward:
    ``scores`` is then None and the caller calls ``score.score(lp_z, ref_lp_z, finished)``.
    ``row_seeds`` (one per response row, prompt-major) seed every row independently of the batch it is
    sampled in (evaluation); otherwise ``generator`` drives every batch in turn (training).
    """
    if len(prompt_ids) != len(answers):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(answers)} answers")
    rows = [list(p) for p in prompt_ids for _ in range(n)]
    if row_seeds is not None and len(row_seeds) != len(rows):
        raise ValueError(f"row_seeds has {len(row_seeds)} entries for {len(rows)} response rows")
    rollout = generate(engine, rows, sampling, batch_size=batch_size, generator=generator, row_seeds=row_seeds,
                       progress=progress)
    texts = decode_responses(tokenizer, rollout, engine.stop_ids)
    row_answers = [a for a in answers for _ in range(n)]
    device = rollout.finished.device
    rewards = torch.tensor([float(verifier.reward(t, a)) for t, a in zip(texts, row_answers)],
                           dtype=torch.float32, device=device)
    scores = None
    if score is not None and score.reference == "constant":
        if not engine.reads_score:
            raise ValueError("the engine does not read lp_z; score teacher-forced (rollout.scorer) first")
        scores = score.score(rollout.lp_z.float(), finished=rollout.finished)
    return RolloutBatch(
        prompt_ids=rows,
        rollout=rollout,
        texts=texts,
        pred_answers=[verifier.extract_answer(t) for t in texts],
        rewards=rewards,
        correct=is_correct(rewards, correct_threshold),
        scores=scores,
        group=torch.arange(len(prompt_ids), device=device).repeat_interleave(n),
    )
