"""``laser train --config CONFIG.yaml [key=value ...] [--resume] [--print-config]``.

The flags are declared once (:func:`add_arguments`): argparse renders ``--help`` from them and
:func:`parse_train_argv` parses with them, intermixing flags and ``key=value`` overrides in any order.
"""

from __future__ import annotations

import argparse
import difflib

from laser_rl.errors import LaserError


class _Once(argparse.Action):
    """``--config`` given twice is a mistake to report, not "the last one wins"."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        previous = getattr(namespace, self.dest)
        if previous is not None:
            raise argparse.ArgumentError(self, f"given twice ('{previous}' and '{values}')")
        if not values:
            raise argparse.ArgumentError(self, "expected a config file path")
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Declare the flags on ``parser``; returns their long names (for "did you mean")."""
    flags = [
        parser.add_argument("--config", "-c", metavar="CONFIG.yaml", action=_Once, help="YAML config: a path, or a shipped config such as paper/qwen2.5-7b-laser.yaml (configs/ in the repository)"),
        parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir"),
        parser.add_argument("--print-config", action="store_true", help="print the fully resolved config as YAML and exit"),
    ]
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.steps=50 laser.c_ref=auto (flags and overrides in any order)")
    parser.epilog = "Run under `accelerate launch` or `torchrun` for several processes (DDP; gloo on CPU)."
    return [action.option_strings[0] for action in flags]


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # a LaserError, not SystemExit
        raise LaserError(message)


def parse_train_argv(argv: list[str]) -> tuple[str | None, list[str], dict[str, bool]]:
    """Split ``laser train`` arguments given in any order into (config path, overrides, flags).

    Accepts ``--config C`` / ``--config=C`` / ``-c C``, ``--resume``, ``--print-config`` and
    ``key=value`` overrides; ``--`` makes every later token an override. ``flags`` has the keys
    ``resume`` and ``print_config``. A stray token raises ``LaserError`` saying what was expected.
    """
    parser = _ArgumentParser(prog="laser train", add_help=False, allow_abbrev=False)
    known = add_arguments(parser)
    # split at `--` here: argparse's intermixed parsing still reads options after it (Python 3.11)
    head, tail = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args, unknown = parser.parse_known_intermixed_args(head)
    for tok in unknown:
        near = difflib.get_close_matches(tok.partition("=")[0], known, n=1, cutoff=0.5)
        hint = f"did you mean {near[0]}?" if near else f"expected one of {', '.join(known)} or key=value"
        raise LaserError(f"unknown option '{tok}' ({hint})")
    overrides = args.overrides + tail
    for tok in overrides:
        if "=" not in tok or tok.startswith("="):
            raise LaserError(
                f"unexpected argument '{tok}': overrides look like key=value (e.g. train.steps=100); "
                "the config file goes after --config"
            )
    return args.config, overrides, {"resume": args.resume, "print_config": args.print_config}


def run_argv(argv: list[str]) -> int:
    from laser_rl.training.config import config_to_yaml, load_config

    path, overrides, flags = parse_train_argv(argv)
    cfg = load_config(path, overrides)
    if flags["print_config"]:
        print(config_to_yaml(cfg), end="")
        return 0
    from laser_rl.training.sharding import leave_process_group
    from laser_rl.training.trainer import train

    train(cfg, resume=flags["resume"])  # its Trainer, and so the DDP/FSDP wrapper, is local
    leave_process_group()
    return 0


def run(args: argparse.Namespace) -> int:  # only reached through argparse, e.g. for --help
    argv = ([f"--config={args.config}"] if args.config else []) + (["--resume"] if args.resume else [])
    argv += (["--print-config"] if args.print_config else []) + list(args.overrides)
    return run_argv(argv)
