"""Checkpoints: a ``save_pretrained`` model folder plus the trainer state, written atomically.

Layout of ``<output_dir>/checkpoints/step-000050/``: the model's ``config.json`` + weights, the
tokenizer files, ``laser.json`` (score parameters), ``task.json`` when the base model had one, and
``trainer_state.pt`` (optimizer, scheduler, step, data position, guard state) plus one
``rng-rank<r>.pt`` per process. A folder is written under a hidden temporary name and renamed when
complete, so every ``step-*`` folder is a complete checkpoint.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laser_rl.io import apply_umask

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.pt").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def temp_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finalize_checkpoint(tmp: Path, step: int, keep: int) -> Path:
    """Rename the temporary folder into place and drop all but the newest ``keep`` checkpoints."""
    final = tmp.parent / f"step-{step:06d}"
    apply_umask(tmp)  # safetensors writes its file 0600; a checkpoint is shared like any output
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for _, old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
