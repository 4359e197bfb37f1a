"""Pickle-free training state: exact round trips, no unpickling on resume, failed writes keep the last checkpoint."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.training import checkpoint as ckpt
from test_trainer import DEMO_CONFIG, fast_overrides, read_metrics


def _trained_optimizer() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))
    for _ in range(3):
        model(torch.randn(4, 5)).square().mean().backward()
        opt.step()
        sched.step()
    return opt, sched


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), f"{where}: {a!r} != {b!r}"


def test_state_round_trip_is_exact(tmp_path):
    opt, sched = _trained_optimizer()
    random.random(), np.random.rand(), torch.rand(1)  # move every generator off its seed
    state = {"step": 7, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": ckpt.rng_state(),
             "guard": {"ema_reward": None, "start_reward": [0.25, float("nan")], "bad_eval": 2}}
    ckpt.save_state(tmp_path, "s", state)
    back = ckpt.load_state(tmp_path, "s")
    _assert_same(state, back)
    assert back["optimizer"]["state"][0]["step"].dtype == torch.float32  # AdamW's step counter keeps its dtype
    # the restored generators continue exactly where the saved ones were
    expected = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(back["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    # and an optimizer/scheduler loaded from it continue identically
    opt2, sched2 = _trained_optimizer()
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    _assert_same(opt.state_dict(), opt2.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_state_that_is_not_tensors_or_json_is_refused(tmp_path):
    with pytest.raises(TypeError, match="s.bad"):
        ckpt.save_state(tmp_path, "s", {"bad": object()})


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"step": 999, "x": _Exploit(marker)}))


def test_resume_never_unpickles(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    over = fast_overrides(tiny_model_dir, out, steps=2, **{"train.save_every": 1})
    assert main(["train", "--config", DEMO_CONFIG, *over]) == 0
    step1 = out / "checkpoints" / "step-000001"
    assert (step1 / "trainer_state.safetensors").is_file() and not list(step1.glob("*.pt"))
    # files under the old pickle names must be ignored, never read
    marker = tmp_path / "executed"
    _plant_pickle(step1 / "trainer_state.pt", marker)
    _plant_pickle(step1 / "rng-rank0.pt", marker)
    assert main(["train", "--resume", "--config", DEMO_CONFIG,
                 *fast_overrides(tiny_model_dir, out, steps=3, **{"train.save_every": 1})]) == 0
    assert not marker.exists()
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]

    # a checkpoint in the old (pickle-only) format is refused with a clear error, still without unpickling
    old = tmp_path / "old"
    folder = old / "checkpoints" / "step-000004"
    folder.mkdir(parents=True)
    _plant_pickle(folder / "trainer_state.pt", marker)
    (old / "metrics.jsonl").write_text("")
    with pytest.raises(LaserError, match="older laser-rl.*not loaded"):
        ckpt.latest_checkpoint(old)
    assert not marker.exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = ckpt.save_file
    calls = {"n": 0}

    def flaky_save(tensors, filename, *args, **kwargs):
        if "step-000002" in filename:  # the second checkpoint's temporary folder
            calls["n"] += 1
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", flaky_save)
    rc = main(["train", "--config", DEMO_CONFIG, *fast_overrides(tiny_model_dir, out, steps=3, **{"train.save_every": 1})])
    err = capsys.readouterr().err
    assert rc == 2 and calls["n"] == 1
    assert "could not write the checkpoint of step 2" in err and "No space left on device" in err
    assert "step-000001 is intact" in err
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # no half-written folder left
    state = ckpt.load_state(root / "step-000001", ckpt.TRAINER_STATE)
    assert state["step"] == 1 and state["optimizer"]["state"]
    assert ckpt.latest_checkpoint(out)[0] == 1
