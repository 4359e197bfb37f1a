"""Issue 25: `laser demo` faster with the same numbers: the shipped base model, both cores (--jobs), timing."""

from __future__ import annotations

import json
import shutil

import pytest

from laser_rl.cli import main
from test_demo import DEMO_ARGS


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def test_jobs_2_trains_and_evaluates_exactly_as_jobs_1(tmp_path, capfd):
    """The two arms and the three evaluations in worker processes give the sequential run's results."""
    from conftest import make_tiny_model_dir
    from laser_rl.io import read_jsonl
    from laser_rl.tasks.pairsum import PairSumConfig

    base = make_tiny_model_dir(tmp_path / "tiny", task=PairSumConfig(check_text=True, test_size=40))
    outs = {}
    for jobs in (1, 2):
        out = outs[jobs] = tmp_path / f"jobs{jobs}"
        shutil.copytree(base, out / "base")  # a random base reused: no SFT here
        assert main(["demo", "--out", str(out), "--jobs", str(jobs), *DEMO_ARGS]) == 0
    assert "running 5 tasks on 2 one-thread processes" in capfd.readouterr().err
    for name in ("grpo", "laser"):
        one, two = (_without_times(read_jsonl(outs[j] / name / "metrics.jsonl")) for j in (1, 2))
        assert len(one) == 2 and one == two, name
        assert (outs[1] / name / "final" / "model.safetensors").read_bytes() == \
            (outs[2] / name / "final" / "model.safetensors").read_bytes()
    for name in ("base", "grpo", "laser"):
        one, two = ((outs[j] / "eval" / name / "samples.jsonl").read_text() for j in (1, 2))
        assert one == two, name
    s1, s2 = (json.loads((outs[j] / "summary.json").read_text()) for j in (1, 2))
    for name in ("base", "grpo", "laser"):
        assert {k: v for k, v in s1[name].items() if k != "train_seconds"} == \
            {k: v for k, v in s2[name].items() if k != "train_seconds"}
    # wall time per phase, in summary.json and report.md
    for s in (s1, s2):
        phases = s["phase_seconds"]
        assert set(phases) == {"base", "train", "eval", "report", "tasks"}
        assert set(phases["tasks"]) == {"train grpo", "train laser", "eval base", "eval grpo", "eval laser"}
        assert all(v >= 0 for v in phases["tasks"].values()) and phases["train"] > 0
    assert json.loads((outs[2] / "run_info.json").read_text())["jobs"] == 2
    report = (outs[2] / "report.md").read_text()
    assert "Wall time per phase (2 job(s), 1 thread(s) each): base" in report and "train laser" in report


def test_run_tasks_orders_by_needs_and_reports_errors():
    from laser_rl.demo import Task, run_tasks
    from laser_rl.errors import LaserError

    tasks = [Task("a", pow, (2, 3)), Task("b", divmod, (7, 2), ("a",)), Task("c", abs, (-4,))]
    for jobs in (1, 2):
        done = run_tasks(tasks, jobs, threads=1)
        assert {k: v[0] for k, v in done.items()} == {"a": 8, "b": (3, 1), "c": 4}
        assert done["b"][1] >= done["a"][2]  # b started after a ended
    with pytest.raises(ZeroDivisionError):
        run_tasks([Task("x", divmod, (1, 0))], 2, threads=1)
    with pytest.raises(LaserError, match="never run: y"):
        run_tasks([Task("y", abs, (1,), ("nope",))], 2, threads=1)
    with pytest.raises(LaserError, match="--jobs: must be a positive integer"):
        from laser_rl.demo import run_demo

        run_demo("unused", jobs=0)
