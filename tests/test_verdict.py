"""The written verdict as a free baseline (issue 24): readers, metrics, and the commands that report it."""

from __future__ import annotations

import json
import random

import pytest

from laser_rl.errors import LaserError
from laser_rl.evaluation.metrics import compute_metrics
from laser_rl.evaluation.verdict import PatternVerdict, attach_verdicts, pattern_reader


def test_pattern_reader_last_match_decides_and_unknown_words_are_no_verdict():
    read = PatternVerdict(r"verdict: (\w+)")
    assert read("verdict: yes") == 1.0 and read("Verdict: no") is None  # case-sensitive pattern, as written
    assert read("verdict: no ... on second thought verdict: Correct") == 1.0  # the last match counts
    assert read("verdict: maybe") is None and read("nothing here") is None
    assert read("verdict: WRONG") == 0.0
    assert pattern_reader(None) is None
    with pytest.raises(LaserError, match="capturing group"):
        PatternVerdict(r"verdict: \w+")
    with pytest.raises(LaserError, match="--verdict-pattern: not a valid regular expression"):
        PatternVerdict(r"verdict: (\w+")


def test_pairsum_reads_its_check_text_and_the_task_data_carries_the_reader():
    from laser_rl.tasks.pairsum import PairSumConfig, load_pairsum, read_verdict

    cfg = PairSumConfig(check_text=True, test_size=20)
    rng = random.Random(0)
    data = load_pairsum("test", config=cfg)
    assert data.verdict is read_verdict
    seen = set()
    for p in data.problems:
        for _ in range(4):
            text = cfg.sft_target(p, rng)  # right pairs say ok, wrong ones (honest guesses) say no
            says = read_verdict(text)
            assert says == (1.0 if cfg.verifier().reward(text, p.answer) == 1.0 else 0.0), text
            seen.add(says)
    assert seen == {0.0, 1.0}
    assert read_verdict("17+33=50;#17,33") is None  # no check text: no verdict
    assert read_verdict("17+33=50;no;17+33=50;ok;#17,33") == 1.0


def _record(answers, correct, verdicts, scores=None):
    n = len(answers)
    return {"problem": "p", "answer": "a", "responses": [""] * n, "pred_answers": answers, "acc_list": correct,
            "self_rewarding_scores": scores or [0.0] * n, "verdicts": verdicts}


def test_verdict_metrics_score_undefined_as_half_and_vote_with_weight_one_for_yes():
    recs = [
        # "b" is right and says ok; the two "a" say no / nothing
        _record(["a", "a", "b", "c"], [False, False, True, False], [0.0, None, 1.0, 0.0]),
        # nobody with an answer says ok: the verdict-weighted vote is the plain majority ("x", right)
        _record(["x", "x", "y", None], [True, True, False, False], [None, 0.0, 0.0, 1.0]),
    ]
    m = compute_metrics(recs, ks=[4])
    v = m["baselines"]["verdict"]
    assert v["weighted_maj@4"] == 1.0  # "b" in problem 1 (weight 1 vs 0), majority "x" in problem 2
    assert m["voting"]["maj@4"] == 0.5  # plain majority picks "a" in problem 1
    # best-of: the first response scoring highest (ok = 1 > none = 0.5 > no = 0): "b" right; problem 2: the
    # unanswered ok response (wrong)
    assert v["best_of@4"] == 0.5
    # pooled: scores [0, .5, 1, 0, .5, 0, 0, 1], truth [F, F, T, F, T, T, F, F]
    # positives 1, .5, 0 vs negatives 0, .5, 0, 0, 1: P(pos > neg) with ties 1/2
    pos, neg = [1.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.0, 1.0]
    expected = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / 15
    assert v["auroc"] == pytest.approx(expected)
    # score > 0.5 predicts correct: only the ok ones; TPR 1/3 (b), TNR 4/5
    assert v["tpr"] == pytest.approx(1 / 3) and v["tnr"] == pytest.approx(4 / 5)
    assert v["hm_tpr_tnr"] == pytest.approx(2 * (1 / 3) * 0.8 / (1 / 3 + 0.8))
    assert v["coverage"] == pytest.approx(6 / 8)
    # within-problem: problem 1 AUROC 1.0 (b alone scores 1); problem 2: right 0.5, 0 vs wrong 0, 1
    assert v["within_problem_auroc"] == pytest.approx((1.0 + (1 + 0 + 0.5 + 0) / 4) / 2)


def test_verdict_reader_replaces_the_field_and_a_partial_field_is_an_error():
    recs = [_record(["a", "b"], [True, False], [None, None])]
    recs[0]["responses"] = ["verdict: yes", "verdict: no"]
    m = compute_metrics(recs, ks=[2], verdict=PatternVerdict(r"verdict: (\w+)"))
    assert m["baselines"]["verdict"]["auroc"] == 1.0 and m["baselines"]["verdict"]["coverage"] == 1.0
    assert "verdicts" not in recs[0] or recs[0]["verdicts"] == [None, None]  # the input is not modified
    assert attach_verdicts(recs, PatternVerdict(r"verdict: (\w+)"))[0]["verdicts"] == [1.0, 0.0]
    other = dict(recs[0])
    del other["verdicts"]
    with pytest.raises(LaserError, match="record 1: field 'verdicts' is missing here but present in other records"):
        compute_metrics([recs[0], other], ks=[2])
    bad = _record(["a"], [True], ["yes"])
    with pytest.raises(LaserError, match=r"field 'verdicts'\[0\] must be a number"):
        compute_metrics([bad], ks=[1])


def test_laser_metrics_reports_the_verdict_with_a_pattern(tmp_path, capsys):
    from laser_rl.cli import main

    rec = _record(["1,2", "1,3", "1,3"], [True, False, False], [None] * 3)
    del rec["verdicts"]
    rec["responses"] = ["1+2=3;ok;#1,2", "1+3=4;no;#1,3", "1+3=4;no;#1,3"]
    src = tmp_path / "scored.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "m.json"
    exact = ["--equivalence", "exact"]
    assert main(["metrics", "--input", str(src), "--out", str(out), *exact, "--verdict-pattern", ";(ok|no);",
                 "--report", str(tmp_path / "rep")]) == 0
    m = json.loads(out.read_text())
    v = m["baselines"]["verdict"]
    assert v["weighted_maj@2"] == 1.0 and m["voting"]["maj@2"] == 1.0 and m["voting"]["weighted_maj@2"] == 1.0
    assert v["auroc"] == 1.0 and v["hm_tpr_tnr"] == 1.0
    assert "verdict" in capsys.readouterr().out
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "| verdict |" in report
    # without the option, no verdict baseline (off by default)
    assert main(["metrics", "--input", str(src), "--out", str(out), *exact, "--overwrite"]) == 0
    assert "verdict" not in json.loads(out.read_text()).get("baselines", {})
    assert main(["metrics", "--input", str(src), "--out", str(out), *exact, "--overwrite", "--verdict-pattern", "ok"]) == 2
