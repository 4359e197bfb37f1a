"""Metrics against slow, obviously-correct implementations and hand-computed examples."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.evaluation.metrics import (
    CachedEquivalence,
    auroc,
    auto_equivalence,
    compute_metrics,
    default_ks,
    expected_calibration_error,
    pass_at_k,
    rank_weights,
    vote,
)

# --------------------------------------------------------------------------- slow references


def slow_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return total / (len(pos) * len(neg))


def slow_ece(scores, labels):
    conf = [min(max(s, 0.0), 1.0) for s in scores]
    n = len(conf)
    if n == 0:
        return 0.0
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        members = [i for i, c in enumerate(conf) if lo <= c < hi or (b == 9 and c == 1.0)]
        if members:
            gap = abs(
                sum(conf[i] for i in members) / len(members) - sum(labels[i] for i in members) / len(members)
            )
            total += len(members) / n * gap
    return total


def slow_pass_at_k(n, c, k):
    """Probability that a random k-subset of the n responses contains a correct one (enumeration)."""
    items = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


def slow_vote(answers, weights, k, same=lambda a, b: a == b):
    """Winner = first response giving the answer with the largest total among the first k."""
    reps = []  # (representative answer, first index, total)
    for i in range(k):
        a = answers[i]
        if a is None:
            continue
        for r in reps:
            if same(r[0], a):
                r[2] += weights[i]
                break
        else:
            reps.append([a, i, weights[i]])
    if not reps:
        return None
    best = reps[0]
    for r in reps[1:]:
        if r[2] > best[2]:
            best = r
    return best[1]


def slow_within_problem_auroc(records, field="self_rewarding_scores"):
    per_problem = []
    for r in records:
        truth = [bool(a) for a in r["acc_list"]]
        if 0 < sum(truth) < len(truth):
            per_problem.append(slow_auroc(r[field], truth))
    return sum(per_problem) / len(per_problem) if per_problem else None


def slow_metrics(records, ks):
    """Straight-line re-implementation of the issue's rules."""
    scores = [s for r in records for s in r["self_rewarding_scores"]]
    truth = [bool(a) for r in records for a in r["acc_list"]]
    pred = [s > 0.5 for s in scores]
    tp = sum(p and t for p, t in zip(pred, truth))
    tn = sum((not p) and (not t) for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum((not p) and t for p, t in zip(pred, truth))

    def div(a, b):
        return a / b if b else None

    tpr, tnr, prec = div(tp, tp + fn), div(tn, tn + fp), div(tp, tp + fp)
    hm = None if tpr is None or tnr is None else (2 * tpr * tnr / (tpr + tnr) if tpr + tnr else 0.0)
    out = {
        "accuracy": sum(truth) / len(truth),
        "verification": {
            "tpr": tpr,
            "tnr": tnr,
            "hm_tpr_tnr": hm,
            "precision": prec,
            "recall": tpr,
            "f1": div(2 * tp, 2 * tp + fp + fn),
            "accuracy": (tp + tn) / len(truth),
            "auroc": slow_auroc(scores, truth),
            "ece": slow_ece(scores, truth),
            "within_problem_auroc": slow_within_problem_auroc(records),
            "mixed_problems": sum(0 < sum(map(bool, r["acc_list"])) < len(r["acc_list"]) for r in records),
        },
        "voting": {},
    }
    for k in ks:
        maj, wmaj, best, pas = [], [], [], []
        for r in records:
            acc = [bool(a) for a in r["acc_list"]]
            sc = r["self_rewarding_scores"]
            w = slow_vote(r["pred_answers"], [1.0] * len(sc), k)
            maj.append(w is not None and acc[w])
            w = slow_vote(r["pred_answers"], [min(max(s, 0.0), 1.0) for s in sc], k)
            wmaj.append(w is not None and acc[w])
            top = max(range(k), key=lambda i: (sc[i], -i))
            best.append(acc[top])
            pas.append(slow_pass_at_k(len(acc), sum(acc), k))
        out["voting"][f"maj@{k}"] = sum(maj) / len(maj)
        out["voting"][f"weighted_maj@{k}"] = sum(wmaj) / len(wmaj)
        out["voting"][f"best_of@{k}"] = sum(best) / len(best)
        out["voting"][f"pass@{k}"] = sum(pas) / len(pas)
    return out


def random_records(rng: random.Random, problems: int, n: int) -> list[dict]:
    recs = []
    for _ in range(problems):
        answers = [rng.choice([None, "1", "2", "3"]) for _ in range(n)]
        acc = [a == "2" for a in answers]
        # scores on a coarse grid so that ties (votes, best-of, AUROC, bins) happen often
        scores = [rng.choice([-0.3, 0.0, 0.1, 0.2, 0.5, 0.6, 0.9, 1.0, 1.4]) for _ in range(n)]
        recs.append(
            {
                "problem": "p",
                "answer": "2",
                "responses": ["r"] * n,
                "pred_answers": answers,
                "acc_list": acc,
                "self_rewarding_scores": scores,
            }
        )
    return recs


def assert_close(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_close(a[key], b[key])
        elif b[key] is None:
            assert a[key] is None, key
        else:
            assert a[key] == pytest.approx(b[key], abs=1e-12), key


# --------------------------------------------------------------------------- primitives


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        s = rng.integers(0, 5, n).astype(float) / 4  # many ties
        y = rng.random(n) < 0.5
        want = slow_auroc(list(s), list(y))
        assert auroc(s, y) == (None if want is None else pytest.approx(want, abs=1e-12))
    assert auroc([0.1, 0.9], [False, True]) == 1.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5
    assert auroc([0.1, 0.2], [True, True]) is None  # one class only: undefined, not 0


def test_ece_bins_edges_and_clamping():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        # grid values hit the bin edges exactly (0.1, 0.3, 1.0) and fall outside [0, 1]
        s = rng.integers(-3, 14, n) / 10
        y = rng.random(n) < 0.5
        assert expected_calibration_error(s, y) == pytest.approx(slow_ece(list(s), list(y)), abs=1e-12)
    # hand-computed: bins {0.0: [0.05 (wrong)]}, {0.9-1.0 closed: [1.0 (right), 1.3->1.0 (wrong)]}
    # = 1/3*|0.05-0| + 2/3*|1.0-0.5| = 0.35
    assert expected_calibration_error([0.05, 1.0, 1.3], [False, True, False]) == pytest.approx(0.35)
    assert expected_calibration_error([], []) is None


def test_pass_at_k_unbiased_estimator():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(slow_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(1024, 3, 512) == pytest.approx(1 - math.comb(1021, 512) / math.comb(1024, 512))


def test_vote_rules():
    # ties go to the answer that appears first; the first response giving the winner decides
    assert vote([0, 1, 1, 0], [1, 1, 1, 1], 4) == 0
    assert vote([0, 1, 1], [1, 1, 1], 3) == 1
    assert vote([0, 1, 1], [1, 1, 1], 1) == 0  # only the first k vote
    assert vote([-1, -1], [1, 1], 2) is None  # nobody answered
    assert vote([-1, 0, 1], [1, 0.2, 0.3], 3) == 2  # weighted
    assert vote([0, 1], [0.0, 0.0], 2) == 0  # all weights 0: a tie, first answer wins


def test_rank_weights():
    assert rank_weights([-3.0, -1.0, -2.0]).tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert rank_weights([-1.0, -1.0]).tolist() == pytest.approx([0.75, 0.75])  # average rank 1.5 / 2
    assert rank_weights([5.0]).tolist() == [1.0]


def test_grouping_is_cached_and_prefix_consistent():
    calls = []

    def same(a, b):
        calls.append((a, b))
        return a.replace(" ", "") == b.replace(" ", "")

    eq = CachedEquivalence(same)
    answers = ["1 /2", "3", None, "1/2", "3", "1/ 2"]
    groups = eq.group(answers)
    assert groups == [0, 1, -1, 0, 1, 0]
    for k in range(1, len(answers) + 1):
        assert CachedEquivalence(same).group(answers[:k]) == groups[:k]
    n_calls = len(calls)
    eq.group(answers)
    assert len(calls) == n_calls  # second pass entirely from the cache


# --------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_matches_slow_reference_on_random_records():
    rng = random.Random(0)
    for trial in range(25):
        n = rng.choice([1, 2, 3, 4, 8])
        records = random_records(rng, rng.randint(1, 12), n)
        ks = default_ks(n)
        got = compute_metrics(records, ks=ks)
        want = slow_metrics(records, ks)
        assert got["num_problems"] == len(records) and got["num_responses"] == len(records) * n
        got.pop("num_problems"), got.pop("num_responses")
        assert_close(got, want), trial


def test_compute_metrics_hand_example():
    records = [
        {  # answers 5,5,7,None; only "7" is right; scores favour 7
            "problem": "a",
            "answer": "7",
            "responses": ["", "", "", ""],
            "pred_answers": ["5", "5", "7", None],
            "acc_list": [False, False, True, False],
            "self_rewarding_scores": [0.2, 0.3, 0.9, 0.8],
        },
        {  # tie 1-1 between "4" and "6": majority picks "4" (first); weights pick "6"
            "problem": "b",
            "answer": "6",
            "responses": ["", "", "", ""],
            "pred_answers": ["4", "6", None, None],
            "acc_list": [False, True, False, False],
            "self_rewarding_scores": [0.1, 0.7, 0.0, 0.0],
        },
    ]
    m = compute_metrics(records, ks=[1, 2, 4])
    assert m["accuracy"] == 2 / 8
    v = m["voting"]
    assert v["maj@4"] == 0.0  # "5" wins problem a; "4" wins the tie in b
    assert v["weighted_maj@4"] == 1.0  # 0.9 vs 0.5 in a; 0.7 vs 0.1 in b
    assert v["best_of@4"] == 1.0 and v["best_of@1"] == 0.0
    assert v["maj@2"] == 0.0 and v["weighted_maj@2"] == 0.5
    assert v["pass@4"] == 1.0 and v["pass@1"] == pytest.approx(0.25)
    ver = m["verification"]
    # predicted correct: 0.9, 0.8, 0.7 -> TP = 2, FP = 1, FN = 0, TN = 5
    assert (
        ver["tpr"] == 1.0 and ver["tnr"] == pytest.approx(5 / 6) and ver["precision"] == pytest.approx(2 / 3)
    )
    assert ver["hm_tpr_tnr"] == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert ver["f1"] == pytest.approx(0.8) and ver["accuracy"] == pytest.approx(7 / 8)
    assert list(m) == ["accuracy", "num_problems", "num_responses", "verification", "voting"]
    assert list(m["verification"]) == [
        "tpr",
        "tnr",
        "hm_tpr_tnr",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "auroc",
        "ece",
        "within_problem_auroc",
        "mixed_problems",
    ]


def test_all_correct_all_wrong_and_no_answers():
    def rec(acc, answers, scores):
        return {
            "problem": "p",
            "answer": "1",
            "responses": [""] * len(acc),
            "pred_answers": answers,
            "acc_list": acc,
            "self_rewarding_scores": scores,
        }

    right = compute_metrics([rec([True, True], ["1", "1"], [0.9, 0.2])])
    assert right["accuracy"] == 1.0 and right["voting"]["maj@2"] == 1.0 and right["voting"]["pass@1"] == 1.0
    rv = right["verification"]
    assert rv["tnr"] is None and rv["auroc"] is None and rv["hm_tpr_tnr"] is None  # no negatives: undefined
    assert rv["within_problem_auroc"] is None and rv["mixed_problems"] == 0
    assert rv["tpr"] == 0.5 and rv["precision"] == 1.0 and rv["f1"] == pytest.approx(2 / 3)
    wrong = compute_metrics([rec([False, False], ["2", "3"], [0.9, 0.2])])
    assert wrong["accuracy"] == 0.0 and wrong["voting"]["pass@2"] == 0.0
    wv = wrong["verification"]
    assert wv["precision"] == 0.0 and wv["f1"] == 0.0 and wv["tnr"] == 0.5  # defined: a false positive exists
    assert wv["tpr"] is None and wv["recall"] is None and wv["hm_tpr_tnr"] is None  # no positives
    silent = compute_metrics([rec([True, False], [None, None], [1.0, 1.0])])
    assert silent["voting"]["maj@2"] == 0.0 and silent["voting"]["weighted_maj@2"] == 0.0  # no votes = wrong
    assert silent["voting"]["best_of@2"] == 1.0  # best-of ignores answers; the first of the tie is right


def test_equivalence_groups_votes():
    recs = [
        {
            "problem": "p",
            "answer": "0.5",
            "responses": [""] * 3,
            "pred_answers": ["1/2", "3", "0.5"],
            "acc_list": [True, False, True],
            "self_rewarding_scores": [0.0, 0.0, 0.0],
        }
    ]
    exact = compute_metrics(recs, ks=[3])
    assert exact["voting"]["maj@3"] == 1.0  # 3-way tie: the first answer wins
    recs[0]["acc_list"] = [False, False, True]  # now only the literal "0.5" counts as right
    numeric = compute_metrics(recs, ks=[3], same_answer=lambda a, b: eval(a) == eval(b))
    assert numeric["voting"]["maj@3"] == 0.0  # "1/2" and "0.5" merge, represented by the first ("1/2")


def test_baselines_rank_normalised():
    recs = [
        {
            "problem": "p",
            "answer": "1",
            "responses": [""] * 3,
            "pred_answers": ["2", "2", "1"],
            "acc_list": [False, False, True],
            "self_rewarding_scores": [0.0, 0.0, 0.0],
            "mean_logprobs": [-2.0, -3.0, -0.1],
            "min_logprobs": [-5.0, -6.0, -9.0],
        }
    ]
    m = compute_metrics(recs, ks=[1, 3])
    b = m["baselines"]
    assert list(b) == ["mean_logprob", "min_logprob"]
    # mean: weights 2/3, 1/3, 1 -> "2": 1.0 vs "1": 1.0 -> tie -> "2" (first) -> wrong
    assert b["mean_logprob"]["weighted_maj@3"] == 0.0
    # min: weights 1, 2/3, 1/3 -> "2" wins -> wrong; AUROC: the correct one has the lowest min
    assert b["min_logprob"]["auroc"] == 0.0 and b["mean_logprob"]["auroc"] == 1.0
    assert list(b["mean_logprob"]) == ["auroc", "within_problem_auroc", "weighted_maj@1", "weighted_maj@3",
                                       "best_of@1", "best_of@3"]
    # best-of-k takes the highest value: mean -0.1 (right), min -5.0 (wrong)
    assert b["mean_logprob"]["best_of@3"] == 1.0 and b["min_logprob"]["best_of@3"] == 0.0
    assert b["mean_logprob"]["within_problem_auroc"] == 1.0 and b["min_logprob"]["within_problem_auroc"] == 0.0
    recs[0]["mean_logprobs"] = [
        -2.0,
        -0.5,
        -0.1,
    ]  # weights 1/3, 2/3, 1 -> "2": 1.0 vs "1": 1.0 tie -> still "2"
    recs.append(dict(recs[0], mean_logprobs=[-2.0, -0.5, -0.05]))
    assert "baselines" in compute_metrics(recs, ks=[3])
    del recs[1]["min_logprobs"]
    with pytest.raises(LaserError, match=r"record 1: field 'min_logprobs' is missing"):
        compute_metrics(recs)


def test_validation_errors_name_the_record():
    good = {
        "problem": "p",
        "answer": "1",
        "responses": ["a", "b"],
        "pred_answers": ["1", None],
        "acc_list": [True, False],
        "self_rewarding_scores": [0.5, 0.1],
    }
    with pytest.raises(LaserError, match=r"record 1: missing field 'responses'"):
        compute_metrics([good, {k: v for k, v in good.items() if k != "responses"}])
    with pytest.raises(LaserError, match=r"f.jsonl:7: missing field 'answer'"):
        compute_metrics([{k: v for k, v in good.items() if k != "answer"}], locations=["f.jsonl:7"])
    with pytest.raises(LaserError, match=r"'acc_list' has 3 entries but 'responses' has 2"):
        compute_metrics([dict(good, acc_list=[True, False, True])])
    with pytest.raises(LaserError, match=r"'self_rewarding_scores'\[1\] is nan"):
        compute_metrics([dict(good, self_rewarding_scores=[0.5, float("nan")])])
    with pytest.raises(LaserError, match=r"'self_rewarding_scores'\[0\] must be a number, got null"):
        compute_metrics([dict(good, self_rewarding_scores=[None, 0.1])])
    with pytest.raises(LaserError, match=r"k=4 is larger"):
        compute_metrics([good], ks=[1, 4])
    with pytest.raises(LaserError, match="no records"):
        compute_metrics([])
    assert list(compute_metrics([good])["voting"]) == [
        "maj@1",
        "maj@2",
        "weighted_maj@1",
        "weighted_maj@2",
        "best_of@1",
        "best_of@2",
        "pass@1",
        "pass@2",
    ]


def test_auto_equivalence():
    assert auto_equivalence([{"answer": "12", "pred_answers": ["-3", None, "0"]}]) == "exact"
    assert auto_equivalence([{"answer": 70, "pred_answers": ["70"]}]) == "exact"
    assert auto_equivalence([{"answer": "12", "pred_answers": ["012"]}]) == "math"
    assert auto_equivalence([{"answer": "\\frac12", "pred_answers": ["0.5"]}]) == "math"


# --------------------------------------------------------------------------- the command


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_metrics_command_writes_exact_keys(tmp_path, capsys):
    rng = random.Random(3)
    records = random_records(rng, 5, 4)
    for r in records:
        r["mean_logprobs"] = [rng.uniform(-3, 0) for _ in range(4)]
        r["min_logprobs"] = [rng.uniform(-9, -3) for _ in range(4)]
    src = tmp_path / "scored.jsonl"
    _write(src, [json.dumps(r) for r in records])
    out = tmp_path / "m" / "metrics.json"
    assert main(["metrics", "--input", str(src), "--out", str(out), "--k", "1,2,4"]) == 0
    m = json.loads(out.read_text())
    assert list(m) == ["accuracy", "num_problems", "num_responses", "verification", "voting", "baselines"]
    assert set(m["voting"]) == {
        f"{meth}@{k}" for meth in ("maj", "weighted_maj", "best_of", "pass") for k in (1, 2, 4)
    }
    assert all(0.0 <= v <= 1.0 for v in m["voting"].values())
    assert "exact equivalence" in capsys.readouterr().out
    expected = compute_metrics(records, ks=[1, 2, 4])
    assert m == json.loads(json.dumps(expected))


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [
                '{"problem": "p", "answer": "1", "responses": ["a"], "pred_answers": ["1"], "acc_list": [true], '
                '"self_rewarding_scores": [0.3]}',
                '{"problem": "p", ',
            ],
            r"scored.jsonl:2: malformed JSON",
        ),
        (
            [
                '{"problem": "p", "answer": "1", "pred_answers": ["1"], "acc_list": [true], "self_rewarding_scores": [0.3]}'
            ],
            r"scored.jsonl:1: missing field 'responses'",
        ),
        (
            [
                "",
                '{"problem": "p", "responses": ["a"], "pred_answers": ["1"], "acc_list": [true], '
                '"self_rewarding_scores": [0.3]}',
            ],
            r"scored.jsonl:2: missing field 'answer'",
        ),
        (
            [
                '{"problem": "p", "answer": "1", "responses": ["a", "b"], "pred_answers": ["1"], "acc_list": [true, false], '
                '"self_rewarding_scores": [0.3, 0.1]}'
            ],
            r"'pred_answers' has 1 entries but 'responses' has 2",
        ),
        (
            [
                '{"problem": "p", "answer": "1", "responses": ["a"], "pred_answers": ["1"], "acc_list": [true], '
                '"self_rewarding_scores": [NaN]}'
            ],
            r"scored.jsonl:1: field 'self_rewarding_scores'\[0\] is nan",
        ),
    ],
)
def test_metrics_command_bad_input_exits_2_without_output(tmp_path, capsys, lines, message):
    src = tmp_path / "scored.jsonl"
    _write(src, lines)
    out = tmp_path / "metrics.json"
    assert main(["metrics", "--input", str(src), "--out", str(out)]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["scored.jsonl"]  # no temp files left either


def test_within_problem_auroc_separates_difficulty_from_ranking():
    # The score tracks only problem difficulty: perfect between problems, blind within each.
    def rec(acc, score):
        return {
            "problem": "p",
            "answer": "1",
            "responses": [""] * len(acc),
            "pred_answers": ["1" if a else "2" for a in acc],
            "acc_list": acc,
            "self_rewarding_scores": [score] * len(acc),
        }

    records = [rec([True, True, True, False], 0.9), rec([True, False, False, False], 0.1), rec([True] * 4, 0.95)]
    ver = compute_metrics(records, ks=[4])["verification"]
    assert ver["auroc"] > 0.7
    assert ver["within_problem_auroc"] == 0.5 and ver["mixed_problems"] == 2
    records[0]["self_rewarding_scores"] = [0.9, 0.9, 0.9, 0.1]  # now ranks problem 0's responses perfectly
    assert compute_metrics(records, ks=[4])["verification"]["within_problem_auroc"] == 0.75


def test_undefined_metrics_are_null_in_json_and_na_in_text(tmp_path, capsys):
    """One class only: AUROC, TNR, hm and within-problem AUROC are undefined, never a misleading 0."""
    import json

    from laser_rl.cli import main

    src = tmp_path / "scored.jsonl"
    rec = {"problem": "p", "answer": "1", "responses": ["a", "b"], "pred_answers": ["1", "1"],
           "acc_list": [True, True], "self_rewarding_scores": [0.9, 0.2]}
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "m.json"
    assert main(["metrics", "--input", str(src), "--out", str(out), "--report", str(tmp_path / "rep")]) == 0
    v = json.loads(out.read_text())["verification"]
    assert v["auroc"] is None and v["tnr"] is None and v["hm_tpr_tnr"] is None and v["within_problem_auroc"] is None
    text = capsys.readouterr().out
    assert "tnr n/a" in text and "auroc n/a" in text and "tpr 0.500" in text
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "n/a" in report and "None" not in report


def test_mean_defined_skips_undefined_values():
    from laser_rl.evaluation.metrics import format_metric, mean_defined

    assert mean_defined([0.5, None, 1.0, float("nan")]) == 0.75
    assert mean_defined([None]) is None
    assert format_metric(None) == "n/a" and format_metric(0.5, ".1f", 100) == "50.0"
