"""Test-time metrics from a scored samples file: self-verification quality and voting accuracy vs k.

Pure Python/NumPy (no model, no torch), so ``laser metrics`` runs anywhere. Conventions (issue 6):

- ``accuracy``: mean correctness over *all* responses of all problems (pooled, the paper's mean@n).
- ``verification``: pooled over all responses, "predicted correct" ⇔ score > 0.5, truth = ``acc_list``.
  ``hm_tpr_tnr`` is the paper's "F1" (harmonic mean of TPR and TNR); ``f1`` is the usual
  precision/recall F1. AUROC counts ties as 1/2. ECE uses 10 equal-width bins of clamp(score, 0, 1),
  bin i = [i/10, (i+1)/10) and the last bin closed, weighted by bin size.
- **Undefined metrics are ``None``** (``null`` in JSON, ``n/a`` in text and reports), never 0, which
  would read as "perfectly wrong": a ratio whose denominator is 0 (TPR with no correct response, TNR
  with no incorrect one, precision with no predicted-correct response), AUROC with one class only,
  within-problem AUROC when no problem has both classes, the harmonic mean when TPR or TNR is
  undefined, F1 = 2TP/(2TP + FP + FN) when TP + FP + FN = 0. Averages skip undefined values (the
  within-problem AUROC averages only problems with both classes; :func:`mean_defined` elsewhere).
- ``voting``: per problem, only the first k responses; averaged over problems.
  ``maj@k`` counts each distinct answer, ``weighted_maj@k`` sums clamp(score, 0, 1) per distinct answer;
  the largest total wins, ties go to the answer that appears first; the vote is correct iff
  ``acc_list`` of the first response giving the winning answer is true. ``null`` answers do not vote; a
  problem where none of the first k responses has an answer counts as wrong. ``best_of@k`` takes the
  highest raw score (first on ties). ``pass@k`` is the unbiased 1 − C(n−c, k)/C(n, k) over all n.
- ``within_problem_auroc``: the AUROC of the score among *one problem's own responses*, averaged over
  the problems that have both correct and wrong responses (``mixed_problems`` of them; None when none).
  Pooled AUROC also rewards a score that only tracks problem difficulty; weighted voting and best-of-k
  need the score to rank the responses of the same problem, which is what this measures.
- ``baselines`` (only when every record has ``mean_logprobs`` / ``min_logprobs``): the pooled AUROC of
  the raw value, its ``within_problem_auroc``, and ``weighted_maj@k`` whose weight is the value's *rank within the first k responses
  of the problem*: weight = average rank / k, rank 1 = lowest value, ties sharing their average rank,
  so weights lie in (0, 1] and the most confident response weighs 1. Raw log-probs cannot be used as
  votes directly (they are negative and not on a common scale across problems). ``best_of@k`` takes
  the highest value (first on ties).
- probability baselines (records with ``verdicts``, the written verdict 1/0/null of
  :mod:`laser_rl.evaluation.verdict`, or ``self_verify_scores``, p(yes) of a second verification pass of
  :mod:`laser_rl.evaluation.self_verify`) get the LaSeR score's metrics: tpr/tnr/``hm_tpr_tnr``
  (score > 0.5), AUROC, within-problem AUROC, ``weighted_maj@k`` (weight clamp(value, 0, 1); a
  null verdict weighs 0, and when no answered response among the first k has weight > 0 the vote is
  the plain majority) and ``best_of@k``; a null verdict scores ``UNDEFINED_VERDICT_SCORE`` (0.5) for
  the others. ``coverage`` is the share of responses with a value. With the per-response fields
  ``self_verify_prefill_tokens`` / ``self_verify_decode_tokens`` / ``self_verify_seconds``, the
  self-verification entry also carries its ``cost`` per verified response.

Answers are grouped by an equivalence function (exact string for the embedded task, math-verify for
math). Grouping is greedy in order of first appearance: an answer joins the first earlier group whose
first answer is equivalent to it (called as ``same_answer(first, answer)``). This is prefix-consistent,
so the groups of the first k responses are the same whatever the total n. Comparisons are cached.

k larger than a problem's number of responses is an error (``LaserError``); by default (``ks=None``)
the ks are the powers of two up to the smallest n, i.e. 1, 2, 4, 8 for n = 8.

Truth values: ``acc_list`` entries may be booleans or numbers; a response is correct iff its value
is > 0.5 (so real-valued rewards in [0, 1] work).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser_rl.core import is_correct, predicted_correct
from laser_rl.errors import LaserError
from laser_rl.evaluation.verdict import UNDEFINED_VERDICT_SCORE, VERDICT_FIELD, VerdictReader, attach_verdicts
from laser_rl.io import read_jsonl_located

SameAnswer = Callable[[str, str], bool]

VOTING_METHODS = ("maj", "weighted_maj", "best_of", "pass")
VERIFICATION_KEYS = (
    "tpr", "tnr", "hm_tpr_tnr", "precision", "recall", "f1", "accuracy", "auroc", "ece", "within_problem_auroc",
)
BASELINES = {"mean_logprob": "mean_logprobs", "min_logprob": "min_logprobs"}
#: Baselines that read as a probability of "correct" (record field per name; null = no value).
PROBABILITY_BASELINES = {"verdict": VERDICT_FIELD, "self_verify": "self_verify_scores"}
#: Per-response cost fields of the self-verification pass (``cost`` entry, per verified response).
SELF_VERIFY_COST = {"prefill_tokens": "self_verify_prefill_tokens", "decode_tokens": "self_verify_decode_tokens",
                    "seconds": "self_verify_seconds"}
ECE_BINS = 10


def exact_same_answer(a: str, b: str) -> bool:
    """Exact string equality: the embedded task's answers are canonical integers."""
    return a == b


# --------------------------------------------------------------------------- primitives


def ratio(num: float, den: float) -> float | None:
    """num/den; ``None`` (undefined) when the denominator is 0."""
    return float(num) / float(den) if den else None


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the defined (not ``None``, not NaN) values; ``None`` when there are none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def format_metric(value: float | None, spec: str = ".3f", scale: float = 1.0) -> str:
    """A metric for text output: ``n/a`` when undefined (``None`` or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value * scale, spec)


def verification_line(v: Mapping[str, Any]) -> str:
    """One line of the headline verification metrics (``n/a`` where undefined), for the commands."""
    keys = (("tpr", "tpr"), ("tnr", "tnr"), ("hm", "hm_tpr_tnr"), ("auroc", "auroc"),
            ("within-problem auroc", "within_problem_auroc"), ("ece", "ece"))
    return " ".join(f"{label} {format_metric(v[key])}" for label, key in keys)


def baseline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One line per free baseline (AUROC, within-problem AUROC, hm where defined, votes at the largest k),
    for the commands to print next to :func:`verification_line`."""
    lines = []
    for name, b in (metrics.get("baselines") or {}).items():
        k = max(int(key.split("@")[1]) for key in b if key.startswith("weighted_maj@"))
        parts = [f"auroc {format_metric(b['auroc'])}", f"within-problem auroc {format_metric(b['within_problem_auroc'])}"]
        if "hm_tpr_tnr" in b:
            parts.append(f"hm {format_metric(b['hm_tpr_tnr'])}")
        parts += [f"weighted_maj@{k} {format_metric(b[f'weighted_maj@{k}'])}", f"best_of@{k} {format_metric(b[f'best_of@{k}'])}"]
        cost = b.get("cost")
        if cost:
            parts.append(f"cost/response: {format_metric(cost['prefill_tokens_per_response'], '.1f')} prefill + "
                         f"{format_metric(cost['decode_tokens_per_response'], '.1f')} decode tokens, "
                         f"{format_metric(cost['seconds_per_response'], '.2e')} s")
        lines.append(f"baseline {name}: " + " ".join(parts))
    return lines


def harmonic_mean_tpr_tnr(tpr: float | None, tnr: float | None) -> float | None:
    """The paper's self-verification "F1": 2·TPR·TNR/(TPR + TNR); 0 when both are 0, None when either is undefined."""
    if tpr is None or tnr is None:
        return None
    return 2 * tpr * tnr / (tpr + tnr) if tpr + tnr else 0.0


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a correct > score of an incorrect), ties counting 1/2.

    Computed from average ranks (Mann-Whitney U), O(N log N). ``None`` when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    before = np.cumsum(counts) - counts  # number of values strictly below each distinct value
    avg_rank = before + (counts + 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum = float(avg_rank[inverse][y].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def ece_bin_index(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin i holds [i/bins, (i+1)/bins); the last bin is closed (holds 1.0). Input already in [0, 1]."""
    edges = np.arange(bins + 1, dtype=np.float64) / bins  # i/bins exactly as a float, not linspace
    idx = np.searchsorted(edges, confidence, side="right") - 1
    return np.clip(idx, 0, bins - 1)


def expected_calibration_error(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """Σ_b (|b|/N)·|mean conf_b − accuracy_b| with conf = clamp(score, 0, 1); None for no responses."""
    conf = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(labels, dtype=np.float64)
    if conf.size == 0:
        return None
    idx = ece_bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=y, minlength=bins)
    nonempty = count > 0
    gap = np.abs(conf_sum[nonempty] - acc_sum[nonempty]) / count[nonempty]
    return float((count[nonempty] * gap).sum() / conf.size)


def reliability_bins(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, bins: int = ECE_BINS
) -> dict[str, list[float]]:
    """Per-bin count, mean confidence and accuracy (NaN for empty bins): the reliability diagram's data."""
    conf = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(labels, dtype=np.float64)
    idx = ece_bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=y, minlength=bins) / count
    return {"count": count.tolist(), "confidence": mean_conf.tolist(), "accuracy": acc.tolist()}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) (exact integer binomials; 1 when n − c < k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def vote(groups: Sequence[int], weights: Sequence[float], k: int) -> int | None:
    """Index of the first response giving the winning answer among the first k, or None.

    ``groups[i]`` is the answer group of response i (groups numbered in order of first appearance,
    −1 for no answer). Totals are summed with ``math.fsum``; the largest wins, ties go to the group
    that appears first.
    """
    totals: dict[int, list[float]] = {}
    first: dict[int, int] = {}
    for i in range(min(k, len(groups))):
        g = groups[i]
        if g < 0:
            continue
        totals.setdefault(g, []).append(float(weights[i]))
        first.setdefault(g, i)
    if not totals:
        return None
    best_group, best_total = -1, -math.inf
    for g in sorted(first, key=first.__getitem__):  # order of first appearance
        total = math.fsum(totals[g])
        if total > best_total:  # strict: an equal later total never displaces the earlier answer
            best_group, best_total = g, total
    return first[best_group]


def rank_weights(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Average rank / len (rank 1 = lowest; ties share their average rank): weights in (0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    before = np.cumsum(counts) - counts
    avg_rank = before + (counts + 1) / 2.0
    return avg_rank[inverse] / v.size


class CachedEquivalence:
    """Wraps ``same_answer`` with a cache of pairwise results and an exact-string short-cut."""

    def __init__(self, same_answer: SameAnswer) -> None:
        self.same_answer = same_answer
        self.cache: dict[tuple[str, str], bool] = {}
        self.calls = 0

    def __call__(self, a: str, b: str) -> bool:
        if a == b:
            return True
        key = (a, b)
        hit = self.cache.get(key)
        if hit is None:
            self.calls += 1
            hit = bool(self.same_answer(a, b))
            self.cache[key] = hit
        return hit

    def group(self, answers: Sequence[str | None]) -> list[int]:
        """Greedy, prefix-consistent grouping (see module docstring); −1 for a missing answer."""
        reps: list[str] = []
        out: list[int] = []
        for a in answers:
            if a is None:
                out.append(-1)
                continue
            for gi, rep in enumerate(reps):
                if self(rep, a):
                    out.append(gi)
                    break
            else:
                reps.append(a)
                out.append(len(reps) - 1)
        return out


# --------------------------------------------------------------------------- validation


@dataclass
class ProblemSamples:
    """One validated record as arrays."""

    answers: list[str | None]
    correct: np.ndarray  # bool[n]
    scores: np.ndarray  # float64[n]
    extra: dict[str, np.ndarray]  # baseline name -> float64[n] (NaN: no value, probability baselines only)
    cost: dict[str, np.ndarray] = field(default_factory=dict)  # SELF_VERIFY_COST name -> float64[n]

    @property
    def n(self) -> int:
        return int(self.correct.size)


def _where(index: int, locations: Sequence[str] | None) -> str:
    if locations is not None and index < len(locations):
        return locations[index]
    return f"record {index}"


def _numbers(values: list[Any], field: str, where: str, allow_bool: bool = False, allow_null: bool = False) -> np.ndarray:
    """float64[n] of a list field; ``allow_null`` reads null as NaN (no value)."""
    out = np.empty(len(values), dtype=np.float64)
    for j, v in enumerate(values):
        if v is None and allow_null:
            out[j] = np.nan
            continue
        if isinstance(v, bool) and not allow_bool:
            raise LaserError(f"{where}: field '{field}'[{j}] must be a number, got a boolean")
        if not isinstance(v, (int, float)):
            what = "null" if v is None else type(v).__name__
            raise LaserError(f"{where}: field '{field}'[{j}] must be a number, got {what}")
        if not math.isfinite(float(v)):
            raise LaserError(f"{where}: field '{field}'[{j}] is {v} (NaN/inf scores are not allowed)")
        out[j] = float(v)
    return out


def validate_record(record: Any, index: int, locations: Sequence[str] | None = None) -> ProblemSamples:
    """Check one record's fields and list lengths; ``LaserError`` names the record (or file:line)."""
    where = _where(index, locations)
    if not isinstance(record, Mapping):
        raise LaserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("responses", "answer", "pred_answers", "acc_list", "self_rewarding_scores"):
        if key not in record:
            hint = " (run `laser score` first)" if key == "self_rewarding_scores" else ""
            raise LaserError(f"{where}: missing field '{key}'{hint}")
    responses = record["responses"]
    if not isinstance(responses, list) or not responses:
        raise LaserError(f"{where}: field 'responses' must be a non-empty list")
    n = len(responses)
    lists = ["pred_answers", "acc_list", "self_rewarding_scores", "finished", *BASELINES.values(),
             *PROBABILITY_BASELINES.values(), *SELF_VERIFY_COST.values()]
    for key in lists:
        if key in record:
            value = record[key]
            if not isinstance(value, list):
                raise LaserError(f"{where}: field '{key}' must be a list, got {type(value).__name__}")
            if len(value) != n:
                raise LaserError(f"{where}: field '{key}' has {len(value)} entries but 'responses' has {n}")
    answers: list[str | None] = []
    for j, a in enumerate(record["pred_answers"]):
        if a is None or isinstance(a, str):
            answers.append(a)
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            answers.append(str(a))
        else:
            raise LaserError(f"{where}: field 'pred_answers'[{j}] must be a string or null")
    correct = is_correct(_numbers(record["acc_list"], "acc_list", where, allow_bool=True))
    scores = _numbers(record["self_rewarding_scores"], "self_rewarding_scores", where)
    extra = {name: _numbers(record[f], f, where) for name, f in BASELINES.items() if f in record}
    for name, f in PROBABILITY_BASELINES.items():
        if f in record:
            extra[name] = _numbers(record[f], f, where, allow_bool=True, allow_null=True)
    cost = {name: _numbers(record[f], f, where) for name, f in SELF_VERIFY_COST.items() if f in record}
    return ProblemSamples(answers=answers, correct=correct, scores=scores, extra=extra, cost=cost)


def default_ks(n: int) -> list[int]:
    """Powers of two up to n: 1, 2, 4, 8 for n = 8; 1, 2 for n = 3."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def _resolve_ks(ks: Sequence[int] | None, n_min: int) -> list[int]:
    if ks is None:
        return default_ks(n_min)
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise LaserError(f"k must be a positive integer, got {k!r}")
        if k > n_min:
            raise LaserError(
                f"k={k} is larger than the number of responses of some problem (smallest n = {n_min}); "
                "use ks up to n (omit --k for the powers of two up to n)"
            )
        if k not in out:
            out.append(k)
    if not out:
        raise LaserError("no k values given")
    return sorted(out)


# --------------------------------------------------------------------------- metrics


def verification_metrics(scores: np.ndarray, correct: np.ndarray) -> dict[str, float | None]:
    """Pooled binary-classification metrics of "score > 0.5" against the truth, plus AUROC and ECE
    (``None`` where undefined, see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    pred = predicted_correct(scores)
    tp = int(np.sum(pred & correct))
    tn = int(np.sum(~pred & ~correct))
    fp = int(np.sum(pred & ~correct))
    fn = int(np.sum(~pred & correct))
    tpr = ratio(tp, tp + fn)
    tnr = ratio(tn, tn + fp)
    return {
        "tpr": tpr,
        "tnr": tnr,
        "hm_tpr_tnr": harmonic_mean_tpr_tnr(tpr, tnr),
        "precision": ratio(tp, tp + fp),
        "recall": tpr,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, scores.size),
        "auroc": auroc(scores, correct),
        "ece": expected_calibration_error(scores, correct),
    }


def within_problem_auroc(values: Sequence[np.ndarray], correct: Sequence[np.ndarray]) -> tuple[float | None, int]:
    """Mean per-problem AUROC over the problems with both classes (None when there are none), and
    how many such problems there are."""
    per_problem = [auroc(v, c) for v, c in zip(values, correct) if 0 < int(c.sum()) < c.size]
    return mean_defined(per_problem), len(per_problem)


def probability_weights(values: np.ndarray) -> np.ndarray:
    """Vote weights of a probability baseline: clamp(value, 0, 1), no value (NaN) → 0."""
    return np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0)


def probability_scores(values: np.ndarray) -> np.ndarray:
    """Scores of a probability baseline for AUROC, hm and best-of-k: no value (NaN) → 0.5."""
    return np.where(np.isnan(values), UNDEFINED_VERDICT_SCORE, values)


def _baseline_names(problems: Sequence[ProblemSamples], names: Sequence[str], fields: Mapping[str, str],
                    locations: Sequence[str] | None) -> list[str]:
    """The baselines every record has; one present in some records only is an error."""
    out = []
    for name in names:
        have = [name in p.extra for p in problems]
        if all(have):
            out.append(name)
        elif any(have):
            missing = have.index(False)
            raise LaserError(
                f"{_where(missing, locations)}: field '{fields[name]}' is missing here but present in other records"
            )
    return out


def _self_verify_cost(problems: Sequence[ProblemSamples]) -> dict[str, float | int | None] | None:
    """Mean prefill / decode tokens and seconds per verified response (decode tokens > 0), when recorded."""
    if not problems or not all(set(SELF_VERIFY_COST) <= set(p.cost) for p in problems):
        return None
    cost = {name: np.concatenate([p.cost[name] for p in problems]) for name in SELF_VERIFY_COST}
    verified = cost["decode_tokens"] > 0
    n = int(verified.sum())
    out: dict[str, float | int | None] = {"verified_responses": n}
    for name, values in cost.items():
        out[f"{name}_per_response"] = float(values[verified].mean()) if n else None
    out["seconds_total"] = float(cost["seconds"].sum())
    return out


def compute_metrics(
    records: Sequence[Mapping[str, Any]],
    ks: Sequence[int] | None = None,
    same_answer: SameAnswer | None = None,
    *,
    locations: Sequence[str] | None = None,
    verdict: VerdictReader | None = None,
) -> dict[str, Any]:
    """All test-time metrics of a scored samples file (one record per problem); see the module doc.

    ``same_answer`` groups answers for voting (default: exact string equality). ``locations`` are
    optional ``file:line`` labels used in error messages instead of record indices. ``verdict`` reads
    each response's written verdict from its text (replacing a ``verdicts`` field the records carry).
    """
    if verdict is not None:
        records = attach_verdicts(records, verdict)
    problems = [validate_record(r, i, locations) for i, r in enumerate(records)]
    if not problems:
        raise LaserError("no records to compute metrics from")
    ks = _resolve_ks(ks, min(p.n for p in problems))
    equivalent = same_answer if isinstance(same_answer, CachedEquivalence) else CachedEquivalence(
        same_answer or exact_same_answer
    )

    correct = np.concatenate([p.correct for p in problems])
    scores = np.concatenate([p.scores for p in problems])

    rank_names = _baseline_names(problems, list(BASELINES), BASELINES, locations)
    prob_names = _baseline_names(problems, list(PROBABILITY_BASELINES), PROBABILITY_BASELINES, locations)
    baseline_names = rank_names + prob_names

    votes: dict[str, list[float]] = {f"{m}@{k}": [] for m in VOTING_METHODS for k in ks}
    base_votes: dict[str, list[float]] = {f"{b}:{m}@{k}": [] for b in baseline_names for m in ("weighted_maj", "best_of")
                                          for k in ks}
    for p in problems:
        groups = equivalent.group(p.answers)
        answered = np.asarray(groups) >= 0
        ones = np.ones(p.n)
        weights = np.clip(p.scores, 0.0, 1.0)
        c = int(p.correct.sum())
        for k in ks:
            maj = vote(groups, ones, k)
            wmaj = vote(groups, weights, k)
            best = int(np.argmax(p.scores[:k]))  # first index on ties
            votes[f"maj@{k}"].append(float(maj is not None and p.correct[maj]))
            votes[f"weighted_maj@{k}"].append(float(wmaj is not None and p.correct[wmaj]))
            votes[f"best_of@{k}"].append(float(p.correct[best]))
            votes[f"pass@{k}"].append(pass_at_k(p.n, c, k))
            for b in baseline_names:
                if b in rank_names:
                    w, s = rank_weights(p.extra[b][:k]), p.extra[b]
                else:
                    w, s = probability_weights(p.extra[b]), probability_scores(p.extra[b])
                    if not w[:k][answered[:k]].any():  # nobody with an answer says yes: plain majority
                        w = ones
                win = vote(groups, w, k)
                base_votes[f"{b}:weighted_maj@{k}"].append(float(win is not None and p.correct[win]))
                base_votes[f"{b}:best_of@{k}"].append(float(p.correct[int(np.argmax(s[:k]))]))

    per_problem_correct = [p.correct for p in problems]
    within, mixed = within_problem_auroc([p.scores for p in problems], per_problem_correct)
    result: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "num_problems": len(problems),
        "num_responses": int(correct.size),
        "verification": verification_metrics(scores, correct),
        "voting": {key: float(np.mean(v)) for key, v in votes.items()},
    }
    result["verification"]["within_problem_auroc"] = within
    result["verification"]["mixed_problems"] = mixed
    if baseline_names:
        result["baselines"] = {}
        for b in baseline_names:
            per_problem = [p.extra[b] if b in rank_names else probability_scores(p.extra[b]) for p in problems]
            values = np.concatenate(per_problem)
            entry: dict[str, Any] = {"auroc": auroc(values, correct)}
            if b in prob_names:
                v = verification_metrics(values, correct)
                entry.update(tpr=v["tpr"], tnr=v["tnr"], hm_tpr_tnr=v["hm_tpr_tnr"])
                raw = np.concatenate([p.extra[b] for p in problems])
                entry["coverage"] = float(np.mean(~np.isnan(raw)))
            entry["within_problem_auroc"] = within_problem_auroc(per_problem, per_problem_correct)[0]
            for m in ("weighted_maj", "best_of"):
                for k in ks:
                    entry[f"{m}@{k}"] = float(np.mean(base_votes[f"{b}:{m}@{k}"]))
            if b == "self_verify":
                entry["cost"] = _self_verify_cost(problems)
            result["baselines"][b] = entry
    return result


# --------------------------------------------------------------------------- files


def load_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a JSONL samples file; returns the records and their ``file:line`` labels for error messages."""
    records, locations = read_jsonl_located(path)
    p = Path(path)
    if not records:
        raise LaserError(f"{p}: no records")
    return records, locations


_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def auto_equivalence(records: Sequence[Mapping[str, Any]]) -> str:
    """``exact`` when every gold and predicted answer is a canonical integer (then exact = numeric
    equality and math-verify would agree), else ``math``."""
    for r in records:
        values = [r.get("answer"), *(r.get("pred_answers") or [])]
        for v in values:
            if v is None:
                continue
            if not _CANONICAL_INT.fullmatch(str(v)):
                return "math"
    return "exact"
