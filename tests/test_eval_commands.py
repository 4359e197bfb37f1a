"""`laser eval`, `laser score` and the bundled benchmarks, on a tiny random Llama with the char tokenizer."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.score_params import ScoreParams

N = 3
MAX_NEW = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from laser_rl.tasks.arith import ArithConfig, save_task
    from laser_rl.tasks.char_tokenizer import build_char_tokenizer
    from laser_rl.tasks.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden=16, layers=1, heads=2, intermediate=32, max_position=128)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    save_task(folder, ArithConfig(test_size=20))
    ScoreParams(
        token="<z>",
        token_id=tok.convert_tokens_to_ids("<z>"),
        beta_v=0.125,
        c_ref=-3.0,
        extra={"max_new_tokens": MAX_NEW},
    ).save(folder)
    return folder


def _eval(model_dir: Path, out: Path, *extra: str) -> int:
    return main(
        ["eval", "--model", str(model_dir), "--data", "arith", "--n", str(N), "--out", str(out), *extra]
    )


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture()
def count_sampled(monkeypatch):
    """Count the prompts the sampler receives (wraps the real sampler the built-in engine calls)."""
    from laser_rl.rollout import engine

    real = engine.sample
    seen: list[int] = []

    def spy(model, prompts, **kwargs):
        seen.append(len(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(engine, "sample", spy)
    return seen


def test_eval_writes_samples_metrics_and_report(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(model_dir, out, "--limit", "3", "--save-ids", "--batch-size", "4") == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "samples.jsonl",
        "metrics.json",
        "report.md",
        "eval_config.json",
        "accuracy_vs_k.png",
        "score_histograms.png",
        "reliability.png",
    } <= names
    records = [json.loads(line) for line in _lines(out / "samples.jsonl")]
    assert len(records) == 3
    from laser_rl.tasks.arith import ArithConfig, held_out_problems

    expected = held_out_problems(ArithConfig(test_size=20))[:3]
    stop = {1}  # the char tokenizer's <eos>, checked below against the tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert stop == {tok.eos_token_id}
    for rec, prob in zip(records, expected):
        assert rec["problem"] == prob.problem and rec["answer"] == prob.answer
        for key in (
            "responses",
            "pred_answers",
            "acc_list",
            "self_rewarding_scores",
            "finished",
            "mean_logprobs",
            "min_logprobs",
            "response_lengths",
            "response_ids",
        ):
            assert len(rec[key]) == N, key
        for j in range(N):
            ids = rec["response_ids"][j]
            assert len(ids) == rec["response_lengths"][j] <= MAX_NEW
            assert rec["finished"][j] == (ids[-1] in stop)
            assert rec["responses"][j] == tok.decode(
                [i for i in ids if i not in stop], skip_special_tokens=True
            )
            if not rec["finished"][j]:
                assert rec["self_rewarding_scores"][j] == 0.0  # truncated: no score
            assert rec["min_logprobs"][j] <= rec["mean_logprobs"][j] <= 0.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_problems"] == 3 and metrics["num_responses"] == 3 * N
    assert set(metrics["voting"]) == {
        f"{m}@{k}" for m in ("maj", "weighted_maj", "best_of", "pass") for k in (1, 2)
    }
    assert set(metrics["baselines"]) == {"mean_logprob", "min_logprob"}
    report = (out / "report.md").read_text()
    assert "![accuracy_vs_k](accuracy_vs_k.png)" in report and "hm_tpr_tnr" in report
    assert (out / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy" in capsys.readouterr().out

    # `laser score` with the stored ids reproduces the in-loop scores of finished responses.
    scored = tmp_path / "scored.jsonl"
    assert (
        main(
            ["score", "--model", str(model_dir), "--input", str(out / "samples.jsonl"), "--out", str(scored)]
        )
        == 0
    )
    rescored = [json.loads(line) for line in _lines(scored)]
    finished_pairs = [
        (a, b)
        for r, s in zip(records, rescored)
        for a, b, f in zip(r["self_rewarding_scores"], s["self_rewarding_scores"], r["finished"])
        if f
    ]
    assert finished_pairs
    for a, b in finished_pairs:
        assert b == pytest.approx(a, abs=1e-4)
    # the same records with the ids removed: the text is re-tokenised (exact for a char tokenizer)
    stripped = tmp_path / "text_only.jsonl"
    stripped.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if not k.endswith("_ids")}) + "\n" for r in records)
    )
    assert main(["score", "--model", str(model_dir), "--input", str(stripped), "--out", str(scored), "--overwrite"]) == 0
    again = [json.loads(line) for line in _lines(scored)]
    flat = [s for r in again for s in r["self_rewarding_scores"]]
    assert flat == pytest.approx([s for r in rescored for s in r["self_rewarding_scores"]], abs=1e-5)
    # and `laser metrics` recomputes the same metrics from the samples file
    recomputed = tmp_path / "m.json"
    assert main(["metrics", "--input", str(out / "samples.jsonl"), "--out", str(recomputed)]) == 0
    assert json.loads(recomputed.read_text()) == metrics


def test_eval_resumes_without_resampling(model_dir, tmp_path, count_sampled, capsys):
    out = tmp_path / "run"
    assert _eval(model_dir, out, "--limit", "2", "--batch-size", str(2 * N)) == 0
    first = _lines(out / "samples.jsonl")
    assert len(first) == 2 and sum(count_sampled) == 2 * N
    count_sampled.clear()
    assert _eval(model_dir, out, "--limit", "4", "--batch-size", str(2 * N)) == 0
    assert sum(count_sampled) == 2 * N  # only the two new problems were sampled
    lines = _lines(out / "samples.jsonl")
    assert len(lines) == 4 and lines[:2] == first
    assert "2 problems already in" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["num_problems"] == 4

    # an uninterrupted run with the same chunking draws the same samples
    fresh = tmp_path / "fresh"
    assert _eval(model_dir, fresh, "--limit", "4", "--batch-size", str(2 * N)) == 0
    assert _lines(fresh / "samples.jsonl") == lines

    # a crash mid-write leaves a partial last line: it is dropped and sampled again
    with (out / "samples.jsonl").open("a") as f:
        f.write(lines[0][:25])
    count_sampled.clear()
    assert _eval(model_dir, out, "--limit", "5", "--batch-size", str(2 * N)) == 0
    assert sum(count_sampled) == N and len(_lines(out / "samples.jsonl")) == 5

    # nothing left to do: no sampling, metrics over the first --limit problems
    count_sampled.clear()
    assert _eval(model_dir, out, "--limit", "3") == 0
    assert count_sampled == [] and json.loads((out / "metrics.json").read_text())["num_problems"] == 3

    # other settings are refused, not mixed in
    capsys.readouterr()
    assert _eval(model_dir, out, "--limit", "5", "--seed", "1") == 2
    assert "seed: 0 in the folder vs 1 now" in capsys.readouterr().err
    assert len(_lines(out / "samples.jsonl")) == 5


def test_score_params_required_and_overridable(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "laser.json").unlink()
    out = tmp_path / "run"
    assert _eval(bare, out, "--limit", "1") == 2
    err = capsys.readouterr().err
    assert "no score parameters (laser.json)" in err and "--token, --beta-v, --c-ref were not given" in err
    assert not out.exists()
    assert _eval(bare, out, "--limit", "1", "--token", "<z>", "--beta-v", "0.5") == 2
    assert "--c-ref was not given" in capsys.readouterr().err
    assert _eval(bare, out, "--limit", "1", "--token", "<z>", "--beta-v", "0.5", "--c-ref", "-2") == 0
    cfg = json.loads((out / "eval_config.json").read_text())
    assert cfg["score"] == {"token": "<z>", "token_id": 2, "beta_v": 0.5, "c_ref": -2.0}
    assert (
        _eval(bare, tmp_path / "bad", "--limit", "1", "--token", "<eos>", "--beta-v", "0.5", "--c-ref", "-2")
        == 2
    )
    assert "EOS" in capsys.readouterr().err
    # flags override laser.json
    over = tmp_path / "over"
    assert _eval(model_dir, over, "--limit", "1", "--beta-v", "0.25") == 0
    assert json.loads((over / "eval_config.json").read_text())["score"]["beta_v"] == 0.25


def test_laser_json_whose_token_is_another_id_is_refused(model_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    params = ScoreParams.load(moved)
    params.token_id = 3  # the char tokenizer's id 3 is not <z>
    params.save(moved)
    samples = tmp_path / "in.jsonl"
    samples.write_text(json.dumps({"problem": "1+2=", "responses": ["3"]}) + "\n")
    argv = ["score", "--model", str(moved), "--input", str(samples), "--out", str(tmp_path / "s.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "laser.json: token '<z>' has id 3, but the tokenizer's token 3 is" in err and "pass --token" in err
    assert main([*argv, "--token", "<z>"]) == 0  # --token replaces the file's z


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"problem": "1+2=", "answer": "3"}\n{"problem": "2+2=", "answer": \n',
            r"data.jsonl:2: malformed JSON",
        ),
        (
            '{"problem": "1+2=", "answer": "3"}\n\n{"problem": "2+2="}\n',
            r"data.jsonl:3: missing field 'answer'",
        ),
    ],
)
def test_eval_bad_data_exits_2_without_output(model_dir, tmp_path, capsys, content, message):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--n",
            "2",
            "--out",
            str(out),
            "--prompt-style",
            "raw",
        ]
    )
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_eval_on_a_hand_made_jsonl(model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"problem": "1+2=", "answer": "3"}\n{"problem": "20-5=", "answer": 15}\n')
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data",
                str(data),
                "--n",
                "2",
                "--out",
                str(out),
                "--prompt-style",
                "raw",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in _lines(out / "samples.jsonl")]
    assert [r["answer"] for r in records] == ["3", "15"]
    assert json.loads((out / "eval_config.json").read_text())["equivalence"] == "MathVerifier"


def test_score_bad_input_exits_2_without_output(model_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    cases = [
        ('{"problem": "1+2=", "responses": ["3"]}\n{"problem": "1+', r"in.jsonl:2: malformed JSON"),
        ('{"problem": "1+2="}\n', r"in.jsonl:1: missing or empty field 'responses'"),
        ('{"responses": ["3"]}\n', r"in.jsonl:1: missing field 'problem'"),
        (
            '{"problem": "1+2=", "responses": ["3", "4"], "response_ids": [[5]]}\n',
            r"'response_ids' must hold 2",
        ),
        (
            '{"problem": "1+2=", "responses": ["3"], "finished": [1]}\n',
            r"'finished' must be a list of 1 booleans",
        ),
    ]
    for content, message in cases:
        src.write_text(content)
        assert main(["score", "--model", str(model_dir), "--input", str(src), "--out", str(out)]) == 2
        assert re.search(message, capsys.readouterr().err), message
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_score_unfinished_responses_get_zero(model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps(
            {"problem": "1+2=", "answer": "3", "responses": ["1+2=3;#3", "1+2="], "finished": [True, False]}
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(model_dir), "--input", str(src), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["self_rewarding_scores"][1] == 0.0
    assert math.isfinite(rec["self_rewarding_scores"][0]) and rec["self_rewarding_scores"][0] != 0.0
    assert rec["answer"] == "3"  # other fields kept


# --------------------------------------------------------------------------- benchmarks


def test_benchmarks_load_by_name_case_insensitively():
    from laser_rl.tasks.math import BENCHMARKS
    from laser_rl.tasks.registry import load_task_data

    sizes = {"math500": 500, "amc23": 40, "aime24": 30, "aime25": 30, "OlympiadBench": 675}
    assert set(BENCHMARKS) == set(sizes)
    for name, size in sizes.items():
        data = load_task_data(name.upper())
        assert data.name == name and len(data.problems) == size and data.prompt_style == "chat"
        assert all(isinstance(p.answer, str) and p.answer for p in data.problems)
    assert load_task_data("aime25").problems[0].answer == "70"  # an int in the file
    from laser_rl.rewards.math_verifier import MathVerifier

    assert isinstance(load_task_data("amc23").verifier, MathVerifier)


def test_benchmark_folder_from_env_and_clear_errors(tmp_path, monkeypatch):
    from laser_rl.tasks.math import load_benchmark

    (tmp_path / "amc23").mkdir()
    (tmp_path / "amc23" / "test.jsonl").write_text('{"problem": "p", "answer": 3}\n')
    monkeypatch.setenv("LASER_BENCHMARKS_DIR", str(tmp_path))
    data = load_benchmark("AMC23")
    assert [(p.problem, p.answer) for p in data.problems] == [("p", "3")]
    with pytest.raises(LaserError, match=r"benchmark aime24: .*aime24/test.jsonl not found"):
        load_benchmark("aime24")
    monkeypatch.setenv("LASER_BENCHMARKS_DIR", str(tmp_path / "missing"))
    with pytest.raises(LaserError, match=r"from \$LASER_BENCHMARKS_DIR\) not found"):
        load_benchmark("amc23")
    with pytest.raises(LaserError, match="unknown benchmark"):
        load_benchmark("gsm8k", data_dir=tmp_path)
    with pytest.raises(LaserError, match="unknown option"):
        load_benchmark("amc23", data_dir=tmp_path, shuffle=True)
