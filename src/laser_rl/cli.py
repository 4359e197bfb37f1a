"""The ``laser`` command. Each subcommand lives in its own module, imported only when used.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. A module that
parses its own arguments (``laser train``: flags and ``key=value`` overrides in any order) also
provides ``run_argv(argv) -> int``; argparse then only renders its ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from laser_rl import __version__
from laser_rl.errors import LaserError

# name -> (module, one-line help). Modules are imported lazily so `laser --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("laser_rl.commands.demo", "Run the paper's experiment (base, GRPO, LaSeR) on the embedded task"),
    "base": ("laser_rl.commands.base", "Train the embedded tiny base model by supervised learning"),
    "train": ("laser_rl.commands.train", "Train a causal LM with GRPO + LaSeR from a YAML config"),
    "eval": ("laser_rl.commands.eval", "Sample N responses per problem, verify and self-score them"),
    "score": ("laser_rl.commands.score", "Add self-reward scores to an existing JSONL of responses"),
    "metrics": ("laser_rl.commands.metrics", "Compute verification and voting metrics from a scored JSONL"),
    "calibrate": ("laser_rl.commands.calibrate", "Measure c_ref = mean log pi(z | x, y, EOS) on a model"),
    "bench": ("laser_rl.commands.bench", "Benchmark the sampler, in-loop scoring and the LaSeR step"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laser",
        description="LaSeR: RL with last-token self-rewarding (GRPO + self-verification) for causal LMs.",
    )
    parser.add_argument("--version", action="version", version=f"laser-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is None:  # command not built yet
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    try:
        if command in COMMANDS and not {"-h", "--help"} & set(argv[1:]):
            module = importlib.import_module(COMMANDS[command][0])
            if hasattr(module, "run_argv"):
                return int(module.run_argv(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(importlib.import_module(args._module).run(args) or 0)
    except LaserError as e:
        print(f"laser {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"laser {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
