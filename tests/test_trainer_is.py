"""Truncated importance sampling in the update (training/update.py) and the trainer's mismatch metric.

The weights multiply each token's policy-gradient term (verl's ``pg_losses * w``), not the KL or MSE
terms; engine hf samples with the policy itself, so its runs are identical with and without correction.
"""

from __future__ import annotations

import pytest
import torch

from laser_rl.cli import main
from laser_rl.core.is_correction import DIFF_METRIC, is_weights
from laser_rl.core.laser import PolicyLossConfig
from laser_rl.errors import LaserError
from laser_rl.training.batch import Sequences, TrainBatch
from laser_rl.training.config import load_config
from laser_rl.training.policy import PolicyOutput
from laser_rl.training.update import Collective, UpdateSettings, micro_batch_loss, update_policy
from test_trainer import DEMO_CONFIG, fast_overrides, read_metrics

B, T = 3, 5


def _batch(rollout_lp: torch.Tensor, ref: torch.Tensor | None = None) -> TrainBatch:
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # [B, T]
    seq = Sequences(
        input_ids=torch.zeros(B, T + 1, dtype=torch.long), attention_mask=torch.ones(B, T + 1, dtype=torch.long),
        position_ids=torch.arange(T + 1).expand(B, -1), pred_mask=mask, eos_column=torch.full((B,), -1),
        finished=torch.zeros(B, dtype=torch.bool), old_logprobs=rollout_lp,
    )
    return TrainBatch(seq, advantages=torch.tensor([1.0, -0.5, 2.0]), rewards=torch.zeros(B),
                      mse_weights=torch.ones(B), ref_logprobs=ref)


def _grad(lp: torch.Tensor, batch: TrainBatch, config: PolicyLossConfig, w: torch.Tensor | None) -> torch.Tensor:
    x = lp.clone().requires_grad_(True)
    out = PolicyOutput(x, torch.full((B,), float("nan")), torch.zeros(B, T))
    terms = micro_batch_loss(out, batch, config, alpha=None, score=None, normalizer=10.0, weight_sum=1.0,
                             is_weights=w)
    (g,) = torch.autograd.grad(terms.total, x)
    return g


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_is_weights_scale_each_tokens_pg_gradient(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(B, T, generator=g) * 3  # training forward [B, T]
    rollout = lp + 0.4 * torch.randn(B, T, generator=g)  # the engine's, off by kernel noise and more
    batch = _batch(rollout)
    config = PolicyLossConfig()
    w = is_weights(lp, rollout, batch.seq.pred_mask, mode, 2.0)
    assert not torch.allclose(w[batch.seq.pred_mask], torch.ones(()))  # the test needs weights ≠ 1
    plain, weighted = _grad(lp, batch, config, None), _grad(lp, batch, config, w)
    torch.testing.assert_close(weighted, plain * w)  # ∂(w·ℓ_t)/∂lp_t = w_t ∂ℓ_t/∂lp_t, 0 on padding
    # weights of exactly 1 change nothing, bit for bit
    ones = batch.seq.pred_mask.float()
    assert torch.equal(_grad(lp, batch, config, ones), plain)


def test_is_weights_leave_the_kl_term_unweighted() -> None:
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(B, T, generator=g) * 3
    rollout = lp + 0.4 * torch.randn(B, T, generator=g)
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    with_kl, no_kl = PolicyLossConfig(kl_coef=0.5), PolicyLossConfig(kl_coef=0.0)
    batch, no_ref = _batch(rollout, ref), _batch(rollout)
    w = is_weights(lp, rollout, batch.seq.pred_mask, "token", 2.0)
    kl_grad = _grad(lp, batch, with_kl, None) - _grad(lp, no_ref, no_kl, None)  # the KL term's own gradient
    torch.testing.assert_close(_grad(lp, batch, with_kl, w), _grad(lp, no_ref, no_kl, None) * w + kl_grad)
    # and the loss value is verl's: weighted PG + unweighted KL
    out = PolicyOutput(lp, torch.full((B,), float("nan")), torch.zeros(B, T))
    kw = dict(alpha=None, score=None, normalizer=10.0, weight_sum=1.0)
    kl_value = micro_batch_loss(out, batch, with_kl, **kw).total - micro_batch_loss(out, no_ref, no_kl, **kw).total
    torch.testing.assert_close(micro_batch_loss(out, batch, with_kl, is_weights=w, **kw).total,
                               micro_batch_loss(out, no_ref, no_kl, is_weights=w, **kw).total + kl_value)


def test_update_reports_the_diff_of_the_first_forward_and_the_weights() -> None:
    """update_policy: Δ between the first (on-policy) forward and the rollout's log-probs, and its weights."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(B, T))

    class Toy(torch.nn.Module):  # token log-probs = log σ(logits): a policy with one parameter per token
        def __init__(self) -> None:
            super().__init__()
            self.p = logits

        def forward(self, *args: object) -> PolicyOutput:
            return PolicyOutput(torch.nn.functional.logsigmoid(self.p), torch.full((B,), float("nan")),
                                torch.zeros(B, T))

    policy = Toy()
    lp = torch.nn.functional.logsigmoid(logits.detach())
    rollout = lp - 0.25  # the engine under-estimates every token by 0.25
    batch = _batch(rollout)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    settings = UpdateSettings(loss=PolicyLossConfig(), is_correction="token", is_clip=2.0)
    stats = update_policy(policy, opt, batch, settings, alpha=None, score=None, comm=Collective())
    assert stats.rollout_logprob_diff == pytest.approx(0.25, abs=1e-6)
    assert stats.is_weight_mean == pytest.approx(float(torch.tensor(0.25).exp()), abs=1e-6)
    clipped = update_policy(policy, opt, _batch(lp - 1.0), replace_clip(settings, 2.0), alpha=None, score=None)
    assert clipped.is_weight_mean == pytest.approx(2.0)  # e^1 > 2: truncated at is_clip
    none = update_policy(policy, opt, batch, UpdateSettings(loss=PolicyLossConfig()), alpha=None, score=None)
    assert (none.rollout_logprob_diff, none.is_weight_mean) == (pytest.approx(0.25, abs=1e-6), 1.0)
    # off-policy (two PPO epochs): Δ and the weights come from the recomputed old log-probs, once per batch
    two = update_policy(policy, opt, batch, UpdateSettings(loss=PolicyLossConfig(), ppo_epochs=2, is_correction="token"),
                        alpha=None, score=None)
    assert two.rollout_logprob_diff == pytest.approx(0.25, abs=1e-6)
    assert two.is_weight_mean == pytest.approx(float(torch.tensor(0.25).exp()), abs=1e-6)


def replace_clip(settings: UpdateSettings, clip: float) -> UpdateSettings:
    from dataclasses import replace

    return replace(settings, is_clip=clip)


def test_engine_hf_runs_identically_with_and_without_correction(tiny_model_dir, tmp_path, one_thread) -> None:
    """Engine hf samples with the policy: no weights apply, the metrics are bit-identical, Δ is logged
    and small (only the sampler's incremental forward against the training forward's rounding)."""
    runs = {}
    for mode in ("none", "token"):
        out = tmp_path / mode
        argv = ["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, out, steps=2),
                f"rollout.is_correction={mode}"]
        assert main(argv) == 0
        runs[mode] = [{k: v for k, v in m.items() if not k.startswith("time_")} for m in read_metrics(out)]
    assert runs["none"] == runs["token"]
    for m in runs["token"]:
        assert 0.0 <= m[DIFF_METRIC] < 1e-4 and m["rollout/is_weight_mean"] == 1.0


@pytest.mark.parametrize("override, message", [
    ("rollout.is_correction=tis", "rollout.is_correction: expected one of 'none', 'token', 'sequence'"),
    ("rollout.is_clip=0", "rollout.is_clip must be > 0"),
    ("rollout.vllm_gpu_memory_utilization=1.2", "rollout.vllm_gpu_memory_utilization must be in (0, 1]"),
    ("rollout.vllm_kv_cache_gib=0", "rollout.vllm_kv_cache_gib must be > 0"),
])
def test_rollout_engine_fields_are_checked(override: str, message: str) -> None:
    with pytest.raises(LaserError, match=None) as e:
        load_config(DEMO_CONFIG, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_rollout_defaults_and_engine_help() -> None:
    from laser_rl.training.config import config_to_yaml

    r = load_config(DEMO_CONFIG, []).rollout
    assert (r.is_correction, r.is_clip, r.vllm_gpu_memory_utilization, r.vllm_kv_cache_gib) == ("token", 2.0, 0.5, 1.0)
    text = config_to_yaml(load_config(DEMO_CONFIG, []), comments=True)
    assert "not yet supported" not in text and "vllm_kv_cache_gib" in text


def test_config_vllm_memory_defaults_are_the_engines() -> None:
    """The config cannot import the engine (loading a config stays torch-free): its defaults are checked here."""
    from laser_rl.rollout.vllm_engine import DEFAULT_CPU_KV_CACHE_GIB, DEFAULT_GPU_MEMORY_UTILIZATION

    r = load_config(DEMO_CONFIG, []).rollout
    assert (r.vllm_kv_cache_gib, r.vllm_gpu_memory_utilization) == (DEFAULT_CPU_KV_CACHE_GIB,
                                                                    DEFAULT_GPU_MEMORY_UTILIZATION)


def test_engine_sleeps_from_the_rollout_to_the_end_of_the_update(tiny_model_dir, tmp_path, one_thread) -> None:
    """An engine with sleep/wake_up (vLLM on a GPU) frees its memory for the training forwards and the update:
    slept (level 2) after the rollout, woken after the optimizer step, before the next rollout."""
    from laser_rl.training.trainer import Trainer

    events: list[str] = []

    class Sleepy:  # the trainer's engine, wrapped: records the calls around the step
        def __init__(self, inner: object) -> None:
            self.inner, self.asleep = inner, False

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def generate(self, *args: object, **kwargs: object) -> object:
            assert not self.asleep, "generate() on a sleeping engine"
            events.append("generate")
            return self.inner.generate(*args, **kwargs)

        def sleep(self, level: int = 1) -> bool:
            events.append(f"sleep({level})")
            self.asleep = True
            return True

        def wake_up(self) -> bool:
            events.append("wake_up")
            self.asleep = False
            return True

    cfg = load_config(DEMO_CONFIG, [*fast_overrides(tiny_model_dir, tmp_path / "run", steps=2)])
    trainer = Trainer(cfg)
    try:
        trainer.engine = Sleepy(trainer.engine)
        update = trainer._update

        def recorded_update(*args: object, **kwargs: object) -> object:
            assert trainer.engine.asleep, "the update runs while the engine sleeps"
            events.append("update")
            return update(*args, **kwargs)

        trainer._update = recorded_update
        trainer.fit()
    finally:
        trainer.close()
    assert events == ["generate", "sleep(2)", "update", "wake_up"] * 2


def test_engine_vllm_refuses_a_policy_whose_embeddings_grew(tiny_model_dir, tmp_path, capsys) -> None:
    """vLLM builds its model from model.path's config: a z added at load time (embeddings resized) would not
    fit its weights. One line, exit 2, before vLLM is even needed."""
    over = fast_overrides(tiny_model_dir, tmp_path / "grown", **{"laser.token": "<zz>", "laser.add_token_if_missing": True,
                                                                   "rollout.engine": "vllm"})
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rollout.engine=vllm: the policy's embeddings have" in err[0], err
