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

Every decision that stops a run is taken by all ranks together: c_ref is rank 0's measurement, the
NaN check is all-reduced before backward (``update.py``), the collapse guard's verdict is rank 0's,
broadcast. Precision: float32 weights, forwards in ``model.dtype`` (``precision.py``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from laser_rl.core import HIGH_TARGET_LOGPROB
from laser_rl.core import laser as core
from laser_rl.errors import LaserError
from laser_rl.rollout import SamplingConfig
from laser_rl.rollout.engine import build_engine, never_sampled_ids
from laser_rl.rollout.pipeline import RolloutBatch, rollout_verify_score
from laser_rl.rollout.vllm_engine import close_engine_after_run, vllm_options
from laser_rl.score_params import ScoreParams
from laser_rl.tasks.base import Problem, TaskData
from laser_rl.tasks.registry import load_task_data
from laser_rl.training.batch import Sequences, TrainBatch, build_sequences
from laser_rl.training.checkpoint import latest_checkpoint
from laser_rl.training.config import TrainConfig, config_to_yaml
from laser_rl.training.data import ProblemSource
from laser_rl.training.guard import GuardState, check_collapse, rank0_outcome
from laser_rl.training.policy import PolicyOutput, PolicyWithScore
from laser_rl.training.precision import training_precision
from laser_rl.training.run_checkpoint import CheckpointingMixin
from laser_rl.training.run_lock import RunDirLock
from laser_rl.training.run_log import (
    CONFIG_FILE,
    METRICS_FILE,
    RunLog,
    check_output_dir,
    metric_keys_without_timing,
    step_metrics,
)
from laser_rl.training.sharding import (
    check_sharding_setup,
    enable_gradient_checkpointing,
    ensure_process_group,
    generation_window,
    no_grad_sync,
    resolve_sharding,
)
from laser_rl.training.update import (
    Collective,
    UpdateSettings,
    UpdateStats,
    autocast,
    clip_grad_norm,
    forward_in_micro_batches,
    make_scheduler,
    micro_batch_loss,
    update_policy,
)

__all__ = ["CONFIG_FILE", "FINAL_DIR", "METRICS_FILE", "TrainResult", "Trainer", "metric_keys_without_timing",
           "micro_batch_loss", "train"]

FINAL_DIR = "final"


@dataclass
class TrainResult:
    final_dir: Path
    metrics: list[dict[str, Any]]
    seconds: float
    score_params: ScoreParams | None


def _seed_for(seed: int, step: int, rank: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + salt) % (2**63 - 1)


class Trainer(CheckpointingMixin):
    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        from laser_rl.integrations.hf import disable_progress_bars

        disable_progress_bars()  # weight loading/saving bars would interleave with ours
        self.cfg = cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.out = Path(cfg.output_dir)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if cfg.data.prompts_per_step % self.world:
            raise LaserError(
                f"data.prompts_per_step ({cfg.data.prompts_per_step}) must be divisible by the number of processes ({self.world})"
            )
        if cfg.rollout.temperature <= 0:  # the training forward divides the logits by it
            raise LaserError(f"rollout.temperature must be > 0 for training, got {cfg.rollout.temperature} "
                             "(greedy decoding has no sampling distribution to learn from)")
        set_seed(cfg.train.seed + self.rank)
        # the run folder is ours until close(): taken before anything looks into it (run_lock.py)
        self.run_lock = RunDirLock(self.out) if self.acc.is_main_process else None

        def lock() -> None:  # rank 0 locks; a refusal stops every rank
            if self.run_lock is not None:
                check_output_dir(self.out, resume)  # a refused folder gets no lock file either
                self.run_lock.acquire()

        rank0_outcome(self.world, lock)
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Free the run folder (``fit`` does not: ``train`` calls this when the run ends, however it ends)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _setup(self, resume: bool) -> None:
        from laser_rl.integrations.hf import load_tokenizer, resolve_stop_ids

        cfg = self.cfg
        self.resume_from = latest_checkpoint(self.out) if resume else None
        if resume and self.resume_from is None:
            self._print(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from step 1")
        check_output_dir(self.out, resume)
        model_path = str(self.resume_from[1]) if self.resume_from else cfg.model.path
        self.base_path = Path(cfg.model.path)
        self.sharding = resolve_sharding(cfg.train.sharding)
        self.precision = training_precision(cfg.model.dtype, self.acc.device)
        # forwards autocast to the compute dtype; under FSDP2 its MixedPrecisionPolicy casts instead
        self.autocast_dtype = self.precision.autocast_dtype if self.sharding == "none" else None
        check_sharding_setup(cfg, policy_path=model_path)  # before any model loads
        if self.sharding == "fsdp2":
            ensure_process_group(self.acc.device)

        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = resolve_stop_ids(self.tokenizer, cfg.rollout.stop_tokens)
        self.pad_id = self.tokenizer.pad_token_id

        # ---- data
        self.train_data = self._load_data(cfg.data.train)
        self.eval_data = self._load_data(cfg.data.eval) if cfg.data.eval else None
        self.prompt_style = self.train_data.prompt_style if cfg.data.prompt_style == "auto" else cfg.data.prompt_style

        # ---- the self-reward token, checked on the tokenizer and config.json before the (maybe 7B) model loads
        self.z_id: int | None = None
        self.score: ScoreParams | None = None
        saved = ScoreParams.load(model_path)
        use_score = cfg.laser.enabled or cfg.laser.token != "auto" or saved is not None
        token_str = self._select_token(model_path, saved) if use_score else None

        model, self.policy = self._load_policy(model_path, prepare=self._prepare_model)
        self._model = model.train()  # dropout and gradient checkpointing need it (generation switches back)
        self.suppress_ids = never_sampled_ids(len(self.tokenizer), model.get_input_embeddings().num_embeddings,
                                              self.stop_ids, self.pad_id)
        if token_str is not None:
            self._setup_score(token_str, saved)
        self.ref_policy: PolicyWithScore | None = None
        if cfg.loss.kl_coef > 0 or (cfg.laser.enabled and cfg.laser.reference == "model"):
            self.ref_policy = self._load_policy(cfg.model.path, frozen=True)[1]

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(  # after sharding: the optimizer holds the sharded parameters
            self.policy.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, cfg)
        if self.sharding == "none":  # DDP (or one process) through accelerate; FSDP2 is already applied
            self.policy, self.optimizer = self.acc.prepare(self.policy, self.optimizer)
        self.engine = build_engine(cfg.rollout.engine, self.model, pad_id=self.pad_id, stop_ids=self.stop_ids,
                                   z_id=self.z_id, suppress_ids=self.suppress_ids,
                                   vllm_options=vllm_options(cfg, self.model, self.acc.device, self.rank) if cfg.rollout.engine == "vllm" else None)
        # engine hf samples with the policy itself: no mismatch to correct, its weights are exactly 1
        self.is_correction = cfg.rollout.is_correction if cfg.rollout.engine != "hf" else "none"

        self.step = 0
        self.source = self._problem_source()
        self.guard = GuardState()
        self.skipped_prompts = 0
        if self.resume_from:
            self._load_state(self.resume_from[1])

    # ------------------------------------------------------------------ setup helpers

    def _load_policy(self, path: str, *, prepare: Callable[[torch.nn.Module], None] | None = None,
                     frozen: bool = False) -> tuple[torch.nn.Module, PolicyWithScore]:
        """(Hugging Face model, the module the training step calls) from ``path``, float32 weights.
        ``prepare`` changes the bare model before it is wrapped. Under FSDP2 the model is loaded
        straight into shards (rank 0 reads the weights, the others build on the meta device:
        ``fsdp_load.load_sharded``), sharded per decoder layer, computing in the compute dtype."""
        m = self.cfg.model

        def prep(model: torch.nn.Module) -> None:
            if frozen:
                model.requires_grad_(False)
            if prepare is not None:
                prepare(model)

        def wrap(model: torch.nn.Module) -> PolicyWithScore:
            return PolicyWithScore(model, chunk_size=self.cfg.loss.logit_chunk_size or 1024)

        if self.sharding == "fsdp2":
            from laser_rl.training.fsdp_load import load_sharded

            model, policy = load_sharded(path, device=self.acc.device, compute_dtype=self.precision.compute,
                                         wrap=wrap, prepare=prep, trust_remote_code=m.trust_remote_code,
                                         attn_implementation=m.attn_implementation)
        else:
            from laser_rl.integrations.hf import load_model

            model = load_model(path, dtype=self.precision.weights, device=self.acc.device,
                               trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
            prep(model)
            policy = wrap(model)
        if frozen:
            model.eval()
        return model, policy  # type: ignore[return-value]

    def _prepare_model(self, model: torch.nn.Module) -> None:
        """Before wrapping (and sharding): room for an added z, and the model's gradient checkpointing."""
        from laser_rl.integrations.special_token import resize_embeddings_if_needed

        resize_embeddings_if_needed(model, self.tokenizer)  # z was added as a new token
        if self.cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)

    def _problem_source(self, position: int = 0) -> ProblemSource:
        d = self.cfg.data
        return ProblemSource(self.train_data, self.cfg.train.seed, d.shuffle, position,
                             drop_last_of=d.prompts_per_step if d.drop_last else None)

    @contextlib.contextmanager
    def _generating(self, engine: bool = True) -> Iterator[None]:
        """The block every generation runs in: the sampler puts the model in eval mode, and training
        mode is back on leaving; forwards run in the compute dtype; under FSDP2 the sharded weights are
        gathered for it (train.generation_gather) and ranks decode in lockstep.

        ``engine`` (the block runs ``self.engine``): with engine vllm the policy does not generate, so
        nothing is gathered; vLLM's first ``generate`` in the block syncs the changed weights from the
        sharded policy, one parameter gathered at a time (``VLLMEngine.follow``), on every rank together,
        as every rank generates the same number of batches. ``engine=False``: the policy itself generates."""
        external = engine and self.cfg.rollout.engine != "hf"
        window = contextlib.nullcontext() if external else \
            generation_window(self.policy, self.cfg.train.generation_gather, forward_module=self.model)
        try:
            with window, autocast(self.acc.device, self.autocast_dtype):
                yield
        finally:
            self.model.train()

    def _load_data(self, spec: str) -> TaskData:
        d = self.cfg.data
        from laser_rl.tasks.embedded import is_embedded_task

        if is_embedded_task(spec):  # the embedded task's options live in the base model folder
            return load_task_data(spec, model_dir=str(self.base_path), verifier=d.verifier)
        from laser_rl.tasks.math import find_benchmark

        options: dict[str, Any] = {"verifier": d.verifier}
        if find_benchmark(spec) is not None:
            return load_task_data(spec, **options)
        if d.problem_key != "problem":
            options["problem_key"] = d.problem_key
        if d.answer_key != "answer":
            options["answer_key"] = d.answer_key
        return load_task_data(spec, **options)

    def _select_token(self, model_path: str, saved: ScoreParams | None) -> str:
        """Choose and check z (``self.z_id``) from the tokenizer and config.json alone: a bad
        ``laser.token`` fails in a second, not after a model load. Returns the token string."""
        from laser_rl.integrations.hf import config_vocab_size
        from laser_rl.integrations.special_token import select_self_reward_token, validate_token_id

        lc = self.cfg.laser
        token = lc.token
        if token == "auto" and saved is not None:
            token = saved.token
        sample_texts = [p.problem for p in ProblemSource(self.train_data, 0, False).take(200)]
        token_str, self.z_id, added = select_self_reward_token(
            self.tokenizer, token, stop_ids=self.stop_ids, data_sample_texts=sample_texts,
            add_if_missing=lc.add_token_if_missing, force_option=None, add_option="laser.add_token_if_missing=true",
        )
        vocab = config_vocab_size(model_path, trust_remote_code=self.cfg.model.trust_remote_code)
        validate_token_id(self.z_id, max(vocab, len(self.tokenizer)) if added else vocab, self.stop_ids, self.pad_id)
        return token_str

    def _setup_score(self, token_str: str, saved: ScoreParams | None) -> None:
        lc = self.cfg.laser
        if self.resume_from and saved is not None:
            self.score = saved  # the run's own c_ref/β_v, recorded at its first step
            return
        c_ref, c_std = lc.c_ref, None
        if c_ref == "auto":  # every rank measures the same way; all take rank 0's value
            c_ref, c_std = rank0_outcome(self.world, self._calibrate)
        beta_v = lc.resolve_beta_v(float(c_ref))
        target = core.correct_target_logprob(float(c_ref), float(beta_v))
        if target > HIGH_TARGET_LOGPROB:
            warnings.warn(
                f"c_ref + 1/beta_v = {target:.2f} > {HIGH_TARGET_LOGPROB:g}: the MSE asks correct responses to give z a high "
                "probability, which can leak z into generation; lower beta_v or use beta_v: auto",
                stacklevel=2,
            )
        self.score = ScoreParams(token_str, self.z_id, float(beta_v), float(c_ref), c_std, reference=lc.reference)

    def _calibrate(self) -> tuple[float, float]:
        lc = self.cfg.laser
        problems = ProblemSource(self.train_data, self.cfg.train.seed + 12345, True).take(lc.c_ref_samples)
        self._print(f"measuring c_ref on {lc.c_ref_samples} sampled responses ...")
        with self._generating(engine=False):  # the policy samples: compute dtype, FSDP2 generation window
            mean, std, count = lc.calibrate_c_ref(
                self.model, self.tokenizer, self._prompts(problems), z_id=self.z_id, stop_ids=self.stop_ids,
                pad_id=self.pad_id, sampling=self._sampling(), seed=self.cfg.train.seed,
            )
        self._print(f"c_ref = {mean:.3f} ± {std:.3f} (over {count} finished responses)")
        return mean, std

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
        return self._model  # the Hugging Face model inside the (DDP- or FSDP2-wrapped) policy

    # ------------------------------------------------------------------ one RL step

    def _rollout(self, problems: list[Problem], prompt_ids: list[list[int]]) -> RolloutBatch:
        cfg = self.cfg
        gen = torch.Generator(device=self.acc.device).manual_seed(_seed_for(cfg.train.seed, self.step, self.rank, 1))
        n = cfg.rollout.n
        with self._generating():
            return rollout_verify_score(
                self.engine, self.tokenizer, prompt_ids, [p.answer for p in problems], self.train_data.verifier,
                sampling=self._sampling(), n=n, batch_size=cfg.generation_batch_size(self.world),
                score=self.score, generator=gen, correct_threshold=cfg.laser.correct_threshold,
            )

    def train_step(self) -> dict[str, Any]:
        cfg, lc = self.cfg, self.cfg.laser
        t0 = time.perf_counter()
        local = cfg.data.prompts_per_step // self.world
        problems, prompts = self._next_problems(cfg.data.prompts_per_step)
        mine = slice(self.rank * local, (self.rank + 1) * local)
        rb = self._rollout(problems[mine], prompts[mine])
        t_roll = time.perf_counter() - t0
        # vLLM's GPU memory goes to the training forwards and the update (level 2: weights and KV cache
        # dropped; the next rollout syncs the updated weights anyway). A no-op on CPU and for engine hf.
        sleep = getattr(self.engine, "sleep", None)
        asleep = bool(sleep(level=2)) if sleep is not None else False

        phase = core.laser_phase(self.step, lc.reasoning_warmup_steps, lc.self_reward_warmup_steps)
        alpha = core.alpha_schedule(self.step, lc.alpha, lc.reasoning_warmup_steps, lc.alpha_warmup_steps)
        z_id = self.z_id if self.z_id is not None else _any_free_id(self.pad_id, self.stop_ids)
        seq = build_sequences(rb.prompt_ids, rb.rollout, pad_id=self.pad_id, z_id=z_id, stop_ids=self.stop_ids)
        seq = seq.to(self.acc.device)
        ref = self._reference_pass(seq) if self.ref_policy is not None else None
        scores = rb.scores
        if self.score is not None and scores is None:  # reference: model — the score needs the reference pass
            assert ref is not None
            scores = self.score.score(rb.rollout.lp_z, ref.lp_z, rb.finished)
        advantages = core.grpo_advantages(rb.rewards, rb.group)
        passed = torch.zeros(0, dtype=torch.bool)
        if lc.enabled and phase.integration and scores is not None:
            advantages, passed = core.self_reward_advantages(
                advantages, scores, rb.finished, rb.group, lc.tau, lc.filter_threshold
            )
        batch = TrainBatch(
            seq, advantages.float(), rb.rewards, self._global_mse_weights(rb.rewards, rb.correct, rb.finished),
            ref_logprobs=None if ref is None else ref.token_logprobs,
            ref_lp_z=ref.lp_z if ref is not None and self.score is not None and self.score.reference == "model" else None,
        )
        update = self._update(batch, alpha if lc.enabled and phase.mse else None)
        if asleep:
            self.engine.wake_up()  # type: ignore[attr-defined]
        t_update = time.perf_counter() - t0 - t_roll

        metrics = step_metrics(self.acc, rb, scores, passed, update, step=self.step, lr=float(self.scheduler.get_last_lr()[0]),
                               laser_enabled=lc.enabled, phase=phase, alpha=alpha, skipped_prompts=self.skipped_prompts)
        metrics.update(time_rollout=t_roll, time_update=t_update, time_step=time.perf_counter() - t0)
        return metrics

    def _global_mse_weights(self, rewards: torch.Tensor, correct: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """Class-balance weights (Eq. 14) with the counts of the whole, all-process batch; ``correct`` is
        ``rewards > laser.correct_threshold`` (the rollout's), the same classes core counts from the rewards."""
        lc = self.cfg.laser
        local = torch.stack([(correct & finished).sum(), (finished & ~correct).sum()]).float()
        counts = self.acc.reduce(local, reduction="sum")
        return core.class_balance_weights(
            rewards, finished, lc.class_balanced, lc.correct_threshold, class_counts=(counts[0], counts[1])
        )

    def _reference_pass(self, seq: Sequences) -> PolicyOutput:
        """The frozen reference model's token log-probs and lp_z, ``loss.micro_batch_size`` rows at a time."""
        assert self.ref_policy is not None
        return forward_in_micro_batches(self.ref_policy, seq, temperature=self.cfg.rollout.temperature,
                                        micro_batch_size=self.cfg.loss.micro_batch_size,
                                        compute_dtype=self.autocast_dtype)

    def _collective(self) -> Collective:
        """The process-group operations of an update, through accelerate (DDP) or FSDP2. Micro-batches
        before the last one accumulate without a gradient reduction (DDP no_sync; FSDP2 without a
        reduce-scatter, at the cost of an unsharded float32 gradient per rank: see sharding.no_grad_sync)."""
        acc = self.acc
        return Collective(rank=self.rank, world=self.world, reduce_sum=lambda t: acc.reduce(t, reduction="sum"),
                          backward=acc.backward, accumulate=lambda: no_grad_sync(self.policy),
                          clip=self._clip_gradients)

    def _update(self, batch: TrainBatch, alpha: float | None) -> UpdateStats:
        """One optimiser pass over the batch; ``alpha`` weighs the MSE term (``None``: no MSE, plain GRPO)."""
        gen = torch.Generator().manual_seed(_seed_for(self.cfg.train.seed, self.step, self.rank, 2))
        settings = UpdateSettings.from_config(self.cfg, compute_dtype=self.autocast_dtype,
                                              is_correction=self.is_correction)
        return update_policy(self.policy, self.optimizer, batch, settings, alpha=alpha, score=self.score,
                             comm=self._collective(), generator=gen, scheduler=self.scheduler,
                             stop_message=lambda why: self._stop_message(f"{why} at step {self.step}"))

    def _evaluates_here(self) -> bool:
        """The main process evaluates; under FSDP2 every rank joins (its forwards are collectives)."""
        return self.acc.is_main_process or self.sharding == "fsdp2"

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm; returns it (a plain tensor, also for sharded DTensor gradients)."""
        if self.sharding == "none":
            return self.acc.clip_grad_norm_(self.policy.parameters(), max_norm)
        return clip_grad_norm(self.policy.parameters(), max_norm)

    def _stop_message(self, why: str) -> str:
        last = latest_checkpoint(self.out)
        keep = f"the last good checkpoint is {last[1]}" if last else "no checkpoint was written yet"
        return f"training stopped: {why}; {keep}"

    # ------------------------------------------------------------------ metrics

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """Accuracy and self-verification on the first ``data.eval_limit`` held-out problems."""
        from laser_rl.evaluation.metrics import compute_metrics

        cfg = self.cfg
        assert self.eval_data is not None and self.eval_data.problems is not None
        problems = list(self.eval_data.problems[: cfg.data.eval_limit or None])
        n = cfg.data.eval_n
        gen = torch.Generator(device=self.acc.device).manual_seed(_seed_for(cfg.train.seed, 0, 0, 3))
        with self._generating():
            rb = rollout_verify_score(
                self.engine, self.tokenizer, self._prompts(problems), [p.answer for p in problems],
                self.eval_data.verifier, sampling=self._sampling(), n=n, batch_size=cfg.generation_batch_size(self.world),
                score=self.score, generator=gen, correct_threshold=cfg.laser.correct_threshold,
            )
        if self.score is not None and rb.scores is None:  # reference: model — score with the reference pass
            seq = build_sequences(rb.prompt_ids, rb.rollout, pad_id=self.pad_id, z_id=self.score.token_id,
                                  stop_ids=self.stop_ids).to(self.acc.device)
            ref_lp_z = self._reference_pass(seq).lp_z
            rb = replace(rb, scores=self.score.score(rb.rollout.lp_z, ref_lp_z, rb.finished))
        met = compute_metrics(rb.to_records(problems, n), ks=(n,), same_answer=self.eval_data.verifier.same_answer)
        v = met["verification"]
        return {
            "eval_accuracy": met["accuracy"], "eval_hm_tpr_tnr": v["hm_tpr_tnr"], "eval_auroc": v["auroc"],
            f"eval_maj@{n}": met["voting"][f"maj@{n}"], f"eval_weighted_maj@{n}": met["voting"][f"weighted_maj@{n}"],
        }

    # ------------------------------------------------------------------ collapse guard

    def _check_collapse(self, m: dict[str, Any]) -> None:
        """Stop every rank when the collapse guard (``guard.py``) fires on rank 0's view of the step."""
        why = rank0_outcome(self.world, lambda: check_collapse(self.cfg.guard, self.guard, m))
        if why:
            raise LaserError(self._stop_message(f"collapse guard at step {self.step}: {why}"))

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        from laser_rl.evaluation.metrics import format_metric

        cfg = self.cfg
        t_start = time.perf_counter()
        log = RunLog(cfg, self.out, main=self.acc.is_main_process, step=self.step, config_yaml=config_to_yaml(cfg))
        if self.score is not None:
            self._print(f"self-reward: z={self.score.token!r} (id {self.score.token_id}), beta_v={self.score.beta_v:.4g}, "
                        f"c_ref={self.score.c_ref:.3f}; correct target log-prob {core.correct_target_logprob(self.score.c_ref, self.score.beta_v):.2f}")
        if cfg.train.eval_every and self.eval_data is not None and self.step == 0:
            if self._evaluates_here():  # the starting point, and the collapse guard's baseline
                initial = self.evaluate()
                self.guard.eval_baseline = initial["eval_accuracy"]
                self._print("initial evaluation: " + ", ".join(f"{k}={format_metric(v)}" for k, v in initial.items()))
                log.scalars(initial, 0)
            self.acc.wait_for_everyone()
        save_seconds: float | None = None
        while self.step < cfg.train.steps:
            self.step += 1
            m = self.train_step()
            if save_seconds is not None:  # the checkpoint written after the previous step
                m["time_save"], save_seconds = save_seconds, None
            if cfg.train.eval_every and self.eval_data is not None and self.step % cfg.train.eval_every == 0:
                t = time.perf_counter()
                if self._evaluates_here():
                    evaluation = self.evaluate()
                    if self.acc.is_main_process:
                        m.update(evaluation)
                m["time_eval"] = time.perf_counter() - t
                self.acc.wait_for_everyone()
            self._check_collapse(m)
            # the line goes out before the checkpoint: a kill between the two must not lose it
            log.write(m, self.step)
            if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                t = time.perf_counter()
                self.save_checkpoint()
                save_seconds = time.perf_counter() - t
        final = self.out / FINAL_DIR
        self.save_checkpoint()
        self.save_final(final)
        log.close()
        seconds = time.perf_counter() - t_start
        self._print(f"done: {self.step} steps in {seconds:.1f} s; model saved to {final}")
        return TrainResult(final, log.history, seconds, self.score)


# ---------------------------------------------------------------------- small helpers


def _any_free_id(pad_id: int, stop_ids: list[int]) -> int:
    """A placeholder z for plain GRPO runs without a self-reward token: any id that is not pad or a stop id."""
    i = 0
    while i == pad_id or i in stop_ids:
        i += 1
    return i


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Build a :class:`Trainer` from ``cfg`` and run it to ``train.steps``."""
    if resume and not Path(cfg.output_dir).exists():
        raise LaserError(f"--resume: output_dir {cfg.output_dir} does not exist")
    trainer = Trainer(cfg, resume=resume)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    close_engine_after_run(trainer.engine)
    return result


