"""The LaSeR settings, once: fields, defaults, help, checks and the c_ref calibration entry point.

``laser train``'s ``laser:`` section (:class:`laser_rl.training.config.LaserConfig`) *is* this
dataclass, and the TRL adapter's ``LaserGRPOConfig`` generates its ``laser_*`` fields from it
(:func:`prefixed_fields`), so a default, a help text or a rule changes in one place for both.
Importable without torch (loading a config must not load torch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from laser_rl.core import CORRECT_THRESHOLD, DEFAULT_TARGET_LOGPROB, correct_target_logprob

__all__ = ["LaserSettings", "number_or_auto", "prefixed_fields", "settings_field", "settings_from_prefixed"]


def settings_field(default: Any, doc: str) -> Any:
    """A dataclass field with help text in ``metadata["help"]``; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


_f = settings_field


@dataclass
class LaserSettings:
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
        DEFAULT_TARGET_LOGPROB, "Only for beta_v auto: log π(z) a correct response should reach (c_ref + 1/β_v)."
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
        CORRECT_THRESHOLD, "A response counts as correct (MSE class, TPR/TNR) when its verifier reward > this."
    )

    # ------------------------------------------------------------------------------------------ checks

    def violations(self, name: Callable[[str], str] = str) -> Iterator[tuple[str, str]]:
        """Every broken rule as (field, message without the value); ``name`` spells a field the way the
        caller's users write it (``laser.tau`` in a YAML config, ``laser_tau`` on TRL's command line)."""
        token_ok = self.token >= 0 if isinstance(self.token, int) else bool(self.token)
        if not token_ok:
            yield "token", "must be a token id >= 0, a token string or auto"
        if not (self.beta_v == "auto" or self.beta_v > 0):
            yield "beta_v", "must be > 0 or auto"
        if not self.target_logprob < 0:
            yield "target_logprob", "must be < 0 (a log-probability)"
        for key in ("alpha", "alpha_warmup_steps", "filter_threshold", "reasoning_warmup_steps",
                    "self_reward_warmup_steps"):
            if not getattr(self, key) >= 0:
                yield key, "must be >= 0"
        if not 0 <= self.tau <= 1:
            yield "tau", "must lie in [0, 1]"
        if not self.c_ref_samples >= 1:
            yield "c_ref_samples", "must be >= 1"
        if self.c_ref == "auto":
            return
        if not self.c_ref < 0:
            yield "c_ref", "must be < 0 (a log-probability) or auto"
        elif self.beta_v == "auto":
            if not self.target_logprob > self.c_ref:
                yield "target_logprob", f"must be > {name('c_ref')} ({self.c_ref}) for {name('beta_v')} auto"
        elif self.beta_v > 0 and (target := correct_target_logprob(self.c_ref, self.beta_v)) >= 0:
            yield "beta_v", (
                f"= {self.beta_v} with {name('c_ref')} = {self.c_ref} puts the correct-response target "
                f"c_ref + 1/beta_v at {target:g} >= 0, which a log-probability cannot reach; use "
                f"{name('beta_v')} > {-1 / self.c_ref:.4g} or auto"
            )

    # ------------------------------------------------------------------------------------- the score

    def resolve_beta_v(self, c_ref: float, name: Callable[[str], str] = lambda key: f"laser.{key}") -> float:
        """β_v for a measured/configured c_ref: ``auto`` puts a correct response's target at target_logprob."""
        from laser_rl.score_params import resolve_beta_v

        return resolve_beta_v(self.beta_v, c_ref, self.target_logprob, name("beta_v"), name("target_logprob"))

    def calibrate_c_ref(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[Sequence[int]],
        *,
        z_id: int,
        stop_ids: Sequence[int],
        pad_id: int,
        sampling: Any,
        seed: int,
        sample_here: bool = True,
        broadcast: Callable[[list[Any]], None] | None = None,
    ) -> tuple[float, float | None, int]:
        """(c_ref, its std, the finished responses it was measured on): the configured number (std None,
        count 0), or for ``auto`` the mean log π(z | x, y, EOS) over ``c_ref_samples`` responses sampled
        from ``prompts`` on the initial model (all of them: ``n`` is passed, so nothing caps the count).

        Measured once and shared, so every process scores with the same number: only where
        ``sample_here`` (the main process; every process when the model is sharded and sampling is a
        collective), then ``broadcast`` (e.g. ``accelerate.utils.broadcast_object_list``: fills the
        one-item list from the main process) hands the main process's result to the others.
        """
        if self.c_ref != "auto":
            return float(self.c_ref), None, 0
        box: list[Any] = [None]
        if sample_here:
            from laser_rl.calibrate import calibrate_c_ref

            mean, std, count = calibrate_c_ref(
                model, tokenizer, list(prompts)[: self.c_ref_samples], z_id=z_id, stop_ids=stop_ids, pad_id=pad_id,
                n=self.c_ref_samples, config=sampling, seed=seed,
            )
            box = [(float(mean), float(std), int(count))]
        if broadcast is not None:
            broadcast(box)
        if box[0] is None:
            raise RuntimeError("c_ref was measured on no process: pass sample_here=True on the main process")
        return box[0]


def _plain(tp: Any) -> Any:
    """The type a command-line parser can read for a settings type: unions and literals become ``str``."""
    return tp if tp in (bool, int, float, str) else str


def prefixed_fields(prefix: str, exclude: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(prefix + name, type, dataclasses.field)`` for every :class:`LaserSettings` field not in
    ``exclude``, for :func:`dataclasses.make_dataclass`: same defaults and help. A union or literal
    (``token``, ``beta_v``, ``c_ref``) becomes ``str`` with its default written as text, since
    ``HfArgumentParser`` reads no unions; :func:`settings_from_prefixed` reads the text back."""
    from typing import get_type_hints

    hints = get_type_hints(LaserSettings)
    out = []
    for f in dataclasses.fields(LaserSettings):
        if f.name in exclude:
            continue
        tp = _plain(hints[f.name])
        default = f.default if tp is not str or isinstance(f.default, str) else str(f.default)
        out.append((prefix + f.name, tp, field(default=default, metadata={"help": f.metadata["help"]})))
    return out


def number_or_auto(value: Any, name: str) -> float | str:
    """A setting that is a number or "auto" (strings come from a command line)."""
    from laser_rl.errors import LaserError

    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return "auto"
        try:
            value = float(text)
        except ValueError:
            raise LaserError(f"{name} must be a number or 'auto', got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LaserError(f"{name} must be a finite number or 'auto', got {value!r}")
    return float(value)


def settings_from_prefixed(obj: Any, prefix: str, name: Callable[[str], str]) -> LaserSettings:
    """The :class:`LaserSettings` held in ``obj``'s ``prefix + field`` attributes (fields ``obj`` lacks keep
    their defaults); number-or-auto text is read back as a number."""
    values = {f.name: getattr(obj, prefix + f.name) for f in dataclasses.fields(LaserSettings)
              if hasattr(obj, prefix + f.name)}
    for key in ("beta_v", "c_ref"):
        if key in values:
            values[key] = number_or_auto(values[key], name(key))
    return LaserSettings(**values)
