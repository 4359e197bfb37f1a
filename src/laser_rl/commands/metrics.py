"""``laser metrics``: verification and voting metrics from a scored samples JSONL (no model needed)."""

from __future__ import annotations

import argparse
import json

from laser_rl.evaluation.verdict import PATTERN_HELP


def _ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return ks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="SCORED.jsonl", help="samples with self_rewarding_scores")
    parser.add_argument("--out", required=True, metavar="METRICS.json", help="output metrics file")
    parser.add_argument("--k", type=_ks, default=None, metavar="K1,K2,...",
                        help="voting ks (default: powers of two up to the smallest n; k > n is an error)")
    parser.add_argument("--equivalence", choices=("auto", "exact", "math"), default="auto",
                        help="how answers are grouped for voting; auto: exact when every answer is a plain "
                             "integer, else math-verify")
    parser.add_argument("--verdict-pattern", metavar="REGEX", default=None,
                        help="report the verdict each response writes about itself as a free baseline: "
                             f"{PATTERN_HELP}; e.g. ';(ok|no);' for pair-sum (a 'verdicts' field in the records "
                             "is used without it)")
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="also write report.md and plots into DIR (empty or new unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (and write into a non-empty --report)")


def run(args: argparse.Namespace) -> int:
    from laser_rl.evaluation.metrics import (
        auto_equivalence,
        baseline_lines,
        compute_metrics,
        load_records,
        verification_line,
    )
    from laser_rl.evaluation.verdict import pattern_reader
    from laser_rl.io import check_output_dir, check_output_file, write_json_atomic

    verdict = pattern_reader(args.verdict_pattern)
    check_output_file(args.out, args.overwrite)
    if args.report:
        check_output_dir(args.report, args.overwrite, flag="--report")
    records, locations = load_records(args.input)
    mode = auto_equivalence(records) if args.equivalence == "auto" else args.equivalence
    same_answer = None
    verifier = None
    if mode == "math":
        from laser_rl.rewards.math_verifier import MathVerifier

        verifier = MathVerifier()
        same_answer = verifier.same_answer
    try:
        metrics = compute_metrics(records, ks=args.k, same_answer=same_answer, locations=locations, verdict=verdict)
    finally:
        if verifier is not None:
            verifier.close()
    write_json_atomic(args.out, metrics)
    if args.report:
        from laser_rl.evaluation.report import write_report

        settings = {"input": args.input, "equivalence": mode}
        if args.verdict_pattern is not None:
            settings["verdict_pattern"] = args.verdict_pattern
        write_report(args.report, {"": metrics}, {"": records}, title=f"Metrics: {args.input}", settings=settings)
    v = metrics["verification"]
    print(f"accuracy {metrics['accuracy']:.4f} ({metrics['num_problems']} problems, {metrics['num_responses']} "
          f"responses; answers grouped by {mode} equivalence)")
    print(verification_line(v))
    for line in baseline_lines(metrics):
        print(line)
    print(json.dumps(metrics["voting"]))
    return 0
