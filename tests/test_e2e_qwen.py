"""End to end through the CLI with the real Qwen2.5 tokenizer (built offline) on a tiny random Qwen2:
the paper's Qwen config → a few GRPO + LaSeR steps with c_ref measured → `laser eval` on MATH500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laser_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from laser_rl.integrations.qwen_tokenizer import make_tiny_qwen2_folder

    # eos_logit makes the random model end its responses within a few tokens
    return make_tiny_qwen2_folder(tmp_path_factory.mktemp("qwen") / "model", eos_logit=10.5)


def test_paper_config_trains_and_evaluates_tiny_qwen(qwen_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    rc = main([
        "train", "--config", str(ROOT / "configs" / "paper" / "qwen2.5-7b-laser.yaml"),
        f"model.path={qwen_dir}", f"output_dir={out}", "model.dtype=float32", f"data.train={data}",
        "data.problem_key=problem", "data.answer_key=answer", "data.eval=null", "train.eval_every=0", "train.save_every=0", "train.steps=2", "data.prompts_per_step=2",
        "rollout.n=2", "rollout.max_new_tokens=6", "laser.c_ref=auto", "laser.c_ref_samples=6", "laser.beta_v=auto",
        "laser.reasoning_warmup_steps=0", "laser.self_reward_warmup_steps=0", "loss.micro_batch_size=0",
        "optim.lr=1e-3", "logging.progress=none", "logging.tensorboard=false",
    ])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["phase_mse"] for r in rows)
    params = json.loads((out / "final" / "laser.json").read_text())
    assert params["token"] == "<|vision_start|>" and params["token_id"] == 151652
    assert params["c_ref"] < -5  # measured on the random 151k-vocabulary model: about −log(151k) ≈ −12
    assert 151643 in params["extra"]["stop_ids"] and 151645 in params["extra"]["stop_ids"]

    ev = tmp_path / "eval"
    rc = main(["eval", "--model", str(out / "final"), "--data", "math500", "--n", "2", "--limit", "3",
               "--out", str(ev), "--max-new-tokens", "6"])
    assert rc == 0
    records = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert len(r["responses"]) == len(r["self_rewarding_scores"]) == len(r["acc_list"]) == 2
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["num_problems"] == 3 and metrics["num_responses"] == 6
