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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser_rl.commands._types import DTYPE_HELP, dtype_name, positive_int
from laser_rl.commands.eval import add_engine_argument, check_engine
from laser_rl.core import DEFAULT_TARGET_LOGPROB
from laser_rl.errors import LaserError
from laser_rl.score_params import FILENAME, ScoreParams, resolve_beta_v

if TYPE_CHECKING:
    from laser_rl.calibrate import Calibration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (or hub id)")
    parser.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="problems: a benchmark name (math500, ...), arith, or a JSONL/parquet/datasets path",
    )
    parser.add_argument("--n", type=positive_int, default=300, help="problems to sample (seeded subset; default 300)")
    parser.add_argument(
        "--samples-per-problem", type=positive_int, default=1, help="responses per problem (default 1)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="response length limit; truncated responses have no score "
        "(default: laser.json extra.max_new_tokens, else 1024, capped to the model's context)",
    )
    parser.add_argument(
        "--token",
        default=None,
        metavar="auto|STR|ID",
        help="self-reward token z (default: the one in the folder's laser.json, else auto)",
    )
    parser.add_argument("--force-token", action="store_true", help="accept an ordinary or used token as z")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="responses sampled at once (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem subset and the sampling")
    parser.add_argument(
        "--target-logprob",
        type=float,
        default=DEFAULT_TARGET_LOGPROB,
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
    parser.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    parser.add_argument(
        "--problem-key", default="problem", help="problem column of a data file (DeepMath-103K: question)"
    )
    parser.add_argument(
        "--answer-key", default="answer", help="answer column of a data file (DeepMath-103K: final_answer)"
    )
    parser.add_argument("--dtype", type=dtype_name, default="auto", help=DTYPE_HELP)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder")
    add_engine_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from laser_rl.evaluation.runner import resolve_max_new_tokens
    from laser_rl.integrations.hf import build_prompts, disable_progress_bars
    from laser_rl.io import check_output_file, write_json_atomic
    from laser_rl.rollout.sampler import context_length

    check_engine(args.engine)  # before anything is loaded or written
    if args.beta_v is not None and not args.beta_v > 0:
        raise LaserError(f"--beta-v must be > 0, got {args.beta_v}")
    if args.json:
        check_output_file(args.json, args.overwrite, flag="--json")
    if args.quiet:
        disable_progress_bars()  # transformers' own loading bar too
    folder = Path(args.model).expanduser()
    if args.save and not folder.is_dir():
        raise LaserError(f"--save needs a local model folder; {folder} is not one")
    existing = ScoreParams.load(folder) if folder.is_dir() else None

    data, problems = _load_problems(args, folder)
    tokenizer, model, stop_ids, z, z_id = _load_model_and_token(args, folder, existing, problems)
    prompts = build_prompts(tokenizer, problems, data.prompt_style)
    max_new_tokens = resolve_max_new_tokens(
        args.max_new_tokens, existing.extra if existing is not None else {}, context_length(model),
        max(len(p) for p in prompts), f"--data {args.data}", lambda msg: print(f"laser calibrate: {msg}", file=sys.stderr),
    )
    summary = _measure(args, model, tokenizer, prompts, z_id, stop_ids, max_new_tokens, data.prompt_style)
    c_ref = summary.suggested_c_ref()
    suggested_beta = _suggested_beta_v(c_ref, args.target_logprob)
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
        "max_new_tokens": max_new_tokens,
        "samples_per_problem": args.samples_per_problem,
        "seed": args.seed,
    }
    _print_report(report, summary)
    if args.json:
        write_json_atomic(args.json, report)
    if args.save:
        _save(folder, existing, report, c_ref_std=summary.std)
    return 0


def _load_problems(args: argparse.Namespace, folder: Path) -> tuple[Any, list[str]]:
    """``--data`` → (TaskData, the problem texts to sample): a finite split whole, else the first --n of
    the endless training stream."""
    from laser_rl.tasks.embedded import is_embedded_task
    from laser_rl.tasks.registry import load_task_data

    options: dict[str, str] = {"problem_key": args.problem_key} if args.problem_key != "problem" else {}
    if args.answer_key != "answer":
        options["answer_key"] = args.answer_key
    if is_embedded_task(args.data):  # the embedded task reads its settings from the model folder
        options["model_dir"] = str(folder)
    data = load_task_data(args.data, **options)
    if data.problems is not None:
        problems = [p.problem for p in data.problems]
    else:
        stream = data.stream(args.seed, 0)
        problems = [next(stream).problem for _ in range(args.n)]
    if not problems:
        raise LaserError(f"--data {args.data}: no problems")
    return data, problems


def _load_model_and_token(
    args: argparse.Namespace, folder: Path, existing: ScoreParams | None, problems: list[str]
) -> tuple[Any, Any, list[int], str, int]:
    """(tokenizer, model, stop ids, z, z's id): z from --token, else laser.json's, else auto, checked
    on the tokenizer before the model loads and on the model after."""
    from laser_rl.integrations.hf import load_model, load_tokenizer, resolve_stop_ids
    from laser_rl.integrations.special_token import (
        parse_token_arg,
        select_self_reward_token,
        validate_token_id,
    )

    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    stop_ids = resolve_stop_ids(tokenizer)
    token_arg = args.token if args.token is not None else (existing.token if existing else "auto")
    z, z_id, _ = select_self_reward_token(
        tokenizer,
        parse_token_arg(token_arg),
        stop_ids=stop_ids,
        data_sample_texts=problems[:200],
        force=args.force_token,
        force_option="--force-token",
        add_option=None,
    )
    # Load the model only once the cheap checks have passed.
    model = load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    validate_token_id(z_id, model.get_input_embeddings().num_embeddings, stop_ids, tokenizer.pad_token_id)
    if existing is not None and args.token is None and existing.token_id != z_id:
        raise LaserError(
            f"{folder / FILENAME}: token {existing.token!r} has id {existing.token_id}, but the tokenizer gives {z_id}"
        )
    return tokenizer, model, stop_ids, z, z_id


def _measure(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    z_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    style: str,
) -> Calibration:
    """Sample responses and summarise lp_z after each finished one (laser_rl.calibrate), with a progress bar."""
    from tqdm import tqdm

    from laser_rl.calibrate import measure_self_reward_logprobs

    # the same bar as laser eval: drawn on a terminal only (disable=None), never under --quiet
    bar = tqdm(unit="response", desc="laser calibrate", disable=True if args.quiet else None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    summary, _ = measure_self_reward_logprobs(
        model,
        tokenizer,
        prompts,
        z_id=z_id,
        stop_ids=stop_ids,
        pad_id=tokenizer.pad_token_id,
        n=args.n,
        samples_per_problem=args.samples_per_problem,
        max_new_tokens=max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        style=style,
        progress=progress,
        engine_name=args.engine,
    )
    bar.close()
    return summary


def _suggested_beta_v(c_ref: float, target_logprob: float) -> float | None:
    """β_v = auto for this c_ref (the one β_v derivation); None when there is none to suggest."""
    try:
        return resolve_beta_v("auto", c_ref, target_logprob)
    except LaserError:  # z is not improbable on this model (e.g. a random one): report, don't fail
        return None


def _print_report(report: dict[str, Any], summary: Calibration) -> None:
    from laser_rl.core import correct_target_logprob

    c_ref, target, suggested_beta = report["c_ref"], report["target_logprob"], report["suggested_beta_v"]
    if suggested_beta is not None:
        beta_line = (
            f"suggested beta_v = {suggested_beta:.4g}   (a correct response's target log pi(z) = "
            f"{target:g}; the paper's beta_v 0.1 gives {correct_target_logprob(c_ref, 0.1):.1f} here)"
        )
    else:
        beta_line = (
            f"no beta_v suggested: c_ref {c_ref:.2f} is not below --target-logprob {target:g}, "
            "so z is not an improbable token on this model (LaSeR needs one the model never emits)"
        )
    print(
        f"self-reward token z = {report['token']!r} (id {report['token_id']}); stop ids {report['stop_ids']}\n"
        f"log pi(z | x, y, EOS) = {summary.mean:.2f} +- {summary.std:.2f} over {summary.count} finished "
        f"responses ({summary.truncated} of {summary.total} truncated, not scored)\n"
        f"suggested c_ref = {c_ref:.2f}   (paper, Qwen2.5-7B-Base: -23.11 +- 0.04 -> c_ref -23)\n" + beta_line
    )


#: The report's fields kept in laser.json's ``extra.calibration`` (how c_ref was measured).
CALIBRATION_FIELDS = (
    "data", "mean", "std", "count", "total", "truncated", "max_new_tokens", "samples_per_problem", "seed",
)


def _save(folder: Path, existing: ScoreParams | None, report: dict[str, Any], c_ref_std: float) -> None:
    """Write z, c_ref and β_v to ``folder/laser.json``, keeping the file's other extras."""
    beta_v, c_ref = report["beta_v"], report["c_ref"]
    if beta_v is None:
        raise LaserError("--save: no beta_v to save (none suggested, none in laser.json): pass --beta-v")
    extra = dict(existing.extra) if existing is not None else {}
    extra["calibration"] = {k: report[k] for k in CALIBRATION_FIELDS}
    if existing is not None and existing.c_ref != c_ref:
        print(f"note: replacing c_ref {existing.c_ref:g} in {folder / FILENAME}", file=sys.stderr)
    ScoreParams(
        token=report["token"], token_id=report["token_id"], beta_v=beta_v, c_ref=c_ref, c_ref_std=c_ref_std,
        extra=extra,
    ).save(folder)
    print(f"saved z, c_ref = {c_ref:.2f} and beta_v = {beta_v:.4g} to {folder / FILENAME}")
