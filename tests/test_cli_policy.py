"""CLI behaviour shared by the commands: token errors, cheap checks first, seeding per problem,
the output-folder policy, --dtype spellings and --quiet (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laser_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "laser.yaml")


def _train_overrides(model_dir: Path, out: Path, **extra: object) -> list[str]:
    values = {"model.path": model_dir, "output_dir": out, "train.steps": 1, "train.save_every": 0,
              "train.eval_every": 0, "data.prompts_per_step": 2, "rollout.n": 2, "rollout.max_new_tokens": 8,
              "laser.c_ref": -6.0, "laser.beta_v": 0.5, "logging.progress": "none", "logging.tensorboard": False}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture()
def no_model_load(monkeypatch):
    """Make any model load fail loudly: the checks under test must come before it."""
    from laser_rl.integrations import hf

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the token was checked")

    monkeypatch.setattr(hf, "load_model", refuse)


# ------------------------------------------------------------------ an unknown token: one line, exit 2, no load


def test_train_unknown_token_is_a_one_line_error_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                        no_model_load):
    rc = main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, tmp_path / "r"), "laser.token=<nosuch>"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'<nosuch>' is not a single token" in err and "laser.add_token_if_missing=true" in err
    # an id beyond the model's vocabulary (config.json) is also caught before the load
    rc = main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, tmp_path / "r"), "laser.token=5000"])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the tokenizer's vocabulary" in err


def test_train_used_token_message_names_no_missing_option(tiny_model_dir, tmp_path, capsys, no_model_load):
    rc = main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, tmp_path / "r"), "laser.token=7"])
    err = capsys.readouterr().err
    assert rc == 2 and "ordinary text token" in err
    assert "force" not in err  # train has no such option: the message must not name one


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
def test_unknown_token_exits_2_in_eval_score_calibrate(tiny_model_dir, tmp_path, capsys, command, no_model_load):
    samples = tmp_path / "in.jsonl"
    samples.write_text(json.dumps({"problem": "1+2=", "responses": ["3"]}) + "\n")
    common = ["--model", str(tiny_model_dir), "--token", "<nosuch>"]
    argv = {
        "eval": ["eval", *common, "--data", "arith", "--n", "1", "--out", str(tmp_path / "ev")],
        "score": ["score", *common, "--input", str(samples), "--out", str(tmp_path / "s.jsonl")],
        "calibrate": ["calibrate", *common, "--data", "arith", "--n", "2"],
    }[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"laser {command}: error: ") and err.count("\n") == 1
    assert "'<nosuch>' is not a single token" in err and "cannot encode" in err


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
def test_ordinary_token_message_names_the_commands_force_option(tiny_model_dir, tmp_path, capsys, command,
                                                                no_model_load):
    samples = tmp_path / "in.jsonl"
    samples.write_text(json.dumps({"problem": "1+2=", "responses": ["3"]}) + "\n")
    common = ["--model", str(tiny_model_dir), "--token", "7"]
    argv = {
        "eval": ["eval", *common, "--data", "arith", "--n", "1", "--out", str(tmp_path / "ev")],
        "score": ["score", *common, "--input", str(samples), "--out", str(tmp_path / "s.jsonl")],
        "calibrate": ["calibrate", *common, "--data", "arith", "--n", "2"],
    }[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "ordinary text token" in err and "(or pass --force-token to override)" in err


# ------------------------------------------------------------------ eval samples: seeded per problem


def _eval(model_dir: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--model", str(model_dir), "--data", "arith", "--n", "3", "--out", str(out),
                 "--max-new-tokens", "10", *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _same_samples(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("problem", "responses", "finished", "response_lengths", "acc_list"):
            assert x[key] == y[key], key
        for key in ("self_rewarding_scores", "mean_logprobs"):  # the batch's padding may move the last bits
            assert x[key] == pytest.approx(y[key], abs=1e-5), key


def test_eval_samples_do_not_depend_on_limit_resume_or_batch_size(tiny_model_dir, tmp_path, one_thread):
    grown = tmp_path / "grown"
    assert _eval(tiny_model_dir, grown, "--limit", "4", "--batch-size", "9") == 0
    assert _eval(tiny_model_dir, grown, "--limit", "8", "--batch-size", "9") == 0  # resumes at problem 4
    fresh = tmp_path / "fresh"
    assert _eval(tiny_model_dir, fresh, "--limit", "8", "--batch-size", "9") == 0  # chunks start at 0, 3, 6
    _same_samples(_records(grown), _records(fresh))
    other_batch = tmp_path / "batch"
    assert _eval(tiny_model_dir, other_batch, "--limit", "8", "--batch-size", "5") == 0
    _same_samples(_records(other_batch), _records(fresh))
    assert len({r for rec in _records(fresh) for r in rec["responses"]}) > 8  # really sampled, not constant
