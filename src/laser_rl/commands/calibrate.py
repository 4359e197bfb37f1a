"""``laser calibrate``: measure c_ref = mean log π(z | x, y, EOS) on a model (spec §1).

Samples responses to problems from ``--data`` with the shared prompt builder, reads the
log-probability of the self-reward token z one step after each response's EOS, and reports its
mean ± std (paper: −23.11 ± 0.04 on Qwen2.5-7B-Base → c_ref −23) with the β_v that keeps a
correct response's target log-prob at ``--target-logprob``. ``--save`` writes them to the model
folder's ``laser.json``. Calibrate the *initial* model: c_ref stands in for the reference policy.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (or hub id)")
    parser.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="problems: a benchmark name (math500, ...), arith, or a JSONL/parquet/datasets path",
    )
    parser.add_argument("--n", type=int, default=300, help="problems to sample (seeded subset; default 300)")
    parser.add_argument(
        "--samples-per-problem", type=int, default=1, help="responses per problem (default 1)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=1024,
        help="response length limit; truncated responses have no score (default 1024)",
    )
    parser.add_argument(
        "--token",
        default=None,
        metavar="auto|STR|ID",
        help="self-reward token z (default: the one in the folder's laser.json, else auto)",
    )
    parser.add_argument("--force-token", action="store_true", help="accept an ordinary or used token as z")
    parser.add_argument("--batch-size", type=int, default=16, help="responses sampled at once (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem subset and the sampling")
    parser.add_argument(
        "--target-logprob",
        type=float,
        default=-4.0,
        help="log pi(z) asked of a correct response; suggested beta_v = 1 / (target - c_ref) (default -4)",
    )
    parser.add_argument(
        "--beta-v",
        type=float,
        default=None,
        help="beta_v to save (default: keep the file's, else the suggested one)",
    )
    parser.add_argument(
        "--save", action="store_true", help="write z, c_ref (+ std) and beta_v to DIR/laser.json"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    parser.add_argument(
        "--problem-key", default="problem", help="problem column of a data file (DeepMath-103K: question)"
    )
    parser.add_argument(
        "--answer-key", default="answer", help="answer column of a data file (DeepMath-103K: final_answer)"
    )
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _problems(data, n: int, seed: int) -> list[str]:
    if data.problems is not None:
        return [p.problem for p in data.problems]
    stream = data.stream(seed, 0)  # an endless training stream: take the first n
    return [next(stream).problem for _ in range(n)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from laser_rl.calibrate import measure_self_reward_logprobs
    from laser_rl.core.laser import correct_target_logprob, derive_beta_v
    from laser_rl.errors import LaserError
    from laser_rl.integrations.hf import build_prompts, load_model, load_tokenizer, resolve_stop_ids
    from laser_rl.integrations.special_token import (
        parse_token_arg,
        select_self_reward_token,
        validate_token_id,
    )
    from laser_rl.io import write_json_atomic
    from laser_rl.score_params import FILENAME, ScoreParams
    from laser_rl.tasks.registry import load_task_data

    for flag, value in (
        ("--n", args.n),
        ("--samples-per-problem", args.samples_per_problem),
        ("--max-new-tokens", args.max_new_tokens),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise LaserError(f"{flag} must be >= 1, got {value}")
    if args.beta_v is not None and not args.beta_v > 0:
        raise LaserError(f"--beta-v must be > 0, got {args.beta_v}")
    folder = Path(args.model).expanduser()
    if args.save and not folder.is_dir():
        raise LaserError(f"--save needs a local model folder; {folder} is not one")
    existing = ScoreParams.load(folder) if folder.is_dir() else None

    options: dict[str, str] = {"problem_key": args.problem_key} if args.problem_key != "problem" else {}
    if args.answer_key != "answer":
        options["answer_key"] = args.answer_key
    from laser_rl.tasks.embedded import is_embedded_task

    if is_embedded_task(args.data):  # the embedded task reads its settings from the model folder
        options["model_dir"] = str(folder)
    data = load_task_data(args.data, **options)
    problems = _problems(data, args.n, args.seed)
    if not problems:
        raise LaserError(f"--data {args.data}: no problems")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    stop_ids = resolve_stop_ids(tokenizer)
    token_arg = args.token if args.token is not None else (existing.token if existing else "auto")
    z, z_id, _ = select_self_reward_token(
        tokenizer,
        parse_token_arg(token_arg),
        stop_ids=stop_ids,
        data_sample_texts=problems[:200],
        force=args.force_token,
    )
    pad_id = tokenizer.pad_token_id
    # Load the model only once the cheap checks have passed.
    model = load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    validate_token_id(z_id, model.get_input_embeddings().num_embeddings, stop_ids, pad_id)
    if existing is not None and args.token is None and existing.token_id != z_id:
        raise LaserError(
            f"{folder / FILENAME}: token {existing.token!r} has id {existing.token_id}, but the tokenizer gives {z_id}"
        )

    prompts = build_prompts(tokenizer, problems, data.prompt_style)
    quiet = args.quiet

    def progress(done: int, total: int) -> None:
        if not quiet:
            print(f"\rsampled {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    summary, _ = measure_self_reward_logprobs(
        model,
        tokenizer,
        prompts,
        z_id=z_id,
        stop_ids=stop_ids,
        pad_id=pad_id,
        n=args.n,
        samples_per_problem=args.samples_per_problem,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        style=data.prompt_style,
        progress=progress,
    )
    c_ref = summary.suggested_c_ref()
    try:
        suggested_beta: float | None = derive_beta_v(c_ref, args.target_logprob)
    except ValueError:  # z is not improbable on this model (e.g. a random one): report, don't fail
        suggested_beta = None
    beta_v = args.beta_v or (existing.beta_v if existing is not None else suggested_beta)

    report = {
        "model": str(args.model),
        "data": args.data,
        "token": z,
        "token_id": z_id,
        "stop_ids": stop_ids,
        **summary.as_dict(),
        "c_ref": c_ref,
        "suggested_beta_v": suggested_beta,
        "target_logprob": args.target_logprob,
        "beta_v": beta_v,
        "max_new_tokens": args.max_new_tokens,
        "samples_per_problem": args.samples_per_problem,
        "seed": args.seed,
    }
    if suggested_beta is not None:
        beta_line = (
            f"suggested beta_v = {suggested_beta:.4g}   (a correct response's target log pi(z) = "
            f"{args.target_logprob:g}; the paper's beta_v 0.1 gives {correct_target_logprob(c_ref, 0.1):.1f} here)"
        )
    else:
        beta_line = (
            f"no beta_v suggested: c_ref {c_ref:.2f} is not below --target-logprob {args.target_logprob:g}, "
            "so z is not an improbable token on this model (LaSeR needs one the model never emits)"
        )
    print(
        f"self-reward token z = {z!r} (id {z_id}); stop ids {stop_ids}\n"
        f"log pi(z | x, y, EOS) = {summary.mean:.2f} +- {summary.std:.2f} over {summary.count} finished "
        f"responses ({summary.truncated} of {summary.total} truncated, not scored)\n"
        f"suggested c_ref = {c_ref:.2f}   (paper, Qwen2.5-7B-Base: -23.11 +- 0.04 -> c_ref -23)\n" + beta_line
    )
    if args.json:
        write_json_atomic(args.json, report)
    if args.save:
        if beta_v is None:
            raise LaserError("--save: no beta_v to save (none suggested, none in laser.json): pass --beta-v")
        extra = dict(existing.extra) if existing is not None else {}
        extra["calibration"] = {
            k: report[k]
            for k in (
                "data",
                "mean",
                "std",
                "count",
                "total",
                "truncated",
                "max_new_tokens",
                "samples_per_problem",
                "seed",
            )
        }
        if existing is not None and existing.c_ref != c_ref:
            print(f"note: replacing c_ref {existing.c_ref:g} in {folder / FILENAME}", file=sys.stderr)
        ScoreParams(
            token=z, token_id=z_id, beta_v=beta_v, c_ref=c_ref, c_ref_std=summary.std, extra=extra
        ).save(folder)
        print(f"saved z, c_ref = {c_ref:.2f} and beta_v = {beta_v:.4g} to {folder / FILENAME}")
    return 0
