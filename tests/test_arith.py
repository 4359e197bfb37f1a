"""The embedded arithmetic task: solutions, determinism, train/test disjointness, verifier, config."""

from __future__ import annotations

import random
from dataclasses import asdict
from itertools import islice

import pytest

from laser_rl.errors import LaserError
from laser_rl.tasks import arith
from laser_rl.tasks.arith import (
    ArithConfig,
    ArithVerifier,
    held_out_problems,
    load_arith,
    load_task_config,
    save_task,
    solution,
    train_problem,
    train_stream,
)
from laser_rl.tasks.registry import load_task_data


def _eval(prompt: str) -> int:
    total, i = 0, 0
    for term in prompt[:-1].replace("-", "+-").split("+"):
        if term:
            total += int(term)
            i += 1
    return total


def test_solution_example_and_consistency():
    assert solution("63-15+43+75=") == "63-15=48;48+43=91;91+75=166;#166"
    assert solution("5-9=") == "5-9=-4;#-4"
    for p in held_out_problems(ArithConfig())[:200]:
        sol = solution(p.problem)
        assert p.answer == str(_eval(p.problem))
        assert sol.endswith("#" + p.answer)
        assert ArithVerifier().reward(sol, p.answer) == 1.0
    with pytest.raises(LaserError, match="not a chain-arithmetic prompt"):
        solution("1+2")


def test_default_problems_respect_settings():
    cfg = ArithConfig()
    for p in [train_problem(cfg, 0, i) for i in range(500)]:
        n = p.meta["n_operands"]
        assert 3 <= n <= 5
        values = [int(v) for v in p.problem[:-1].replace("-", "+").split("+")]
        assert len(values) == n and all(10 <= v <= 99 for v in values)
        # the no-negative rule: every running total (hence every number in the chain) is >= 0
        assert "=-" not in solution(p.problem)
        assert len(solution(p.problem)) + 1 <= cfg.max_response_tokens()
        assert len(p.problem) <= cfg.max_prompt_tokens()
    # without the rule, negative totals do occur and stay within the length bound
    neg = ArithConfig(no_negative=False)
    sols = [solution(train_problem(neg, 0, i).problem) for i in range(500)]
    assert any("=-" in s for s in sols)
    assert max(len(s) for s in sols) + 1 <= neg.max_response_tokens()


def test_modulus_clock_arithmetic():
    assert solution("7+5+9=", 10) == "7+5=2;2+9=1;#1"
    assert solution("3-8=", 10) == "3-8=5;#5"
    cfg = ArithConfig(min_operands=6, max_operands=10, min_value=0, max_value=9, modulus=10)
    for p in [train_problem(cfg, 0, i) for i in range(300)]:
        sol = solution(p.problem, 10)
        assert p.answer == str(_eval(p.problem) % 10)  # (a ± b) mod m chained = the total mod m
        assert ArithVerifier().reward(sol, p.answer) == 1.0
        results = [step.split("=")[1] for step in sol.split(";")[:-1]]
        assert all(len(r) == 1 for r in results)  # every intermediate result is reduced
        assert len(sol) + 1 <= cfg.max_response_tokens()
    assert ArithConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (1, -3):
        with pytest.raises(LaserError, match="modulus"):
            ArithConfig(modulus=bad)


def test_generation_is_deterministic_and_seeded():
    a, b = load_arith("test"), load_arith("test")
    assert [p.problem for p in a.problems] == [p.problem for p in b.problems]
    assert len(a.problems) == 1000 and len({p.problem for p in a.problems}) == 1000
    other = load_arith("test", seed=1)
    assert [p.problem for p in other.problems] != [p.problem for p in a.problems]
    train = load_arith("train")
    first = [p.problem for p in islice(train.stream(7, 0), 30)]
    assert first == [p.problem for p in islice(load_arith("train").stream(7, 0), 30)]
    assert first != [p.problem for p in islice(train.stream(8, 0), 30)]
    # resuming at a data position continues the same sequence
    assert [p.problem for p in islice(train.stream(7, 10), 20)] == first[10:30]
    with pytest.raises(LaserError, match="start"):
        next(train_stream(ArithConfig(), 0, -1))


def test_train_stream_is_disjoint_from_test_split():
    cfg = ArithConfig()
    test = {p.problem for p in held_out_problems(cfg)}
    assert not test & {train_problem(cfg, 0, i).problem for i in range(5000)}
    # A small problem space where the test split is ~10% of all prompts: undisturbed draws would hit
    # it often, so this checks the rejection really works.
    small = ArithConfig(min_operands=2, max_operands=2, min_value=10, max_value=40, test_size=150)
    small_test = {p.problem for p in held_out_problems(small)}
    raw = [arith._draw(small, random.Random(f"arith-train:0:{i}:0")).problem for i in range(3000)]
    assert sum(p in small_test for p in raw) > 50
    train = [train_problem(small, 0, i).problem for i in range(3000)]
    assert not small_test & set(train)
    assert sum(a == b for a, b in zip(raw, train)) > 2500  # only the collisions were redrawn


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("63-15=48;48+43=91;91+75=166;#166", "166"),
        ("no marker 166", None),  # no '#'
        ("", None),
        ("#12;#34", "34"),  # several '#': the last one counts
        ("#12#", None),  # nothing after the last '#'
        ("#007", None),  # leading zeros are not a canonical integer
        ("#00", None),
        ("#0", "0"),
        ("#-5", "-5"),  # negatives are accepted
        ("#-0", None),
        ("#+5", None),
        ("#--5", None),
        ("#12a", None),  # non-digits
        ("#1 2", None),
        ("#12;", None),
        ("#1.0", None),
        ("# 42 ", "42"),  # surrounding whitespace is ignored
        ("#166<eos>", None),  # decode with skip_special_tokens=True
        ("#٣", None),  # a non-ASCII digit is not accepted
    ],
)
def test_verifier_extract_answer(response, expected):
    assert ArithVerifier().extract_answer(response) == expected


def test_verifier_reward_and_same_answer():
    v = ArithVerifier()
    assert v.reward("1+2=3;#3", "3") == 1.0
    assert v.reward("1+2=3;#4", "3") == 0.0
    assert v.reward("1+2=3;#03", "3") == 0.0
    assert v.reward("1+2=3", "3") == 0.0
    assert v.reward("5-9=-4;#-4", "-4") == 1.0
    assert v.same_answer("12", "12") and v.same_answer(" 12", "12")
    assert not v.same_answer("12", "012")
    assert not v.same_answer("-4", "4")
    assert not v.same_answer("x", "x")  # non-answers never group together


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_operands": 1}, "min_operands"),
        ({"min_operands": 4, "max_operands": 3}, "max_operands"),
        ({"min_value": -1}, "min_value"),
        ({"min_value": 50, "max_value": 20}, "max_value"),
        ({"ops": "*"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"test_size": -1}, "test_size"),
        ({"seed": -3}, "seed"),
        ({"min_operands": "3"}, "min_operands"),
        ({"no_negative": 1}, "no_negative"),
        ({"min_operands": 2, "max_operands": 2, "min_value": 1, "max_value": 5}, "test_size"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(LaserError, match=field):
        ArithConfig(**kwargs)


def test_task_json_round_trip_rebuilds_the_same_split(tmp_path):
    cfg = ArithConfig(min_operands=2, max_operands=4, max_value=50, test_size=200, seed=5)
    save_task(tmp_path, cfg)
    assert load_task_config(tmp_path) == cfg
    assert ArithConfig.from_dict(cfg.to_dict()) == cfg
    a = load_arith("test", model_dir=tmp_path)
    assert [p.problem for p in a.problems] == [p.problem for p in held_out_problems(cfg)]
    assert len(a.problems) == 200
    # explicit fields override the saved task; a folder without task.json gives the defaults
    assert len(load_arith("test", model_dir=tmp_path, test_size=10).problems) == 10
    assert load_task_config(tmp_path / "missing") is None
    (tmp_path / "task.json").write_text('{"name": "arith", "bogus": 1}')
    with pytest.raises(LaserError, match="bogus"):
        load_task_config(tmp_path)
    (tmp_path / "task.json").write_text("{")
    with pytest.raises(LaserError, match="task.json"):
        load_task_config(tmp_path)


def test_registry_and_load_options():
    test = load_task_data("arith")
    assert test.name == "arith:test" and test.prompt_style == "raw" and test.stream is None
    assert [p.problem for p in test.problems] == [p.problem for p in load_task_data("arith:test").problems]
    train = load_task_data("arith:train", config=asdict(ArithConfig(max_operands=3)))
    assert train.problems is None
    assert all(p.meta["n_operands"] == 3 for p in islice(train.stream(0, 0), 50))
    with pytest.raises(LaserError, match="unknown split"):
        load_task_data("arith:dev")
    with pytest.raises(LaserError, match="colour"):
        load_arith("test", colour="red")
    with pytest.raises(LaserError, match="max_operands"):
        load_task_data("arith", max_operands=99)
