"""laser_rl.io: what atomic writes leave behind (modes) and how JSON errors are located."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from laser_rl.io import apply_umask, atomic_path, current_umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_saved_model_folder_respects_the_umask(tmp_path, umask):
    # save_pretrained writes model.safetensors through safetensors, which creates it 0600
    from laser_rl.tasks.char_tokenizer import build_char_tokenizer
    from laser_rl.tasks.tiny_model import build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden=8, layers=1, heads=2, intermediate=16)
    final = tmp_path / "out" / "final"
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "sub").mkdir()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    assert current_umask() == umask
    assert _mode(final / "model.safetensors") == 0o666 & ~umask
    assert _mode(final / "config.json") == 0o666 & ~umask
    assert _mode(final) == _mode(final / "sub") == 0o777 & ~umask


def test_atomic_single_file_and_checkpoint_folder_respect_the_umask(tmp_path, umask):
    from safetensors.torch import save_file

    from laser_rl.training.checkpoint import finalize_checkpoint, temp_checkpoint_dir

    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert _mode(tmp_path / "w.safetensors") == 0o666 & ~umask

    tmp = temp_checkpoint_dir(tmp_path / "run", 3)
    save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    final = finalize_checkpoint(tmp, 3, keep=1)
    assert _mode(final / "model.safetensors") == 0o666 & ~umask
    assert _mode(final) == 0o777 & ~umask


def test_apply_umask_keeps_executables_executable(tmp_path, umask):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o700)
    apply_umask(script)
    assert _mode(script) == 0o777 & ~umask
