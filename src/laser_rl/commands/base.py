"""``laser base``: train the embedded tiny base model by supervised learning and save it.

The result is an ordinary Hugging Face model folder (model + tokenizer) plus ``task.json`` (the
embedded task, ``--task arith`` or ``pairsum``, so later commands rebuild the same test split) and
``laser.json`` (z, c_ref ± std, β_v derived from c_ref, the measured base accuracy), which
``laser train`` / ``eval`` read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from laser_rl.core import DEFAULT_TARGET_LOGPROB
from laser_rl.errors import LaserError
from laser_rl.tasks.embedded import EMBEDDED_TASKS

#: Flags that always take their own default (a --config file does not set them).
_NOT_IN_CONFIG = ("out", "overwrite", "seed", "config", "threads", "quiet", "help")
#: Task fields whose flag is named otherwise (``--seed`` seeds the model; ``--task-seed`` the split).
_TASK_FIELD_DEST = {"seed": "task_seed"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output model folder")
    parser.add_argument(
        "--config",
        metavar="BASE.yaml",
        help="laser base settings from a file, e.g. demo/base-pairsum.yaml (the default demo's base; a path or a "
        "shipped name); flags given as well override it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and sampling")
    parser.add_argument("--max-steps", type=int, default=1500, help="step cap if the target is not reached")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=0.35,
        help="stop at the first evaluation with accuracy (T = 1) at least this (default 0.35, lands in 0.25-0.60)",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--batch-size", type=int, default=128, help="problems per SFT step")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between accuracy evaluations")
    parser.add_argument(
        "--eval-problems", type=int, default=256, help="training-stream problems per evaluation (never test ones)"
    )
    parser.add_argument(
        "--final-problems", type=int, default=512, help="fresh problems for the reported accuracy and c_ref"
    )
    parser.add_argument(
        "--target-logprob",
        type=float,
        default=DEFAULT_TARGET_LOGPROB,
        help="log pi(z) asked of a correct response; beta_v = 1 / (target - c_ref) (default -4)",
    )
    v = parser.add_argument_group(
        "verification template (optional): the base also learns to judge responses, for a second-pass verifier"
    )
    v.add_argument(
        "--verify-batch",
        type=int,
        default=0,
        help="verification examples added to every SFT step: x + y + TEMPLATE -> YES if y is right, else NO "
        "(y: the task's SFT responses, right or wrong); 0 = off (default)",
    )
    v.add_argument("--verify-template", default="", metavar="TEMPLATE",
                   help="text after the response that asks for the verdict, e.g. '=', or '<eos>=' to ask after the stop "
                   "token, next to where LaSeR reads z (then `laser eval "
                   "--self-verify TEMPLATE --self-verify-words YES,NO` reads it)")
    v.add_argument("--verify-words", default="1,0", metavar="YES,NO",
                   help="the one-character verdicts (default 1,0); characters outside the task's alphabet are added "
                   "to the tokenizer")
    m = parser.add_argument_group("model shape (a LlamaForCausalLM built from scratch)")
    m.add_argument("--hidden", type=int, default=64, help="hidden size (default 64; 128 reasons far better, ~2-4x slower)")
    m.add_argument("--layers", type=int, default=4, help="number of transformer layers")
    m.add_argument("--heads", type=int, default=4, help="attention heads (must divide --hidden)")
    m.add_argument("--intermediate", type=int, default=None, help="MLP size (default 3 x --hidden)")
    g = parser.add_argument_group("task and difficulty (saved in task.json)")
    g.add_argument(
        "--task",
        choices=EMBEDDED_TASKS,
        default="arith",
        help="arith: chain arithmetic (default); pairsum: find the pair of a list that sums to a target",
    )
    g.add_argument("--min-operands", type=int, default=3, help="arith: fewest operands")
    g.add_argument("--max-operands", type=int, default=5, help="arith: most operands")
    g.add_argument("--min-value", type=int, default=10, help="smallest operand")
    g.add_argument("--max-value", type=int, default=99, help="largest operand")
    g.add_argument("--modulus", type=int, default=0, help="arith: take every result mod this (clock arithmetic; 0 = off)")
    g.add_argument("--min-numbers", type=int, default=5, help="pairsum: shortest list")
    g.add_argument("--max-numbers", type=int, default=6, help="pairsum: longest list")
    g.add_argument(
        "--sft-wrong-rate",
        type=float,
        default=0.3,
        help="pairsum: fraction of SFT responses that write a wrong pair with its true sum (default 0.3)",
    )
    g.add_argument(
        "--check-text",
        action="store_true",
        help="pairsum: responses write ';ok;' or ';no;' (does the sum equal the target?) before the answer",
    )
    g.add_argument("--test-size", type=int, default=1000, help="size of the held-out test split")
    g.add_argument("--task-seed", type=int, default=0, help="seed of the held-out test split")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # Flags a --config file may set are left out of the namespace unless given, so that the order
    # flag > file > default can be applied in run(); their defaults travel in _flag_defaults.
    settable = [a for a in parser._actions if a.dest not in _NOT_IN_CONFIG]
    parser.set_defaults(_flag_defaults={a.dest: a.default for a in settable})
    for action in settable:
        action.default = argparse.SUPPRESS


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Every setting, each from its flag if given, else the --config file, else the flag's default.
    A config's task fields that have no flag (arith ``ops``, ``no_negative``) come along as
    ``task_extra`` when the task is the config's."""
    values = dict(args._flag_defaults)
    task_extra: dict[str, object] = {}
    config_task = None
    if args.config:
        from laser_rl.demo import load_base_settings
        from laser_rl.training.config import resolve_config_path

        settings = load_base_settings(resolve_config_path(args.config, base_model=True))
        task = settings.pop("task", None)
        if task is not None:
            fields = task.to_dict()
            fields.pop("version", None)
            config_task = values["task"] = fields.pop("name")
            for key, value in fields.items():
                key = _TASK_FIELD_DEST.get(key, key)
                (values if key in values else task_extra)[key] = value
        values.update(settings.pop("model_kwargs", {}))
        values.update(settings)  # the SFT keys are named like their flags
    given = {k: v for k, v in vars(args).items() if k != "_flag_defaults"}
    values.update(given)
    return argparse.Namespace(**values, task_extra=task_extra if values["task"] == config_task else {})


def model_shape(args: argparse.Namespace) -> dict[str, int]:
    """The tiny model's shape from the flags, validated (``LaserError`` naming the flag)."""
    intermediate = args.intermediate if args.intermediate is not None else 3 * args.hidden
    for flag, value in (("--hidden", args.hidden), ("--layers", args.layers), ("--heads", args.heads),
                        ("--intermediate", intermediate)):
        if value < 1:
            raise LaserError(f"{flag}: must be a positive integer, got {value}")
    if args.hidden % args.heads:
        raise LaserError(f"--heads: {args.heads} does not divide --hidden {args.hidden}")
    if (args.hidden // args.heads) % 2:
        raise LaserError(f"--heads: head size --hidden/--heads = {args.hidden // args.heads} must be even (rotary embeddings)")
    return {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "intermediate": intermediate}


def task_config(args: argparse.Namespace) -> object:
    """The task config the flags describe (``LaserError`` naming the flag of an invalid field)."""
    from laser_rl.tasks.embedded import default_task_config

    shared = {**getattr(args, "task_extra", {}), "min_value": args.min_value, "max_value": args.max_value,
              "test_size": args.test_size, "seed": args.task_seed}
    if args.task == "pairsum":
        fields = {**shared, "min_numbers": args.min_numbers, "max_numbers": args.max_numbers,
                  "sft_wrong_rate": args.sft_wrong_rate, "check_text": args.check_text}
    else:
        fields = {**shared, "min_operands": args.min_operands, "max_operands": args.max_operands,
                  "modulus": args.modulus}
    defaults = default_task_config(args.task)
    try:
        return type(defaults)(**fields)
    except LaserError as e:  # name the flag, not the dataclass field
        msg = str(e).removeprefix(f"{args.task} task: ")
        field = msg.split(" ", 1)[0]
        flag = _TASK_FIELD_DEST.get(field, field).replace("_", "-")
        raise LaserError(f"--{flag}: {msg}" if hasattr(defaults, field) else msg) from None


def verify_words(text: str | Sequence[str]) -> tuple[str, str]:
    """``"1,0"`` (the flag) or ``["1", "0"]`` (a base YAML's ``verify_words``) → ``("1", "0")`` (``LaserError``
    naming --verify-words otherwise)."""
    words = str(text).split(",") if isinstance(text, str) else [str(w) for w in text]
    if len(words) != 2 or not all(words):
        raise LaserError(f"--verify-words: expected YES,NO (two words separated by a comma), got {text!r}")
    return words[0], words[1]


def run(args: argparse.Namespace) -> int:
    from laser_rl.io import check_output_dir

    args = resolve_settings(args)
    task = task_config(args)
    model_kwargs = model_shape(args)
    check_output_dir(args.out, args.overwrite)  # before any work

    from laser_rl.training.sft import train_base_model

    if args.quiet:
        from laser_rl.integrations.hf import disable_progress_bars

        disable_progress_bars()  # transformers' own saving bar too

    result = train_base_model(
        args.out,
        seed=args.seed,
        task=task,
        max_steps=args.max_steps,
        target_accuracy=args.target_accuracy,
        lr=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_problems=args.eval_problems,
        final_problems=args.final_problems,
        target_logprob=args.target_logprob,
        verify_batch=args.verify_batch,
        verify_template=args.verify_template,
        verify_words=verify_words(args.verify_words),
        overwrite=args.overwrite,
        model_kwargs=model_kwargs,
        num_threads=args.threads,
        progress=not args.quiet,
    )
    print(
        f"base model saved to {result['out_dir']} after {result['steps']} steps ({result['seconds']:.0f} s)\n"
        f"  accuracy (T = 1, fresh training-stream problems): {result['accuracy']:.3f}\n"
        f"  c_ref = log pi(z | x, y, EOS): {result['c_ref']:.2f} +- {result['c_ref_std']:.2f}\n"
        f"  beta_v = {result['beta_v']:.4g} (target log-prob {args.target_logprob:g} for a correct response)"
    )
    return 0
