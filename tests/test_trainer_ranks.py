"""Two-process (gloo) runs of the trainer: DDP equals one process, ranks stay in step, and an error on
one rank (a NaN loss, a collapse seen by rank 0) stops every rank within seconds with the same message.

The file is also the worker: ``python tests/test_trainer_ranks.py MODE MODEL OUT [laser train args]``,
started twice with torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``MASTER_PORT``, ...);
each rank writes ``OUT/rank-R.json``. Ports are chosen free at run time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "laser-arith.yaml")



def launch(mode: str, model_dir: Path, out: Path, *args: str, timeout: float = 180) -> list[dict]:
    """Start the two ranks; wait (at most ``timeout`` s, then kill them); return their reports."""
    from conftest import free_port  # here: this file is also a torchrun worker
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, __file__, mode, str(model_dir), str(out), *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + timeout
    hung = False
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            hung = True
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    stderr = [p.stderr.read()[-3000:] for p in procs]
    reports = []
    for rank in range(2):
        path = out / f"rank-{rank}.json"
        reports.append(json.loads(path.read_text()) if path.is_file() else {"rc": None, "stderr": stderr[rank]})
    assert not hung, f"a rank hung (killed after {timeout} s): {reports}"
    return reports


def train_args(model_dir: Path, out: Path, steps: int = 2, **extra: object) -> list[str]:
    values = {
        "model.path": model_dir, "output_dir": out / "run", "train.steps": steps, "train.save_every": 0,
        "train.eval_every": 0, "data.prompts_per_step": 4, "rollout.n": 4, "rollout.max_new_tokens": 12,
        "laser.c_ref": -6.0, "laser.beta_v": 0.5, "laser.self_reward_warmup_steps": 1, "laser.filter_threshold": 0.0,
        "logging.progress": "none", "logging.tensorboard": False, "guard.length_collapse_ratio": 0.0,
        "guard.collapse_ratio": 0.0,
    }
    values.update(extra)
    return ["--config", DEMO_CONFIG, *(f"{k}={v}" for k, v in values.items())]


# ------------------------------------------------------------------ tests


def test_two_process_update_equals_one_process(tiny_model_dir, tmp_path):
    """The same global batch: one process updates on all of it, two DDP ranks on half each (old
    log-probs recomputed, micro-batches accumulated without sync): same loss, same parameters."""
    r0, r1 = launch("update", tiny_model_dir, tmp_path)
    assert r0["rc"] == 0 and r1["rc"] == 0, (r0, r1)
    assert r0["loss_ddp"] == pytest.approx(r0["loss_one"], abs=1e-5)
    assert r0["grad_norm_ddp"] == pytest.approx(r0["grad_norm_one"], abs=1e-5)
    assert r0["grad_norm_one"] > 0
    assert r0["max_param_diff"] < 1e-5 and r1["max_param_diff"] < 1e-5
    assert r0["param_sum"] == r1["param_sum"]  # the replicas stay identical


def test_two_process_run_keeps_ranks_identical(tiny_model_dir, tmp_path):
    """A 2-step DDP run: global metrics over both ranks' rollouts; the ranks end with identical
    weights, those saved in final/; both train in training mode."""
    r0, r1 = launch("fit", tiny_model_dir, tmp_path, *train_args(tiny_model_dir, tmp_path))
    assert r0["rc"] == 0 and r1["rc"] == 0, (r0, r1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollouts"] == 16 for r in rows)  # 4 prompts × 4 samples over both processes
    assert r0["param_sum"] == r1["param_sum"] and r0["param_sum"] == r0["final_param_sum"]
    assert r0["param_sum"] != r0["initial_param_sum"]
    assert r0["update_modes"] == [True] and r1["update_modes"] == [True]


def test_fsdp2_c_ref_auto_is_measured_in_bf16_once_for_all_ranks(tiny_model_dir, tmp_path):
    """train.sharding fsdp2, model.dtype bfloat16: c_ref is measured on the sharded model in the
    rollouts' compute dtype (not on float32 weights before sharding), and every rank uses rank 0's value."""
    r0, r1 = launch("fit", tiny_model_dir, tmp_path, *train_args(tiny_model_dir, tmp_path, steps=1, **{
        "train.sharding": "fsdp2", "model.dtype": "bfloat16", "laser.c_ref": "auto", "laser.c_ref_samples": 8,
        "train.generation_gather": "per_step"}))
    assert r0["rc"] == 0 and r1["rc"] == 0, (r0, r1)
    for r in (r0, r1):
        assert r["calibration_dtypes"] == ["torch.bfloat16"], r
    assert r0["c_ref"] == r1["c_ref"]
    saved = json.loads((tmp_path / "run" / "final" / "laser.json").read_text())
    assert saved["c_ref"] == r0["c_ref"]


def _assert_all_stopped_together(reports: list[dict], words: str) -> None:
    assert [r["rc"] for r in reports] == [2, 2], reports
    assert reports[0]["error"] == reports[1]["error"], reports
    assert words in reports[0]["error"]
    assert abs(reports[0]["ended"] - reports[1]["ended"]) < 10


def test_nan_loss_on_one_rank_stops_both_ranks(tiny_model_dir, tmp_path):
    reports = launch("nan", tiny_model_dir, tmp_path, *train_args(tiny_model_dir, tmp_path, steps=4), timeout=120)
    _assert_all_stopped_together(reports, "loss is not finite on rank 1 at step 2")


def test_collapse_seen_by_rank_0_stops_both_ranks(tiny_model_dir, tmp_path):
    reports = launch("collapse", tiny_model_dir, tmp_path, *train_args(
        tiny_model_dir, tmp_path, steps=4, **{"train.eval_every": 1, "data.eval": "arith", "data.eval_limit": 2,
                                             "data.eval_n": 1, "guard.collapse_ratio": 0.5,
                                             "guard.collapse_patience": 1}), timeout=120)
    _assert_all_stopped_together(reports, "collapse guard at step 1: eval accuracy 0.000 < 0.5 × first eval 1.000")


# ------------------------------------------------------------------ the worker


def _param_sum(module) -> float:  # noqa: ANN001
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def _worker_update(model_dir: Path) -> dict:
    import torch
    import torch.distributed as dist

    from laser_rl.core import laser as core
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.update import Collective, UpdateSettings, update_policy
    from test_trainer_defects import _fixed_batch, _policy

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch, z = _fixed_batch(model_dir)
    B = batch.seq.input_ids.shape[0]
    score = ScoreParams("<z>", z, 0.5, -3.0)
    settings = UpdateSettings(core.PolicyLossConfig(0.2, 0.28), ppo_epochs=2, micro_batch_size=3, max_grad_norm=1.0)

    def run(policy, part, comm):  # noqa: ANN001, ANN202
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.1)
        return update_policy(policy, opt, part, settings, alpha=0.5, score=score, comm=comm)

    one = _policy(model_dir)
    stats_one = run(one, batch, Collective())

    def all_sum(t):  # noqa: ANN001, ANN202
        t = t.clone()
        dist.all_reduce(t)
        return t

    ddp = torch.nn.parallel.DistributedDataParallel(_policy(model_dir))
    mine = batch.select(torch.arange(rank * B // world, (rank + 1) * B // world))
    stats_ddp = run(ddp, mine, Collective(rank=rank, world=world, reduce_sum=all_sum, accumulate=ddp.no_sync))
    loss = all_sum(torch.tensor(stats_ddp.policy_loss + 0.5 * stats_ddp.sr_loss)) / world
    ref = dict(one.named_parameters())
    diff = max(float((p - ref[n.removeprefix("module.")]).abs().max()) for n, p in ddp.named_parameters())
    dist.barrier()
    dist.destroy_process_group()
    return {"rc": 0, "loss_one": stats_one.policy_loss + 0.5 * stats_one.sr_loss, "loss_ddp": float(loss),
            "grad_norm_one": stats_one.grad_norm, "grad_norm_ddp": stats_ddp.grad_norm, "max_param_diff": diff,
            "param_sum": _param_sum(ddp.module)}


def _worker_train(mode: str, argv: list[str]) -> dict:
    import torch

    from laser_rl.cli import main
    from laser_rl.training import trainer as trainer_module
    from laser_rl.training import update as update_module

    rank = int(os.environ["RANK"])
    report: dict = {}
    real_init, real_fit = trainer_module.Trainer.__init__, trainer_module.Trainer.fit

    def init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_init(self, *args, **kwargs)
        report["initial_param_sum"] = _param_sum(self.model)
        report["update_modes"] = []

        def record(m, args):  # noqa: ANN001, ANN202 - the training mode of each update forward
            if torch.is_grad_enabled() and m.training not in report["update_modes"]:
                report["update_modes"].append(m.training)

        self.model.get_decoder().register_forward_pre_hook(record)

    def fit(self):  # noqa: ANN001, ANN202
        report["c_ref"] = self.score.c_ref if self.score is not None else None
        result = real_fit(self)
        report["param_sum"] = _param_sum(self.model)
        return result

    trainer_module.Trainer.__init__, trainer_module.Trainer.fit = init, fit
    import laser_rl.calibrate as calibrate

    real_measure = calibrate.measure_self_reward_logprobs

    def measure(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the calibration's compute dtype
        layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
        seen: set[str] = set()
        handle = layer.register_forward_hook(lambda m, a, out: seen.add(str(out.dtype)))
        try:
            return real_measure(model, *args, **kwargs)
        finally:
            handle.remove()
            report["calibration_dtypes"] = sorted(seen)

    calibrate.measure_self_reward_logprobs = measure
    if mode == "nan":  # rank 1's loss turns NaN at step 2
        real_loss = update_module.micro_batch_loss
        steps = {"n": 0}

        def loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            from dataclasses import replace

            terms = real_loss(*args, **kwargs)
            steps["n"] += 1
            return replace(terms, total=terms.total * float("nan")) if rank == 1 and steps["n"] == 2 else terms

        update_module.micro_batch_loss = loss
    if mode == "collapse":  # rank 0 evaluates: 1.0 at the start, then 0.0
        calls = {"n": 0}

        def evaluate(self):  # noqa: ANN001, ANN202
            calls["n"] += 1
            return {"eval_accuracy": 1.0 if calls["n"] == 1 else 0.0}

        trainer_module.Trainer.evaluate = evaluate
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["train", *argv])
    report.update(rc=rc, ended=time.time(), error=next(
        (line for line in err.getvalue().splitlines() if "error:" in line), ""))
    if rc == 0 and rank == 0:
        from transformers import AutoModelForCausalLM

        final = next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir="))
        report["final_param_sum"] = _param_sum(AutoModelForCausalLM.from_pretrained(Path(final) / "final"))
    return report


if __name__ == "__main__":
    mode, model, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    sys.path.insert(0, str(Path(__file__).parent))
    import torch as _torch

    _torch.set_num_threads(1)
    result = _worker_update(model) if mode == "update" else _worker_train(mode, sys.argv[4:])
    (out_dir / f"rank-{os.environ['RANK']}.json").write_text(json.dumps(result))
    sys.exit(0)
