"""Rollout engine: batched KV-cache sampling with the in-loop self-reward score, and teacher-forced scoring."""

from laser_rl.rollout.sampler import Rollout, SamplingConfig, sample
from laser_rl.rollout.scorer import score_responses

__all__ = ["Rollout", "SamplingConfig", "sample", "score_responses"]
