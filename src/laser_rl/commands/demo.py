"""``laser demo [--out DIR] [--seed S] [--full]``: the paper's experiment on the embedded task."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (reused and resumed if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base model, both RL runs and the evaluation")
    parser.add_argument("--full", action="store_true",
                        help="the longer research configuration (configs/demo/*-full.yaml; 1000 eval problems)")
    parser.add_argument("--eval-problems", type=int, default=None, help="held-out problems to evaluate (default 300; 1000 with --full)")
    parser.add_argument("--eval-n", type=int, default=8, help="samples per held-out problem")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to both RL runs")


def run(args: argparse.Namespace) -> int:
    import json

    from laser_rl.demo import run_demo

    summary = run_demo(args.out, seed=args.seed, full=args.full, eval_problems=args.eval_problems, eval_n=args.eval_n,
                       train_overrides=args.overrides)
    print(json.dumps({k: summary[k] for k in ("base", "grpo", "laser", "c_ref", "wall_seconds")}, indent=2))
    return 0
