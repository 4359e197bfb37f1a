"""FSDP2: the sharded step equals DDP's, generation in lockstep, sharded checkpoints, config checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from laser_rl.errors import LaserError
from laser_rl.training import sharding

ROOT = Path(__file__).resolve().parents[1]
REL = 1e-4



@pytest.fixture(scope="module")
def two_process_results(tiny_model_dir, tmp_path_factory) -> dict:
    """One 2-process gloo run of tests/fsdp_worker.py (≈ 35 s on 2 cores) that all tests below read."""
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests" / "fsdp_worker.py"), str(tiny_model_dir), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * abs(b)


@pytest.mark.slow
def test_fsdp2_step_equals_ddp_and_unsharded(two_process_results):
    r = two_process_results
    ref, ddp = r["unsharded"], r["ddp"]
    assert r["finished_rows"] > 0  # the MSE term has rows to act on
    for name in ("ddp", "fsdp2", "fsdp2_checkpointing"):
        got = r[name]
        assert _close(got["loss"], ref["loss"]) and _close(got["grad_norm"], ref["grad_norm"]), (name, got, ref)
        assert got["param_rel_diff"] < REL, name
    for name in ("fsdp2", "fsdp2_checkpointing"):
        assert _close(r[name]["loss"], ddp["loss"]) and _close(r[name]["grad_norm"], ddp["grad_norm"])
        assert r[name]["param_rel_diff_vs_ddp"] < REL


@pytest.mark.slow
def test_fsdp2_generation_matches_unsharded_and_keeps_ranks_in_step(two_process_results):
    gen = two_process_results["generation"]
    for gather in ("window", "per_step"):
        g = gen[gather]
        assert all(g["same_tokens"]), gather
        assert g["lp_z_max_abs_diff"] <= 1e-5, gather
        assert sum(g["finished_rows"]) > 0, "some rows must finish for lp_z to be compared"
    # per_step: every forward is a collective, so both ranks ran the same number of forwards and
    # the rank with fewer, shorter rows made up the difference with dummy forwards
    ps = gen["per_step"]
    assert ps["forwards"][0] == ps["forwards"][1]
    assert ps["dummy_forwards"][1] > 0 and ps["dummy_forwards"][0] == 0
    # window: weights were gathered once, so each rank ran only its own forwards, no dummies
    w = gen["window"]
    assert w["dummy_forwards"] == [0, 0] and w["forwards"][0] > w["forwards"][1]
    assert two_process_results["step_after_generation_finite"]
    assert max(two_process_results["reference_max_abs_diff"]) <= 1e-5  # frozen reference, sharded


@pytest.mark.slow
def test_fsdp2_checkpoints_round_trip_and_final_folder_loads(two_process_results):
    ck = two_process_results["sharded_checkpoint"]
    assert ck["params"] and ck["optimizer"] and ck["lr"]
    assert all(not f.endswith((".pt", ".bin", ".metadata", ".distcp")) for f in ck["files"]), ck["files"]
    assert sum(f.startswith("shard-") for f in ck["files"]) == 2  # each rank wrote its own shards
    assert two_process_results["final_loads"] and two_process_results["final_differs_from_base"]


@pytest.mark.slow
def test_fsdp2_bf16_compute_keeps_float32_master_weights(two_process_results):
    b = two_process_results["bf16"]
    assert b["stored_dtypes"] == ["torch.float32"]  # sharded parameters and AdamW state
    assert b["layer_output_dtype"] == "torch.bfloat16"  # the layers computed in bf16
    assert b["logprob_dtype"] == b["lp_z_dtype"] == "torch.float32"  # the score's log-softmax stays float32


# ------------------------------------------------------------------ one process


def test_world_size_one_without_a_launcher(tiny_model_dir, one_thread):
    """fsdp2 with one process: a one-rank group is started; generation and a step work."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from laser_rl.rollout import SamplingConfig, sample
    from laser_rl.training.policy import PolicyWithScore

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    assert sharding.ensure_process_group(torch.device("cpu"))
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        root = sharding.shard_model(PolicyWithScore(model))
        assert sharding.is_sharded(root) and len(sharding.decoder_layers(root)) == 2
        prompts = [[5, 6, 7], [8, 9]]
        kw = dict(pad_id=0, stop_ids=[1], config=SamplingConfig(max_new_tokens=6))
        with sharding.generation_window(root, "per_step", forward_module=model) as lockstep:
            got = sample(model, prompts, generator=torch.Generator().manual_seed(0), **kw)
        assert lockstep is None  # one rank: nothing to keep in step
        want = sample(plain, prompts, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(got.response_ids, want.response_ids)
        assert torch.allclose(got.logprobs, want.logprobs, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_unsharded_models_pass_through(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not sharding.is_sharded(model)
    with sharding.generation_window(model, "window") as lockstep:
        assert lockstep is None
    with pytest.raises(LaserError, match="window, per_step"), sharding.generation_window(model, "sometimes"):
        pass
    layers = sharding.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers and all(type(m).__name__ == "LlamaDecoderLayer" for m in layers)
    assert sharding.mixed_precision_policy(torch.float32) is None
    mp = sharding.mixed_precision_policy(torch.bfloat16)
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.float32


def _config_only(folder: Path, **changes) -> str:
    """A model folder holding only config.json: the checks must not need weights."""
    from transformers import LlamaConfig

    values = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=40)
    LlamaConfig(**{**values, **changes}).save_pretrained(folder)
    return str(folder)


def test_config_checks_reject_unsupported_combinations_before_loading(tmp_path):
    from laser_rl.training.config import load_config

    policy = _config_only(tmp_path / "policy")
    same = _config_only(tmp_path / "same", vocab_size=41)  # an added token is fine
    other = _config_only(tmp_path / "other", num_hidden_layers=3)
    sharding.check_reference_architecture(policy, same)
    with pytest.raises(LaserError, match="num_hidden_layers: 2 vs 3"):
        sharding.check_reference_architecture(policy, other)

    base = ["output_dir=x", f"model.path={other}", "data.train=arith:train", "train.sharding=fsdp2",
            "loss.kl_coef=0.1"]
    cfg = load_config(None, base)
    with pytest.raises(LaserError, match="different architecture"):
        sharding.check_sharding_setup(cfg, policy_path=policy)
    sharding.check_sharding_setup(load_config(None, [*base[:3], "train.sharding=none", "loss.kl_coef=0.1"]),
                                  policy_path=policy)  # only checked when sharding
    with pytest.raises(LaserError, match="model.dtype=float16"):
        sharding.check_sharding_setup(load_config(None, [*base, "model.dtype=float16"]))
    # FSDP2 with the vLLM engine is a supported combination (tests/test_vllm_train.py trains it on 2 ranks)
    sharding.check_sharding_setup(load_config(None, [*base[:3], "train.sharding=fsdp2", "rollout.engine=vllm"]),
                                  policy_path=policy)
    with pytest.raises(LaserError, match="train.sharding"):
        load_config(None, [*base[:3], "train.sharding=fsdp"])
    with pytest.raises(LaserError, match="train.generation_gather"):
        load_config(None, [*base[:3], "train.generation_gather=sometimes"])


def test_missing_distributed_support_is_a_clear_error(monkeypatch, tmp_path):
    from laser_rl.training.config import load_config

    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    cfg = load_config(None, ["output_dir=x", "model.path=m", "data.train=arith:train", "train.sharding=fsdp2"])
    with pytest.raises(LaserError, match="no torch.distributed support.*train.sharding=none"):
        sharding.check_sharding_setup(cfg)


def test_accelerate_launch_configs_select_the_sharding():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "ddp.yaml"))
    fsdp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "fsdp2.yaml"))
    assert ddp.distributed_type.value == "MULTI_GPU" and ddp.mixed_precision == "no"
    assert fsdp.distributed_type.value == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.mixed_precision == "no"  # precision is laser-rl's MixedPrecisionPolicy, not accelerate's
    # what `accelerate launch` exports for each file
    assert sharding.resolve_sharding("none", {}) == "none"
    assert sharding.resolve_sharding("fsdp2", {}) == "fsdp2"
    assert sharding.resolve_sharding("none", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}) == "fsdp2"
    with pytest.raises(LaserError, match="FSDP version 1.*fsdp2.yaml"):
        sharding.resolve_sharding("none", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_with_a_tiny_shape(tmp_path):
    """scripts/gpu_check.sh is meant for a GPU machine; its CPU path with a tiny shape checks the plumbing."""
    log = tmp_path / "gpu_check.log"
    env = dict(os.environ, DEVICE="cpu", SHAPES="tiny", STEPS="1", RESPONSE="16", GEN_BATCH="2", GEN_TOKENS="3",
               PYTHON=sys.executable, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(log)], env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    steps = {r["sharding"]: r for r in rows if r["what"] == "train_step"}
    assert set(steps) == {"none", "fsdp2"} and all(r["loss_finite"] and r["peak_gib"] > 0 for r in steps.values())
    engines = {r["engine"]: r for r in rows if r["what"] == "generation"}
    assert set(engines) == {"laser sampler", "hf generate", "laser sampler, fsdp2 window"}
    assert all(r["tokens_per_s"] > 0 for r in engines.values())


def test_memory_plan_arithmetic():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import sharding_bench
    finally:
        sys.path.pop(0)
    plan = sharding_bench.memory_plan("7b", gpus=8, micro_batch=2, tokens=10240, gen_rows=64)
    assert plan["params_b"] == pytest.approx(7.616, abs=1e-3)  # Qwen2.5-7B's published size
    assert plan["fsdp2_sharded_weights_grads_adam_gb"] == pytest.approx(16 * 7.616 / 8, abs=0.1)
    assert plan["kv_cache_kb_per_token"] == pytest.approx(2 * 2 * 4 * 128 * 28 / 1e3, abs=0.1)
    assert plan["ddp_fp32_master_gb"] > 80 > plan["fsdp2_generation_window_peak_gb"] > plan["fsdp2_train_peak_gb"]
    # no reduce-scatter per micro-batch keeps the whole float32 gradient (4 B/param): still under 80 GB at 7B
    assert plan["fsdp2_no_grad_sync_extra_gb"] == pytest.approx(4 * 7.616, abs=0.1)
    assert plan["fsdp2_train_peak_no_grad_sync_gb"] < 80
    # meta-device loading: a GPU gets its 1/8 of the float32 model plus the embedding (152064 x 3584) in flight
    assert plan["load_full_then_shard_per_gpu_gb"] == pytest.approx(4 * 7.616, abs=0.1)
    assert plan["load_meta_init_per_gpu_gb"] == pytest.approx(4 * 7.616 / 8 + 4 * 152064 * 3584 / 1e9, abs=0.1)
    assert sharding_bench.memory_plan("3b", 8, 2, 10240, 32)["params_b"] == pytest.approx(3.213, abs=1e-3)


# ------------------------------------------------------------------ laser train under FSDP2


def _train_cmd(model_dir: Path, out: Path, port: int, *extra: str) -> list[str]:
    from test_trainer import DEMO_CONFIG, fast_overrides

    over = fast_overrides(model_dir, out, steps=6, **{"train.save_every": 2, "optim.lr": 0.003})
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "laser_rl.cli", "train", "--config", DEMO_CONFIG, *over, *extra]


def _metrics(out: Path) -> list[dict]:
    from laser_rl.training.trainer import metric_keys_without_timing

    return [metric_keys_without_timing(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_laser_train_fsdp2_equals_ddp_resumes_exactly_after_sigkill_and_saves_a_loadable_folder(tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 … laser train train.sharding=fsdp2` on CPU (gloo): the same losses and rewards
    as a 2-process DDP run, an exact resume after SIGKILL, and an ordinary save_pretrained final folder."""
    import signal
    import time

    from transformers import AutoModelForCausalLM

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    runs = {}
    for name, extra in (("ddp", ()), ("fsdp2", ("train.sharding=fsdp2",))):
        res = subprocess.run(_train_cmd(tiny_model_dir, tmp_path / name, free_port(), *extra), env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = _metrics(tmp_path / name)
    assert [r["step"] for r in runs["fsdp2"]] == list(range(1, 7))
    for a, b in zip(runs["fsdp2"], runs["ddp"]):
        for key in ("loss", "reward_mean", "sr_loss", "grad_norm"):
            assert _close(a[key], b[key]) or abs(a[key] - b[key]) < 1e-7, (key, a, b)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(tiny_model_dir, cut, free_port(), "train.sharding=fsdp2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while not (cut / "checkpoints" / "step-000004").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_metrics(cut)) < 6, "the run should have been killed before finishing"
    res = subprocess.run(_train_cmd(tiny_model_dir, cut, free_port(), "train.sharding=fsdp2", "--resume"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _metrics(cut) == runs["fsdp2"]

    final = tmp_path / "fsdp2" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert json.loads((final / "laser.json").read_text())["token_id"] >= 0


def test_laser_train_leaves_its_process_group_on_success():
    import torch.distributed as dist

    from laser_rl.training.sharding import leave_process_group

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    assert sharding.ensure_process_group(torch.device("cpu"))
    leave_process_group()
    assert not dist.is_initialized()
    leave_process_group()  # no group: nothing to do
