"""Checking a ``laser train`` config: the schema walk, pydantic's type check turned into one-line errors
that name the file and line (or the override) and the closest valid key, and the semantic rules a type
cannot express (ranges, required keys, cross-field rules; the ``laser:`` rules are LaserSettings').

**pydantic v2** checks the types: its strict JSON-mode validation of the plain dataclasses of
:mod:`laser_rl.training.config_schema` promotes an integer to a float where a float is expected and
converts nothing else; ``Literal`` and unions such as ``float | Literal["auto"]`` work as written;
unknown keys are rejected with their path.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import ConfigDict, TypeAdapter, ValidationError

from laser_rl.errors import LaserError
from laser_rl.training.config_schema import TrainConfig
from laser_rl.training.config_yaml import dump_yaml, kind_of

__all__ = ["Locator", "at", "describe_type", "locator", "make_config", "schema_keys", "suggest_key",
           "union_members", "walk_schema"]

Locator = Callable[[str], str]  # dotted key -> where it was set ("file:line", "override '...'", or "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def walk_schema(cls: type = TrainConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) for every section and leaf, depth first, in schema order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        yield prefix + f.name, f, tp
        if dataclasses.is_dataclass(tp):
            yield from walk_schema(tp, f"{prefix}{f.name}.")


@functools.cache
def schema_keys() -> dict[str, Any]:
    return {key: tp for key, _, tp in walk_schema()}


@functools.cache
def _validator() -> TypeAdapter[TrainConfig]:
    """pydantic's validator for the schema, built on first use (import stays cheap)."""
    # strict: nothing converted but int -> float; forbid: unknown keys are errors; no NaN/inf
    strict = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    for cls in [TrainConfig, *(tp for tp in schema_keys().values() if dataclasses.is_dataclass(tp))]:
        cls.__pydantic_config__ = strict  # type: ignore[attr-defined]  # pydantic's hook for plain dataclasses
    return TypeAdapter(TrainConfig)


def suggest_key(key: str) -> str:
    """' (did you mean 'x.y'?)' for an unknown dotted key, or ''."""
    keys = list(schema_keys())
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


def at(location: str) -> str:
    return f"{location}: " if location else ""


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        args = get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        return f"a list of {describe_type(item).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "null" if tp is type(None) else str(tp))


def union_members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (the type itself otherwise)."""
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _typed(data: dict[str, Any], where: Locator) -> TrainConfig:
    """``data`` as a TrainConfig: pydantic checks every type; its first error becomes our message."""
    sections = {k: {} for k, v in data.items() if v is None and dataclasses.is_dataclass(schema_keys().get(k))}
    data = {**data, **sections}  # a section whose keys are all commented out reads as null: defaults

    def not_json(value: Any) -> Any:
        raise LaserError(f"{at(where(''))}unsupported value {value!r}: use strings, numbers, booleans, lists")

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
            return LaserError(f"{at(where(key))}unknown key '{key}'{suggest_key(key)}")
    if dataclasses.is_dataclass(tp):
        return LaserError(f"{at(where(key))}'{key}' is a section: expected a mapping, got {kind_of(value)}")
    msg = f"{at(where(key))}{key}: expected {describe_type(tp)}, got {kind_of(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        msg += " (must be finite)"
    choices = [str(c) for m in union_members(tp) if get_origin(m) is Literal for c in get_args(m)]
    near = difflib.get_close_matches(value, choices, n=1, cutoff=0.5) if isinstance(value, str) else []
    if near:
        msg += f" (did you mean {near[0]!r}?)"
    if isinstance(value, (dict, list)) and str in union_members(tp):
        msg += " (quote text containing ': ', ' #' or brackets)"
    return LaserError(msg)


# --------------------------------------------------------------------------------------- validation


@dataclass
class _Checker:
    """Semantic checks a type cannot express; each error names the key and where it was set."""

    cfg: TrainConfig
    where: Locator

    def fail(self, key: str, message: str) -> None:
        raise LaserError(f"{at(self.where(key))}{message}")

    def __call__(self, ok: bool, key: str, rule: str) -> None:
        if not ok:
            value: Any = self.cfg
            for part in key.split("."):
                value = getattr(value, part)
            self.fail(key, f"{key} {rule}, got {dump_yaml(value)}")

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
    rule = "must be > 0 for training: the training forward divides the logits by it (greedy, 0, is for laser eval)"
    check(r.temperature > 0, "rollout.temperature", rule)
    check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    check(r.top_k >= 0, "rollout.top_k", "must be ≥ 0 (0 = off)")
    check(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be ≥ 1")
    check(r.batch_size >= 0, "rollout.batch_size", "must be ≥ 0 (0 = one training step's responses)")
    check(all(s for s in r.stop_tokens), "rollout.stop_tokens", "must not contain empty strings")
    check(0 < r.vllm_gpu_memory_utilization <= 1, "rollout.vllm_gpu_memory_utilization", "must be in (0, 1]")
    check(r.vllm_kv_cache_gib > 0, "rollout.vllm_kv_cache_gib", "must be > 0 (GiB)")
    check(r.is_clip > 0, "rollout.is_clip", "must be > 0 (the importance weight's upper bound; 2.0 as in verl/TRL)")
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
    """The ``laser:`` rules are LaserSettings' own (the TRL adapter applies the same ones)."""
    la = check.cfg.laser
    for name, rule in la.violations(lambda key: f"laser.{key}"):
        check(False, f"laser.{name}", rule)


def _check_guard_and_logging(check: _Checker) -> None:
    g, lg = check.cfg.guard, check.cfg.logging
    check(0 <= g.collapse_ratio <= 1, "guard.collapse_ratio", "must be in [0, 1] (0 = off)")
    check(0 <= g.length_collapse_ratio <= 1, "guard.length_collapse_ratio", "must be in [0, 1] (0 = off)")
    check(g.collapse_patience >= 1, "guard.collapse_patience", "must be ≥ 1")
    project_ok = lg.wandb_project is None or bool(lg.wandb_project.strip())
    check(project_ok, "logging.wandb_project", "must not be empty")


_CHECKS = (_check_loop_and_data, _check_rollout_and_optim, _check_loss, _check_laser, _check_guard_and_logging)


def make_config(data: dict[str, Any], where: Locator) -> TrainConfig:
    cfg = _typed(data, where)
    for check_section in _CHECKS:
        check_section(_Checker(cfg, where))
    return cfg


def locator(source: str, lines: dict[str, int], origins: dict[str, str]) -> Locator:
    """Where a dotted key was set: the override that set it or a section above it, else the file line
    of the key or of its nearest section in the file (a default inside a section the file sets)."""

    def where(key: str) -> str:
        parts = key.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
        origin = next((origins[p] for p in prefixes if p in origins), None)
        line = next((lines[p] for p in prefixes if p in lines), None)
        return origin or (f"{source}:{line}" if line is not None else source)

    return where
