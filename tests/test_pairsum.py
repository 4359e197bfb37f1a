"""The pair-sum task: problems, unique answers, SFT data, verifier, splits, registry, `laser base`."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from itertools import islice

import pytest

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.tasks.char_tokenizer import DEFAULT_ALPHABET, build_char_tokenizer
from laser_rl.tasks.embedded import is_embedded_task, load_task_config, save_task
from laser_rl.tasks.pairsum import (
    PairSumConfig,
    PairSumVerifier,
    held_out_problems,
    load_pairsum,
    parse_prompt,
    solution,
    train_problem,
)
from laser_rl.tasks.registry import load_task_data


def test_solution_example_and_unique_pair():
    assert solution("[17,42,9,33,25]50=") == "17+33=50;#17,33"
    cfg = PairSumConfig()
    for p in held_out_problems(cfg)[:300]:
        numbers, target = parse_prompt(p.problem)
        assert cfg.min_numbers <= len(numbers) <= cfg.max_numbers
        assert len(set(numbers)) == len(numbers)
        assert all(cfg.min_value <= v <= cfg.max_value for v in numbers)
        pairs = [(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1 :] if a + b == target]
        assert len(pairs) == 1  # exactly one answer, so voting groups are exact
        sol = solution(p.problem)
        assert sol == f"{pairs[0][0]}+{pairs[0][1]}={target};#{pairs[0][0]},{pairs[0][1]}"
        assert PairSumVerifier().reward(sol, p.answer) == 1.0
        assert len(p.problem) <= cfg.max_prompt_tokens() and len(sol) + 1 <= cfg.max_response_tokens()
    with pytest.raises(LaserError, match="not a pair-sum prompt"):
        solution("1+2=")
    with pytest.raises(LaserError, match="2 pairs"):
        solution("[1,2,3,4]5=")


def test_verifier_is_exact_and_order_free():
    v = PairSumVerifier()
    assert v.reward("17+33=50;#17,33", "17,33") == 1.0
    assert v.reward("33+17=50;#33,17", "17,33") == 1.0  # an unordered pair
    assert v.reward("17+42=59;#17,42", "17,33") == 0.0  # a wrong pair, honestly summed
    assert v.reward("17+33=59;#17,33", "17,33") == 1.0  # the written sum is not graded
    for bad in ("17+33=50;", "#17", "#17,33;", "#017,33", "#17, 33", "#17,33,8", "#"):
        assert v.reward(bad, "17,33") == 0.0, bad
    assert v.extract_answer("#1,2#33,17") == "17,33"  # the last '#' counts
    assert v.same_answer("33,17", "17,33") and not v.same_answer("17,33", "17,34")
    assert not v.same_answer("x", "x")


def test_sft_data_writes_wrong_pairs_honestly_at_the_set_rate():
    cfg = PairSumConfig(sft_wrong_rate=0.3)
    problems = [train_problem(cfg, 0, i) for i in range(1000)]
    targets = [cfg.sft_target(p, random.Random(i)) for i, p in enumerate(problems)]
    wrong = 0
    for p, t in zip(problems, targets):
        numbers, target = parse_prompt(p.problem)
        eq, answer = t.split(";#")
        a, b = (int(x) for x in answer.split(","))
        assert eq == f"{a}+{b}={a + b}"  # the sum is always the true sum of the written pair
        assert a in numbers and b in numbers and numbers.index(a) < numbers.index(b)
        wrong += PairSumVerifier().reward(t, p.answer) == 0.0
        assert "<" not in t  # never the self-reward token
    assert 0.25 < wrong / len(problems) < 0.35
    assert all(cfg.sft_target(p) == solution(p.problem) for p in problems[:50])  # no rng: the solution
    assert all(PairSumConfig(sft_wrong_rate=0.0).sft_target(p, random.Random(1)) == solution(p.problem)
               for p in problems[:50])


def test_check_text_states_whether_the_sum_hits_the_target():
    assert solution("[17,42,9,33,25]50=", check_text=True) == "17+33=50;ok;#17,33"
    cfg = PairSumConfig(check_text=True, sft_wrong_rate=0.5)
    for i in range(300):
        p = train_problem(cfg, 1, i)
        t = cfg.sft_target(p, random.Random(i))
        eq, check, answer = t.split(";")
        a, b = (int(x) for x in answer.removeprefix("#").split(","))
        assert check == ("ok" if a + b == parse_prompt(p.problem)[1] else "no")
        assert (check == "ok") == (PairSumVerifier().reward(t, p.answer) == 1.0)  # the check text is exact
        assert len(t) + 1 <= cfg.max_response_tokens()
    with pytest.raises(LaserError, match="check_text"):
        PairSumConfig(check_text="yes")


def test_splits_are_deterministic_and_disjoint():
    cfg = PairSumConfig(test_size=300)
    test = held_out_problems(cfg)
    assert len({p.problem for p in test}) == 300
    assert [p.problem for p in held_out_problems(PairSumConfig(test_size=300))] == [p.problem for p in test]
    train = [train_problem(cfg, 0, i) for i in range(3000)]
    assert not {p.problem for p in train} & {p.problem for p in test}
    assert train_problem(cfg, 0, 17) == train[17]
    assert held_out_problems(PairSumConfig(seed=1, test_size=300))[0] != test[0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"min_numbers": 2}, "min_numbers"), ({"max_numbers": 4}, "max_numbers"), ({"min_value": -1}, "min_value"),
     ({"max_value": 12}, "value range"), ({"sft_wrong_rate": 1.0}, "sft_wrong_rate"),
     ({"test_size": -1}, "test_size"), ({"max_value": 30, "test_size": 10**6}, "test_size")],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(LaserError, match=field):
        PairSumConfig(**kwargs)


def test_task_json_and_registry(tmp_path):
    cfg = PairSumConfig(min_numbers=4, max_numbers=4, test_size=50, seed=3)
    save_task(tmp_path, cfg)
    assert json.loads((tmp_path / "task.json").read_text())["name"] == "pairsum"
    assert load_task_config(tmp_path) == cfg
    assert PairSumConfig.from_dict(cfg.to_dict()) == cfg
    assert is_embedded_task("pairsum:train") and is_embedded_task("arith") and not is_embedded_task("math500")
    test = load_task_data("pairsum", model_dir=str(tmp_path))
    assert test.name == "pairsum:test" and test.prompt_style == "raw"
    assert [p.problem for p in test.problems] == [p.problem for p in held_out_problems(cfg)]
    train = load_task_data("pairsum:train", config=asdict(PairSumConfig(max_numbers=5)))
    assert all(len(parse_prompt(p.problem)[0]) == 5 for p in islice(train.stream(0, 0), 20))
    with pytest.raises(LaserError, match="unknown split"):
        load_pairsum("dev")
    with pytest.raises(LaserError, match="colour"):
        load_pairsum("test", colour="red")
    with pytest.raises(LaserError, match="not 'arith'|expected 'arith'"):
        load_task_data("arith", model_dir=str(tmp_path))  # a pair-sum model is not an arith model


def test_tokenizer_covers_the_task_and_keeps_arith_ids():
    assert "o" not in PairSumConfig().alphabet and "o" in PairSumConfig(check_text=True).alphabet
    tok = build_char_tokenizer(PairSumConfig(check_text=True).alphabet)
    arith = build_char_tokenizer()
    assert all(tok.convert_tokens_to_ids(c) == arith.convert_tokens_to_ids(c) for c in DEFAULT_ALPHABET)
    p = held_out_problems(PairSumConfig())[0]
    text = p.problem + solution(p.problem)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_laser_base_trains_a_pairsum_model(tmp_path, capsys):
    out = tmp_path / "base"
    tiny = ["--max-steps", "2", "--eval-every", "2", "--eval-problems", "4", "--final-problems", "8", "--quiet",
            "--threads", "1", "--hidden", "32", "--heads", "2", "--layers", "1"]
    assert main(["base", "--out", str(out), "--task", "pairsum", "--min-numbers", "4", "--max-numbers", "5",
                 "--sft-wrong-rate", "0.2", "--check-text", *tiny]) == 0
    assert load_task_config(out) == PairSumConfig(min_numbers=4, max_numbers=5, sft_wrong_rate=0.2, check_text=True)
    assert "," in json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    # `laser eval --data pairsum` reads the task from the model folder (4-5 numbers here, not the default 5-6)
    assert main(["eval", "--model", str(out), "--data", "pairsum", "--n", "2", "--limit", "3", "--out",
                 str(tmp_path / "eval"), "--max-new-tokens", "8"]) == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    expected = held_out_problems(PairSumConfig(min_numbers=4, max_numbers=5, sft_wrong_rate=0.2, check_text=True))
    assert [r["problem"] for r in records] == [p.problem for p in expected[:3]]
    assert main(["base", "--out", str(tmp_path / "bad"), "--task", "pairsum", "--max-numbers", "2", *tiny]) == 2
    assert "--max-numbers" in capsys.readouterr().err
