"""The package stands on its own: the benchmarks ship inside the wheel and load from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from laser_rl.errors import LaserError

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"math500": 500, "amc23": 40, "aime24": 30, "aime25": 30, "OlympiadBench": 675}


@pytest.mark.slow
def test_wheel_holds_the_benchmarks_and_the_configs(tmp_path):
    # Build from a copy of what the wheel is made of, so that the build leaves nothing in the checkout.
    # pip is in every venv; building with its default isolation uses pyproject's build backend, as users do.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("laser_rl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name, size in SIZES.items():
            member = f"laser_rl/tasks/benchmarks/{name}/test.jsonl"
            assert member in names, f"{member} missing from {wheel.name}"
            lines = [line for line in zf.read(member).decode("utf-8").splitlines() if line.strip()]
            assert len(lines) == size
            assert all({"problem", "answer"} <= json.loads(line).keys() for line in lines)
        assert {"laser_rl/tasks/benchmarks/LICENSE", "laser_rl/tasks/benchmarks/README.md"} <= names
        # every shipped config, `laser demo`'s included, is in the wheel
        configs = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "laser_rl" / "configs").rglob("*.yaml")}
        assert len(configs) >= 17 and configs <= names
        # the default demo's shipped base model (weights included: `laser demo` starts from it)
        shipped = {p.relative_to(ROOT / "src").as_posix()
                   for p in (ROOT / "src" / "laser_rl" / "configs" / "demo" / "bases").rglob("*") if p.is_file()}
        assert "laser_rl/configs/demo/bases/pairsum/model.safetensors" in shipped and shipped <= names
        # the unpacked wheel, alone on the path, serves a benchmark from an empty folder
        site = tmp_path / "site"
        zf.extractall(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LASER_BENCHMARKS_DIR"}
    env["PYTHONPATH"] = str(site)
    probe = (
        "import laser_rl; from laser_rl.tasks.registry import load_task_data; "
        "from laser_rl.demo import demo_config_path, load_base_settings; "
        "assert load_base_settings(demo_config_path('base'))['task'].name == 'pairsum'; "
        "from laser_rl.training.config import load_config; "
        "assert load_config('paper/orz-7b-laser.yaml').laser.enabled; "
        "print(laser_rl.__file__, len(load_task_data('aime24').problems))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=empty, env=env, check=True, capture_output=True,
                          text=True)
    module_file, count = done.stdout.split()
    assert Path(module_file).is_relative_to(site) and count == "30"


def test_bundled_benchmark_loads_from_an_empty_cwd_without_the_env_override(tmp_path, monkeypatch):
    from laser_rl.tasks.registry import load_task_data

    monkeypatch.delenv("LASER_BENCHMARKS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    data = load_task_data("math500")
    assert len(data.problems) == 500 and data.name == "math500"
    source = Path(data.problems[0].meta["source"].rsplit(":", 1)[0]).resolve()
    import laser_rl

    assert source.is_relative_to(Path(laser_rl.__file__).resolve().parent)  # read from the package itself


def test_env_override_replaces_the_bundled_copy(tmp_path, monkeypatch):
    from laser_rl.tasks.registry import load_task_data

    (tmp_path / "math500").mkdir()
    (tmp_path / "math500" / "test.jsonl").write_text('{"problem": "1+1?", "answer": 2}\n')
    monkeypatch.setenv("LASER_BENCHMARKS_DIR", str(tmp_path))
    data = load_task_data("MATH500")
    assert [(p.problem, p.answer) for p in data.problems] == [("1+1?", "2")]
    monkeypatch.setenv("LASER_BENCHMARKS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(LaserError, match=r"nowhere \(from \$LASER_BENCHMARKS_DIR\) not found"):
        load_task_data("math500")


def test_nothing_in_src_or_tests_points_outside_the_repository():
    # the shared folder beside the checkout is reference material for building the project, never a run-time dependency of it
    word = "sha" + "red"  # spelt in two pieces so that this test does not find itself
    needles = (f"../{word}", f'"{word}"')  # a path string, or a Path part
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("src", "tests")
        for p in (ROOT / folder).rglob("*.py")
        if any(needle in p.read_text(encoding="utf-8") for needle in needles)
    ]
    assert offenders == []
