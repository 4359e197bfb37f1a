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
