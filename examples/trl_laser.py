"""LaSeR through TRL on the embedded task, on a CPU: train with ``LaserGRPOTrainer``, then ``laser eval``.

    pip install -c constraints.txt -e ".[dev,trl]"
    python examples/trl_laser.py --base runs/demo/base --out runs/trl-laser

``--base`` is a ``laser base`` folder (the tiny model SFT-ed on the chain-arithmetic task, with its
``task.json`` and ``laser.json``); it is built first when missing (a few minutes). The settings follow
``configs/demo/laser-arith.yaml`` (16 prompts × 8 completions per step, T = 1, lr 1e-4, token-mean loss,
β_v auto, α = τ = 0.1, 30 self-reward warm-up steps), so the run is comparable with
``laser train --config configs/demo/laser-arith.yaml``. It then evaluates the saved folder exactly as any
other model: ``laser eval --model OUT/final --data arith``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="runs/demo/base", help="a `laser base` folder (built when missing)")
    p.add_argument("--out", default="runs/trl-laser", help="output folder: trl/ (TRL's), final/ (model), eval/")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps (one generation batch each)")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--n", type=int, default=8, help="completions per prompt (TRL's num_generations)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--c-ref", default="auto", help="c_ref: a number, or auto (measured on the base model)")
    p.add_argument("--beta-v", default="auto", help="beta_v: a number, or auto (from c_ref, target log-prob -4)")
    p.add_argument("--self-reward-warmup-steps", type=int, default=30)
    p.add_argument("--eval-n", type=int, default=4, help="samples per held-out problem in the evaluation")
    p.add_argument("--eval-limit", type=int, default=300, help="held-out problems evaluated")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from datasets import Dataset
    from transformers import AutoTokenizer

    from laser_rl.cli import main as laser
    from laser_rl.integrations.trl import LaserGRPOConfig, LaserGRPOTrainer
    from laser_rl.tasks.arith import ArithVerifier, load_task_config, train_problem

    base, out = Path(args.base), Path(args.out)
    if not (base / "config.json").is_file():
        print(f"[trl_laser] {base} has no model: building it with `laser base` ...", flush=True)
        if laser(["base", "--out", str(base), "--seed", str(args.seed)]) != 0:
            return 1
    task = load_task_config(base)
    if task is None:
        print(f"[trl_laser] {base} is not a `laser base` folder (no task.json)", file=sys.stderr)
        return 2

    # The task's seeded training stream (disjoint from the held-out split), as plain-text prompts.
    problems = [train_problem(task, args.seed, i) for i in range(args.steps * args.prompts_per_step)]
    dataset = Dataset.from_list([{"prompt": p.problem, "answer": p.answer} for p in problems])
    verifier = ArithVerifier()

    def correctness(completions: list[str], answer: list[str], **_: object) -> list[float]:
        return [verifier.reward(c, a) for c, a in zip(completions, answer)]

    config = LaserGRPOConfig(
        output_dir=str(out / "trl"), seed=args.seed, max_steps=args.steps, use_cpu=True, bf16=False,
        gradient_checkpointing=False, report_to=[], logging_steps=10, save_strategy="no", disable_tqdm=True,
        # GRPO as in configs/demo/laser-arith.yaml: one optimiser step per generation batch, token-mean, no KL
        per_device_train_batch_size=args.prompts_per_step * args.n, num_generations=args.n,
        max_completion_length=64, temperature=1.0, learning_rate=1e-4, weight_decay=0.01,
        lr_scheduler_type="constant", max_grad_norm=1.0, beta=0.0, epsilon=0.2, loss_type="dapo",
        # LaSeR
        laser_c_ref=args.c_ref, laser_beta_v=args.beta_v, laser_target_logprob=-4.0, laser_alpha=0.1, laser_tau=0.1,
        laser_filter_threshold=0.1, laser_reasoning_warmup_steps=0,
        laser_self_reward_warmup_steps=args.self_reward_warmup_steps,
    )
    trainer = LaserGRPOTrainer(model=str(base), reward_funcs=correctness, args=config, train_dataset=dataset,
                               processing_class=AutoTokenizer.from_pretrained(base))
    start = time.perf_counter()
    trainer.train()
    print(f"[trl_laser] trained {args.steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
    trainer.save_model(str(out / "final"))  # weights + tokenizer + laser.json + task.json
    trainer.finish()  # under torchrun: release the DDP wrapper and leave the process group
    return laser(["eval", "--model", str(out / "final"), "--data", "arith", "--n", str(args.eval_n),
                  "--limit", str(args.eval_limit), "--seed", str(args.seed), "--out", str(out / "eval")])


if __name__ == "__main__":
    raise SystemExit(main())
