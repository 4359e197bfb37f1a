"""`laser base --verify-batch`: verification examples in SFT (a trained template for the two-template baseline)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from laser_rl.cli import main
from laser_rl.tasks.char_tokenizer import build_char_tokenizer
from laser_rl.tasks.pairsum import PairSumConfig, solution
from laser_rl.training import sft
from laser_rl.training.sft import verification_batch, verify_examples

TINY = ["--task", "pairsum", "--max-value", "49", "--max-steps", "2", "--eval-every", "2", "--eval-problems", "4",
        "--final-problems", "8", "--batch-size", "8", "--quiet", "--threads", "1"]


def test_verification_batch_trains_on_the_verdict_token_only():
    task = PairSumConfig(max_value=49, sft_wrong_rate=0.6)
    tok = build_char_tokenizer(task.alphabet + "?yn")
    problems, responses, labels = verify_examples(task, seed=0, first=0, count=16)
    assert any(labels) and not all(labels)  # right and honestly wrong responses both appear
    for p, r, ok in zip(problems, responses, labels):
        assert ok == (r == solution(p.problem))  # the label is the verifier's
    input_ids, attention_mask, loss_mask = verification_batch(tok, problems, responses, labels, "?", ("y", "n"))
    for b, (p, r, ok) in enumerate(zip(problems, responses, labels)):
        n = int(attention_mask[b].sum())
        assert tok.decode(input_ids[b, :n]) == p.problem + r + "?" + ("y" if ok else "n")  # no EOS
        predicted = input_ids[b, 1:][loss_mask[b, :-1]]
        assert tok.decode(predicted) == ("y" if ok else "n")
        assert int(loss_mask[b].sum()) == 1


def test_verify_examples_are_a_function_of_seed_and_position():
    task = PairSumConfig(max_value=49, sft_wrong_rate=0.6)
    a = verify_examples(task, seed=3, first=10, count=6)
    assert verify_examples(task, seed=3, first=10, count=6) == a
    assert verify_examples(task, seed=3, first=12, count=4)[1] == a[1][2:]
    assert verify_examples(task, seed=4, first=10, count=6)[0] != a[0]


def test_laser_base_learns_the_template_and_records_it(tmp_path, monkeypatch):
    calls = []
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    out = tmp_path / "v"
    assert main(["base", "--out", str(out), *TINY, "--verify-batch", "4", "--verify-template", "?",
                 "--verify-words", "y,n"]) == 0
    assert calls == [8, 4, 8, 4]  # each step: the SFT batch, then the verification batch
    tok = AutoTokenizer.from_pretrained(out)
    assert all(c in tok.get_vocab() for c in "?yn")  # characters the task lacks join the alphabet
    extra = json.loads((out / "laser.json").read_text())["extra"]
    assert (extra["verify_template"], extra["verify_words"], extra["verify_batch"]) == ("?", ["y", "n"], 4)


def test_default_base_is_plain_sft(tmp_path, monkeypatch):
    calls = []
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    out = tmp_path / "plain"
    assert main(["base", "--out", str(out), *TINY]) == 0
    assert calls == [8, 8]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(build_char_tokenizer(PairSumConfig().alphabet))
    assert not any(k.startswith("verify") for k in json.loads((out / "laser.json").read_text())["extra"])


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--verify-batch", "2"], "--verify-template"),
        (["--verify-batch", "-1"], "--verify-batch"),
        (["--verify-batch", "2", "--verify-template", "?", "--verify-words", "y"], "--verify-words"),
        (["--verify-batch", "2", "--verify-template", "?", "--verify-words", "yy,n"], "--verify-words"),
        (["--verify-batch", "2", "--verify-template", "?", "--verify-words", "y,y"], "--verify-words"),
        (["--verify-batch", "2", "--verify-template", "?", "--verify-words", "<,n"], "--verify-words"),
        (["--verify-batch", "2", "--verify-template", "a b"], "--verify-template"),
    ],
)
def test_bad_verify_settings_exit_2_before_any_work(tmp_path, capsys, flags, named):
    out = tmp_path / "base"
    assert main(["base", "--out", str(out), *TINY, *flags]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_verify_setup_base_config_matches_train_base_model():
    """base-pairsum-verify.yaml's SFT keys are train_base_model parameters, and `laser base` flags name them."""
    import inspect

    import yaml

    from laser_rl.demo import demo_config_path

    data = yaml.safe_load(demo_config_path("base", "pairsum-verify").read_text())
    params = inspect.signature(sft.train_base_model).parameters
    assert {k for k in data if k not in ("task", "model")} <= set(params)
    assert data["task"]["check_text"] is False and data["verify_batch"] > 0
    assert (data["verify_template"], tuple(data["verify_words"])) == ("=", ("1", "0"))
    nocheck = yaml.safe_load(demo_config_path("base", "pairsum-nocheck").read_text())
    assert {k: v for k, v in data.items() if not k.startswith("verify")} == nocheck  # only the template differs


@pytest.mark.parametrize("setup", ["pairsum-nocheck", "pairsum-verify"])
@pytest.mark.parametrize("arm", ["grpo", "laser"])
def test_no_verdict_setups_train_like_the_check_word_setup(setup, arm):
    import yaml

    from laser_rl.demo import demo_config_path

    mine, default = (yaml.safe_load(demo_config_path(arm, name).read_text()) for name in (setup, "pairsum"))
    if setup == "pairsum-verify":  # 300 RL steps instead of 200 (round 6: the score forms on both base seeds)
        assert (mine["train"].pop("steps"), default["train"].pop("steps")) == (300, 200)
    assert mine == default
