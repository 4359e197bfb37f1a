"""`laser demo` wiring on a tiny random base model (the real demo is a benchmark, see the README)."""

from __future__ import annotations

import json
import shutil

from laser_rl.cli import main


def test_demo_writes_summary_report_and_plots_and_reuses_finished_phases(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "base")  # reused instead of training a base model
    args = ["demo", "--out", str(out), "--eval-problems", "3", "--eval-n", "8", "train.steps=2",
            "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12", "logging.progress=none",
            "guard.length_collapse_ratio=0", "guard.collapse_ratio=0", "train.save_every=0"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"base", "grpo", "laser", "c_ref", "wall_seconds"}
    for name in ("base", "grpo", "laser"):
        for key in ("accuracy", "pass@8", "maj@8", "weighted_maj@8", "best_of@8", "hm_tpr_tnr", "auroc",
                    "train_seconds", "mean_logprob_auroc", "min_logprob_weighted_maj@8"):
            assert key in summary[name], (name, key)
    assert summary["base"]["train_seconds"] == 0 and summary["laser"]["train_seconds"] > 0
    assert summary["c_ref"] == -6.0
    for f in ("report.md", "accuracy_vs_k.png", "score_histograms.png", "reliability.png", "training_curves.png"):
        assert (out / f).stat().st_size > 0, f
    assert "| laser |" in (out / "report.md").read_text()
    # a second run reuses every finished phase: same training times, same metrics
    assert main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["laser"] == summary["laser"] and again["grpo"] == summary["grpo"]
    assert "reusing the finished run" in capsys.readouterr().err


def test_demo_base_settings_files(tmp_path):
    import inspect

    import pytest

    from laser_rl.demo import demo_config_path, load_base_settings
    from laser_rl.errors import LaserError
    from laser_rl.tasks.arith import ArithConfig
    from laser_rl.tasks.tiny_model import tiny_model_config
    from laser_rl.training.sft import train_base_model

    # the default demo's base settings are exactly `laser base`'s defaults
    settings = load_base_settings(demo_config_path("base"))
    assert settings.pop("task") == ArithConfig()
    shape = inspect.signature(tiny_model_config).parameters
    assert settings.pop("model_kwargs") == {k: shape[k].default for k in ("hidden", "layers", "heads", "intermediate")}
    defaults = inspect.signature(train_base_model).parameters
    assert settings and all(settings[k] == defaults[k].default for k in settings)
    full = load_base_settings(demo_config_path("base", full=True))
    assert full["task"].name == "pairsum" and full["task"].check_text  # the research configuration of issue 18
    clock = load_base_settings(demo_config_path("base", full=True).with_name("base-clock.yaml"))
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
