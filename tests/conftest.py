"""Shared fixtures: a tiny random embedded-task model folder, built once per test session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def free_port() -> int:
    """A port nobody listens on now, for a test's ``torchrun --master_port``: other test runs on this
    machine start their own process groups, so a fixed port can collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_model_dir(folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, task: object = None) -> Path:
    """A `laser base`-shaped folder (model, tokenizer, task.json, laser.json) with random weights;
    ``task`` is an embedded task config (default: a small arith task)."""
    from laser_rl.score_params import ScoreParams
    from laser_rl.tasks.arith import ArithConfig
    from laser_rl.tasks.char_tokenizer import Z_TOKEN, build_char_tokenizer, z_token_id
    from laser_rl.tasks.embedded import save_task
    from laser_rl.tasks.tiny_model import build_tiny_model

    task = task if task is not None else ArithConfig(min_operands=2, max_operands=3, test_size=40)
    tok = build_char_tokenizer(task.alphabet)
    model = build_tiny_model(tok, seed=seed, hidden=hidden, layers=layers, heads=4, intermediate=2 * hidden)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    save_task(folder, task)
    # a random model gives z a log-prob near −log(vocab) ≈ −3; c_ref −6 keeps scores in a sane range
    ScoreParams(Z_TOKEN, z_token_id(tok), 0.5, -6.0, 0.5, {"stop_ids": [tok.eos_token_id]}).save(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")
