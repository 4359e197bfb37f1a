"""GRPO + LaSeR training loop (spec §2–3), readable top to bottom.

    for step in 1..steps:
        problems  → prompts → rollout (sampler reads lp_z one step after EOS)
        verifier  → r_v;  r_s = β_v·(lp_z − c_ref) from the rollout-time policy
        A = GRPO(r_v) (Eq. 4);  after the warm-ups A' = (1−τ)A + τS(r_s) (Eq. 15)
        one forward with z appended → token log-probs + lp_z (same pass)
        loss = PPO-clip(A') + α·MSE_class-balanced(r_s, r_v) (Eq. 14) [+ KL]
        log, evaluate, checkpoint

Runs in one process or under ``accelerate launch`` / ``torchrun`` (DDP; gloo on CPU). Each
process samples its share of the step's prompts; group statistics are per prompt, so they stay
local, while the class-balance counts, the loss normalisers and all metrics are global.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from laser_rl.core import laser as core
from laser_rl.errors import LaserError
from laser_rl.evaluation.runner import never_sampled_ids
from laser_rl.io import read_jsonl, write_jsonl_atomic
from laser_rl.rollout import SamplingConfig, sample
from laser_rl.score_params import ScoreParams
from laser_rl.tasks.base import Problem, TaskData
from laser_rl.tasks.registry import load_task_data
from laser_rl.training.batch import TrainBatch, build_train_batch
from laser_rl.training.checkpoint import (
    finalize_checkpoint,
    latest_checkpoint,
    rng_state,
    set_rng_state,
    temp_checkpoint_dir,
)
from laser_rl.training.config import TrainConfig, config_to_dict
from laser_rl.training.data import ProblemSource
from laser_rl.training.policy import PolicyWithScore

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
TIMING_KEYS = ("time_rollout", "time_update", "time_step", "time_eval", "time_save")


@dataclass
class TrainResult:
    final_dir: Path
    metrics: list[dict[str, Any]]
    seconds: float
    score_params: ScoreParams | None


@dataclass
class _GuardState:
    """Collapse guard bookkeeping (see ``_check_collapse``)."""

    start_reward: list[float] = field(default_factory=list)  # training reward of the first steps
    start_length: float | None = None  # mean response length at the first step
    ema_reward: float | None = None
    eval_baseline: float | None = None  # the first evaluation's accuracy
    bad_length: int = 0
    bad_reward: int = 0
    bad_eval: int = 0


GUARD_WINDOW = 10  # steps averaged for the training-reward baseline and its running mean


def _seed_for(seed: int, step: int, rank: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + salt) % (2**63 - 1)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        from transformers.utils import logging as hf_logging

        from laser_rl.integrations.hf import load_tokenizer, resolve_stop_ids

        hf_logging.disable_progress_bar()  # weight loading/saving bars would interleave with ours
        self.cfg = cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.out = Path(cfg.output_dir)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if cfg.data.prompts_per_step % self.world:
            raise LaserError(
                f"data.prompts_per_step ({cfg.data.prompts_per_step}) must be divisible by the number of processes ({self.world})"
            )
        set_seed(cfg.train.seed + self.rank)
        if cfg.rollout.engine != "hf":
            raise LaserError(
                f"rollout.engine={cfg.rollout.engine}: only the built-in hf sampler is wired into the trainer so far "
                "(it reads the self-reward score inside the sampling loop); use rollout.engine=hf"
            )

        self.resume_from = latest_checkpoint(self.out) if resume else None
        if resume and self.resume_from is None:
            self._print(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from step 1")
        if not resume and (self.out / METRICS_FILE).exists():
            raise LaserError(f"output_dir {self.out} already holds a run; pass --resume to continue it or choose another output_dir")
        model_path = str(self.resume_from[1]) if self.resume_from else cfg.model.path
        self.base_path = Path(cfg.model.path)

        self.tokenizer = load_tokenizer(model_path)
        model = self._load_model(model_path)
        if cfg.model.gradient_checkpointing:  # renamed in transformers 5
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        self.stop_ids = resolve_stop_ids(self.tokenizer, cfg.rollout.stop_tokens)
        self.pad_id = self.tokenizer.pad_token_id
        self.suppress_ids = never_sampled_ids(len(self.tokenizer), model.get_input_embeddings().num_embeddings,
                                              self.stop_ids, self.pad_id)

        # ---- data
        self.train_data = self._load_data(cfg.data.train)
        self.eval_data = self._load_data(cfg.data.eval) if cfg.data.eval else None
        self.prompt_style = self.train_data.prompt_style if cfg.data.prompt_style == "auto" else cfg.data.prompt_style

        # ---- the self-reward token and score parameters
        self.z_id: int | None = None
        self.score: ScoreParams | None = None
        if cfg.laser.enabled or cfg.laser.token != "auto" or ScoreParams.load(model_path):
            self._setup_score(model, model_path)

        self.policy = PolicyWithScore(model, chunk_size=cfg.loss.logit_chunk_size or 1024)
        self.ref_policy: PolicyWithScore | None = None
        if cfg.loss.kl_coef > 0 or (cfg.laser.enabled and cfg.laser.reference == "model"):
            ref = self._load_model(cfg.model.path)
            ref.requires_grad_(False).eval()
            self.ref_policy = PolicyWithScore(ref, chunk_size=self.policy.chunk_size)

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = self._make_scheduler()
        self.policy, self.optimizer = self.acc.prepare(self.policy, self.optimizer)

        self.step = 0
        self.source = ProblemSource(self.train_data, cfg.train.seed, cfg.data.shuffle)
        self.guard = _GuardState()
        self.skipped_prompts = 0
        if self.resume_from:
            self._load_state(self.resume_from[1])

    # ------------------------------------------------------------------ setup helpers

    def _load_model(self, path: str) -> torch.nn.Module:
        from laser_rl.integrations.hf import load_model

        m = self.cfg.model
        return load_model(path, dtype=m.dtype, device=self.acc.device, trust_remote_code=m.trust_remote_code,
                          attn_implementation=m.attn_implementation)

    def _load_data(self, spec: str) -> TaskData:
        d = self.cfg.data
        from laser_rl.tasks.embedded import is_embedded_task

        if is_embedded_task(spec):  # the embedded task's options live in the base model folder
            return load_task_data(spec, model_dir=str(self.base_path))
        from laser_rl.tasks.math import find_benchmark

        options: dict[str, Any] = {}
        if find_benchmark(spec) is not None:
            return load_task_data(spec)
        if d.problem_key != "problem":
            options["problem_key"] = d.problem_key
        if d.answer_key != "answer":
            options["answer_key"] = d.answer_key
        return load_task_data(spec, **options)

    def _setup_score(self, model: torch.nn.Module, model_path: str) -> None:
        from laser_rl.integrations.special_token import select_self_reward_token

        lc = self.cfg.laser
        saved = ScoreParams.load(model_path)
        token = lc.token
        if token == "auto" and saved is not None:
            token = saved.token
        sample_texts = [p.problem for p in ProblemSource(self.train_data, 0, False).take(200)]
        token_str, self.z_id, added = select_self_reward_token(
            self.tokenizer, token, stop_ids=self.stop_ids, data_sample_texts=sample_texts,
            add_if_missing=lc.add_token_if_missing,
        )
        if added:
            model.resize_token_embeddings(len(self.tokenizer))
        if self.resume_from and saved is not None:
            self.score = saved  # the run's own c_ref/β_v, recorded at its first step
            return
        c_ref, c_std = lc.c_ref, None
        if c_ref == "auto":
            c_ref, c_std = self._calibrate(model)
        beta_v = lc.resolve_beta_v(float(c_ref))
        target = core.correct_target_logprob(float(c_ref), float(beta_v))
        if target > -3.0:
            warnings.warn(
                f"c_ref + 1/beta_v = {target:.2f} > -3: the MSE asks correct responses to give z a high "
                "probability, which can leak z into generation; lower beta_v or use beta_v: auto",
                stacklevel=2,
            )
        self.score = ScoreParams(token_str, self.z_id, float(beta_v), float(c_ref), c_std)

    def _calibrate(self, model: torch.nn.Module) -> tuple[float, float]:
        from laser_rl.calibrate import calibrate_c_ref

        n = self.cfg.laser.c_ref_samples
        problems = ProblemSource(self.train_data, self.cfg.train.seed + 12345, True).take(n)
        prompts = self._prompts(problems)
        self._print(f"measuring c_ref on {n} sampled responses ...")
        mean, std, count = calibrate_c_ref(
            model, self.tokenizer, prompts, z_id=self.z_id, stop_ids=self.stop_ids, pad_id=self.pad_id,
            config=self._sampling(), seed=self.cfg.train.seed,
        )
        self._print(f"c_ref = {mean:.3f} ± {std:.3f} (over {count} finished responses)")
        return mean, std

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        o, steps = self.cfg.optim, self.cfg.train.steps

        def factor(i: int) -> float:  # i = optimizer steps taken; one RL step = one scheduler step
            if o.warmup_steps and i < o.warmup_steps:
                return (i + 1) / o.warmup_steps
            if o.lr_scheduler == "constant":
                return 1.0
            progress = min(1.0, (i - o.warmup_steps) / max(1, steps - o.warmup_steps))
            decay = 0.5 * (1 + math.cos(math.pi * progress)) if o.lr_scheduler == "cosine" else 1 - progress
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * decay

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _sampling(self) -> SamplingConfig:
        r = self.cfg.rollout
        return SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)

    def _prompts(self, problems: list[Problem]) -> list[list[int]]:
        from laser_rl.integrations.hf import build_prompts

        return build_prompts(self.tokenizer, [p.problem for p in problems], self.prompt_style, self.cfg.data.instruction)

    def _next_problems(self, k: int) -> tuple[list[Problem], list[list[int]]]:
        """The next ``k`` training problems whose prompt fits ``data.max_prompt_length`` (longer ones
        are skipped, as the reference pipeline does) and their prompt ids. Every process runs this on
        the same global stream, so all agree on the data position."""
        limit = self.cfg.data.max_prompt_length
        problems: list[Problem] = []
        prompts: list[list[int]] = []
        drawn = 0
        while len(problems) < k:
            batch = self.source.take(k - len(problems))
            drawn += len(batch)
            for p, ids in zip(batch, self._prompts(batch)):
                if len(ids) <= limit:
                    problems.append(p)
                    prompts.append(ids)
                else:
                    self.skipped_prompts += 1
            if drawn > 100 * k and len(problems) < k:
                raise LaserError(f"almost every training prompt is longer than data.max_prompt_length ({limit}); raise it")
        return problems, prompts

    def _print(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, flush=True)

    @property
    def model(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.policy).model

    # ------------------------------------------------------------------ one RL step

    def _rollout(self, problems: list[Problem], prompt_ids: list[list[int]]) -> dict[str, Any]:
        cfg, n = self.cfg, self.cfg.rollout.n
        prompts = [p for p in prompt_ids for _ in range(n)]
        gen = torch.Generator(device=self.acc.device).manual_seed(_seed_for(cfg.train.seed, self.step, self.rank, 1))
        self.model.eval()
        bs = cfg.rollout.batch_size or len(prompts)
        parts = [
            sample(self.model, prompts[i : i + bs], pad_id=self.pad_id, stop_ids=self.stop_ids, config=self._sampling(),
                   z_id=self.z_id, suppress_ids=self.suppress_ids, generator=gen)
            for i in range(0, len(prompts), bs)
        ]
        self.model.train()
        roll = _concat_rollouts(parts, self.pad_id)
        texts = self.tokenizer.batch_decode(_strip_stops(roll.responses(), self.stop_ids), skip_special_tokens=True)
        answers = [p.answer for p in problems for _ in range(n)]
        verifier = self.train_data.verifier
        rewards = torch.tensor([float(verifier.reward(t, a)) for t, a in zip(texts, answers)], device=self.acc.device)
        group = torch.arange(len(problems), device=self.acc.device).repeat_interleave(n)
        return {"prompts": prompts, "roll": roll, "rewards": rewards, "group": group}

    def _rollout_scores(self, lp_z: torch.Tensor, ref_lp_z: torch.Tensor | None) -> torch.Tensor:
        assert self.score is not None
        if ref_lp_z is not None and self.cfg.laser.reference == "model":
            return core.self_reward_score_with_reference(lp_z, ref_lp_z, self.score.beta_v)
        return core.self_reward_score(lp_z, self.score.beta_v, self.score.c_ref)

    def train_step(self) -> dict[str, Any]:
        cfg, lc = self.cfg, self.cfg.laser
        t0 = time.perf_counter()
        local = cfg.data.prompts_per_step // self.world
        problems, prompts = self._next_problems(cfg.data.prompts_per_step)
        mine = slice(self.rank * local, (self.rank + 1) * local)
        r = self._rollout(problems[mine], prompts[mine])
        roll, rewards, group = r["roll"], r["rewards"], r["group"]
        t_roll = time.perf_counter() - t0

        phase = core.laser_phase(self.step, lc.reasoning_warmup_steps, lc.self_reward_warmup_steps)
        use_mse = lc.enabled and phase.mse
        alpha = core.alpha_schedule(self.step, lc.alpha, lc.reasoning_warmup_steps, lc.alpha_warmup_steps)
        advantages = core.grpo_advantages(rewards, group)
        finished = roll.finished
        # global class-balance weights: counts over the whole (all-process) batch
        weights = self._global_mse_weights(rewards, finished)
        batch = build_train_batch(
            r["prompts"], roll.response_ids, roll.response_mask, roll.logprobs, stop_ids=self.stop_ids,
            pad_id=self.pad_id, z_id=self.z_id if self.z_id is not None else _any_free_id(self.pad_id, self.stop_ids),
            advantages=advantages, rewards=rewards, mse_weights=weights,
        ).to(self.acc.device)
        ref = self._reference_pass(batch) if self.ref_policy is not None else None
        scores = None
        passed = torch.zeros(0, dtype=torch.bool)
        if self.score is not None:
            scores = self._rollout_scores(roll.lp_z, ref[1] if ref else None)
            if lc.enabled and phase.integration:
                batch.advantages, passed = core.self_reward_advantages(
                    advantages, scores, finished, group, lc.tau, lc.filter_threshold
                )
                batch.advantages = batch.advantages.float()
        ref_lp_z = ref[1] if ref is not None and lc.reference == "model" else None
        stats = self._update(batch, alpha if use_mse else None, ref[0] if ref else None, ref_lp_z)
        self.scheduler.step()
        t_update = time.perf_counter() - t0 - t_roll

        metrics = self._step_metrics(rewards, roll, scores, passed, stats, phase)
        if lc.enabled:
            metrics["alpha"] = alpha
            metrics["loss"] = metrics["policy_loss"] + alpha * metrics["sr_loss"]
        metrics["skipped_prompts"] = self.skipped_prompts
        metrics.update(time_rollout=t_roll, time_update=t_update, time_step=time.perf_counter() - t0)
        return metrics

    def _global_mse_weights(self, rewards: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        lc = self.cfg.laser
        correct = (rewards > lc.correct_threshold) & finished
        local = torch.stack([correct.sum(), (finished & ~correct).sum()]).float()
        counts = self.acc.reduce(local, reduction="sum")
        return core.class_balance_weights(
            rewards.float(), finished, lc.class_balanced, lc.correct_threshold, class_counts=(counts[0], counts[1])
        )

    @torch.no_grad()
    def _reference_pass(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.ref_policy is not None
        out = self.ref_policy(batch.input_ids, batch.attention_mask, batch.position_ids, batch.pred_mask,
                              batch.eos_column, batch.finished, self.cfg.rollout.temperature)
        return out.token_logprobs, out.lp_z

    def _forward(self, sub: TrainBatch, with_score: bool = True) -> Any:
        return self.policy(sub.input_ids, sub.attention_mask, sub.position_ids, sub.pred_mask,
                           sub.eos_column, sub.finished, self.cfg.rollout.temperature, with_score)

    def _update(
        self, batch: TrainBatch, alpha: float | None, ref_logprobs: torch.Tensor | None, ref_lp_z: torch.Tensor | None
    ) -> dict[str, float]:
        """One optimiser pass over the batch; ``alpha`` weighs the MSE term (``None``: no MSE, plain GRPO)."""
        cfg, lo = self.cfg, self.cfg.loss
        B = batch.input_ids.shape[0]
        on_policy = lo.ppo_epochs == 1 and lo.mini_batches == 1
        if not on_policy:  # old log-probs from the same code path as the update (not the sampler's)
            with torch.no_grad():
                batch.old_logprobs = self._forward(batch, with_score=False).token_logprobs.detach()
        gen = torch.Generator().manual_seed(_seed_for(cfg.train.seed, self.step, self.rank, 2))
        sums: dict[str, float] = {"policy_loss": 0.0, "sr_loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "grad_norm": 0.0}
        n_updates = 0
        micro = lo.micro_batch_size or B
        for _ in range(lo.ppo_epochs):
            order = torch.randperm(B, generator=gen).to(batch.input_ids.device) if lo.mini_batches > 1 else torch.arange(B, device=batch.input_ids.device)
            for mb in order.chunk(lo.mini_batches):
                pm = batch.pred_mask[mb]
                if lo.aggregation == "token-mean":
                    count = pm.sum().float()
                else:
                    count = (pm.sum(dim=1) > 0).sum().float()
                # DDP averages gradients over processes, hence the division by the world size
                normalizer = self.acc.reduce(count, reduction="sum") / self.world
                w_sum = self.acc.reduce(batch.mse_weights[mb].sum(), reduction="sum") / self.world
                chunks = mb.split(micro)
                for i, rows in enumerate(chunks):
                    sub = batch.select(rows)
                    sync = self.acc.no_sync(self.policy) if i < len(chunks) - 1 else contextlib.nullcontext()
                    with sync:
                        out = self._forward(sub, with_score=alpha is not None)
                        ref_lp = ref_logprobs[rows][:, : sub.pred_mask.shape[1]] if ref_logprobs is not None else None
                        loss, pg, mse, st = laser_loss(
                            out, sub, lo, alpha=alpha, score=self.score,
                            normalizer=normalizer, weight_sum=w_sum, on_policy=on_policy, ref_logprobs=ref_lp,
                            ref_lp_z=ref_lp_z[rows] if ref_lp_z is not None else None,
                        )
                        sums["sr_loss"] += float(mse.detach())
                        if cfg.guard.nan_check and not torch.isfinite(loss):
                            raise LaserError(self._stop_message(f"loss is {float(loss)} at step {self.step}"))
                        self.acc.backward(loss)
                    sums["policy_loss"] += float(pg.detach())
                    sums["clip_fraction"] += float(st["clip_fraction"]) / len(chunks)
                    sums["kl"] += float(st["kl"]) / len(chunks)
                max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
                grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), max_norm)
                if cfg.guard.nan_check and not torch.isfinite(grad_norm):
                    raise LaserError(self._stop_message(f"gradient norm is {float(grad_norm)} at step {self.step}"))
                sums["grad_norm"] += float(grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                n_updates += 1
        return {k: v / n_updates for k, v in sums.items()}

    def _stop_message(self, why: str) -> str:
        last = latest_checkpoint(self.out)
        keep = f"the last good checkpoint is {last[1]}" if last else "no checkpoint was written yet"
        return f"training stopped: {why}; {keep}"

    # ------------------------------------------------------------------ metrics

    def _step_metrics(self, rewards, roll, scores, passed, stats, phase) -> dict[str, Any]:
        g = self.acc.gather_for_metrics
        rewards_all = g(rewards)
        finished_all = g(roll.finished)
        lengths_all = g(roll.response_mask.sum(dim=1).float())
        stats_t = self.acc.reduce(torch.tensor([stats[k] for k in sorted(stats)], device=self.acc.device), reduction="mean")
        m: dict[str, Any] = {"step": self.step}
        m.update({k: float(v) for k, v in zip(sorted(stats), stats_t)})
        m["loss"] = m["policy_loss"]  # train_step adds α·sr_loss for LaSeR
        correct = rewards_all > self.cfg.laser.correct_threshold
        m.update(
            rollouts=int(rewards_all.numel()),
            reward_mean=float(rewards_all.mean()),
            accuracy=float(correct.float().mean()),
            truncation_rate=float((~finished_all).float().mean()),
            response_length=float(lengths_all.mean()),
            lr=float(self.scheduler.get_last_lr()[0]),
            phase_mse=bool(self.cfg.laser.enabled and phase.mse),
            phase_integration=bool(self.cfg.laser.enabled and phase.integration),
        )
        if scores is not None:
            s = g(torch.where(roll.finished, scores, torch.zeros_like(scores)))
            pred = s > 0.5
            tpr = float((pred & correct).sum() / correct.sum()) if correct.any() else 0.0
            tnr = float((~pred & ~correct).sum() / (~correct).sum()) if (~correct).any() else 0.0
            m.update(
                sv_tpr=tpr, sv_tnr=tnr, sv_hm=2 * tpr * tnr / (tpr + tnr) if tpr + tnr > 0 else 0.0,
                score_mean_correct=float(s[correct].mean()) if correct.any() else 0.0,
                score_mean_incorrect=float(s[~correct].mean()) if (~correct).any() else 0.0,
            )
            if passed.numel():
                m["filter_pass_fraction"] = float(g(passed.float()).mean())
        return m

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy and self-verification on the first ``data.eval_limit`` held-out problems."""
        from laser_rl.evaluation.metrics import compute_metrics
        from laser_rl.evaluation.runner import ScoringModel, sample_records

        cfg = self.cfg
        assert self.eval_data is not None and self.eval_data.problems is not None
        problems = list(self.eval_data.problems[: cfg.data.eval_limit or None])
        n = cfg.data.eval_n
        sm = ScoringModel(self.model, self.tokenizer, self.out, self.score, self.stop_ids, self.pad_id,
                          self.suppress_ids, None)
        gen = torch.Generator(device=self.acc.device).manual_seed(_seed_for(cfg.train.seed, 0, 0, 3))
        self.model.eval()
        records = sample_records(sm, problems, self._prompts(problems), n=n, batch_size=cfg.rollout.batch_size or 512,
                                 sampling=self._sampling(), verifier=self.eval_data.verifier, generator=gen)
        self.model.train()
        met = compute_metrics(records, ks=(n,), same_answer=self.eval_data.verifier.same_answer)
        v = met["verification"]
        return {
            "eval_accuracy": met["accuracy"], "eval_hm_tpr_tnr": v["hm_tpr_tnr"], "eval_auroc": v["auroc"],
            f"eval_maj@{n}": met["voting"][f"maj@{n}"], f"eval_weighted_maj@{n}": met["voting"][f"weighted_maj@{n}"],
        }

    # ------------------------------------------------------------------ checkpoints

    def _save_model_folder(self, folder: Path) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        if self.score is not None:
            extra = dict(self.score.extra, stop_ids=self.stop_ids, prompt_style=self.prompt_style, step=self.step,
                         max_new_tokens=self.cfg.rollout.max_new_tokens)
            ScoreParams(self.score.token, self.score.token_id, self.score.beta_v, self.score.c_ref,
                        self.score.c_ref_std, extra).save(folder)
        task = self.base_path / "task.json"
        if task.is_file():
            (folder / "task.json").write_text(task.read_text())

    def save_checkpoint(self) -> Path | None:
        if self.acc.is_main_process:
            temp_checkpoint_dir(self.out, self.step)
        self.acc.wait_for_everyone()
        tmp = self.out / "checkpoints" / f".step-{self.step:06d}.tmp"
        torch.save(rng_state(), tmp / f"rng-rank{self.rank}.pt")
        final = None
        if self.acc.is_main_process:
            self._save_model_folder(tmp)
            torch.save(
                {
                    "step": self.step, "data_position": self.source.position,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "guard": self.guard.__dict__, "config": config_to_dict(self.cfg),
                },
                tmp / "trainer_state.pt",
            )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            final = finalize_checkpoint(tmp, self.step, self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return final

    def _load_state(self, folder: Path) -> None:
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        self.step = state["step"]
        self.source = ProblemSource(self.train_data, self.cfg.train.seed, self.cfg.data.shuffle, state["data_position"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.guard = _GuardState(**state["guard"])
        rng_file = folder / f"rng-rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        self._print(f"resumed from {folder} (step {self.step})")

    # ------------------------------------------------------------------ collapse guard

    def _check_collapse(self, m: dict[str, Any]) -> None:
        """Stop a run whose accuracy or response length falls far below where it started.

        Accuracy: the evaluation accuracy against the first evaluation when evaluations run, and
        always the running mean of the training reward against its mean over the first steps.
        Length: the batch's mean response length against the first step's. A check must fail
        ``guard.collapse_patience`` times in a row.
        """
        gc, gs = self.cfg.guard, self.guard
        fails: list[str] = []
        if gc.length_collapse_ratio > 0:
            if gs.start_length is None:
                gs.start_length = m["response_length"]
            low = m["response_length"] < gc.length_collapse_ratio * gs.start_length
            gs.bad_length = gs.bad_length + 1 if low else 0
            if gs.bad_length >= gc.collapse_patience:
                fails.append(f"mean response length {m['response_length']:.1f} < {gc.length_collapse_ratio} × start {gs.start_length:.1f}")
        if gc.collapse_ratio > 0:
            if len(gs.start_reward) < GUARD_WINDOW:
                gs.start_reward.append(m["reward_mean"])
            else:
                a = 2.0 / (GUARD_WINDOW + 1)
                gs.ema_reward = m["reward_mean"] if gs.ema_reward is None else (1 - a) * gs.ema_reward + a * m["reward_mean"]
                r0 = sum(gs.start_reward) / len(gs.start_reward)
                gs.bad_reward = gs.bad_reward + 1 if gs.ema_reward < gc.collapse_ratio * r0 else 0
                if gs.bad_reward >= gc.collapse_patience:
                    fails.append(f"training reward (running mean) {gs.ema_reward:.3f} < {gc.collapse_ratio} × start {r0:.3f}")
            if "eval_accuracy" in m:
                if gs.eval_baseline is None:
                    gs.eval_baseline = m["eval_accuracy"]
                gs.bad_eval = gs.bad_eval + 1 if m["eval_accuracy"] < gc.collapse_ratio * gs.eval_baseline else 0
                if gs.bad_eval >= gc.collapse_patience:
                    fails.append(f"eval accuracy {m['eval_accuracy']:.3f} < {gc.collapse_ratio} × first eval {gs.eval_baseline:.3f}")
        if fails:
            raise LaserError(self._stop_message(f"collapse guard at step {self.step}: " + "; ".join(fails)))

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        t_start = time.perf_counter()
        metrics_path = self.out / METRICS_FILE
        history: list[dict[str, Any]] = []
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if metrics_path.exists():  # drop what was logged after the checkpoint we resumed from
                history = [m for m in read_jsonl(metrics_path) if m.get("step", 0) <= self.step]
                write_jsonl_atomic(metrics_path, history)
            (self.out / "config.yaml").write_text(_yaml(cfg))
        writer = self._tensorboard()
        wandb_run = self._wandb()
        if self.score is not None:
            self._print(f"self-reward: z={self.score.token!r} (id {self.score.token_id}), beta_v={self.score.beta_v:.4g}, "
                        f"c_ref={self.score.c_ref:.3f}; correct target log-prob {core.correct_target_logprob(self.score.c_ref, self.score.beta_v):.2f}")
        if cfg.train.eval_every and self.eval_data is not None and self.step == 0:
            if self.acc.is_main_process:  # the starting point, and the collapse guard's baseline
                initial = self.evaluate()
                self.guard.eval_baseline = initial["eval_accuracy"]
                self._print("initial evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in initial.items()))
                if writer is not None:
                    for k, v in initial.items():
                        writer.add_scalar(k, v, 0)
            self.acc.wait_for_everyone()
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", disable=not self.acc.is_main_process or cfg.logging.progress == "none", dynamic_ncols=True)
        while self.step < cfg.train.steps:
            self.step += 1
            m = self.train_step()
            if cfg.train.eval_every and self.eval_data is not None and self.step % cfg.train.eval_every == 0:
                t = time.perf_counter()
                if self.acc.is_main_process:
                    m.update(self.evaluate())
                m["time_eval"] = time.perf_counter() - t
                self.acc.wait_for_everyone()
            self._check_collapse(m)
            if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                t = time.perf_counter()
                self.save_checkpoint()
                m["time_save"] = time.perf_counter() - t
            history.append(m)
            if self.acc.is_main_process:
                with metrics_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(m) + "\n")
                if writer is not None:
                    for k, v in m.items():
                        if isinstance(v, (int, float)) and k != "step":
                            writer.add_scalar(k, v, self.step)
                if wandb_run is not None:
                    wandb_run.log(m, step=self.step)
                post = {"reward": f"{m['reward_mean']:.3f}", "len": f"{m['response_length']:.0f}", "s/step": f"{m['time_step']:.2f}"}
                if "sv_hm" in m:
                    post["sv_hm"] = f"{m['sv_hm']:.2f}"
                if "eval_accuracy" in m:
                    post["eval_acc"] = f"{m['eval_accuracy']:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if bar.disable and self.step % cfg.train.log_every == 0:
                    print(f"step {self.step}/{cfg.train.steps} " + " ".join(f"{k}={v}" for k, v in post.items()), flush=True)
        bar.close()
        final = self.out / FINAL_DIR
        self.save_checkpoint()
        if self.acc.is_main_process:
            from laser_rl.io import atomic_path

            with atomic_path(final) as tmp:
                tmp.mkdir()
                self._save_model_folder(tmp)
            if writer is not None:
                writer.close()
            if wandb_run is not None:
                wandb_run.finish()
        self.acc.wait_for_everyone()
        seconds = time.perf_counter() - t_start
        self._print(f"done: {self.step} steps in {seconds:.1f} s; model saved to {final}")
        return TrainResult(final, history, seconds, self.score)

    def _tensorboard(self) -> Any:
        if not (self.cfg.logging.tensorboard and self.acc.is_main_process):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"))

    def _wandb(self) -> Any:
        if not (self.cfg.logging.wandb_project and self.acc.is_main_process):
            return None
        try:
            import wandb
        except ImportError:
            raise LaserError("logging.wandb_project is set but wandb is not installed: pip install 'laser-rl[wandb]'") from None
        return wandb.init(project=self.cfg.logging.wandb_project, name=self.cfg.logging.wandb_run_name or self.out.name,
                          config=config_to_dict(self.cfg), dir=str(self.out))


# ---------------------------------------------------------------------- the loss


def laser_loss(
    out: Any,
    sub: TrainBatch,
    lo: Any,
    *,
    alpha: float | None,
    score: ScoreParams | None,
    normalizer: torch.Tensor | float,
    weight_sum: torch.Tensor | float,
    on_policy: bool,
    ref_logprobs: torch.Tensor | None = None,
    ref_lp_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """loss = PPO-clip(A') + α·L_sr (spec §2.8) for one micro-batch; ``alpha=None`` = plain GRPO.

    The score is β_v·(lp_z − c_ref), or β_v·(lp_z − lp_z_ref) when ``ref_lp_z`` (the frozen reference
    model's log π(z | x, y, EOS)) is given. Returns (loss, policy loss, self-reward MSE, policy-loss
    stats). On-policy (one epoch, one mini-batch) the old log-probs are the detached current ones.
    """
    old = out.token_logprobs.detach() if on_policy else sub.old_logprobs
    pg, stats = core.policy_loss(
        out.token_logprobs, old, sub.advantages, sub.pred_mask, lo.clip_low, lo.clip_high, lo.aggregation,
        ref_logprobs=ref_logprobs, kl_coef=lo.kl_coef, normalizer=normalizer,
    )
    mse = pg.new_zeros(())
    if alpha is not None:
        assert score is not None
        if ref_lp_z is not None:
            s = core.self_reward_score_with_reference(out.lp_z, ref_lp_z, score.beta_v)
        else:
            s = core.self_reward_score(out.lp_z, score.beta_v, score.c_ref)
        mse = core.class_balanced_mse(s, sub.rewards, sub.finished, weights=sub.mse_weights, weight_sum=weight_sum)
    return pg + (alpha or 0.0) * mse, pg, mse, stats


# ---------------------------------------------------------------------- small helpers


def _yaml(cfg: TrainConfig) -> str:
    from laser_rl.training.config import config_to_yaml

    return config_to_yaml(cfg)


def _any_free_id(pad_id: int, stop_ids: list[int]) -> int:
    """A placeholder z for plain GRPO runs without a self-reward token: any id that is not pad or a stop id."""
    i = 0
    while i == pad_id or i in stop_ids:
        i += 1
    return i


def _strip_stops(responses: list[list[int]], stop_ids: list[int]) -> list[list[int]]:
    stops = set(stop_ids)
    return [r[:-1] if r and r[-1] in stops else r for r in responses]


def _concat_rollouts(parts: list[Any], pad_id: int) -> Any:
    """Join rollouts sampled in several generation batches (they may differ in length)."""
    if len(parts) == 1:
        return parts[0]
    from laser_rl.rollout import Rollout

    T = max(p.response_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: float | int | bool) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return Rollout(
        response_ids=torch.cat([pad(p.response_ids, pad_id) for p in parts]),
        response_mask=torch.cat([pad(p.response_mask, False) for p in parts]),
        logprobs=torch.cat([pad(p.logprobs, 0.0) for p in parts]),
        finished=torch.cat([p.finished for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        lp_z=torch.cat([p.lp_z for p in parts]),
    )


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Build a :class:`Trainer` from ``cfg`` and run it to ``train.steps``."""
    if resume and not Path(cfg.output_dir).exists():
        raise LaserError(f"--resume: output_dir {cfg.output_dir} does not exist")
    return Trainer(cfg, resume=resume).fit()


def metric_keys_without_timing(m: dict[str, Any]) -> dict[str, Any]:
    """A metrics record without its wall-clock fields (for comparing runs)."""
    return {k: v for k, v in m.items() if k not in TIMING_KEYS}
