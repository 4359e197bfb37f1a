"""Contract tests of the TRL adapter (``laser_rl.integrations.trl``) on the embedded tiny model, on CPU.

They pin the TRL private-method behaviour the adapter relies on, so a TRL upgrade that breaks it fails here.
Skipped when TRL is not installed (``pip install 'laser-rl[trl]'``).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from conftest import free_port  # noqa: E402
from laser_rl.core import laser as core  # noqa: E402
from laser_rl.errors import LaserError  # noqa: E402
from laser_rl.integrations import trl as adapter  # noqa: E402
from laser_rl.rollout import score_responses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCORE = {"laser_c_ref": -6.0, "laser_beta_v": 0.5}  # the tiny fixture's laser.json values


@pytest.fixture(scope="module")
def dataset(tiny_model_dir):
    from datasets import Dataset

    from laser_rl.tasks.arith import load_arith

    problems = load_arith("test", model_dir=str(tiny_model_dir)).problems
    return Dataset.from_list([{"prompt": p.problem, "answer": p.answer} for p in problems[:32]])


def parity_reward(completions, **_):
    """A reward with variance on a random model (the exact verifier gives it 0 everywhere)."""
    return [float(len(c) % 2) for c in completions]


def make_args(out: Path, laser: bool = True, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=10,
        max_steps=3, learning_rate=0.05, optim="sgd", report_to=[], logging_steps=1, seed=0, bf16=False,
        use_cpu=True, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True,
    )
    if laser:
        base.update(SCORE, laser_reasoning_warmup_steps=0, laser_self_reward_warmup_steps=0, laser_filter_threshold=0.0)
    base.update(kw)
    return (adapter.LaserGRPOConfig if laser else trl.GRPOConfig)(**base)


def make_trainer(model_dir, dataset, out, model=None, laser=True, peft_config=None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    cls = adapter.LaserGRPOTrainer if laser else trl.GRPOTrainer
    return cls(model=model if model is not None else AutoModelForCausalLM.from_pretrained(model_dir),
               reward_funcs=parity_reward, args=make_args(out, laser, **kw), train_dataset=dataset,
               processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft_config)


def params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def generation_batch(trainer, dataset, n_prompts: int = 4):
    """One generation batch through TRL's own path (prompt i repeated num_generations times, as its sampler does)."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); _compute_loss reads it
    rows = [dataset[i] for i in range(n_prompts) for _ in range(trainer.num_generations)]
    return trainer._generate_and_score_completions(rows)


def teacher_forced(trainer, out):
    """lp_z of every row by the project's teacher-forced scorer, from the batch's own ids (z stripped)."""
    prompts = [p[m.bool()].tolist() for p, m in zip(out["prompt_ids"], out["prompt_mask"])]
    mask = out["completion_mask"].bool() & out["tool_mask"].bool()  # the response without z
    responses = [c[m].tolist() for c, m in zip(out["completion_ids"], mask)]
    return score_responses(trainer.model, prompts, responses, z_id=trainer.laser_score.token_id,
                           pad_id=trainer.laser_pad_id, stop_ids=trainer.laser_stop_ids,
                           eos_id=trainer.laser_stop_ids[0])


# ------------------------------------------------------------------ LaSeR off ⇒ TRL's GRPO, bit for bit


def test_alpha0_tau0_equals_plain_grpo(tiny_model_dir, dataset, tmp_path, one_thread):
    plain = make_trainer(tiny_model_dir, dataset, tmp_path / "plain", laser=False)
    start = params(plain)
    plain.train()
    laser = make_trainer(tiny_model_dir, dataset, tmp_path / "laser", laser_alpha=0.0, laser_tau=0.0)
    laser.train()
    a, b = params(plain), params(laser)
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3, "the test needs a real update"
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert laser.state.log_history[-2]["laser/phase_mse"] == 1.0  # LaSeR ran (scores computed), only with α = τ = 0


# ------------------------------------------------------------------ z placement, lp_z, MSE on one batch


@pytest.fixture(scope="module")
def batch(tiny_model_dir, dataset, tmp_path_factory):
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path_factory.mktemp("batch"), max_completion_length=8)
    return trainer, generation_batch(trainer, dataset)


def test_z_after_eos_truncated_rows_get_none(batch):
    trainer, out = batch
    z = trainer.laser_score.token_id
    col = out["laser_z_column"]
    finished, truncated = col >= 0, col < 0
    assert finished.any() and truncated.any(), "fixture should give both finished and truncated rows"
    rows = finished.nonzero().squeeze(1)
    ids, attn, loss_mask = out["completion_ids"], out["completion_mask"], out["tool_mask"]
    assert (ids[rows, col[rows]] == z).all()
    assert torch.isin(ids[rows, col[rows] - 1], torch.tensor(trainer.laser_stop_ids)).all()  # right after EOS
    assert (attn[rows, col[rows]] == 1).all(), "z must be attended (its label is kept in TRL's fused head)"
    assert (loss_mask[rows, col[rows]] == 0).all(), "z must be out of the policy loss"
    assert int((loss_mask == 0).sum()) == int(finished.sum())  # nothing else is taken out of the loss
    # truncated rows: nothing appended (TRL samples from the full vocabulary, so z may occur inside them)
    assert (attn[truncated].sum(dim=1) == trainer.args.max_completion_length).all()
    assert (loss_mask[truncated] == 1).all() and (out["laser_weights"][truncated] == 0).all()
    with torch.no_grad():
        lp_z = trainer._laser_forward_lp_z(trainer.model, out)
    assert torch.isnan(lp_z[truncated]).all()


def test_lp_z_equals_teacher_forced_scorer_and_is_not_zero(batch):
    trainer, out = batch
    finished = out["laser_z_column"] >= 0
    with torch.no_grad():
        lp_z = trainer._laser_forward_lp_z(trainer.model, out)
    expected = teacher_forced(trainer, out)
    assert lp_z.dtype == torch.float32
    # the fused-head pitfall: a masked z label gives exactly 0
    assert (lp_z[finished] != 0).all() and (lp_z[finished] < -0.1).all()
    torch.testing.assert_close(lp_z[finished], expected[finished], atol=1e-5, rtol=1e-5)


def test_loss_adds_alpha_times_core_mse(batch):
    trainer, out = batch
    finished = out["laser_z_column"] >= 0
    s = trainer.laser_score
    rewards = out["laser_rewards"]
    expected_scores = core.self_reward_score(teacher_forced(trainer, out), s.beta_v, s.c_ref)
    expected = core.class_balanced_mse(expected_scores, rewards, finished)
    losses = {}
    for alpha in (0.0, 0.1):
        trainer.args.laser_alpha = alpha
        with torch.no_grad():
            losses[alpha] = float(trainer._compute_loss(trainer.model, out))
    trainer.args.laser_alpha = 0.1
    assert trainer._metrics["train"]["laser/sr_loss"][-1] == pytest.approx(float(expected), rel=1e-4)
    assert losses[0.1] - losses[0.0] == pytest.approx(0.1 * float(expected), rel=1e-3)
    assert rewards.min() < 0.5 < rewards.max()  # both classes, so the class balance matters


# ------------------------------------------------------------------ advantage integration and warm-ups


def test_advantage_integration_from_the_rollout_policy_score(tiny_model_dir, dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path, laser_c_ref=-4.0)
    a = trainer.args
    batches = {}
    for name, tau, warmup in (("off", 0.0, 0), ("warmup", 0.5, 1), ("on", 0.5, 0)):
        a.laser_tau, a.laser_self_reward_warmup_steps = tau, warmup
        torch.manual_seed(1)  # the same completions each time (the extra no-grad pass draws no random numbers)
        batches[name] = generation_batch(trainer, dataset)
    plain, warm, mixed = batches["off"]["advantages"], batches["warmup"]["advantages"], batches["on"]["advantages"]
    assert torch.equal(batches["off"]["completion_ids"], batches["on"]["completion_ids"])
    assert torch.equal(plain, warm), "no integration during the self-reward warm-up"
    out = batches["on"]
    s = trainer.laser_score
    scores = core.self_reward_score(teacher_forced(trainer, out), s.beta_v, s.c_ref)
    group = torch.arange(len(plain)) // trainer.num_generations
    expected, passed = core.self_reward_advantages(plain, scores, out["laser_z_column"] >= 0, group, 0.5, 0.0)
    assert passed.any() and not torch.allclose(mixed, plain)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)
    # TRL's completion log shows the advantages actually used
    logged = list(trainer._logs["advantages"])  # a deque of the last generation_batch_size values
    assert logged == pytest.approx(mixed.tolist()[-len(logged):])
    # reasoning warm-up: plain GRPO, the MSE term is off
    a.laser_reasoning_warmup_steps, a.laser_alpha = 1, 1.0
    with torch.no_grad():
        trainer._compute_loss(trainer.model, out)
    assert trainer._metrics["train"]["laser/alpha"][-1] == 0.0


# ------------------------------------------------------------------ two stop ids


def test_two_stop_ids(tiny_model_dir, dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    second = tok.convert_tokens_to_ids(";")  # a frequent character of the task, as a second stop id
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path, model=model, max_completion_length=12)
    assert set(trainer.laser_stop_ids) == {tok.eos_token_id, second}
    out = generation_batch(trainer, dataset)
    col = out["laser_z_column"]
    rows = (col >= 0).nonzero().squeeze(1)
    before_z = out["completion_ids"][rows, col[rows] - 1]
    assert (before_z == second).any(), "some completion should end with the second stop id"
    with torch.no_grad():
        lp_z = trainer._laser_forward_lp_z(trainer.model, out)
    torch.testing.assert_close(lp_z[rows], teacher_forced(trainer, out)[rows], atol=1e-5, rtol=1e-5)
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "laser.json").read_text())
    assert set(saved["extra"]["stop_ids"]) == {tok.eos_token_id, second}


# ------------------------------------------------------------------ gradient accumulation


def test_gradient_accumulation_1_vs_2_same_update(tiny_model_dir, dataset, tmp_path, one_thread):
    # c_ref −4 puts the random model's scores inside (0, 1), so the advantage integration acts too
    common = dict(max_steps=1, laser_alpha=1.0, laser_tau=0.5, laser_c_ref=-4.0)
    one = make_trainer(tiny_model_dir, dataset, tmp_path / "ga1", per_device_train_batch_size=8,
                       gradient_accumulation_steps=1, **common)
    start = params(one)
    one.train()
    two = make_trainer(tiny_model_dir, dataset, tmp_path / "ga2", per_device_train_batch_size=4,
                       gradient_accumulation_steps=2, **common)
    two.train()
    a, b = params(one), params(two)
    update = torch.cat([(a[k] - start[k]).flatten() for k in a])
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    assert update.norm() > 1e-3
    assert diff.norm() <= 1e-5 * update.norm() + 1e-7
    assert one.state.log_history[0]["laser/filter_pass_fraction"] > 0
    for key in ("laser/sr_loss", "laser/auroc", "laser/filter_pass_fraction"):
        assert one.state.log_history[0][key] == pytest.approx(two.state.log_history[0][key], rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------ the saved folder works with `laser eval`


def test_saved_folder_evaluates_with_laser_eval(tiny_model_dir, dataset, tmp_path, one_thread):
    from laser_rl.cli import main

    trainer = make_trainer(tiny_model_dir, dataset, tmp_path / "run", max_steps=1)
    trainer.train()
    folder = tmp_path / "final"
    trainer.save_model(str(folder))
    saved = json.loads((folder / "laser.json").read_text())
    assert saved["token_id"] == trainer.laser_score.token_id and saved["c_ref"] == -6.0
    assert saved["extra"]["max_new_tokens"] == 10 and saved["extra"]["prompt_style"] == "raw"
    assert (folder / "task.json").is_file()
    rc = main(["eval", "--model", str(folder), "--data", "arith", "--n", "2", "--limit", "3",
               "--out", str(tmp_path / "eval")])
    assert rc == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_problems"] == 3


# ------------------------------------------------------------------ bad input


def test_invalid_laser_token_gives_the_same_error_as_laser_train(tiny_model_dir, dataset, tmp_path):
    from laser_rl.training.config import load_config
    from laser_rl.training.trainer import Trainer

    for token in ("<eos>", "5"):
        cfg = load_config(ROOT / "configs" / "demo" / "laser-arith.yaml", [
            f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'train'}", f"laser.token={token}",
            "laser.c_ref=-6.0", "laser.beta_v=0.5", "logging.tensorboard=false"])
        with pytest.raises(LaserError) as builtin:
            Trainer(cfg)
        with pytest.raises(LaserError) as ours:
            make_trainer(tiny_model_dir, dataset, tmp_path / "trl", laser_token=token)
        assert str(ours.value) == str(builtin.value)


@pytest.mark.parametrize("field, value, words", [
    ("laser_tau", 1.5, "laser_tau must lie in [0, 1]"),
    ("laser_c_ref", "high", "laser_c_ref must be a number or 'auto'"),
    ("laser_c_ref", 3.0, "laser_c_ref must be < 0"),
    ("laser_alpha", -1.0, "laser_alpha must be >= 0"),
    ("temperature", 0.7, "temperature=0.7"),
    ("laser_beta_v", 0.01, "c_ref + 1/beta_v"),
])
def test_bad_config_values_name_the_field(tmp_path, field, value, words):
    with pytest.raises(LaserError, match=None) as e:
        make_args(tmp_path, **{field: value})
    assert words in str(e.value)


def test_trl_version_outside_the_tested_range_is_refused(monkeypatch):
    with pytest.raises(LaserError, match=r">=1\.16,<1\.17.*found trl 1\.17\.0"):
        adapter.check_trl_version("1.17.0")
    adapter.check_trl_version("1.16.3")
    # the check runs at import: load a fresh copy of the module while TRL claims another version
    monkeypatch.setattr(trl, "__version__", "1.15.2")
    spec = importlib.util.spec_from_file_location("laser_trl_copy", adapter.__file__)
    with pytest.raises(LaserError, match="found trl 1.15.2"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_peft_lora_frozen_head_still_trains_the_score(tiny_model_dir, dataset, tmp_path, one_thread):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_model_dir, dataset, tmp_path, peft_config=lora, max_steps=1, learning_rate=0.5,
                           laser_alpha=1.0)
    head = trainer.accelerator.unwrap_model(trainer.model).get_output_embeddings().weight
    assert not head.requires_grad, "LoRA on the body leaves the LM head frozen"
    out = generation_batch(trainer, dataset)
    trainer.model.zero_grad()
    trainer.args.laser_alpha = 1.0
    loss_with = trainer._compute_loss(trainer.model, out)
    trainer.args.laser_alpha = 0.0
    loss_without = trainer._compute_loss(trainer.model, out)
    (loss_with - loss_without).backward()  # the gradient of α·L_sr alone
    lora_grads = [p.grad for n, p in trainer.model.named_parameters() if "lora_" in n and p.grad is not None]
    assert lora_grads and max(float(g.abs().max()) for g in lora_grads) > 0, "the score must reach the adapter"


# ------------------------------------------------------------------ TRL's command line and two processes


def test_config_parses_from_trl_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(adapter.LaserGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--laser_c_ref", "-23",
         "--laser_beta_v", "auto", "--laser_token", "151652"])
    assert (args.laser_c_ref, args.laser_beta_v, args.laser_token) == (-23.0, "auto", "151652")


DDP_SCRIPT = """
import json, sys
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from laser_rl.integrations.trl import LaserGRPOConfig, LaserGRPOTrainer
from laser_rl.tasks.arith import load_arith
model_dir, out = sys.argv[1], sys.argv[2]
ds = Dataset.from_list([{"prompt": p.problem, "answer": p.answer}
                        for p in load_arith("test", model_dir=model_dir).problems[:32]])
args = LaserGRPOConfig(output_dir=out, per_device_train_batch_size=4, num_generations=4, max_completion_length=10,
    max_steps=2, report_to=[], logging_steps=1, seed=0, bf16=False, use_cpu=True, save_strategy="no",
    gradient_checkpointing=False, disable_tqdm=True, laser_c_ref="auto", laser_c_ref_samples=8,
    laser_beta_v="auto", laser_target_logprob=-1.0, laser_self_reward_warmup_steps=0, laser_filter_threshold=0.0)
trainer = LaserGRPOTrainer(model=model_dir, reward_funcs=lambda completions, **_: [len(c) % 2 for c in completions],
                           args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(model_dir))
rank = trainer.accelerator.process_index
json.dump([trainer.accelerator.num_processes, trainer.laser_score.c_ref], open(f"{out}/rank{rank}.json", "w"))
trainer.train()
if rank == 0:
    json.dump(trainer.state.log_history, open(f"{out}/log.json", "w"))
trainer.save_model(f"{out}/final")
trainer.finish()
import gc
from torch.nn.parallel import DistributedDataParallel
gc.collect()
left = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
json.dump([left, torch.distributed.is_initialized()], open(f"{out}/left{rank}.json", "w"))
"""


def test_two_processes_share_c_ref_and_train(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(tiny_model_dir), str(out)]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0][0] == 2  # c_ref measured once (auto) and broadcast
    logs = [h for h in json.loads((out / "log.json").read_text()) if "laser/sr_loss" in h]
    assert len(logs) == 2 and all(h["laser/phase_integration"] == 1.0 for h in logs)
    assert json.loads((out / "final" / "laser.json").read_text())["c_ref"] == ranks[0][1]
    # finish() released the DDP wrapper (it holds the gloo group) and destroyed the group before shutdown
    assert [json.loads((out / f"left{r}.json").read_text()) for r in (0, 1)] == [[0, False], [0, False]]


def test_example_script_trains_and_evaluates(tiny_model_dir, tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("trl_laser_example", ROOT / "examples" / "trl_laser.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "run"
    rc = example.main(["--base", str(tiny_model_dir), "--out", str(out), "--steps", "1", "--prompts-per-step", "2",
                       "--n", "4", "--c-ref", "-6", "--beta-v", "0.5", "--eval-n", "2", "--eval-limit", "2"])
    assert rc == 0
    assert json.loads((out / "final" / "laser.json").read_text())["extra"]["trainer"] == "trl"
    assert json.loads((out / "eval" / "metrics.json").read_text())["num_problems"] == 2


# ------------------------------------------------------------------ one owner: LaserSettings, the threshold


def test_laser_fields_are_generated_from_laser_settings():
    import dataclasses

    from laser_rl.core.settings import LaserSettings
    from laser_rl.training.config import LaserConfig

    trl_fields = {f.name: f for f in dataclasses.fields(adapter.LaserGRPOConfig) if f.name.startswith("laser_")}
    ours = {f.name: f for f in dataclasses.fields(LaserConfig) if f.name not in adapter.TRL_UNSUPPORTED}
    assert set(trl_fields) == {f"laser_{n}" for n in ours}
    for name, f in ours.items():
        t = trl_fields[f"laser_{name}"]
        assert t.metadata["help"] == f.metadata["help"], name
        assert t.default == (f.default if isinstance(f.default, (bool, int, float, str)) and name != "beta_v"
                             else str(f.default)), name
    args = make_args(Path("unused"), laser_correct_threshold=0.7, laser_alpha=0.3)
    assert args.laser_settings == LaserSettings(**{k: getattr(args, f"laser_{k}") for k in ours})
    assert args.laser_settings.correct_threshold == 0.7 and args.laser_settings.alpha == 0.3


def test_a_new_laser_settings_default_reaches_trl_without_editing_the_adapter(monkeypatch):
    import dataclasses

    from laser_rl.core.settings import LaserSettings

    alpha = next(f for f in dataclasses.fields(LaserSettings) if f.name == "alpha")
    monkeypatch.setattr(alpha, "default", 0.37)
    spec = importlib.util.spec_from_file_location("laser_trl_derived", adapter.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    field = next(f for f in dataclasses.fields(module.LaserGRPOConfig) if f.name == "laser_alpha")
    assert field.default == 0.37


def test_trl_command_line_help_shows_the_settings_help():
    from transformers import HfArgumentParser

    text = HfArgumentParser(adapter.LaserGRPOConfig).format_help()
    assert "--laser_correct_threshold" in text and "--laser_alpha_warmup_steps" in text
    assert "--laser_enabled" not in text and "--laser_reference" not in text


def test_non_default_correct_threshold_reaches_class_balance_and_metrics(tiny_model_dir, dataset, tmp_path, one_thread):
    """Rewards 0.6 are correct at the default threshold and incorrect at 0.7, in the MSE's class balance
    and in the logged TPR/TNR."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def reward_06(completions, **_):
        return [0.6 if len(c) % 2 else 0.0 for c in completions]

    results = {}
    for threshold in (0.5, 0.7):
        torch.manual_seed(0)
        trainer = adapter.LaserGRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_funcs=reward_06,
            args=make_args(tmp_path / str(threshold), laser_correct_threshold=threshold),
            train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
        out = generation_batch(trainer, dataset)
        finished = out["laser_z_column"] >= 0
        rewards = out["laser_rewards"]
        with torch.no_grad():
            trainer._compute_loss(trainer.model, out)
        results[threshold] = (out["laser_weights"], finished, rewards, dict(trainer._metrics["train"]))
    w5, fin, rewards, m5 = results[0.5]
    w7, fin7, _, m7 = results[0.7]
    assert torch.equal(fin, fin7) and ((rewards == 0.6) & fin).any() and ((rewards == 0.0) & fin).any()
    expected7 = core.class_balance_weights(rewards, fin, True, 0.7)
    torch.testing.assert_close(w7, expected7)
    assert not torch.allclose(w5, w7)  # 0.6 is a different class under the two thresholds
    assert (w7[fin] == w7[fin][0]).all()  # at 0.7 every finished row is incorrect: one class, one weight
    assert math.isnan(m7["laser/tpr"][-1]) and not math.isnan(m5["laser/tpr"][-1])  # no correct response at 0.7
