"""``laser demo [--out DIR] [--seed S] [--setup SETUP] [--jobs N] [--rebuild-base]``: the paper's
experiment on an embedded task."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from laser_rl.demo import DEFAULT_SETUP, demo_setups

    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (reused and resumed if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base model, both RL runs and the evaluation")
    parser.add_argument("--setup", default=None, choices=demo_setups(),
                        help=f"configs/demo/{{base,grpo,laser}}-SETUP.yaml (default {DEFAULT_SETUP}): pairsum-verify "
                             "(a search task where checking is easier than solving; the responses write no verdict, "
                             "the base learned a verification template), pairsum (the same task, each response "
                             "writes its own check word), pairsum-nocheck (no verdict, no template), arith (chain "
                             "arithmetic), clock (research rounds 2-3)")
    parser.add_argument("--full", action="store_true",
                        help="the issue-18 research configuration: same as --setup pairsum")
    parser.add_argument("--eval-problems", type=int, default=1000, help="held-out problems to evaluate")
    parser.add_argument("--eval-n", type=int, default=8, help="samples per held-out problem")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the tiny models gain nothing from more; 0 keeps torch's default)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="tasks at once, each a one-thread process: the GRPO and LaSeR arms train together, "
                             "the evaluations run side by side (default: the number of cores, at most 2; 1 = one "
                             "after the other in this process); results do not depend on it")
    parser.add_argument("--rebuild-base", action="store_true",
                        help="train the base model from scratch (`laser base`, ~8 min on one core) instead of "
                             "copying the one shipped in the package, which is that same build byte for byte")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to both RL runs")


def run(args: argparse.Namespace) -> int:
    import json

    from laser_rl.demo import DEFAULT_SETUP, run_demo
    from laser_rl.errors import LaserError

    if args.full and args.setup not in (None, "pairsum"):
        raise LaserError(f"--full is the pairsum setup; it contradicts --setup {args.setup}")
    setup = args.setup or ("pairsum" if args.full else DEFAULT_SETUP)
    if args.eval_problems < 1 or args.eval_n < 1:
        raise LaserError("--eval-problems and --eval-n must be positive")
    summary = run_demo(args.out, seed=args.seed, setup=setup, eval_problems=args.eval_problems,
                       eval_n=args.eval_n, threads=args.threads or None, train_overrides=args.overrides,
                       jobs=args.jobs, rebuild_base=args.rebuild_base)
    keys = ("base", "grpo", "laser", "c_ref", "phase_seconds", "wall_seconds")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0
