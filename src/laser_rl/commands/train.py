"""``laser train --config CONFIG.yaml [key=value ...] [--resume] [--print-config]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="CONFIG.yaml", help="YAML config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir")
    parser.add_argument("--print-config", action="store_true", help="print the fully resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.steps=50 laser.c_ref=auto (flags and overrides in any order)")
    parser.epilog = "Run under `accelerate launch` or `torchrun` for several processes (DDP; gloo on CPU)."


def run_argv(argv: list[str]) -> int:
    from laser_rl.training.config import config_to_yaml, load_config, parse_train_argv

    path, overrides, flags = parse_train_argv(argv)
    cfg = load_config(path, overrides)
    if flags["print_config"]:
        print(config_to_yaml(cfg), end="")
        return 0
    from laser_rl.training.trainer import train

    train(cfg, resume=flags["resume"])
    return 0


def run(args: argparse.Namespace) -> int:  # only reached through argparse, e.g. for --help
    argv = ([f"--config={args.config}"] if args.config else []) + (["--resume"] if args.resume else [])
    argv += (["--print-config"] if args.print_config else []) + list(args.overrides)
    return run_argv(argv)
