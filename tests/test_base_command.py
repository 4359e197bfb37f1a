"""`laser base` end to end with tiny step caps: saved folder, refusals, bad settings, stopping rule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from laser_rl.cli import main
from laser_rl.score_params import ScoreParams
from laser_rl.tasks.arith import ArithConfig, load_arith, load_task_config, solution
from laser_rl.training import sft
from laser_rl.training.sft import sft_batch, train_base_model

TINY = ["--max-steps", "3", "--eval-every", "2", "--eval-problems", "8", "--final-problems", "16", "--quiet", "--threads", "1"]


def test_laser_base_writes_a_loadable_model_folder(tmp_path, capsys):
    out = tmp_path / "base"
    out.mkdir()
    (out / "stale.txt").write_text("old")  # replaced thanks to --overwrite
    rc = main(["base", "--out", str(out), "--overwrite", "--min-operands", "2", "--max-operands", "3", *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "c_ref" in printed and "beta_v" in printed
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert not model.config.tie_word_embeddings
    ids = torch.tensor([tok("12+34=", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))

    params = ScoreParams.load(out)
    assert params is not None and params.token == "<z>"
    assert params.token_id == tok.convert_tokens_to_ids("<z>")
    assert params.token_id not in (tok.eos_token_id, tok.pad_token_id)
    assert params.beta_v > 0 and math.isfinite(params.c_ref) and params.c_ref < 0 and params.c_ref_std >= 0
    assert params.extra["stop_ids"] == [tok.eos_token_id]
    assert 0.0 <= params.extra["base_accuracy"] <= 1.0
    assert params.extra["sft_steps"] == 3

    task = load_task_config(out)
    assert task == ArithConfig(min_operands=2, max_operands=3)
    assert json.loads((out / "task.json").read_text())["name"] == "arith"
    test = load_arith("test", model_dir=out)
    assert all(p.meta["n_operands"] in (2, 3) for p in test.problems)


def test_config_file_sets_the_base_and_flags_override_it(tmp_path, capsys):
    from laser_rl.tasks.embedded import load_task_config
    from laser_rl.tasks.pairsum import PairSumConfig

    # the default demo's base, by its shipped name, with the step caps and one task field overridden
    out = tmp_path / "pairsum"
    small = ["--hidden", "16", "--heads", "2", "--intermediate", "32"]
    assert main(["base", "--out", str(out), "--config", "demo/base-pairsum.yaml", "--max-value", "40", *small, *TINY]) == 0
    assert load_task_config(out) == PairSumConfig(max_value=40, sft_wrong_rate=0.6, check_text=True)
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.hidden_size, config.num_hidden_layers) == (16, 4)  # --hidden given, layers from the file
    # a task field that has no flag (ops) comes from the file too
    custom = tmp_path / "mine.yaml"
    custom.write_text("task: {min_operands: 2, max_operands: 3, ops: '+'}\nmodel: {hidden: 16, heads: 2, layers: 1}\n")
    out = tmp_path / "plus"
    assert main(["base", "--out", str(out), "--config", str(custom), *TINY]) == 0
    assert load_task_config(out) == ArithConfig(min_operands=2, max_operands=3, ops="+")
    assert main(["base", "--out", str(tmp_path / "x"), "--config", "demo/nope.yaml", *TINY]) == 2
    err = capsys.readouterr().err
    assert "demo/nope.yaml: config file not found" in err and "demo/base-pairsum.yaml" in err


def test_verify_config_file_and_a_template_after_the_stop_token(tmp_path):
    """demo/base-pairsum-verify.yaml's verify_words list reaches SFT; '<eos>=' asks for the verdict after EOS."""
    from laser_rl.tasks.char_tokenizer import EOS_TOKEN
    from laser_rl.tasks.pairsum import PairSumConfig

    out = tmp_path / "verify"
    small = ["--hidden", "16", "--heads", "2", "--intermediate", "32", "--verify-batch", "4"]
    assert main(["base", "--out", str(out), "--config", "demo/base-pairsum-verify.yaml", "--verify-template",
                 f"{EOS_TOKEN}=", *small, *TINY]) == 0
    extra = ScoreParams.load(out).extra
    assert (extra["verify_template"], extra["verify_words"]) == (f"{EOS_TOKEN}=", ["1", "0"])
    tok = AutoTokenizer.from_pretrained(out)
    assert not {"<", "e", "o", "s", ">"} & set(tok.get_vocab())  # the stop token's text added no characters
    ids, _, loss_mask = sft.verification_batch(tok, [PairSumConfig().train_problem(0, 0)], ["10+12=22;#10,12"],
                                               [False], f"{EOS_TOKEN}=", ("1", "0"))
    row = ids[0].tolist()
    at = loss_mask[0].nonzero().item()  # the template's last token, whose next token is the verdict
    assert row[at - 1] == tok.eos_token_id and tok.convert_ids_to_tokens(row[at:at + 2]) == ["=", "0"]


def test_model_shape_flags_build_that_model(tmp_path):
    out = tmp_path / "base"
    flags = ["--hidden", "32", "--layers", "2", "--heads", "2", "--min-operands", "2", "--max-operands", "2"]
    assert main(["base", "--out", str(out), *flags, *TINY]) == 0
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert config.intermediate_size == 96  # 3 x hidden by default


def test_refuses_a_non_empty_out_folder(tmp_path, capsys):
    out = tmp_path / "base"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["base", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["base", "--out", str(tmp_path / "file"), *TINY]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--min-operands", "5", "--max-operands", "3"], "--max-operands"),
        (["--min-operands", "1"], "--min-operands"),
        (["--min-value", "-1"], "--min-value"),
        (["--min-value", "50", "--max-value", "20"], "--max-value"),
        (["--min-operands", "2", "--max-operands", "2", "--min-value", "1", "--max-value", "9"], "test_size"),
        (["--lr", "0"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--target-accuracy", "1.5"], "--target-accuracy"),
        (["--max-steps", "0"], "--max-steps"),
        (["--threads", "0"], "--threads"),
        (["--hidden", "0"], "--hidden"),
        (["--layers", "0"], "--layers"),
        (["--hidden", "64", "--heads", "3"], "--heads"),
        (["--hidden", "36", "--heads", "4"], "--heads"),  # head size 9 is odd
    ],
)
def test_bad_settings_exit_2_before_any_work(tmp_path, capsys, flags, named):
    out = tmp_path / "base"
    assert main(["base", "--out", str(out), *TINY, *flags]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_sft_batch_trains_on_response_and_eos_only():
    from laser_rl.tasks.arith import train_problem
    from laser_rl.tasks.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    problems = [train_problem(ArithConfig(), 0, i) for i in range(4)]
    input_ids, attention_mask, loss_mask = sft_batch(tok, problems)
    for b, p in enumerate(problems):
        n = int(attention_mask[b].sum())
        assert tok.decode(input_ids[b, :n]) == p.problem + solution(p.problem) + "<eos>"
        # predicted tokens = the tokens one position after the loss mask
        predicted = input_ids[b, 1:][loss_mask[b, :-1]]
        assert tok.decode(predicted) == solution(p.problem) + "<eos>"
        assert not loss_mask[b, n - 1 :].any()


def test_stops_on_accuracy_and_learns(tmp_path, monkeypatch):
    """The loss falls, and training stops at the first evaluation that reaches the target."""
    real = sft.measure
    calls = []

    def fake_measure(model, tokenizer, problems, **kw):
        m = real(model, tokenizer, problems[:4], **kw)
        if kw.get("z_id") is None:  # an in-training evaluation: pretend the 2nd one reaches the target
            calls.append(len(problems))
            m.accuracy = 0.5 if len(calls) == 2 else 0.1
        return m

    monkeypatch.setattr(sft, "measure", fake_measure)
    kw = dict(
        seed=1,
        max_steps=200,
        batch_size=32,
        eval_every=10,
        eval_problems=8,
        final_problems=8,
        progress=False,
        log=lambda _msg: None,
    )
    result = train_base_model(tmp_path / "a", **kw)
    assert result["steps"] == 20 and result["reached_target"] and result["stop_accuracy"] == 0.5
    (s1, _, loss1), (s2, _, loss2) = result["history"]
    assert (s1, s2) == (10, 20) and loss2 < loss1
    # same seed, same result: identical weights
    calls.clear()
    again = train_base_model(tmp_path / "b", **kw)
    assert again["steps"] == 20
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
