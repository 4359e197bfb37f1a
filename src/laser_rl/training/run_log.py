"""What a training run writes about itself: the per-step record (``metrics.jsonl``), the metric sinks
(TensorBoard, W&B) and the progress output. Only the main process writes; the record itself is built
from global (all-process) numbers by :func:`step_metrics`, which every process calls.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from laser_rl.core import laser as core
from laser_rl.core.is_correction import DIFF_METRIC
from laser_rl.errors import LaserError
from laser_rl.io import read_jsonl, write_jsonl_atomic
from laser_rl.rollout.pipeline import RolloutBatch
from laser_rl.training.update import UpdateStats

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"  # written before step 1: marks the folder as a run of ours
TIMING_KEYS = ("time_rollout", "time_update", "time_step", "time_eval", "time_save")
#: UpdateStats fields logged under another name (core.is_correction owns the mismatch metric's name)
_RENAMED = {"rollout_logprob_diff": DIFF_METRIC, "is_weight_mean": "rollout/is_weight_mean"}


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse an ``output_dir`` that holds another run (without ``--resume``), is a file, or holds
    files that are not a run of ours. A folder whose ``CONFIG_FILE`` (written before step 1) marks a
    run that stopped before its first step is ours to restart; the run lock's file is ignored."""
    from laser_rl.training.run_lock import LOCK_FILE

    if not resume and (out / METRICS_FILE).exists():
        raise LaserError(f"output_dir {out} already holds a run; pass --resume to continue it or choose another output_dir")
    if out.exists() and not out.is_dir():
        raise LaserError(f"output_dir {out}: exists and is not a folder")
    if resume or not out.is_dir() or (out / CONFIG_FILE).is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if foreign:
        raise LaserError(f"output_dir {out} exists, is not empty and holds no laser train run "
                         f"(e.g. {foreign[0]}); choose another output_dir or empty it")


def metric_keys_without_timing(m: dict[str, Any]) -> dict[str, Any]:
    """A metrics record without its wall-clock fields (for comparing runs)."""
    return {k: v for k, v in m.items() if k not in TIMING_KEYS}


def step_metrics(
    acc: Any, rb: RolloutBatch, scores: torch.Tensor | None, passed: torch.Tensor, update: UpdateStats, *,
    step: int, lr: float, laser_enabled: bool, phase: core.LaserPhase, alpha: float, skipped_prompts: int,
) -> dict[str, Any]:
    """The step's record in metrics.jsonl: batch-level and global across processes (a collective)."""
    from laser_rl.evaluation.metrics import verification_metrics

    g = acc.gather_for_metrics
    rewards_all = g(rb.rewards)
    correct = g(rb.correct)
    finished_all = g(rb.finished)
    lengths_all = g(rb.rollout.lengths.float())
    stats = asdict(update)
    stats_t = acc.reduce(torch.tensor([stats[k] for k in sorted(stats)], device=acc.device), reduction="mean")
    m: dict[str, Any] = {"step": step}
    m.update({_RENAMED.get(k, k): float(v) for k, v in zip(sorted(stats), stats_t)})
    m["loss"] = m["policy_loss"] + (alpha * m["sr_loss"] if laser_enabled else 0.0)
    m.update(
        rollouts=int(rewards_all.numel()),
        reward_mean=float(rewards_all.mean()),
        accuracy=float(correct.float().mean()),
        truncation_rate=float((~finished_all).float().mean()),
        response_length=float(lengths_all.mean()),
        lr=lr,
        phase_mse=bool(laser_enabled and phase.mse),
        phase_integration=bool(laser_enabled and phase.integration),
    )
    if laser_enabled:
        m["alpha"] = alpha
    if scores is not None:
        s = g(scores)
        v = verification_metrics(s.double().cpu().numpy(), correct.cpu().numpy())
        m.update(
            sv_tpr=v["tpr"], sv_tnr=v["tnr"], sv_hm=v["hm_tpr_tnr"], sv_auroc=v["auroc"],
            score_mean_correct=float(s[correct].mean()) if correct.any() else None,
            score_mean_incorrect=float(s[~correct].mean()) if (~correct).any() else None,
        )
        if passed.numel():
            m["filter_pass_fraction"] = float(g(passed.float()).mean())
    m["skipped_prompts"] = skipped_prompts
    return m


class RunLog:
    """The run's records and sinks (a no-op on processes other than the main one).

    Opening it drops the records logged after the checkpoint a resumed run starts from and writes
    ``config.yaml`` (the marker of a run of ours).
    """

    def __init__(self, cfg: Any, out: Path, *, main: bool, step: int, config_yaml: str) -> None:
        from tqdm.auto import tqdm

        self.cfg, self.out, self.main = cfg, out, main
        self.path = out / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        self.writer: Any = None
        self.wandb_run: Any = None
        if main:
            out.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # drop what was logged after the checkpoint we resumed from
                self.history = [m for m in read_jsonl(self.path) if m.get("step", 0) <= step]
                write_jsonl_atomic(self.path, self.history)
            (out / CONFIG_FILE).write_text(config_yaml)
            self.writer = self._tensorboard()
            self.wandb_run = self._wandb()
        self.bar = tqdm(total=cfg.train.steps, initial=step, desc="train", dynamic_ncols=True,
                        disable=not main or cfg.logging.progress == "none")

    def scalars(self, values: dict[str, Any], step: int) -> None:
        """Numbers outside the step records (the initial evaluation) to TensorBoard."""
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(k, v, step)

    def write(self, m: dict[str, Any], step: int) -> None:
        """Append the step's record to metrics.jsonl and the metric sinks; update the progress output."""
        from laser_rl.evaluation.metrics import format_metric

        self.history.append(m)
        if not self.main:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")
        if self.writer is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(m, step=step)
        post = {"reward": f"{m['reward_mean']:.3f}", "len": f"{m['response_length']:.0f}", "s/step": f"{m['time_step']:.2f}"}
        if "sv_hm" in m:
            post["sv_hm"] = format_metric(m["sv_hm"], ".2f")
        if "eval_accuracy" in m:
            post["eval_acc"] = format_metric(m["eval_accuracy"])
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        if self.bar.disable and step % self.cfg.train.log_every == 0:
            print(f"step {step}/{self.cfg.train.steps} " + " ".join(f"{k}={v}" for k, v in post.items()), flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def _tensorboard(self) -> Any:
        if not self.cfg.logging.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"))

    def _wandb(self) -> Any:
        if not self.cfg.logging.wandb_project:
            return None
        try:
            import wandb
        except ImportError:
            raise LaserError("logging.wandb_project is set but wandb is not installed: pip install 'laser-rl[wandb]'") from None
        from laser_rl.training.config import config_to_dict

        return wandb.init(project=self.cfg.logging.wandb_project, name=self.cfg.logging.wandb_run_name or self.out.name,
                          config=config_to_dict(self.cfg), dir=str(self.out))
