"""The verifier choice (--verifier, data.verifier): exact matching, the registry, and the no-answer warning."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.rewards.exact import ExactVerifier
from laser_rl.rewards.math_verifier import MathVerifier
from laser_rl.rewards.registry import VERIFIER_CHOICES, make_verifier
from laser_rl.tasks.arith import ArithVerifier
from laser_rl.tasks.registry import load_task_data


def test_exact_verifier_final_answer_rule():
    v = ExactVerifier()
    assert v.extract_answer("so the capital is\n  Paris  \n\n") == "Paris"  # last non-empty line
    assert v.extract_answer(r"maybe \boxed{Lyon}; no: \boxed{ Paris }" + "\nthat's it") == "Paris"  # last box
    assert v.extract_answer("  \n ") is None and v.extract_answer(r"\boxed{ }") is None
    assert v.reward("thinking...\nParis", " Paris\n") == 1.0
    assert v.reward("thinking...\nparis", "Paris") == 0.0  # case counts
    assert v.reward("Paris, France", "Paris") == 0.0  # the whole line is the answer
    assert v.same_answer("B", " B ") and not v.same_answer("B", "b")


def test_registry_maps_each_name():
    assert VERIFIER_CHOICES == ("auto", "math", "exact", "arith")
    assert make_verifier("auto") is None
    assert isinstance(make_verifier("math"), MathVerifier)
    assert isinstance(make_verifier("exact"), ExactVerifier)
    assert isinstance(make_verifier("arith"), ArithVerifier)
    with pytest.raises(LaserError, match=r"data\.verifier must be one of auto, math, exact, arith, got 'fuzzy'"):
        make_verifier("fuzzy", where="data.verifier")


def test_load_task_data_applies_the_choice(tmp_path):
    path = tmp_path / "capitals.jsonl"
    path.write_text(json.dumps({"problem": "Capital of France?", "answer": "Paris"}) + "\n")
    assert isinstance(load_task_data(str(path)).verifier, MathVerifier)  # auto: files are maths
    assert isinstance(load_task_data(str(path), verifier="auto").verifier, MathVerifier)
    data = load_task_data(str(path), verifier="exact")
    assert isinstance(data.verifier, ExactVerifier)
    assert data.verifier.reward("I think\nParis", data.problems[0].answer) == 1.0
    assert isinstance(load_task_data("amc23", verifier="exact").verifier, ExactVerifier)
    assert isinstance(load_task_data("arith", verifier="math").verifier, MathVerifier)
    assert isinstance(load_task_data("arith").verifier, ArithVerifier)


def test_config_key_reaches_the_trainers_data(tmp_path):
    from laser_rl.training.config import load_config
    from laser_rl.training.trainer import Trainer

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"q": "Capital of France?", "a": "Paris"}) + "\n")
    base = ["model.path=m", "output_dir=o", f"data.train={path}", "data.problem_key=q", "data.answer_key=a"]
    cfg = load_config(None, [*base, "data.verifier=exact"])
    fake = SimpleNamespace(cfg=cfg, base_path=tmp_path)
    assert isinstance(Trainer._load_data(fake, str(path)).verifier, ExactVerifier)
    assert isinstance(Trainer._load_data(fake, "aime24").verifier, ExactVerifier)
    cfg = load_config(None, base)
    assert cfg.data.verifier == "auto"
    from typing import get_args, get_type_hints

    from laser_rl.training.config import DataConfig

    assert get_args(get_type_hints(DataConfig)["verifier"]) == VERIFIER_CHOICES  # the registry's names
    assert isinstance(Trainer._load_data(SimpleNamespace(cfg=cfg, base_path=tmp_path), str(path)).verifier, MathVerifier)
    with pytest.raises(LaserError, match="data.verifier"):
        load_config(None, [*base, "data.verifier=fuzzy"])


def test_no_answer_warning_threshold():
    from laser_rl.evaluation.runner import no_answer_warning

    def recs(answers):
        return [{"pred_answers": answers}]

    assert no_answer_warning(recs(["1", None]), "MathVerifier") is None  # half: not "most"
    msg = no_answer_warning(recs(["1", None, None]), "MathVerifier")
    assert msg.startswith("2/3 responses (67%) have no answer MathVerifier can extract") and "--verifier" in msg
    assert no_answer_warning([], "MathVerifier") is None


def test_eval_cli_verifier_flag_and_warning(tiny_model_dir: Path, tmp_path, capsys):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(3)))
    common = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--n", "2", "--prompt-style", "raw",
              "--max-new-tokens", "6"]
    # default (math): the char model never writes \boxed{}, so no response has an answer -> warning
    assert main([*common, "--out", str(tmp_path / "math")]) == 0
    err = capsys.readouterr().err
    assert "warning: 6/6 responses (100%) have no answer MathVerifier can extract" in err and "--verifier" in err
    assert json.loads((tmp_path / "math" / "eval_config.json").read_text())["equivalence"] == "MathVerifier"

    out = tmp_path / "exact"
    assert main([*common, "--out", str(out), "--verifier", "exact"]) == 0
    assert json.loads((out / "eval_config.json").read_text())["equivalence"] == "ExactVerifier"
    v = ExactVerifier()
    for rec in map(json.loads, (out / "samples.jsonl").read_text().splitlines()):
        assert rec["pred_answers"] == [v.extract_answer(r) for r in rec["responses"]]
        assert rec["acc_list"] == [v.reward(r, rec["answer"]) for r in rec["responses"]]
    capsys.readouterr()
    # a folder evaluated with one verifier is not resumed with another
    assert main([*common, "--out", str(out), "--verifier", "math"]) == 2
    assert "equivalence" in capsys.readouterr().err
