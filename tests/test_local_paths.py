"""A missing local path fails at once with "not found"; only a bare owner/name goes to the hub."""

from __future__ import annotations

import json

import pytest

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.io import is_local_path


@pytest.fixture
def no_hub(monkeypatch):
    """Any hub lookup fails the test (offline it would retry for 30-50 s before failing)."""

    def hub_called(*args, **kwargs):
        pytest.fail(f"hub lookup attempted: {args} {kwargs}")

    import datasets
    import transformers

    monkeypatch.setattr(datasets, "load_dataset", hub_called)
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", hub_called)


def test_is_local_path_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    local = ["data/missing.jsonl", "owner/x.parquet", "y.json", "missing-dir", "runs/missing", "./a/b",
             "a/b/c", "a\\b", "~/model", "/abs/model", "with space/x"]
    assert [s for s in local if not is_local_path(s)] == []
    assert not is_local_path("Qwen/Qwen2.5-Math-1.5B")  # a hub id: no local Qwen folder
    (tmp_path / "Qwen").mkdir()
    assert is_local_path("Qwen/Qwen2.5-Math-1.5B")  # ... unless there is one: then it is a local path


def test_missing_data_file_fails_at_once(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    from laser_rl.tasks.registry import load_task_data

    with pytest.raises(LaserError, match=r"--data data/missing\.jsonl: not found"):
        load_task_data("data/missing.jsonl")
    (tmp_path / "data").mkdir()
    with pytest.raises(LaserError, match=r"--data data/train: not found"):
        load_task_data("data/train")


def test_calibrate_missing_model_dir_fails_at_once(tmp_path, monkeypatch, capsys, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    assert main(["calibrate", "--model", "missing-dir", "--data", "p.jsonl", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing-dir not found" in err and len(err.strip().splitlines()) == 1


def test_missing_model_folder_fails_at_once(tmp_path, monkeypatch, no_hub):
    from laser_rl.integrations.hf import load_model, load_tokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(LaserError, match=r"model folder runs/final not found"):
        load_model("runs/final")
    with pytest.raises(LaserError, match=r"tokenizer folder missing-dir not found"):
        load_tokenizer("missing-dir")
