"""The GRPO + LaSeR trainer: the one-pass forward, the batch layout, the CLI, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from laser_rl.cli import main
from laser_rl.core.laser import find_eos
from laser_rl.rollout import Rollout, SamplingConfig, sample, score_responses
from laser_rl.training.batch import build_sequences
from laser_rl.training.policy import PolicyWithScore, chunked_token_logprobs
from laser_rl.training.trainer import metric_keys_without_timing

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "laser-arith.yaml")


def fast_overrides(model_dir: Path, out: Path, steps: int = 3, **extra: object) -> list[str]:
    values = {
        "model.path": model_dir, "output_dir": out, "train.steps": steps, "train.save_every": 0,
        "train.eval_every": 0, "data.prompts_per_step": 4, "rollout.n": 4, "rollout.max_new_tokens": 12,
        "laser.c_ref": -6.0, "laser.beta_v": 0.5, "laser.self_reward_warmup_steps": 1, "laser.filter_threshold": 0.0,
        "logging.progress": "none", "logging.tensorboard": False, "guard.length_collapse_ratio": 0.0,
        "guard.collapse_ratio": 0.0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ one forward: token log-probs + lp_z


def test_one_forward_matches_sampler_and_teacher_forced_scorer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    z = tok.convert_tokens_to_ids("<z>")
    stops = [tok.eos_token_id]
    prompts = [tok.encode(p, add_special_tokens=False) for p in ["12+34=", "5-3+77=", "90-1="]] * 3
    roll = sample(model, prompts, pad_id=tok.pad_token_id, stop_ids=stops, config=SamplingConfig(max_new_tokens=16),
                  z_id=z, generator=torch.Generator().manual_seed(0))
    assert roll.finished.any() and (~roll.finished).any(), "fixture should give both finished and truncated rows"
    batch = build_sequences(prompts, roll, pad_id=tok.pad_token_id, z_id=z, stop_ids=stops)
    out = PolicyWithScore(model, chunk_size=7)(batch.input_ids, batch.attention_mask, batch.position_ids,
                                                 batch.pred_mask, batch.eos_column, batch.finished)
    # policy log-probs of the response tokens equal the sampler's (T = 1), in the same order
    assert torch.allclose(out.token_logprobs[batch.pred_mask], roll.logprobs[roll.response_mask], atol=1e-4)
    fin = roll.finished
    assert torch.isnan(out.lp_z[~fin]).all()
    # lp_z from the training pass = in-loop lp_z = teacher-forced lp_z
    assert torch.allclose(out.lp_z[fin], roll.lp_z[fin], atol=1e-4)
    tf = score_responses(model, [p for p, f in zip(prompts, fin.tolist()) if f],
                         [r for r, f in zip(roll.responses(), fin.tolist()) if f], z_id=z, pad_id=tok.pad_token_id,
                         stop_ids=stops, eos_id=tok.eos_token_id)
    assert torch.allclose(out.lp_z[fin], tf, atol=1e-4)


def test_chunked_logprobs_equal_full_log_softmax_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13)
    h = torch.randn(10, 8, requires_grad=True)
    t = torch.randint(0, 13, (10,))
    got = chunked_token_logprobs(h, head, t, temperature=0.7, chunk_size=3)
    want = torch.log_softmax(head(h) / 0.7, dim=-1).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(got, want, atol=1e-6)
    (g1,) = torch.autograd.grad(got.sum(), h)
    (g2,) = torch.autograd.grad(want.sum(), h)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_train_batch_layout_with_eos_in_last_column():
    pad, eos, z = 0, 1, 2
    prompts = [[5, 6], [7]]
    resp = torch.tensor([[8, eos, pad], [9, 9, eos]])  # row 1's EOS is the batch's last column
    mask = resp != pad
    finished = torch.tensor([True, True])
    roll = Rollout(resp, mask, torch.zeros(2, 3), finished, ~finished, torch.full((2,), float("nan")))
    b = build_sequences(prompts, roll, pad_id=pad, z_id=z, stop_ids=[eos])
    assert b.input_ids.tolist() == [[5, 6, 8, eos, z], [7, 9, 9, eos, z]]
    assert b.eos_column.tolist() == [3, 3]
    # column t predicts t+1: response tokens only, never z
    assert b.pred_mask.tolist() == [[False, True, True, False], [True, True, True, False]]
    assert find_eos(resp, [eos], mask).finished.all()


# ------------------------------------------------------------------ the CLI


def test_train_cli_writes_metrics_checkpoints_and_loadable_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    rc = main(["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, out, steps=3, **{"train.save_every": 2})])
    assert rc == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("loss", "reward_mean", "policy_loss", "sr_loss", "clip_fraction", "kl", "grad_norm",
                    "truncation_rate", "response_length", "sv_tpr", "sv_tnr", "sv_hm", "time_step", "rollouts"):
            assert key in r, key
        assert r["rollouts"] == 16
    assert rows[0]["phase_mse"] and not rows[0]["phase_integration"] and rows[1]["phase_integration"]
    assert rows[0]["sr_loss"] > 0
    params = json.loads((out / "final" / "laser.json").read_text())
    assert params["c_ref"] == -6.0 and params["beta_v"] == 0.5 and params["token"] == "<z>"
    from transformers import AutoTokenizer

    final = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.convert_tokens_to_ids(params["token"]) == params["token_id"]
    logits = final(torch.tensor([tok.encode("12+34=", add_special_tokens=False)])).logits
    assert logits.shape[-1] == final.config.vocab_size and torch.isfinite(logits).all()
    assert (out / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert not list((out / "checkpoints").glob("*/*.pt")), "checkpoints must not be pickles"
    # the trained model differs from the initial one
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_baseline_has_no_self_reward_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "grpo"
    assert main(["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, out, steps=2, **{"laser.enabled": False})]) == 0
    rows = read_metrics(out)
    assert all(r["sr_loss"] == 0.0 and not r["phase_mse"] for r in rows)
    assert all(r["loss"] == r["policy_loss"] for r in rows)


def test_mse_only_changes_the_policy_through_the_score(tiny_model_dir, tmp_path):
    """With zero advantages (A' = 0: τ = 0 and no reward variance), only the MSE moves the weights,
    and it must move the log-prob of z after EOS toward the target."""
    out = tmp_path / "mse"
    over = fast_overrides(tiny_model_dir, out, steps=4, **{
        "laser.tau": 0.0, "laser.alpha": 1.0, "optim.lr": 0.01, "laser.self_reward_warmup_steps": 0,
    })
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
    rows = read_metrics(out)
    assert all(r["policy_loss"] == 0.0 for r in rows)  # A' = 0: the PPO term is 0 (its gradient too:
    # test_trainer_defects.py::test_zero_advantages_move_the_weights_only_along_the_mse_gradient)
    assert rows[-1]["sr_loss"] < rows[0]["sr_loss"]  # every reward is 0 on a random model: scores fall to 0


def test_alpha_warmup_ramps_the_mse_weight(tiny_model_dir, tmp_path):
    out = tmp_path / "ramp"
    over = fast_overrides(tiny_model_dir, out, steps=4, **{"laser.alpha": 0.4, "laser.alpha_warmup_steps": 2,
                                                           "laser.reasoning_warmup_steps": 1})
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
    rows = read_metrics(out)
    assert [r["alpha"] for r in rows] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert not rows[0]["phase_mse"] and rows[0]["sr_loss"] == 0.0
    for r in rows[1:]:
        assert r["loss"] == pytest.approx(r["policy_loss"] + r["alpha"] * r["sr_loss"])


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    over = {"train.save_every": 2, "optim.lr": 0.003}
    full = tmp_path / "full"
    assert main(["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, full, steps=8, **over)]) == 0

    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "laser_rl.cli", "train", "--config", DEMO_CONFIG,
           *fast_overrides(tiny_model_dir, cut, steps=8, **over)]
    # the same intra-op thread count as this process's run: float sums depend on it
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step-000004").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(cut)) < 8, "the run should have been killed before finishing"
    # flags and overrides in any order
    assert main(["train", *fast_overrides(tiny_model_dir, cut, steps=8, **over)[:3], "--resume", "--config", DEMO_CONFIG,
                 *fast_overrides(tiny_model_dir, cut, steps=8, **over)[3:]]) == 0
    a = [metric_keys_without_timing(m) for m in read_metrics(full)]
    b = [metric_keys_without_timing(m) for m in read_metrics(cut)]
    assert [m["step"] for m in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
    assert a == b


# ------------------------------------------------------------------ bad input


def test_bad_inputs_exit_2_with_clear_messages(tiny_model_dir, tmp_path, capsys):
    rc = main(["train", "--config", DEMO_CONFIG, *fast_overrides(tmp_path / "nope", tmp_path / "r1")])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["train", "--config", DEMO_CONFIG, "laser.betav=0.1", *fast_overrides(tiny_model_dir, tmp_path / "r2")])
    assert rc == 2 and "laser.beta_v" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": oops}\n')
    rc = main(["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, tmp_path / "r3", **{"data.train": bad})])
    assert rc == 2 and f"{bad}:2" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "final").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "nan"
    over = fast_overrides(tiny_model_dir, out, steps=6, **{"train.save_every": 1, "optim.lr": 1e30, "optim.max_grad_norm": 0.0})
    rc = main(["train", "--config", DEMO_CONFIG, *over])
    err = capsys.readouterr().err
    assert rc == 2 and "training stopped" in err
    # step 1's update gives huge weights (its checkpoint is still finite); step 2's gradient is NaN
    assert "gradient norm is nan at step 2" in err
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-000001'}" in err
    assert not (out / "final").exists()


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_mini_batches_epochs_and_micro_batches(tiny_model_dir, tmp_path, agg):
    """Micro-batching is memory only: the run's metrics equal those without it."""
    runs = []
    for micro in (0, 3):
        out = tmp_path / f"{agg}-{micro}"
        over = fast_overrides(tiny_model_dir, out, steps=2, **{"loss.ppo_epochs": 2, "loss.mini_batches": 2,
                                                             "loss.micro_batch_size": micro, "loss.aggregation": agg})
        assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
        runs.append(read_metrics(out))
    full, micro = runs
    assert len(full) == 2 and all(r["grad_norm"] > 0 for r in full)
    for a, b in zip(full, micro):
        for key in ("loss", "policy_loss", "sr_loss", "grad_norm", "clip_fraction", "kl", "reward_mean", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------ collapse guard


def _guard(collapse_ratio=0.5, length_ratio=0.5, patience=2):
    from types import SimpleNamespace

    from laser_rl.errors import LaserError
    from laser_rl.training.guard import GuardState, check_collapse

    gc = SimpleNamespace(collapse_ratio=collapse_ratio, length_collapse_ratio=length_ratio, collapse_patience=patience)
    state, step = GuardState(), [0]

    def check(reward, length, **extra):
        step[0] += 1
        why = check_collapse(gc, state, {"reward_mean": reward, "response_length": length, **extra})
        if why:
            raise LaserError(f"training stopped: collapse guard at step {step[0]}: {why}")
    return check


def test_collapse_guard_stops_on_shrinking_responses_after_patience():
    from laser_rl.errors import LaserError

    check = _guard()
    check(0.4, 34.0)
    check(0.4, 12.0)  # one bad step is tolerated (patience 2)
    check(0.4, 30.0)  # recovery resets the count
    check(0.4, 10.0)
    with pytest.raises(LaserError, match="collapse guard at step 5: mean response length 3.0"):
        check(0.4, 3.0)


def test_collapse_guard_stops_on_falling_reward_and_eval_accuracy():
    from laser_rl.errors import LaserError

    check = _guard()
    for _ in range(10):
        check(0.4, 34.0)  # the first 10 steps set the reward baseline
    check(0.35, 34.0)
    with pytest.raises(LaserError, match="training reward"):
        for _ in range(30):
            check(0.05, 34.0)
    check = _guard(length_ratio=0.0)
    check(0.4, 34.0, eval_accuracy=0.5)
    check(0.4, 34.0, eval_accuracy=0.2)
    with pytest.raises(LaserError, match="eval accuracy 0.100 < 0.5 × first eval 0.500"):
        check(0.4, 34.0, eval_accuracy=0.1)
    # ratio 0 turns the checks off
    check = _guard(collapse_ratio=0.0, length_ratio=0.0)
    for _ in range(20):
        check(0.0, 1.0, eval_accuracy=0.0)


def test_reference_model_kl_and_periodic_evaluation(tiny_model_dir, tmp_path):
    """A frozen reference model serves the k3 KL term and the reference-model score variant, and
    periodic evaluation (with the initial one before step 1) logs accuracy and self-verification."""
    out = tmp_path / "kl"
    over = fast_overrides(tiny_model_dir, out, steps=2, **{
        "loss.kl_coef": 0.1, "optim.lr": 0.01, "train.eval_every": 1,
        "data.eval": "arith", "data.eval_limit": 3, "data.eval_n": 2,
    })
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
    rows = read_metrics(out)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is still the reference
    assert rows[1]["kl"] > 0  # the MSE moved it away
    for r in rows:
        assert 0.0 <= r["eval_accuracy"] <= 1.0 and "eval_auroc" in r and "eval_hm_tpr_tnr" in r

    # reference: model → r_s = β_v·(lp_z − lp_z_ref) = 0 while the policy equals the reference; the
    # random model's rewards are 0 too, so nothing moves it and the MSE stays 0
    out = tmp_path / "ref"
    over = fast_overrides(tiny_model_dir, out, steps=2, **{"laser.reference": "model", "optim.lr": 0.01})
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
    assert [r["sr_loss"] for r in read_metrics(out)] == pytest.approx([0.0, 0.0], abs=1e-8)
