"""Truncated importance sampling weights and the rollout/train log-prob diff (core/is_correction.py)."""

from __future__ import annotations

import math

import pytest
import torch

from laser_rl.core.is_correction import (
    DEFAULT_IS_CLIP,
    DEFAULT_IS_MODE,
    DIFF_METRIC,
    is_weights,
    rollout_logprob_diff,
)
from laser_rl.errors import LaserError


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # row 0: 3 tokens, row 1: 2 tokens (last position padding, holding garbage)
    train = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, 5.0]])
    rollout = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.1, -float("inf")]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return train, rollout, mask


def test_defaults_are_verls_token_level_tis_at_two() -> None:
    assert (DEFAULT_IS_MODE, DEFAULT_IS_CLIP) == ("token", 2.0)
    assert "rollout" in DIFF_METRIC and "diff" in DIFF_METRIC


def test_token_weights_are_truncated_ratios_zero_on_padding() -> None:
    train, rollout, mask = _batch()
    w = is_weights(train, rollout, mask, "token", 2.0)
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0], [2.0, math.exp(0.1), 0.0]])
    torch.testing.assert_close(w, expected)
    assert w.dtype == torch.float32 and not w.requires_grad


def test_sequence_weight_is_one_truncated_ratio_per_row() -> None:
    train, rollout, mask = _batch()
    w = is_weights(train, rollout, mask, "sequence", 2.0)
    row0 = math.exp(0.5 - 1.0)  # below the clip
    row1 = min(math.exp(1.8 + 0.1), 2.0)  # clipped
    torch.testing.assert_close(w, torch.tensor([[row0] * 3, [row1, row1, 0.0]]))


def test_none_and_identical_logprobs_give_exactly_one() -> None:
    train, rollout, mask = _batch()
    assert torch.equal(is_weights(train, rollout, mask, "none"), mask.float())
    for mode in ("token", "sequence"):
        assert torch.equal(is_weights(train, train.clone(), mask, mode), mask.float())  # the HF engine: Δ = 0


def test_no_overflow_and_no_gradient() -> None:
    train = torch.tensor([[1000.0, -5.0]], requires_grad=True)
    rollout = torch.tensor([[-1000.0, -5.0]])
    w = is_weights(train, rollout, torch.ones(1, 2, dtype=torch.bool), "sequence", 3.0)
    torch.testing.assert_close(w, torch.tensor([[3.0, 3.0]]))
    assert not w.requires_grad


def test_logprob_diff_is_mean_abs_over_response_tokens() -> None:
    train, rollout, mask = _batch()
    assert rollout_logprob_diff(train, rollout, mask) == pytest.approx((0.5 + 1.0 + 0.0 + 1.8 + 0.1) / 5)
    assert rollout_logprob_diff(train, rollout, torch.zeros_like(mask)) == 0.0


def test_bad_mode_clip_or_shapes_are_refused() -> None:
    train, rollout, mask = _batch()
    with pytest.raises(LaserError, match="is_correction"):
        is_weights(train, rollout, mask, "tokens")  # type: ignore[arg-type]
    with pytest.raises(LaserError, match="is_clip"):
        is_weights(train, rollout, mask, "token", 0.0)
    with pytest.raises(ValueError, match="one shape"):
        rollout_logprob_diff(train, rollout[:, :2], mask)
