"""The ``laser train`` configuration: nested dataclasses, loaded from YAML plus ``key=value`` overrides.

A training run is expensive, so a typo or a wrong type must fail *before* any model is loaded, with a
message naming the file, the line, the key and the closest valid key. The schema is the dataclasses
below; every field carries its help text in ``metadata["help"]`` (shown by
``config_to_yaml(..., comments=True)`` and ``config_fields()``).

Libraries, and why these: **pydantic v2** checks the types. Its strict JSON-mode validation of the
plain dataclasses below is exactly the rule this project wants: an integer is promoted to a float where
a float is expected and nothing else is converted (``"abc"`` for a float, ``3.5`` for an integer,
``5`` for a string, ``true`` for a number, ``.nan`` anywhere are errors); ``Literal`` and unions such
as ``float | Literal["auto"]`` work as written; unknown keys are rejected with their path. **PyYAML**
reads the file and keeps a compose pass for the line of every key (and duplicate keys).
OmegaConf structured configs (as torchtune and verl use) were tried first (2.4.0, which vendors its
ANTLR runtime, so math-verify's antlr4 pin is no obstacle) and rejected for what they do to values:
they convert ``"3"`` to 3, ``1`` to true, ``5`` to ``"5"`` and list items to strings, accept NaN, read
``yes``, ``010`` and ``1:30`` with YAML 1.1 rules, reject an integer for ``float | Literal["auto"]``,
treat ``${...}`` inside any string (an instruction text, a stop token) as an interpolation, and keep
no line numbers; keeping today's behaviour would have meant a strict checker of our own on top.

YAML is read with YAML 1.2 scalar rules (PyYAML defaults to YAML 1.1): booleans are only
``true``/``false`` (``yes``/``no``/``on``/``off`` stay strings), ``1e-6`` is a float, ``010`` is ten,
``1:30`` is a string (not sexagesimal 90) and dates stay strings. Override values use the same rules.

Public API: :func:`load_config`, :func:`config_from_yaml`, :func:`config_from_dict`,
:func:`config_to_dict`, :func:`config_to_yaml`, :func:`config_fields`. The ``laser train`` argument
parser lives with its command (:func:`laser_rl.commands.train.parse_train_argv`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from laser_rl.core import AGGREGATIONS
from laser_rl.errors import LaserError

__all__ = [
    "AGGREGATIONS",
    "DataConfig",
    "GuardConfig",
    "LaserConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "config_fields",
    "config_from_dict",
    "config_from_yaml",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
]

DEFAULT_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."
Aggregation = Literal[AGGREGATIONS]  # core owns the names (the loss checks them too)


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with help text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"help": doc})


# --------------------------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """The policy model to train."""

    path: str = _f("", "Model folder or Hugging Face hub id of the policy to train (required).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "Weights/compute dtype: auto = bfloat16 on CUDA, float32 on CPU. Under train.sharding=fsdp2 the weights "
        "and optimizer state stay float32 and this is the compute dtype only.",
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

    def resolved_dtype(self, device_type: str) -> str:
        """The concrete dtype name for a device type ('cuda', 'cpu', ...): resolves ``auto``."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device_type == "cuda" else "float32"


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
    verifier: Literal["auto", "math", "exact", "arith"] = _f(
        "auto", "How responses are checked: auto = the data's own (math for files/benchmarks, arith for arith); "
        "math, exact (final answer equal as text) or arith (laser_rl.rewards.registry)."
    )


@dataclass
class RolloutConfig:
    """Sampling of the K responses per prompt."""

    n: int = _f(8, "Responses per prompt (the GRPO group size K).")
    temperature: float = _f(1.0, "Sampling temperature (0 = greedy).")
    top_p: float = _f(
        1.0, "Nucleus sampling: keep the smallest token set with this much probability (1 = off)."
    )
    top_k: int = _f(0, "Sample among the k most likely tokens only (0 = off).")
    max_new_tokens: int = _f(1024, "Response length limit; longer responses are truncated (no self-reward).")
    batch_size: int = _f(0, "Sequences generated together (0 = the whole step's prompts × n at once).")
    stop_tokens: list[str] = _f([], "Extra stop tokens besides the tokenizer's EOS (token strings).")
    engine: Literal["hf", "vllm"] = _f(
        "hf", "Generation engine: hf (transformers, built in). vllm is reserved and not yet supported by the trainer."
    )


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
class LaserConfig:
    """LaSeR: the last-token self-reward (spec §2–3). enabled=false trains plain GRPO."""

    enabled: bool = _f(
        True, "false = plain GRPO baseline (z, beta_v and c_ref are still used to score evals)."
    )
    token: int | str = _f(
        "auto",
        "Self-reward token z: a token string, a token id, or auto (the model folder's laser.json token, "
        "else a free special token of the tokenizer).",
    )
    add_token_if_missing: bool = _f(
        False,
        "Add z as a new special token (resizing the embeddings) when it is not a single token, or for auto "
        "when the tokenizer has no free special token.",
    )
    beta_v: float | Literal["auto"] = _f(
        0.1, "Score scale β_v in r_s = β_v·(log π(z|x,y,EOS) − c_ref); auto = 1/(target_logprob − c_ref)."
    )
    target_logprob: float = _f(
        -4.0, "Only for beta_v auto: log π(z) a correct response should reach (c_ref + 1/β_v)."
    )
    alpha: float = _f(0.1, "Weight α of the self-reward MSE loss.")
    alpha_warmup_steps: int = _f(
        0, "Ramp α linearly from 0 over this many steps once the MSE starts (0 = constant α, the paper's)."
    )
    tau: float = _f(0.1, "Advantage integration weight τ: A' = (1 − τ)·A + τ·S.")
    filter_threshold: float = _f(
        0.1, "Integrate a group's self-reward advantage only when the std of its clamped scores exceeds this."
    )
    class_balanced: bool = _f(
        True, "Class-balanced MSE (Eq. 14): weight correct and incorrect responses equally."
    )
    c_ref: float | Literal["auto"] = _f(
        "auto",
        "Reference constant c_ref (a log-prob < 0), or auto = measure it on the initial model before step 1.",
    )
    c_ref_samples: int = _f(
        256, "Only for c_ref auto: responses sampled from the initial model to measure c_ref."
    )
    reference: Literal["constant", "model"] = _f(
        "constant", "constant: r_s uses c_ref; model: r_s uses log π_ref(z) of the frozen initial model."
    )
    reasoning_warmup_steps: int = _f(0, "Plain GRPO while step ≤ this (spec §3: 200 for base models).")
    self_reward_warmup_steps: int = _f(
        200, "Then MSE on, advantage integration off for this many steps (spec §3: 200)."
    )
    correct_threshold: float = _f(
        0.5, "A response counts as correct (MSE class, TPR/TNR) when its verifier reward > this."
    )

    def resolve_beta_v(self, c_ref: float) -> float:
        """β_v for a measured/configured c_ref: ``auto`` puts a correct response's target at target_logprob."""
        from laser_rl.score_params import resolve_beta_v

        return resolve_beta_v(self.beta_v, c_ref, self.target_logprob, "laser.beta_v", "laser.target_logprob")


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


# ---------------------------------------------------------------------------------------- schema walk


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _walk_schema(cls: type = TrainConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) for every section and leaf, depth first, in schema order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        yield prefix + f.name, f, tp
        if dataclasses.is_dataclass(tp):
            yield from _walk_schema(tp, f"{prefix}{f.name}.")


@functools.cache
def _schema_keys() -> dict[str, Any]:
    return {key: tp for key, _, tp in _walk_schema()}


@functools.cache
def _validator() -> TypeAdapter[TrainConfig]:
    """pydantic's validator for the schema, built on first use (import stays cheap)."""
    # strict: nothing converted but int -> float; forbid: unknown keys are errors; no NaN/inf
    strict = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    for cls in [TrainConfig, *(tp for tp in _schema_keys().values() if dataclasses.is_dataclass(tp))]:
        cls.__pydantic_config__ = strict  # type: ignore[attr-defined]  # pydantic's hook for plain dataclasses
    return TypeAdapter(TrainConfig)


def _suggest(key: str) -> str:
    """' (did you mean 'x.y'?)' for an unknown dotted key, or ''."""
    keys = list(_schema_keys())
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:
        return f" (did you mean {same_leaf[0]}?)"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        near = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        close = [by_leaf[near[0]]] if near else []
    return f" (did you mean {close[0]}?)" if close else ""


# ------------------------------------------------------------------------------------- YAML 1.2 rules


_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_RESOLVERS = (
    ("tag:yaml.org,2002:bool", _BOOL_RE, "tTfF"),
    ("tag:yaml.org,2002:int", _INT_RE, "-+0123456789"),  # before float: both match "12", the first wins
    ("tag:yaml.org,2002:float", _FLOAT_RE, "-+0123456789."),
)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans/numbers and no timestamps."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if not tag.endswith(("bool", "int", "float", "timestamp"))]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0 if "0o" in text or "0x" in text else 10)  # YAML 1.2: 010 is ten, 0o10 eight


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that either YAML 1.1 or our 1.2 rules would read as a non-string."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    # plain or single-quoted, a line break would continue the value on the next line: escape it
    style = '"' if any(c in text for c in "\n\r\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=True)


for _tag, _rx, _first in _RESOLVERS:
    _Loader.add_implicit_resolver(_tag, _rx, list(_first))
    _Dumper.add_implicit_resolver(_tag, _rx, list(_first))
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def _dump(value: Any) -> str:
    """YAML for ``value``: block mappings, flow lists, every scalar on one line."""
    text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, width=1 << 30, allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML document into a dict plus the line of every dotted key (duplicate keys are errors)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        detail = ", ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None)))) or str(e)
        raise LaserError(f"{where}: invalid YAML: {detail}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise LaserError(f"{source}: the config must be a mapping of keys to values, got {_kind(data)}")
    lines: dict[str, int] = {}
    _record_lines(node, "", lines, source)
    return data, lines


def _record_lines(node: yaml.Node | None, prefix: str, lines: dict[str, int], source: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise LaserError(f"{source}:{line}: duplicate key '{prefix}{key}' (first set on line {seen[key]})")
        seen[key] = lines[prefix + key] = line
        _record_lines(value_node, f"{prefix}{key}.", lines, source)


# ------------------------------------------------------------------------------------------- typing


Locator = Callable[[str], str]  # dotted key -> where it was set ("file:line", "override '...'", or "")


def _at(location: str) -> str:
    return f"{location}: " if location else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {_dump(value)}" if len(repr(value)) < 80 else "a list"
    name = {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)
    return f"{name} {value!r}"


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        args = get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        return f"a list of {_describe(item).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "null" if tp is type(None) else str(tp))


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (the type itself otherwise)."""
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _typed(data: dict[str, Any], where: Locator) -> TrainConfig:
    """``data`` as a TrainConfig: pydantic checks every type; its first error becomes our message."""
    sections = {k: {} for k, v in data.items() if v is None and dataclasses.is_dataclass(_schema_keys().get(k))}
    data = {**data, **sections}  # a section whose keys are all commented out reads as null: defaults

    def not_json(value: Any) -> Any:
        raise LaserError(f"{_at(where(''))}unsupported value {value!r}: use strings, numbers, booleans, lists")

    try:  # JSON mode: strict there means "already the right type", and nested sections may be mappings
        return _validator().validate_json(json.dumps(data, default=not_json))
    except ValidationError as e:
        raise _type_error(e.errors()[0]["loc"], data, where) from None


def _type_error(loc: tuple[str | int, ...], data: dict[str, Any], where: Locator) -> LaserError:
    key, tp, value = "", TrainConfig, data
    for part in loc:  # schema keys, then union members or list indices the message does not need
        if not (dataclasses.is_dataclass(tp) and isinstance(part, str)):
            break
        key = f"{key}.{part}".lstrip(".")
        value = value.get(part) if isinstance(value, dict) else None
        tp = _hints(tp).get(part)
        if tp is None:
            return LaserError(f"{_at(where(key))}unknown key '{key}'{_suggest(key)}")
    if dataclasses.is_dataclass(tp):
        return LaserError(f"{_at(where(key))}'{key}' is a section: expected a mapping, got {_kind(value)}")
    msg = f"{_at(where(key))}{key}: expected {_describe(tp)}, got {_kind(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        msg += " (must be finite)"
    choices = [str(c) for m in _members(tp) if get_origin(m) is Literal for c in get_args(m)]
    near = difflib.get_close_matches(value, choices, n=1, cutoff=0.5) if isinstance(value, str) else []
    if near:
        msg += f" (did you mean {near[0]!r}?)"
    if isinstance(value, (dict, list)) and str in _members(tp):
        msg += " (quote text containing ': ', ' #' or brackets)"
    return LaserError(msg)


# --------------------------------------------------------------------------------------- validation


@dataclass
class _Checker:
    """Semantic checks a type cannot express; each error names the key and where it was set."""

    cfg: TrainConfig
    where: Locator

    def fail(self, key: str, message: str) -> None:
        raise LaserError(f"{_at(self.where(key))}{message}")

    def __call__(self, ok: bool, key: str, rule: str) -> None:
        if not ok:
            value: Any = self.cfg
            for part in key.split("."):
                value = getattr(value, part)
            self.fail(key, f"{key} {rule}, got {_dump(value)}")

    def required(self, key: str, value: str, hint: str) -> None:
        if not value.strip():
            self.fail(key, f"{key} is required ({hint})")


def _check_loop_and_data(check: _Checker) -> None:
    cfg = check.cfg
    check.required("output_dir", cfg.output_dir, "the run folder, e.g. output_dir=runs/my-run")
    check.required("model.path", cfg.model.path, "a model folder or hub id, e.g. model.path=runs/demo/base")
    check.required("data.train", cfg.data.train, "e.g. data.train=arith:train or a JSONL/parquet file")
    t, d = cfg.train, cfg.data
    check(t.steps >= 1, "train.steps", "must be ≥ 1")
    check(t.seed >= 0, "train.seed", "must be ≥ 0")
    check(t.save_every >= 0, "train.save_every", "must be ≥ 0 (0 = never)")
    check(t.eval_every >= 0, "train.eval_every", "must be ≥ 0 (0 = never)")
    check(t.keep_checkpoints >= 0, "train.keep_checkpoints", "must be ≥ 0 (0 = keep all)")
    check(t.log_every >= 1, "train.log_every", "must be ≥ 1")
    check(d.eval is None or bool(d.eval.strip()), "data.eval", "must be a data spec or null")
    check(d.eval_limit >= 0, "data.eval_limit", "must be ≥ 0 (0 = all)")
    check(d.eval_n >= 1, "data.eval_n", "must be ≥ 1")
    check(d.prompts_per_step >= 1, "data.prompts_per_step", "must be ≥ 1")
    check(d.max_prompt_length >= 1, "data.max_prompt_length", "must be ≥ 1")
    check(bool(d.problem_key), "data.problem_key", "must not be empty")
    check(bool(d.answer_key), "data.answer_key", "must not be empty")
    check(t.eval_every == 0 or d.eval is not None, "train.eval_every", "needs data.eval to be set (or use 0)")


def _check_rollout_and_optim(check: _Checker) -> None:
    r, o = check.cfg.rollout, check.cfg.optim
    check(r.n >= 1, "rollout.n", "must be ≥ 1")
    check(r.temperature >= 0, "rollout.temperature", "must be ≥ 0")
    check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    check(r.top_k >= 0, "rollout.top_k", "must be ≥ 0 (0 = off)")
    check(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be ≥ 1")
    check(r.batch_size >= 0, "rollout.batch_size", "must be ≥ 0 (0 = all at once)")
    check(all(s for s in r.stop_tokens), "rollout.stop_tokens", "must not contain empty strings")
    check(o.lr > 0, "optim.lr", "must be > 0")
    check(o.weight_decay >= 0, "optim.weight_decay", "must be ≥ 0")
    betas_ok = len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)
    check(betas_ok, "optim.betas", "must be two numbers in [0, 1)")
    check(o.eps > 0, "optim.eps", "must be > 0")
    check(o.warmup_steps >= 0, "optim.warmup_steps", "must be ≥ 0")
    check(o.max_grad_norm >= 0, "optim.max_grad_norm", "must be ≥ 0 (0 = no clipping)")
    check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")


def _check_loss(check: _Checker) -> None:
    lo, per_step = check.cfg.loss, check.cfg.rollouts_per_step
    check(0 <= lo.clip_low < 1, "loss.clip_low", "must be in [0, 1)")
    check(lo.clip_high >= 0, "loss.clip_high", "must be ≥ 0")
    check(lo.clip_ratio_c is None or lo.clip_ratio_c > 1, "loss.clip_ratio_c", "must be > 1 or null (off)")
    check(lo.kl_coef >= 0, "loss.kl_coef", "must be ≥ 0")
    check(lo.ppo_epochs >= 1, "loss.ppo_epochs", "must be ≥ 1")
    check(lo.mini_batches >= 1, "loss.mini_batches", "must be ≥ 1")
    rule = f"must be ≤ data.prompts_per_step × rollout.n = {per_step}"
    check(lo.mini_batches <= per_step, "loss.mini_batches", rule)
    check(lo.micro_batch_size >= 0, "loss.micro_batch_size", "must be ≥ 0 (0 = whole mini-batch)")
    check(lo.logit_chunk_size >= 0, "loss.logit_chunk_size", "must be ≥ 0 (0 = auto)")


def _check_laser(check: _Checker) -> None:
    la = check.cfg.laser
    token_ok = la.token >= 0 if isinstance(la.token, int) else bool(la.token)
    check(token_ok, "laser.token", "must be a token id ≥ 0, a token string or auto")
    check(la.beta_v == "auto" or la.beta_v > 0, "laser.beta_v", "must be > 0 or auto")
    check(la.target_logprob < 0, "laser.target_logprob", "must be < 0 (a log-probability)")
    check(la.alpha >= 0, "laser.alpha", "must be ≥ 0")
    check(la.alpha_warmup_steps >= 0, "laser.alpha_warmup_steps", "must be ≥ 0")
    check(0 <= la.tau <= 1, "laser.tau", "must be in [0, 1]")
    check(la.filter_threshold >= 0, "laser.filter_threshold", "must be ≥ 0")
    if la.c_ref != "auto":
        check(la.c_ref < 0, "laser.c_ref", "must be < 0 (a log-probability) or auto")
        if la.beta_v == "auto":
            rule = f"must be > laser.c_ref ({la.c_ref}) for beta_v auto"
            check(la.target_logprob > la.c_ref, "laser.target_logprob", rule)
        elif la.c_ref + 1 / la.beta_v >= 0:
            check.fail(
                "laser.beta_v",
                f"laser.beta_v = {la.beta_v} with laser.c_ref = {la.c_ref} puts the correct-response target "
                f"c_ref + 1/beta_v at {la.c_ref + 1 / la.beta_v:g} ≥ 0, which a log-probability cannot "
                f"reach; use beta_v > {-1 / la.c_ref:.4g} or beta_v: auto",
            )
    check(la.c_ref_samples >= 1, "laser.c_ref_samples", "must be ≥ 1")
    check(la.reasoning_warmup_steps >= 0, "laser.reasoning_warmup_steps", "must be ≥ 0")
    check(la.self_reward_warmup_steps >= 0, "laser.self_reward_warmup_steps", "must be ≥ 0")


def _check_guard_and_logging(check: _Checker) -> None:
    g, lg = check.cfg.guard, check.cfg.logging
    check(0 <= g.collapse_ratio <= 1, "guard.collapse_ratio", "must be in [0, 1] (0 = off)")
    check(0 <= g.length_collapse_ratio <= 1, "guard.length_collapse_ratio", "must be in [0, 1] (0 = off)")
    check(g.collapse_patience >= 1, "guard.collapse_patience", "must be ≥ 1")
    project_ok = lg.wandb_project is None or bool(lg.wandb_project.strip())
    check(project_ok, "logging.wandb_project", "must not be empty")


_CHECKS = (_check_loop_and_data, _check_rollout_and_optim, _check_loss, _check_laser, _check_guard_and_logging)


def _make(data: dict[str, Any], where: Locator) -> TrainConfig:
    cfg = _typed(data, where)
    for check_section in _CHECKS:
        check_section(_Checker(cfg, where))
    return cfg


# ------------------------------------------------------------------------------------------ public


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Build and validate a config from a nested dict (missing keys take their defaults).

    ``source`` names where the dict came from in error messages (a file, a checkpoint, ...).
    """
    if not isinstance(d, dict):
        raise LaserError(f"{source}: the config must be a mapping, got {_kind(d)}")
    return _make(d, lambda key: source)


def config_from_yaml(text: str, source: str = "<string>") -> TrainConfig:
    """Parse and validate a config from YAML text; errors name ``source`` and the line."""
    data, lines = _parse_yaml(text, source)
    return _make(data, _locator(source, lines, {}))


def _locator(source: str, lines: dict[str, int], origins: dict[str, str]) -> Locator:
    """Where a dotted key was set: the override that set it or a section above it, else the file line
    of the key or of its nearest section in the file (a default inside a section the file sets)."""

    def where(key: str) -> str:
        parts = key.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
        origin = next((origins[p] for p in prefixes if p in origins), None)
        line = next((lines[p] for p in prefixes if p in lines), None)
        return origin or (f"{source}:{line}" if line is not None else source)

    return where


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a nested dict of plain values (lists copied)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: TrainConfig, *, comments: bool = True, header: str | None = None) -> str:
    """The config as YAML that :func:`load_config` (and plain PyYAML) reads back to an equal config.

    With ``comments`` every key is preceded by its help text; ``header`` (may span lines) goes on top.
    """
    out = [f"# {line}".rstrip() for line in header.splitlines()] + [""] if header else []
    # block sections, flow lists and one-line strings: line i of the dump is schema key i
    body = _dump(config_to_dict(cfg)).splitlines()
    for line, (_key, f, tp) in zip(body, _walk_schema(), strict=True):
        if dataclasses.is_dataclass(tp) and out and out[-1] != "":
            out.append("")
        if comments:
            out.append(f"{line[: len(line) - len(line.lstrip())]}# {f.metadata['help']}")
        out.append(line)
    return "\n".join(out) + "\n"


def config_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type description, default, help) for every leaf key, in schema order (for docs)."""
    defaults = TrainConfig()
    return [
        (key, _describe(tp), functools.reduce(getattr, key.split("."), defaults), f.metadata["help"])
        for key, f, tp in _walk_schema()
        if not dataclasses.is_dataclass(tp)
    ]


# ---------------------------------------------------------------------------------------- overrides


_NULLS = {"", "~", "null", "Null", "NULL"}


def _parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (dotted key, value read with the file's YAML rules)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise LaserError(f"override '{text}': expected key=value (e.g. train.steps=100)")
    if key not in _schema_keys():
        raise LaserError(f"override '{text}': unknown key '{key}'{_suggest(key)}")
    try:
        value = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        detail = getattr(e, "problem", None) or str(e)
        raise LaserError(f"override '{text}': invalid value ({detail}); quote it if it is a string") from None
    if value is None and raw.strip() not in _NULLS:  # e.g. '#x' is a YAML comment: keep the text
        value = raw
    if value is None and raw.strip() == "" and type(None) not in _members(_schema_keys()[key]):
        value = ""  # `data.instruction=` clears a string; a nullable key becomes null
    return key, value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load ``path`` (YAML; ``None`` = defaults only), apply ``key=value`` overrides in order, validate.

    Override values use the same YAML scalar rules as the file: ``laser.c_ref=auto``, ``optim.lr=1e-6``,
    ``rollout.stop_tokens=[a,b]``, ``logging.wandb_project=null``, ``laser={alpha: 0.5}`` (merged into
    the section). A later override of the same key wins. Errors name the file and line, or the
    override, and suggest the closest valid key.
    """
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        path = resolve_config_path(path)
    source = "" if path is None else str(path)
    if path is not None:
        data, lines = _parse_yaml(_read_text(Path(path)), source)
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = _parse_override(text)
        _set_dotted(data, key, value)
        origins[key] = f"override '{text}'"
    return _make(data, _locator(source, lines, origins))


def resolve_config_path(path: str | Path, base_model: bool = False) -> Path:
    """``path`` itself when it exists; otherwise a shipped config of that name, so an installed
    package serves ``--config paper/qwen2.5-7b-laser.yaml`` (or ``configs/paper/...``) from anywhere.
    ``base_model``: the error lists the shipped ``laser base`` settings (demo/base-*.yaml) instead
    of the training configs."""
    from laser_rl.io import SHIPPED_CONFIGS

    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = SHIPPED_CONFIGS.joinpath(*parts) if parts else SHIPPED_CONFIGS
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.relative_to(SHIPPED_CONFIGS).as_posix() for p in SHIPPED_CONFIGS.glob("*/*.yaml")
                             if p.parent.name != "accelerate" and p.name.startswith("base-") == base_model))
    raise LaserError(f"{path}: config file not found (nor among the shipped configs: {names})")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise LaserError(f"{path}: config file not found")
    if not path.is_file():
        raise LaserError(f"{path}: not a file (expected a YAML config)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LaserError(f"{path}: cannot read config ({e})") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        value = {**node[last], **value}  # `laser={alpha: 0.5}` sets keys of the section, keeps the rest
    node[last] = value
