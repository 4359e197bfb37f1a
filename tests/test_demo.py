"""`laser demo` wiring on a tiny random base model (the real demo is a benchmark, see the README)."""

from __future__ import annotations

import json
import shutil

import pytest

from laser_rl.cli import main

DEMO_ARGS = ["--eval-problems", "3", "--eval-n", "8", "train.steps=2", "data.prompts_per_step=4", "rollout.n=4",
             "rollout.max_new_tokens=12", "logging.progress=none", "guard.length_collapse_ratio=0",
             "guard.collapse_ratio=0", "train.save_every=0"]


def test_demo_writes_summary_report_and_plots_and_reuses_finished_phases(tmp_path, capsys):
    from conftest import make_tiny_model_dir
    from laser_rl.tasks.pairsum import PairSumConfig

    out = tmp_path / "demo"
    # a random pair-sum base, reused instead of training one: the default setup runs on it
    make_tiny_model_dir(out / "base", task=PairSumConfig(check_text=True, test_size=40))
    args = ["demo", "--out", str(out), "--setup", "pairsum", *DEMO_ARGS]  # the setup whose responses write a verdict
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"base", "grpo", "laser", "c_ref", "phase_seconds", "wall_seconds"}
    for name in ("base", "grpo", "laser"):
        for key in ("accuracy", "pass@8", "maj@8", "weighted_maj@8", "best_of@8", "hm_tpr_tnr", "auroc",
                    "train_seconds", "mean_logprob_auroc", "min_logprob_weighted_maj@8", "verdict_auroc",
                    "verdict_within_problem_auroc", "verdict_hm_tpr_tnr", "verdict_weighted_maj@8", "verdict_best_of@8"):
            assert key in summary[name], (name, key)
    # the verdict baseline is in each model's eval metrics too (pair-sum responses may write ;ok;/;no;)
    assert "verdict" in json.loads((out / "eval" / "grpo" / "metrics.json").read_text())["baselines"]
    assert summary["base"]["train_seconds"] == 0 and summary["laser"]["train_seconds"] > 0
    assert summary["c_ref"] == -6.0
    info = json.loads((out / "run_info.json").read_text())
    assert info["setup"] == "pairsum" and info["eval"]["data"] == "pairsum"
    samples = (out / "eval" / "laser" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 and json.loads(samples[0])["problem"].startswith("[")  # pair-sum prompts
    for f in ("report.md", "accuracy_vs_k.png", "score_histograms.png", "reliability.png", "training_curves.png"):
        assert (out / f).stat().st_size > 0, f
    report = (out / "report.md").read_text()
    assert "| laser |" in report
    # the conclusions are computed from this run's numbers
    acc = summary["laser"]["accuracy"] * 100
    assert f"LaSeR {acc:.1f} (LaSeR − GRPO" in report
    # the verdict row shows when some response wrote a verdict (a random model may write none)
    assert ("| grpo | written verdict |" in report) == (summary["grpo"]["verdict_coverage"] > 0)
    assert "the best free vote" in report
    # a second run reuses every finished phase: same training times, same metrics
    assert main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["laser"] == summary["laser"] and again["grpo"] == summary["grpo"]
    assert "reusing the finished run" in capsys.readouterr().err


def test_demo_refuses_a_base_of_another_task_and_unknown_setups(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "base")  # an arith base in the default (pair-sum) setup's folder
    assert main(["demo", "--out", str(out), *DEMO_ARGS]) == 2
    err = capsys.readouterr().err
    assert "holds a base model for the arith task, but --setup pairsum-verify trains on pairsum" in err
    assert not (out / "grpo").exists()  # refused before any training
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(out), "--setup", "nope"])
    assert main(["demo", "--out", str(out), "--full", "--setup", "arith"]) == 2
    assert "--full is the pairsum setup" in capsys.readouterr().err


def test_demo_arith_setup_runs_on_an_arith_base(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "base")
    assert main(["demo", "--out", str(out), "--setup", "arith", *DEMO_ARGS]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["setup"] == "arith" and info["eval"]["data"] == "arith"


def test_demo_base_settings_files(tmp_path):
    import inspect

    import pytest

    from laser_rl.demo import demo_config_path, load_base_settings
    from laser_rl.errors import LaserError
    from laser_rl.tasks.arith import ArithConfig
    from laser_rl.tasks.tiny_model import tiny_model_config
    from laser_rl.training.sft import train_base_model

    # the arith setup's base settings are exactly `laser base`'s defaults
    settings = load_base_settings(demo_config_path("base", "arith"))
    assert settings.pop("task") == ArithConfig()
    shape = inspect.signature(tiny_model_config).parameters
    assert settings.pop("model_kwargs") == {k: shape[k].default for k in ("hidden", "layers", "heads", "intermediate")}
    defaults = inspect.signature(train_base_model).parameters
    assert settings and all(settings[k] == defaults[k].default for k in settings)
    default = load_base_settings(demo_config_path("base"))
    # issue 24's default: pair-sum responses that write no verdict, a base that learned a verification template
    assert default["task"].name == "pairsum" and not default["task"].check_text
    assert (default["verify_batch"], default["verify_template"], default["verify_words"]) == (64, "=", ["1", "0"])
    checked = load_base_settings(demo_config_path("base", "pairsum"))
    assert checked["task"].check_text and "verify_batch" not in checked  # issue 18's research configuration
    clock = load_base_settings(demo_config_path("base", "clock"))
    assert clock["task"].modulus > 0  # rounds 2-3's clock arithmetic, kept for reproduction

    bad = tmp_path / "base.yaml"
    bad.write_text("task:\n  min_operands: 3\n  modulo: 10\n")
    with pytest.raises(LaserError, match=r"base\.yaml: task: unknown field\(s\) modulo"):
        load_base_settings(bad)
    bad.write_text("model:\n  hidden: 0\n")
    with pytest.raises(LaserError, match=r"base\.yaml: model\.hidden: must be a positive integer"):
        load_base_settings(bad)
    bad.write_text("lr: 1e-3\nsteps: 5\n")
    with pytest.raises(LaserError, match="unknown key 'steps'"):
        load_base_settings(bad)


def _summary_entry(**values):
    """A summary.json model entry with likelihood baselines; ``values`` override or add keys."""
    entry = {"accuracy": 0.2, "maj@8": 0.25, "weighted_maj@8": 0.5, "best_of@8": 0.5, "hm_tpr_tnr": 0.9, "auroc": 0.95,
             "within_problem_auroc": 0.95, "mean_logprob_within_problem_auroc": 0.6, "mean_logprob_weighted_maj@8": 0.26,
             "min_logprob_within_problem_auroc": 0.55, "min_logprob_weighted_maj@8": 0.24}
    return {**entry, **values}


def test_findings_compare_the_score_with_the_written_verdict_on_grpo_and_laser():
    from laser_rl.demo import findings

    # issue 24's seed B: the verdict on the GRPO model votes as well as LaSeR's score: no "beats"
    laser = {"weighted_maj@8": 0.649, "verdict_auroc": 0.96, "verdict_within_problem_auroc": 0.95,
             "verdict_weighted_maj@8": 0.645}
    grpo = {"auroc": 0.49, "verdict_auroc": 0.97, "verdict_within_problem_auroc": 0.96, "verdict_weighted_maj@8": 0.649}
    summary = {"base": _summary_entry(), "laser": _summary_entry(**laser), "grpo": _summary_entry(**grpo)}
    text = "\n".join(findings(summary))
    assert "the LaSeR score (95.0) does not beat the best free signal: written verdict on the LaSeR model (95.0), " \
           "written verdict on the GRPO model (96.0)" in text
    assert "LaSeR's score-weighted maj@8 (64.9) does not beat the best free vote, written verdict-weighted maj@8 on " \
           "the GRPO model (64.9, +0.0)" in text
    assert "The written verdict (each response's own check word, free and untrained) reaches AUROC 97.0 on the GRPO" in text
    # no verdict written (check_text off): the likelihood baselines are the best free signals, and z beats them
    for name in ("laser", "grpo"):
        summary[name] = {k: v for k, v in summary[name].items() if not k.startswith("verdict_")}
    text = "\n".join(findings(summary))
    assert "the LaSeR score (95.0) beats the best free signal: mean token log-prob on the LaSeR model (60.0)" in text
    assert "score-weighted maj@8 (64.9) beats the best free vote, mean token log-prob-weighted maj@8 on the GRPO" in text
    assert "written verdict" not in text


def test_demo_runs_the_two_template_baseline_when_the_base_learned_a_verification_template(tmp_path):
    from conftest import make_tiny_model_dir
    from laser_rl.score_params import ScoreParams
    from laser_rl.tasks.pairsum import PairSumConfig

    out = tmp_path / "demo"
    base = make_tiny_model_dir(out / "base", task=PairSumConfig(check_text=False, test_size=40))
    params = ScoreParams.load(base)
    params.extra.update(verify_template="=", verify_words=["1", "0"], verify_batch=64)  # as `laser base --verify-batch`
    params.save(base)
    assert main(["demo", "--out", str(out), "--setup", "pairsum-verify", *DEMO_ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("base", "grpo", "laser"):
        entry = summary[name]
        for key in ("self_verify_auroc", "self_verify_within_problem_auroc", "self_verify_weighted_maj@8"):
            assert key in entry, (name, key)
        # x + y + "=" read in a second pass (prompt ≥ 10 characters), one decode token; z costs 1 in all
        assert entry["self_verify_tokens_per_response"] > 10
    metrics = json.loads((out / "eval" / "laser" / "metrics.json").read_text())
    assert metrics["baselines"]["self_verify"]["cost"]["decode_tokens_per_response"] == 1
    report = (out / "report.md").read_text()
    assert "| laser | second pass, learned template (not free, " in report
    assert "Against a second verification pass (the two-template baseline" in report


def test_two_template_findings_compare_quality_and_tokens():
    from laser_rl.demo import two_template_findings

    grpo = {"self_verify_auroc": 0.98, "self_verify_weighted_maj@8": 0.7, "self_verify_tokens_per_response": 38.0}
    laser = {"self_verify_auroc": 0.97, "self_verify_weighted_maj@8": 0.69, "self_verify_tokens_per_response": 37.0}
    summary = {"base": _summary_entry(), "grpo": _summary_entry(**grpo), "laser": _summary_entry(**laser)}
    (line,) = two_template_findings(summary)
    assert "its AUROC is 98.0 on the GRPO model and 97.0 on the LaSeR model; LaSeR's score 95.0 (-3.0 vs the " \
           "better pass, on the GRPO model)" in line
    assert "The pass costs 37.5 tokens per verified response against the score's 1." in line
    summary["grpo"]["self_verify_auroc"] = summary["laser"]["self_verify_auroc"] = None  # every response wrong
    assert "its AUROC is n/a on the GRPO model and n/a on the LaSeR model; LaSeR's score 95.0 (n/a vs the better " \
           "pass, on the n/a model)" in two_template_findings(summary)[0]
    del summary["grpo"]["self_verify_auroc"], summary["laser"]["self_verify_auroc"]
    assert two_template_findings(summary) == []


def test_a_verdict_no_response_writes_is_no_free_signal():
    from laser_rl.demo import best_free_signal, best_free_vote, findings, render_summary_table

    # --setup pairsum-verify: coverage 0, so its 0.5 AUROC and plain-majority vote are not a baseline
    none = {"verdict_auroc": 0.5, "verdict_within_problem_auroc": 0.5, "verdict_weighted_maj@8": 0.9,
            "verdict_coverage": 0.0}
    summary = {name: _summary_entry(**none, **{"pass@8": 0.6, "ece": 0.1, "train_seconds": 1.0})
               for name in ("base", "grpo", "laser")}
    summary["grpo"]["mean_logprob_within_problem_auroc"] = 0.4  # below the verdict's 0.5
    assert best_free_signal(summary["grpo"], "within_problem_auroc") == ("min_logprob", 0.55)
    assert best_free_vote(summary["grpo"]) == ("mean token log-prob-weighted maj@8", 0.26)
    assert "written verdict" not in "\n".join(findings(summary)) + render_summary_table(summary)
    summary["grpo"]["verdict_coverage"] = 0.3  # some responses write one: it counts again
    assert best_free_vote(summary["grpo"]) == ("written verdict-weighted maj@8", 0.9)
    assert "| grpo | written verdict |" in render_summary_table(summary)
