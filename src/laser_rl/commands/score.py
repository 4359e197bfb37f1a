"""``laser score``: add ``self_rewarding_scores`` to an existing JSONL of responses (teacher-forced,
batched). Token ids in ``prompt_ids`` / ``response_ids`` are used when present (exact); otherwise the
prompt is rebuilt from ``problem`` and the response text re-tokenised."""

from __future__ import annotations

import argparse

from laser_rl.commands._types import DTYPE_HELP, dtype_name, finite_float, positive_int


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and the score-parameter / device flags shared by eval and score."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (with laser.json when trained here)")
    g = parser.add_argument_group("self-reward score (default: the model folder's laser.json)")
    g.add_argument("--token", default=None, help="the self-reward token z (a special token string or id)")
    g.add_argument("--force-token", action="store_true", help="accept an ordinary or used token as --token")
    g.add_argument("--beta-v", type=finite_float, default=None, help="score scale beta_v")
    g.add_argument("--c-ref", type=finite_float, default=None, help="reference constant c_ref")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (transformers' loading bar included)")
    parser.add_argument("--dtype", type=dtype_name, default="auto", help=DTYPE_HELP)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL, one record per problem with 'responses'")
    parser.add_argument("--out", required=True, metavar="FILE", help="output JSONL (the input records plus scores)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sequences per forward pass")
    parser.add_argument("--prompt-style", choices=("auto", "raw", "chat"), default="auto",
                        help="how to rebuild prompts from 'problem' when records have no prompt_ids "
                             "(auto: laser.json's prompt_style, else chat if the tokenizer has a chat template)")


def run(args: argparse.Namespace) -> int:
    from laser_rl.evaluation.runner import score_file
    from laser_rl.io import check_output_file

    check_output_file(args.out, args.overwrite)
    if args.quiet:
        from laser_rl.integrations.hf import disable_progress_bars

        disable_progress_bars()

    count = score_file(
        args.model, args.input, args.out, batch_size=args.batch_size, token=args.token, beta_v=args.beta_v,
        c_ref=args.c_ref, prompt_style=args.prompt_style, device=args.device, dtype=args.dtype,
        force_token=args.force_token,
    )
    print(f"scored {count} responses; wrote {args.out}")
    return 0
