"""The trainer defects of issue 22, one test each (each fails on 5d16d0c): training mode, precision,
c_ref calibration, micro-batched no-grad passes, temperature 0, the LR schedule, drop_last, resume
after skipped prompts; plus the update's equalities (micro-batched = full batch, MSE-only gradients)."""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import pytest
import torch

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.training.config import load_config
from laser_rl.training.trainer import Trainer, metric_keys_without_timing
from test_trainer import DEMO_CONFIG, fast_overrides, read_metrics

overrides = functools.partial(fast_overrides, steps=1)  # one step unless a test asks for more


def make_trainer(model_dir: Path, out: Path, **extra: object) -> Trainer:
    return Trainer(load_config(DEMO_CONFIG, overrides(model_dir, out, **extra)))


def first_layer(model: torch.nn.Module) -> torch.nn.Module:
    from laser_rl.training.sharding import decoder_layers

    return decoder_layers(model)[0]


def first_linear(model: torch.nn.Module) -> torch.nn.Linear:
    """A projection inside the first decoder layer: its output dtype is the compute dtype (the
    residual stream around it stays float32 under autocast)."""
    return next(m for m in first_layer(model).modules() if isinstance(m, torch.nn.Linear))


# ------------------------------------------------------------------ defect 1: training mode


def test_update_runs_in_training_mode_with_gradient_checkpointing(tiny_model_dir, tmp_path, one_thread):
    """eval_every 0 (no evaluation ever switches the mode): the update's forwards still run in training
    mode, so the model's gradient checkpointing is applied; generation runs in eval mode."""
    t = make_trainer(tiny_model_dir, tmp_path / "run", **{"model.gradient_checkpointing": True, "train.steps": 2})
    layer = first_layer(t.model)
    seen: list[tuple[bool, bool]] = []  # (grad enabled, training) per forward of the layer
    layer.register_forward_pre_hook(lambda m, args: seen.append((torch.is_grad_enabled(), m.training)))
    checkpointed = []
    inner = layer._gradient_checkpointing_func
    layer._gradient_checkpointing_func = lambda *a, **k: (checkpointed.append(1), inner(*a, **k))[1]
    t.fit()
    update = [training for grad, training in seen if grad]
    generation = [training for grad, training in seen if not grad]
    assert update and all(update), "the update's forwards must run in training mode"
    assert generation and not any(generation), "generation runs in eval mode"
    assert len(checkpointed) >= 2, "gradient checkpointing was not used in the update"


# ------------------------------------------------------------------ defect 2: precision


def test_bf16_config_keeps_float32_master_weights_and_autocasts(tiny_model_dir, tmp_path, one_thread):
    """model.dtype bfloat16 without sharding: AdamW holds float32 weights (a 1e-6 update is not rounded
    away, as it is on bf16 weights), while the forwards compute in bf16."""
    t = make_trainer(tiny_model_dir, tmp_path / "run", **{"model.dtype": "bfloat16", "optim.lr": 1e-6})
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert params and all(p.dtype == torch.float32 for p in params)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    out_dtypes: list[torch.dtype] = []
    first_linear(t.model).register_forward_hook(lambda m, args, out: out_dtypes.append(out.dtype))
    t.fit()
    assert out_dtypes and set(out_dtypes) == {torch.bfloat16}, "rollout and training forwards compute in bf16"
    moved = [n for n, p in t.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) > len(before) // 2, "a 1e-6 update must move float32 master weights"
    delta = max(float((p.detach() - before[n]).abs().max()) for n, p in t.model.named_parameters())
    assert 0 < delta < 1e-4
    # the same update applied to bf16 weights rounds away (weights of magnitude > 0.01)
    kept = lost = 0
    for n, p in t.model.named_parameters():
        w, d = before[n].bfloat16(), (p.detach() - before[n]).bfloat16()
        big = (w.abs() > 1e-2) & (d != 0)
        lost += int(((w + d) == w)[big].sum())
        kept += int(big.sum())
    assert kept and lost == kept


# ------------------------------------------------------------------ defects 5 and 8: c_ref calibration


def test_c_ref_samples_512_samples_512(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    import laser_rl.calibrate as calibrate

    measured = []
    real = calibrate.measure_self_reward_logprobs

    def spy(*args, **kwargs):
        summary, values = real(*args, **kwargs)
        measured.append(summary)
        return summary, values

    monkeypatch.setattr(calibrate, "measure_self_reward_logprobs", spy)
    t = make_trainer(tiny_model_dir, tmp_path / "run", **{"laser.c_ref": "auto", "laser.c_ref_samples": 512})
    assert [s.total for s in measured] == [512]
    assert t.score is not None and t.score.c_ref == pytest.approx(measured[0].mean)


def test_c_ref_auto_is_measured_in_the_compute_dtype(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    """model.dtype bfloat16 (float32 master weights): c_ref is measured with bf16 forwards, as the
    rollouts run, not on the float32 weights."""
    import laser_rl.calibrate as calibrate

    dtypes: list[torch.dtype] = []
    weights: list[torch.dtype] = []
    real = calibrate.measure_self_reward_logprobs

    def spy(model, *args, **kwargs):
        weights.append(next(model.parameters()).dtype)
        handle = first_linear(model).register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        try:
            return real(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(calibrate, "measure_self_reward_logprobs", spy)
    make_trainer(tiny_model_dir, tmp_path / "run", **{"laser.c_ref": "auto", "laser.c_ref_samples": 16,
                                                     "model.dtype": "bfloat16"})
    assert weights == [torch.float32]  # the master weights (FSDP2 loads them too), before any sharding
    assert dtypes and set(dtypes) == {torch.bfloat16}


# ------------------------------------------------------------------ defect 6: micro-batched no-grad passes


def test_recompute_and_reference_pass_honour_micro_batch_size(tiny_model_dir, tmp_path, one_thread):
    """With ppo_epochs 2 (old log-probs recomputed) and a reference model (KL), no forward sees more
    than loss.micro_batch_size rows (the rollout's own batches are smaller still)."""
    t = make_trainer(tiny_model_dir, tmp_path / "run", **{
        "loss.ppo_epochs": 2, "loss.micro_batch_size": 3, "loss.kl_coef": 0.1, "rollout.batch_size": 2})
    rows: list[int] = []
    for model in (t.model, t.ref_policy.model):
        first_layer(model).register_forward_pre_hook(lambda m, args, kwargs: rows.append(
            (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    t.fit()
    assert rows and max(rows) == 3


def _fixed_batch(model_dir: Path, rows: int = 8, seed: int = 0):
    """A deterministic TrainBatch sampled from the tiny model (with varied advantages and rewards)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser_rl.core import laser as core
    from laser_rl.rollout import SamplingConfig, sample
    from laser_rl.training.batch import TrainBatch, build_sequences

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    z, stops, pad = tok.convert_tokens_to_ids("<z>"), [tok.eos_token_id], tok.pad_token_id
    texts = ["12+34=", "5-3+77=", "90-1=", "7+7=", "31-4=", "8+15=", "2+2=", "60-13="][:rows]
    prompts = [tok.encode(s, add_special_tokens=False) for s in texts]
    roll = sample(model, prompts, pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=12), z_id=z,
                  generator=torch.Generator().manual_seed(seed))
    rewards = (torch.arange(rows) % 2).float()
    seq = build_sequences(prompts, roll, pad_id=pad, z_id=z, stop_ids=stops)
    return TrainBatch(seq, torch.linspace(-1.0, 1.0, rows), rewards, core.class_balance_weights(rewards, roll.finished)), z


def _policy(model_dir: Path):
    from transformers import AutoModelForCausalLM

    from laser_rl.training.policy import PolicyWithScore

    torch.manual_seed(0)
    return PolicyWithScore(AutoModelForCausalLM.from_pretrained(model_dir).train(), chunk_size=5)


def test_forward_in_micro_batches_equals_the_full_forward(tiny_model_dir, one_thread):
    from laser_rl.training.update import forward_in_micro_batches

    batch, _ = _fixed_batch(tiny_model_dir)
    policy = _policy(tiny_model_dir)
    rows: list[int] = []
    policy.model.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    full = forward_in_micro_batches(policy, batch.seq, temperature=0.9)
    assert rows == [8]
    rows.clear()
    micro = forward_in_micro_batches(policy, batch.seq, temperature=0.9, micro_batch_size=3)
    assert rows == [3, 3, 2]
    assert torch.allclose(micro.token_logprobs, full.token_logprobs, atol=1e-5)
    assert torch.equal(micro.lp_z.isnan(), full.lp_z.isnan())
    assert torch.allclose(micro.lp_z.nan_to_num(), full.lp_z.nan_to_num(), atol=1e-5)


@pytest.mark.parametrize("epochs, mini", [(1, 1), (2, 2)])
def test_micro_batched_update_equals_full_batch_update(tiny_model_dir, one_thread, epochs, mini):
    from laser_rl.core import laser as core
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.update import UpdateSettings, update_policy

    batch, z = _fixed_batch(tiny_model_dir)
    score = ScoreParams("<z>", z, 0.5, -3.0)
    results = []
    for micro in (0, 3):
        policy = _policy(tiny_model_dir)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        settings = UpdateSettings(core.PolicyLossConfig(0.2, 0.28), ppo_epochs=epochs, mini_batches=mini,
                                  micro_batch_size=micro, max_grad_norm=1.0)
        stats = update_policy(policy, opt, batch, settings, alpha=0.5, score=score,
                              generator=torch.Generator().manual_seed(1))
        results.append((stats, {k: v.detach().clone() for k, v in policy.state_dict().items()}))
    (full, p_full), (micro, p_micro) = results
    for key in ("policy_loss", "sr_loss", "grad_norm", "clip_fraction", "kl"):
        assert getattr(micro, key) == pytest.approx(getattr(full, key), abs=1e-5), key
    assert full.grad_norm > 0
    assert max(float((p_full[k] - p_micro[k]).abs().max()) for k in p_full) < 1e-5


def test_zero_advantages_move_the_weights_only_along_the_mse_gradient(tiny_model_dir, one_thread):
    """A' = 0: the policy-gradient term has no gradient, so the update's gradient is α × ∇MSE."""
    from dataclasses import replace

    from laser_rl.core import laser as core
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.update import micro_batch_loss, policy_forward

    batch, z = _fixed_batch(tiny_model_dir)
    batch = replace(batch, advantages=torch.zeros_like(batch.advantages))
    policy = _policy(tiny_model_dir)
    params = [p for p in policy.parameters() if p.requires_grad]
    out = policy_forward(policy, batch.seq, 1.0)
    terms = micro_batch_loss(out, batch, core.PolicyLossConfig(0.2, 0.28), alpha=0.7,
                             score=ScoreParams("<z>", z, 0.5, -3.0), normalizer=float(batch.seq.pred_mask.sum()),
                             weight_sum=float(batch.mse_weights.sum()))
    g_pg = torch.autograd.grad(terms.policy, params, retain_graph=True, allow_unused=True)
    g_mse = torch.autograd.grad(0.7 * terms.mse, params, retain_graph=True, allow_unused=True)
    g_total = torch.autograd.grad(terms.total, params, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in g_pg)
    assert any(g is not None and float(g.abs().max()) > 0 for g in g_mse)
    for gt, gm in zip(g_total, g_mse):
        if gm is not None:
            assert torch.allclose(gt, gm, atol=1e-7)


# ------------------------------------------------------------------ defect 7: temperature 0


def test_temperature_zero_is_refused_by_the_trainer(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    cfg = load_config(DEMO_CONFIG, overrides(tiny_model_dir, tmp_path / "run"))
    # the config check (H2) may refuse it first; the trainer must refuse it on its own too
    cfg.rollout = SimpleNamespace(**{**vars(cfg.rollout), "temperature": 0.0})
    with pytest.raises(LaserError, match="rollout.temperature"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ defect 9: schedule, drop_last, resume


def test_lr_schedule_counts_optimizer_steps(tiny_model_dir, tmp_path, one_thread):
    """2 epochs × 2 mini-batches = 4 optimiser steps per RL step: warm-up and decay count those."""
    out = tmp_path / "lr"
    lr, warmup, steps, ratio = 0.01, 3, 3, 0.1
    assert main(["train", "--config", str(DEMO_CONFIG), *overrides(tiny_model_dir, out, steps=steps, **{
        "loss.ppo_epochs": 2, "loss.mini_batches": 2, "optim.lr": lr, "optim.warmup_steps": warmup,
        "optim.lr_scheduler": "cosine", "optim.min_lr_ratio": ratio})]) == 0
    total = steps * 4

    def expected(i: int) -> float:  # the LR after i optimiser steps
        if i < warmup:
            return lr * (i + 1) / warmup
        progress = (i - warmup) / (total - warmup)
        return lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    assert [r["lr"] for r in read_metrics(out)] == pytest.approx([expected(4 * k) for k in range(1, steps + 1)])


def test_problem_source_drops_the_last_partial_batch_of_an_epoch():
    from laser_rl.tasks.base import Problem, TaskData
    from laser_rl.training.data import ProblemSource

    data = TaskData("ten", verifier=None, problems=[Problem(str(i), str(i)) for i in range(10)])  # type: ignore[arg-type]
    src = ProblemSource(data, seed=3, drop_last_of=4)
    batches = [[p.problem for p in src.take(4)] for _ in range(4)]
    for epoch in (batches[:2], batches[2:]):  # 2 whole batches per epoch; 2 problems dropped
        flat = [x for b in epoch for x in b]
        assert len(set(flat)) == 8
    assert src.position == 16
    resumed = ProblemSource(data, seed=3, position=8, drop_last_of=4)
    assert [p.problem for p in resumed.take(4)] == batches[2]
    carry = ProblemSource(data, seed=3)  # default: the partial batch is completed from the next epoch
    assert len({p.problem for p in carry.take(12)[:10]}) == 10


def test_resume_after_skipped_prompts_matches_uninterrupted_run(tiny_model_dir, tmp_path, one_thread):
    """Prompts longer than data.max_prompt_length are skipped; the count is part of the checkpoint."""
    over = {"train.save_every": 2, "optim.lr": 0.003, "data.max_prompt_length": 8, "train.keep_checkpoints": 0}
    full = tmp_path / "full"
    assert main(["train", "--config", str(DEMO_CONFIG), *overrides(tiny_model_dir, full, steps=4, **over)]) == 0
    rows = read_metrics(full)
    assert rows[1]["skipped_prompts"] > 0
    cut = tmp_path / "cut"  # the same run stopped after its step-2 checkpoint
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "final")
    for ckpt in (cut / "checkpoints").iterdir():
        if ckpt.name != "step-000002":
            shutil.rmtree(ckpt)
    assert main(["train", "--resume", "--config", str(DEMO_CONFIG),
                 *overrides(tiny_model_dir, cut, steps=4, **over)]) == 0
    assert [metric_keys_without_timing(m) for m in read_metrics(cut)] == \
        [metric_keys_without_timing(m) for m in rows]


# ------------------------------------------------------------------ item 6: entropy


def test_update_reports_the_mean_policy_entropy_over_response_tokens(tiny_model_dir, tmp_path, one_thread):
    from laser_rl.core import laser as core
    from laser_rl.training.update import UpdateSettings, policy_forward, update_policy

    batch, _ = _fixed_batch(tiny_model_dir)
    policy = _policy(tiny_model_dir)
    with torch.no_grad():
        out = policy_forward(policy, batch.seq, 0.8, with_score=False)
        probs = torch.softmax(policy.model(batch.seq.input_ids, attention_mask=batch.seq.attention_mask,
                                           position_ids=batch.seq.position_ids).logits[:, :-1].float() / 0.8, -1)
    full = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # [B, L-1] from the model's own forward
    want = float(full[batch.seq.pred_mask].mean())
    assert float(out.entropy[batch.seq.pred_mask].mean()) == pytest.approx(want, rel=1e-5)
    stats = update_policy(policy, torch.optim.SGD(policy.parameters(), lr=0.0), batch,
                          UpdateSettings(core.PolicyLossConfig(0.2, 0.2), temperature=0.8, micro_batch_size=3),
                          alpha=None, score=None)
    assert stats.entropy == pytest.approx(want, rel=1e-5)
    # and the trainer logs it every step
    assert main(["train", "--config", str(DEMO_CONFIG), *overrides(tiny_model_dir, tmp_path / "run", steps=2)]) == 0
    rows = read_metrics(tmp_path / "run")
    vocab = policy.model.config.vocab_size
    assert all(0 < r["entropy"] <= math.log(vocab) for r in rows)
