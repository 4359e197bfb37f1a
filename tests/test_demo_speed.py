"""Issue 25: `laser demo` faster with the same numbers: the shipped base model, both cores (--jobs), timing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    assert "running 5 tasks, up to 2 at a time, each in a one-thread process" in capfd.readouterr().err
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
    from laser_rl.errors import LaserError
    from laser_rl.jobs import Task, run_tasks

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


def test_shipped_base_loads_matches_its_config_and_the_demo_starts_from_it(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser_rl.demo import (
        BUILD_FILE,
        DEFAULT_SETUP,
        base_build_record,
        demo_config_path,
        load_base_settings,
        shipped_base,
        shipped_base_dir,
    )
    from laser_rl.score_params import ScoreParams
    from laser_rl.tasks.embedded import load_task_config

    settings = load_base_settings(demo_config_path("base"))
    folder = shipped_base_dir(DEFAULT_SETUP)
    # built from today's config with the demo's seed on one thread (scripts/check_shipped_base.py rebuilds it)
    assert json.loads((folder / BUILD_FILE).read_text()) == base_build_record(DEFAULT_SETUP, 0, settings)
    assert shipped_base(DEFAULT_SETUP, 0, settings) == (folder, "")
    assert load_task_config(folder) == settings["task"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    c, shape = model.config, settings["model_kwargs"]
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == \
        (shape["hidden"], shape["layers"], shape["heads"], shape["intermediate"])
    params = ScoreParams.load(folder)
    assert params.extra["sft_seed"] == 0 and params.extra["sft_steps"] <= settings["max_steps"] and params.c_ref < -4
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer("[17,42,9,33,25]50=", add_special_tokens=False)["input_ids"]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    # every base that ships (the default's and the check-word setup's) is its config's, seed 0, one thread
    from laser_rl.demo import BASES_DIR

    shipped = sorted(p.name for p in BASES_DIR.iterdir() if (p / BUILD_FILE).is_file())
    assert {DEFAULT_SETUP, "pairsum"} <= set(shipped)
    for setup in shipped:
        setup_settings = load_base_settings(demo_config_path("base", setup))
        assert shipped_base(setup, 0, setup_settings) == (shipped_base_dir(setup), ""), setup
    # another seed or changed settings: the shipped base is not theirs
    assert shipped_base(DEFAULT_SETUP, 1, settings)[1] == "the shipped base was built with seed 0, not --seed 1"
    assert "differs from what the shipped base was built from" in shipped_base(DEFAULT_SETUP, 0, {**settings, "lr": 1.0})[1]

    # the demo copies it (no SFT), says so in run_info.json and report.md, and refuses to "rebuild" over it
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--jobs", "1", *DEMO_ARGS]) == 0
    assert "base: copying the shipped base model" in capsys.readouterr().err
    assert (out / "base" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    info = json.loads((out / "run_info.json").read_text())
    assert info["base"]["source"] == "shipped" and info["base"]["seed"] == 0
    assert f"Base model: copied from the package (configs/demo/bases/{DEFAULT_SETUP}), the output of `laser base " \
        f"--config demo/base-{DEFAULT_SETUP}.yaml --seed 0 --threads 1 --out DIR`" in (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["c_ref"] == params.c_ref and summary["phase_seconds"]["base"] < 20
    assert main(["demo", "--out", str(out), "--rebuild-base", *DEMO_ARGS]) == 2
    assert "already holds the shipped base model" in capsys.readouterr().err


def test_rebuild_base_trains_it_and_records_how(tmp_path):
    from laser_rl.demo import BUILD_FILE, run_demo

    out = tmp_path / "demo"
    tiny = {"max_steps": 2, "eval_every": 1, "eval_problems": 4, "final_problems": 8,
            "model_kwargs": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}}
    run_demo(out, eval_problems=2, eval_n=8, base_overrides=tiny, rebuild_base=True, jobs=1,
             train_overrides=[a for a in DEMO_ARGS if "=" in a])
    build = json.loads((out / "base" / BUILD_FILE).read_text())
    assert build["source"] == "rebuilt" and build["settings"]["max_steps"] == 2
    assert json.loads((out / "run_info.json").read_text())["base"]["source"] == "rebuilt"


def test_check_shipped_base_names_what_differs(tmp_path):
    """scripts/check_shipped_base.py's comparison (the rebuild itself is slow: not run here)."""
    import importlib.util

    from safetensors.torch import load_file, save_file

    from laser_rl.demo import DEFAULT_SETUP, shipped_base_dir

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_shipped_base.py"
    spec = importlib.util.spec_from_file_location("check_shipped_base", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = shipped_base_dir(DEFAULT_SETUP)
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(shipped, rebuilt)
    (rebuilt / "build.json").unlink()  # not compared: the rebuild has none
    assert script.compare(shipped, rebuilt) == []
    tensors = load_file(rebuilt / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name][0, 0] += 0.5
    save_file(tensors, rebuilt / "model.safetensors", metadata={"format": "pt"})
    laser = json.loads((rebuilt / "laser.json").read_text())
    laser["c_ref"] = 0.0
    (rebuilt / "laser.json").write_text(json.dumps(laser))
    diffs = script.compare(shipped, rebuilt)
    assert f"laser.json: c_ref: shipped {json.loads((shipped / 'laser.json').read_text())['c_ref']!r}, rebuilt 0.0" in diffs
    assert f"model.safetensors: tensor {name}: max |difference| 0.5" in diffs and len(diffs) == 2
