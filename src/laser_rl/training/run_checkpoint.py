"""Saving and restoring a run: step checkpoints (model, optimizer, scheduler, data position, guard,
skipped-prompt count, per-rank RNG), the final model folder, and resuming from a checkpoint.

A mixin of :class:`laser_rl.training.trainer.Trainer`, kept apart so the trainer reads as its loop;
it uses the trainer's attributes (``acc``, ``out``, ``step``, ``policy``, ``model``, ``optimizer``,
``scheduler``, ``source``, ``guard``, ``skipped_prompts``, ``score``, ...). Writing is a collective:
every process calls the save methods, and a failure on any process stops all of them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from laser_rl.errors import LaserError
from laser_rl.training.checkpoint import (
    TRAINER_STATE,
    checkpoint_write_failed,
    finalize_checkpoint,
    load_sharded_state,
    load_state,
    rng_state,
    rng_state_name,
    save_sharded_state,
    save_state,
    set_rng_state,
    temp_checkpoint_dir,
)
from laser_rl.training.config import config_to_dict
from laser_rl.training.guard import GuardState
from laser_rl.training.sharding import full_state_dict, module_prefix


class CheckpointingMixin:
    """Checkpoint and final-folder methods of the trainer (see the module docstring)."""

    acc: Any
    out: Path
    step: int
    cfg: Any
    sharding: str

    def _full_weights(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP2 the full weights gathered on the main process (a collective: every process
        calls it); None when the model is not sharded (save_pretrained reads them itself)."""
        if self.sharding != "fsdp2":
            return None
        return full_state_dict(self.policy, module_prefix(self.policy, self.model))

    def _save_model_folder(self, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """An ordinary save_pretrained folder plus tokenizer, laser.json and task.json (main process)."""
        self.model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        if self.score is not None:
            extra = dict(self.score.extra, stop_ids=self.stop_ids, prompt_style=self.prompt_style, step=self.step,
                         max_new_tokens=self.cfg.rollout.max_new_tokens)
            replace(self.score, extra=extra).save(folder)
        task = self.base_path / "task.json"
        if task.is_file():
            (folder / "task.json").write_text(task.read_text())

    def save_checkpoint(self) -> Path | None:
        tmp = self.out / "checkpoints" / f".step-{self.step:06d}.tmp"
        error: BaseException | None = None
        try:
            if self.acc.is_main_process:
                temp_checkpoint_dir(self.out, self.step)
        except OSError as e:
            error = e
        self.acc.wait_for_everyone()
        try:
            if error is None:
                save_state(tmp, rng_state_name(self.rank), rng_state())
                weights = self._full_weights()
                state = {"step": self.step, "data_position": self.source.position, "skipped_prompts": self.skipped_prompts,
                         "scheduler": self.scheduler.state_dict(), "guard": self.guard.__dict__,
                         "config": config_to_dict(self.cfg)}
                if self.sharding == "fsdp2":  # every process writes its shards of the optimizer state
                    save_sharded_state(tmp, self.policy, self.optimizer, self.rank)
                else:
                    state["optimizer"] = self.optimizer.state_dict()
                if self.acc.is_main_process:
                    self._save_model_folder(tmp, weights)
                    save_state(tmp, TRAINER_STATE, state)
        except (OSError, LaserError) as e:
            error = e

        def any_failed(err: BaseException | None) -> bool:  # every process learns it, so none waits forever
            return float(self.acc.reduce(torch.tensor(float(err is not None), device=self.acc.device), reduction="sum")) > 0

        if any_failed(error):
            self.acc.wait_for_everyone()
            raise checkpoint_write_failed(tmp, self.step, error or "another process failed to write its part")
        final = None
        try:
            if self.acc.is_main_process:
                final = finalize_checkpoint(tmp, self.step, self.cfg.train.keep_checkpoints)
        except LaserError as e:
            error = e
        if any_failed(error):
            raise error or LaserError(f"the checkpoint of step {self.step} could not be put in place (see the main process)")
        return final

    def _load_state(self, folder: Path) -> None:
        state = load_state(folder, TRAINER_STATE)
        self.step = state["step"]
        self.source = self._problem_source(state["data_position"])
        self.skipped_prompts = state.get("skipped_prompts", 0)
        if self.sharding == "fsdp2":
            load_sharded_state(folder, self.policy, self.optimizer)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.guard = GuardState(**state["guard"])
        if (folder / f"{rng_state_name(self.rank)}.json").is_file():  # absent when resuming at another world size
            set_rng_state(load_state(folder, rng_state_name(self.rank)))
        self._print(f"resumed from {folder} (step {self.step})")

    def save_final(self, final: Path) -> None:
        """The final model folder, written atomically by the main process (a collective)."""
        weights = self._full_weights()
        if self.acc.is_main_process:
            from laser_rl.io import atomic_path

            with atomic_path(final) as tmp:
                tmp.mkdir()
                self._save_model_folder(tmp, weights)
        self.acc.wait_for_everyone()
