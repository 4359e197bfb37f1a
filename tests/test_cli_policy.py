"""CLI behaviour shared by the commands: token errors, cheap checks first, seeding per problem,
the output-folder policy, --dtype spellings and --quiet (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laser_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "laser-arith.yaml")


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


def _token_argv(command: str, model_dir, tmp_path, token: str) -> list[str]:  # noqa: ANN001
    """`laser eval|score|calibrate` with ``--token token``, otherwise valid arguments."""
    samples = tmp_path / "in.jsonl"
    samples.write_text(json.dumps({"problem": "1+2=", "responses": ["3"]}) + "\n")
    common = ["--model", str(model_dir), "--token", token]
    return {
        "eval": ["eval", *common, "--data", "arith", "--n", "1", "--out", str(tmp_path / "ev")],
        "score": ["score", *common, "--input", str(samples), "--out", str(tmp_path / "s.jsonl")],
        "calibrate": ["calibrate", *common, "--data", "arith", "--n", "2"],
    }[command]


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
def test_unknown_token_exits_2_in_eval_score_calibrate(tiny_model_dir, tmp_path, capsys, command, no_model_load):
    rc = main(_token_argv(command, tiny_model_dir, tmp_path, "<nosuch>"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"laser {command}: error: ") and err.count("\n") == 1
    assert "'<nosuch>' is not a single token" in err and "cannot encode" in err


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
def test_ordinary_token_message_names_the_commands_force_option(tiny_model_dir, tmp_path, capsys, command,
                                                                no_model_load):
    rc = main(_token_argv(command, tiny_model_dir, tmp_path, "7"))
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


# ------------------------------------------------------------------ calibrate honours the folder's max_new_tokens


def test_calibrate_uses_the_folders_max_new_tokens(tiny_model_dir, tmp_path, capsys, one_thread):
    import shutil

    from laser_rl.score_params import ScoreParams

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    params = ScoreParams.load(folder)
    ScoreParams(params.token, params.token_id, params.beta_v, params.c_ref, params.c_ref_std,
                dict(params.extra, max_new_tokens=16)).save(folder)
    report = tmp_path / "cal.json"
    # the README's form: no --max-new-tokens (1024 would not fit the tiny model's 256 positions)
    assert main(["calibrate", "--model", str(folder), "--data", "arith", "--n", "12", "--json", str(report),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["max_new_tokens"] == 16
    # the flag wins over the folder
    assert main(["calibrate", "--model", str(folder), "--data", "arith", "--n", "12", "--json", str(report),
                 "--max-new-tokens", "20", "--quiet", "--overwrite"]) == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["max_new_tokens"] == 20


# ------------------------------------------------------------------ output policy: refuse unless --overwrite


def test_eval_refuses_an_unrelated_folder_and_resumes_its_own(tiny_model_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert _eval(tiny_model_dir, out, "--limit", "1") == 2
    assert "--overwrite" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["notes.txt"]
    assert _eval(tiny_model_dir, out, "--limit", "1", "--overwrite") == 0  # replaced: starts over
    assert not (out / "notes.txt").exists() and len(_records(out)) == 1
    assert _eval(tiny_model_dir, out, "--limit", "2") == 0  # its own folder: resumed without --overwrite
    assert len(_records(out)) == 2
    capsys.readouterr()
    assert _eval(tiny_model_dir, out, "--limit", "2", "--seed", "5") == 2  # other settings: refused ...
    assert "--overwrite" in capsys.readouterr().err
    assert _eval(tiny_model_dir, out, "--limit", "1", "--seed", "5", "--overwrite") == 0  # ... or started over
    assert len(_records(out)) == 1 and json.loads((out / "eval_config.json").read_text())["seed"] == 5


def test_train_refuses_a_folder_that_holds_something_else(tiny_model_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, out)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no laser train run (e.g. notes.txt)" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # nothing written, nothing lost
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, afile)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # a run that stopped before its first step (config.yaml only) starts again without --resume
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text("output_dir: x\n")
    assert main(["train", "--config", DEMO_CONFIG, *_train_overrides(tiny_model_dir, stopped)]) == 0
    assert (stopped / "metrics.jsonl").is_file()


def test_score_metrics_calibrate_bench_refuse_an_existing_file(tiny_model_dir, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert _eval(tiny_model_dir, run, "--limit", "2") == 0
    samples = str(run / "samples.jsonl")
    taken = tmp_path / "taken.json"
    taken.write_text("keep")
    commands = {
        "score": ["score", "--model", str(tiny_model_dir), "--input", samples, "--out", str(taken)],
        "metrics": ["metrics", "--input", samples, "--out", str(taken)],
        "calibrate": ["calibrate", "--model", str(tiny_model_dir), "--data", "arith", "--n", "12",
                      "--max-new-tokens", "16", "--quiet", "--json", str(taken)],
        "bench": ["bench", "--out", str(taken), "--reps", "1", "--batch", "2", "--max-new-tokens", "2", "--no-large"],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"{taken}: file exists (pass --overwrite to replace it)" in err, name
        assert taken.read_text() == "keep", name
    for name in ("score", "metrics", "calibrate"):
        assert main([*commands[name], "--overwrite"]) == 0, name
        assert taken.read_text() != "keep"
        taken.write_text("keep")
    # metrics --report into a non-empty folder is refused too
    report = tmp_path / "report"
    report.mkdir()
    (report / "x").write_text("x")
    capsys.readouterr()
    assert main(["metrics", "--input", samples, "--out", str(tmp_path / "m.json"), "--report", str(report)]) == 2
    assert "--report" in capsys.readouterr().err and not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------ --dtype spellings and --quiet


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
def test_dtype_spellings_are_the_same_everywhere(command, tmp_path, capsys):
    from laser_rl.cli import build_parser

    parser = build_parser()
    required = {
        "eval": ["--model", "m", "--data", "arith", "--n", "1", "--out", "o"],
        "score": ["--model", "m", "--input", "i", "--out", "o"],
        "calibrate": ["--model", "m", "--data", "arith"],
    }[command]
    for given, expected in [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"), ("auto", "auto"),
                            ("float32", "float32"), ("BFloat16", "bfloat16"), ("float16", "float16")]:
        assert parser.parse_args([command, *required, "--dtype", given]).dtype == expected
    with pytest.raises(SystemExit) as exit_:
        main([command, *required, "--dtype", "half"])
    assert exit_.value.code == 2
    assert "--dtype: expected one of auto, float32, bfloat16, float16, fp32, bf16, fp16" in capsys.readouterr().err


def test_quiet_calibrate_draws_no_progress_bar(tiny_model_dir, tmp_path, capfd, one_thread):
    from transformers.utils import logging as hf_logging

    try:
        assert main(["calibrate", "--model", str(tiny_model_dir), "--data", "arith", "--n", "12",
                     "--max-new-tokens", "16", "--quiet"]) == 0
        err = capfd.readouterr().err
        assert "\r" not in err and "%|" not in err and "it/s" not in err
        assert not hf_logging.is_progress_bar_enabled()  # transformers' loading bar is off as well
    finally:
        hf_logging.enable_progress_bar()
    # without --quiet, a log (stderr is not a terminal here) gets no carriage-return progress either
    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", "arith", "--n", "12",
                 "--max-new-tokens", "16"]) == 0
    assert "sampled" not in capfd.readouterr().err


def test_quiet_eval_disables_transformers_bars(tiny_model_dir, tmp_path, capfd, one_thread):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        assert _eval(tiny_model_dir, tmp_path / "q", "--limit", "1", "--quiet") == 0
        assert not hf_logging.is_progress_bar_enabled()
        assert "%|" not in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
