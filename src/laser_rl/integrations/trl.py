"""LaSeR on TRL: ``LaserGRPOTrainer``, a ``trl.GRPOTrainer`` that also trains the last-token self-reward.

Swap ``GRPOConfig``/``GRPOTrainer`` for :class:`LaserGRPOConfig`/:class:`LaserGRPOTrainer` and keep
everything else (vLLM generation, DeepSpeed, FSDP, PEFT, accelerate launchers). The maths is
``laser_rl.core``'s; this module only wires it into TRL's hooks (tested range: ``trl>=1.16,<1.17``;
the contract tests in ``tests/test_trl_adapter.py`` pin the private methods used here):

- ``_generate_and_score_completions``: after TRL has generated, rewarded and computed its advantages,
  z is placed right after the EOS of every finished completion (``core.append_self_reward_token``) with
  attention on. TRL's fused LM head returns 0 for positions whose label is masked, and derives the
  labels from the attention mask, so z keeps its label and is kept out of the policy loss through the
  loss mask TRL already multiplies in (``tool_mask``). Class-balance weights (Eq. 14) are computed over
  the whole generation batch of all processes. After the warm-ups, the advantages TRL computed are
  mixed with the self-reward advantages (Eq. 15) from the score of the rollout-time policy (one extra
  no-grad forward per generation batch, only while integration is on), and TRL's advantage log is
  rewritten to match.
- ``_get_per_token_logps_and_entropies``: in the loss forward, lp_z is read from the z column of the
  same fused pass (no second pass); that column is then zeroed so TRL's ratio/KL terms see nothing.
- ``_compute_loss``: TRL's loss + α·L_sr, normalised like TRL's token-level losses so that gradient
  accumulation and data parallelism give the update of the whole batch.
- ``save_model``: writes ``laser.json`` beside the weights, so ``laser eval --model DIR`` works unchanged.

The score must come from untempered logits (spec §7.4), and TRL's fused head divides every logit by
``temperature``: the adapter therefore requires ``temperature=1.0`` (the paper's).
"""

from __future__ import annotations

import itertools
import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from laser_rl.core import is_correct
from laser_rl.core import laser as core
from laser_rl.core.settings import LaserSettings, number_or_auto, prefixed_fields, settings_from_prefixed
from laser_rl.errors import LaserError
from laser_rl.score_params import ScoreParams

#: The TRL versions this adapter is tested with (the ``laser-rl[trl]`` extra pins the same range).
SUPPORTED_TRL = ">=1.16,<1.17"


def check_trl_version(found: str) -> None:
    """Refuse a TRL outside :data:`SUPPORTED_TRL`: the adapter overrides private GRPOTrainer methods."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        ok = Version(found) in SpecifierSet(SUPPORTED_TRL)
    except InvalidVersion:
        ok = False
    if not ok:
        raise LaserError(
            f"laser_rl.integrations.trl supports TRL {SUPPORTED_TRL}, found trl {found}: install the tested "
            f"range with pip install 'laser-rl[trl]' (or 'trl{SUPPORTED_TRL}')"
        )


try:
    import trl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"laser_rl.integrations.trl needs TRL: pip install 'laser-rl[trl]' (tested: trl{SUPPORTED_TRL})"
    ) from e
check_trl_version(trl.__version__)

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

_AUTO = "auto"
#: LaserSettings fields the adapter has no argument for: plain GRPO is trl.GRPOTrainer itself, and the
#: reference-model score (reference: model) needs a second model TRL does not keep in sync with z.
TRL_UNSUPPORTED = ("enabled", "reference")
_LASER_FIELDS = prefixed_fields("laser_", exclude=TRL_UNSUPPORTED)


def _trl_name(key: str) -> str:
    return f"laser_{key}"


def _parameter_docs() -> str:
    """The docstring's parameter list, in TRL's format, from the generated fields."""
    out = []
    for name, tp, f in _LASER_FIELDS:
        kind = '`float` or `"auto"`' if name in ("laser_beta_v", "laser_c_ref") else f"`{tp.__name__}`"
        out.append(f"    {name} ({kind}, *optional*, defaults to `{f.default!r}`):\n        {f.metadata['help']}")
    return "\n".join(out)


class LaserGRPOConfig(GRPOConfig):
    # The laser_* fields are added below, generated from LaserSettings (the one owner of their names, defaults,
    # help and checks), before @dataclass reads them.

    def __post_init__(self) -> None:
        super().__post_init__()
        self.laser_beta_v = number_or_auto(self.laser_beta_v, "laser_beta_v")
        self.laser_c_ref = number_or_auto(self.laser_c_ref, "laser_c_ref")
        for key, rule in self.laser_settings.violations(_trl_name):
            raise LaserError(f"laser_{key} {rule}, got {getattr(self, _trl_name(key))!r}")
        if self.temperature != 1.0:
            raise LaserError(
                f"temperature={self.temperature}: LaserGRPOTrainer reads log π(z | x, y, EOS) through TRL's fused LM "
                "head, which divides every logit by the temperature, while the self-reward needs untempered logits; "
                "use temperature=1.0 (the paper's)"
            )

    @property
    def laser_settings(self) -> LaserSettings:
        """The ``laser_*`` arguments as the :class:`LaserSettings` that ``laser train`` uses."""
        return settings_from_prefixed(self, "laser_", _trl_name)


LaserGRPOConfig.__annotations__ = {name: tp for name, tp, _ in _LASER_FIELDS}
for _name, _type, _field in _LASER_FIELDS:
    setattr(LaserGRPOConfig, _name, _field)
LaserGRPOConfig = dataclass(LaserGRPOConfig)  # type: ignore[misc]
LaserGRPOConfig.__doc__ = f"""
    Configuration class for [`LaserGRPOTrainer`]: every [`~trl.GRPOConfig`] parameter plus LaSeR's (paper
    arXiv 2510.14943). Defaults are the paper's: β_v = α = τ = T = 0.1, class-balanced MSE.

    The ``laser_*`` fields are generated from :class:`laser_rl.core.settings.LaserSettings` (``laser train``'s
    ``laser:`` section): the same names (prefixed), defaults, help and checks. ``laser_token``, ``laser_beta_v``
    and ``laser_c_ref`` are typed ``str`` because TRL's command-line parser (HfArgumentParser) reads no
    unions; ``__post_init__`` turns numbers into floats. ``laser_c_ref="auto"`` is measured once (single
    process or DDP) and broadcast; with ZeRO-3/FSDP measure it with ``laser calibrate`` and pass the number.

    > Parameters that control LaSeR

{_parameter_docs()}
    """


# --------------------------------------------------------------------------------------------- score parameters


def _prompt_text(prompt: Any) -> str:
    """The text of a dataset prompt (a string, or a conversation's message contents)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def resolve_score_params(
    model: Any,
    tokenizer: Any,
    args: LaserGRPOConfig,
    *,
    stop_ids: list[int],
    pad_id: int,
    prompts: list[Any],
    tokenize: Any,
    model_folder: str | None,
) -> ScoreParams:
    """z, β_v and c_ref for a TRL run, resolved like ``laser train`` does (one function, by design:
    the project's score owner will replace its body).

    z: ``args.laser_token`` (``auto`` → the model folder's ``laser.json`` token, else a free special token),
    checked by the same :func:`select_self_reward_token` call as ``laser train`` (same errors) and against
    the model's embedding size. c_ref ``auto``: measured with :func:`laser_rl.calibrate.calibrate_c_ref`
    on responses sampled from ``prompts`` (tokenised by ``tokenize``, TRL's own prompt tokenisation).
    β_v ``auto``: :func:`laser_rl.score_params.resolve_beta_v`, the one β_v derivation.
    """
    from laser_rl.integrations.special_token import (
        parse_token_arg,
        resize_embeddings_if_needed,
        select_self_reward_token,
        validate_token_id,
    )
    from laser_rl.rollout.sampler import vocab_size

    saved = ScoreParams.load(model_folder) if model_folder and Path(model_folder).is_dir() else None
    token = parse_token_arg(args.laser_token)
    if token == _AUTO and saved is not None:
        token = saved.token
    token_str, z_id, added = select_self_reward_token(
        tokenizer, token, stop_ids=stop_ids, data_sample_texts=[_prompt_text(p) for p in prompts[:200]],
        add_if_missing=args.laser_add_token_if_missing, force_option=None, add_option="laser_add_token_if_missing=True",
    )
    if added:
        resize_embeddings_if_needed(model, tokenizer)
    validate_token_id(z_id, vocab_size(model), stop_ids, pad_id)

    settings = args.laser_settings
    sampling = None
    if settings.c_ref == _AUTO:
        from laser_rl.rollout import SamplingConfig

        sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
                                  max_new_tokens=args.max_completion_length)
    # the caller (LaserGRPOTrainer._laser_resolve) runs this on the main process and broadcasts the result
    c_ref, c_std, _ = settings.calibrate_c_ref(
        model, tokenizer, tokenize(prompts[: settings.c_ref_samples]) if sampling is not None else [], z_id=z_id,
        stop_ids=stop_ids, pad_id=pad_id, sampling=sampling, seed=args.seed,
    )
    beta_v = settings.resolve_beta_v(c_ref, _trl_name)
    return ScoreParams(token_str, int(z_id), float(beta_v), float(c_ref), c_std)


# --------------------------------------------------------------------------------------------- the trainer


def z_column_logprobs(logps: torch.Tensor, z_column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split TRL's per-token log-probs ``[B, C]`` into lp_z ``[B]`` (float32, NaN where ``z_column`` is −1)
    and the log-probs with the z column zeroed (what TRL's policy/KL terms may see)."""
    has_z = z_column >= 0
    lp = logps.gather(1, z_column.clamp(min=0).unsqueeze(1)).squeeze(1).float()
    lp_z = torch.where(has_z, lp, torch.full_like(lp, float("nan")))
    at_z = (torch.arange(logps.shape[1], device=logps.device).unsqueeze(0) == z_column.unsqueeze(1)) & has_z.unsqueeze(1)
    return lp_z, torch.where(at_z, torch.zeros_like(logps), logps)


# Per-row tensors TRL keeps beside completion_ids (width C) and beside prompt+completion (width P + C).
_COMPLETION_WIDTH_KEYS = ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps",
                          "importance_sampling_ratio")
_SEQUENCE_WIDTH_KEYS = ("token_type_ids", "mm_token_type_ids")
# What _compute_loss passes to the log-prob function besides ids and masks (TRL 1.16's list).
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def sync_colocated_vllm_by_reload(generation: Any) -> bool:
    """On vLLM's CPU backend, make TRL's colocate weight sync use vLLM's in-place ``reload_weights``.

    Why: vLLM's CPU linear layers repack their weight for oneDNN/sgl kernels after loading and leave an
    empty parameter with no ``weight_loader`` in its place, so TRL 1.16's sync (``model.load_weights``,
    one tensor at a time) fails with "'Parameter' object has no attribute 'weight_loader'". The
    ``reload_weights`` worker call takes the same checkpoint-named tensors (TRL's own iterator: FSDP,
    ZeRO-3 and PEFT handled as before) and re-runs the repacking layer by layer, in memory. GPU
    backends keep their weights and TRL's sync unchanged. Returns whether the sync was replaced."""
    from vllm.platforms import current_platform

    if generation.mode != "colocate" or not current_platform.is_cpu():
        return False

    from laser_rl.rollout.vllm_engine import reload_weights_in_memory

    def sync_weights() -> None:
        reload_weights_in_memory(generation.llm, generation._iter_named_params())

    generation.sync_weights = sync_weights
    return True


class LaserGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` + LaSeR (same constructor; ``args`` must be a :class:`LaserGRPOConfig`)."""

    _tag_names = ["trl", "grpo", "laser"]
    _name = "LaSeR-GRPO"

    def __init__(self, model: Any, reward_funcs: Any = None, args: LaserGRPOConfig | None = None, *a: Any, **kw: Any) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = LaserGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-LaSeR")
        if not isinstance(args, LaserGRPOConfig):
            raise LaserError(f"LaserGRPOTrainer needs args=LaserGRPOConfig(...), got {type(args).__name__}")
        super().__init__(model, reward_funcs, args, *a, **kw)
        if self.tools or self.environment_factories is not None or self.rollout_func is not None:
            raise LaserError(
                "LaserGRPOTrainer does not support tools, environment_factory or rollout_func yet: z must follow the "
                "EOS that ends a completion, and multi-turn completions interleave other tokens"
            )
        if self.use_vllm:
            sync_colocated_vllm_by_reload(self.vllm_generation)
        self._laser_z_column: torch.Tensor | None = None  # set around our own log-prob passes
        self._laser_lp_z: torch.Tensor | None = None
        self._laser_rewards_per_func: torch.Tensor | None = None
        self._laser_buffer: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list), "eval": defaultdict(list)
        }
        self.laser_stop_ids = [int(i) for i in self.eos_token_ids]
        self.laser_pad_id = int(self._tokenizer.pad_token_id)
        prompts = self._laser_dataset_prompts(max(200, args.laser_c_ref_samples))
        self.laser_prompt_style = "chat" if prompts and trl.is_conversational({"prompt": prompts[0]}) else "raw"
        self.laser_score = self._laser_resolve(prompts)
        if self.accelerator.is_main_process:
            s = self.laser_score
            print(f"LaSeR: z={s.token!r} (id {s.token_id}), beta_v={s.beta_v:.4g}, c_ref={s.c_ref:.3f}; correct "
                  f"target log-prob {core.correct_target_logprob(s.c_ref, s.beta_v):.2f}", flush=True)

    # ------------------------------------------------------------------ setup

    @property
    def _laser_model_folder(self) -> str | None:
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        return getattr(model.config, "_name_or_path", None)

    def _laser_dataset_prompts(self, n: int) -> list[Any]:
        data = self.train_dataset
        if data is None:
            return []
        return [row["prompt"] for row in itertools.islice(iter(data), n) if "prompt" in row]

    def _laser_resolve(self, prompts: list[Any]) -> ScoreParams:
        from accelerate.utils import broadcast_object_list

        args: LaserGRPOConfig = self.args  # type: ignore[assignment]
        model = self.accelerator.unwrap_model(self.model)
        if args.laser_c_ref == _AUTO and any(p.numel() == 0 for p in model.parameters()):
            raise LaserError(
                "laser_c_ref='auto' cannot sample from a partitioned (ZeRO-3/FSDP) model before training: measure c_ref "
                "with `laser calibrate --model PATH` and pass laser_c_ref=<number>"
            )
        if args.laser_c_ref == _AUTO and not prompts:
            raise LaserError("laser_c_ref='auto' needs a train_dataset with a 'prompt' column to sample from")

        def tokenize(rows: list[Any]) -> list[list[int]]:
            return [list(ids) for ids in self._tokenize_prompts(rows)[0]]

        def resolve() -> ScoreParams:
            was_training = model.training
            try:
                return resolve_score_params(
                    model, self._tokenizer, args, stop_ids=self.laser_stop_ids, pad_id=self.laser_pad_id,
                    prompts=prompts, tokenize=tokenize, model_folder=self._laser_model_folder,
                )
            finally:
                model.train(was_training)

        if self.accelerator.num_processes == 1 or args.laser_c_ref != _AUTO:
            return resolve()
        # c_ref must be the same number on every process: measure once, share it.
        box = [resolve() if self.accelerator.is_main_process else None]
        broadcast_object_list(box)
        return box[0]  # type: ignore[return-value]

    def _laser_phase(self) -> core.LaserPhase:
        a: LaserGRPOConfig = self.args  # type: ignore[assignment]
        return core.laser_phase(self.state.global_step + 1, a.laser_reasoning_warmup_steps, a.laser_self_reward_warmup_steps)

    # ------------------------------------------------------------------ TRL hooks

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._laser_rewards_per_func = rewards_per_func  # [all processes' rows, reward funcs]
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, *a: Any, **kw: Any) -> Any:
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *a, **kw
        )
        if self._laser_z_column is not None:
            self._laser_lp_z, logps = z_column_logprobs(logps, self._laser_z_column)
        return logps, entropies, aux

    def _laser_forward_lp_z(self, model: Any, inputs: dict[str, Any], batch_size: int | None = None) -> torch.Tensor:
        """lp_z ``[B]`` of a batch that carries z, through TRL's own log-prob function."""
        self._laser_z_column = inputs["laser_z_column"]
        try:
            self._get_per_token_logps_and_entropies(
                model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
                torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
                inputs["completion_ids"].size(1), batch_size=batch_size,
                **{k: inputs.get(k) for k in _FORWARD_KEYS},
            )
            lp_z = self._laser_lp_z
        finally:
            self._laser_z_column, self._laser_lp_z = None, None
        assert lp_z is not None
        return lp_z

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        args: LaserGRPOConfig = self.args  # type: ignore[assignment]
        mode = "train" if self.model.training else "eval"
        rewards_per_func, self._laser_rewards_per_func = self._laser_rewards_per_func, None
        assert rewards_per_func is not None
        device = out["completion_ids"].device
        B = out["completion_ids"].shape[0]
        rank = self.accelerator.process_index
        mine = slice(rank * B, (rank + 1) * B)

        # r_v: TRL's weighted reward sum; a completion no reward function scored gets no MSE weight.
        scorable_all = ~torch.isnan(rewards_per_func).all(dim=1)
        rewards_all = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)

        # z right after EOS, attention on; kept out of the policy loss by the loss mask TRL multiplies in.
        comp_ids, comp_mask = out["completion_ids"], out["completion_mask"]
        C = comp_ids.shape[1]
        eos = core.find_eos(comp_ids, self.laser_stop_ids, comp_mask.bool())
        positions = torch.arange(C, device=device).unsqueeze(0).expand(B, C)
        appended = core.append_self_reward_token(
            comp_ids, comp_mask, positions, eos.eos_index, eos.finished, self.laser_score.token_id,
            self.laser_pad_id, self.laser_stop_ids,
        )
        grew = appended.input_ids.shape[1] - C
        out["completion_ids"], out["completion_mask"] = appended.input_ids, appended.attention_mask
        cols = torch.arange(C + grew, device=device).unsqueeze(0)
        out["tool_mask"] = (cols != appended.z_position.unsqueeze(1)).to(comp_mask.dtype)
        if grew:
            for key in _COMPLETION_WIDTH_KEYS + _SEQUENCE_WIDTH_KEYS:
                t = out.get(key)
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] > 1:
                    out[key] = torch.nn.functional.pad(t, (0, grew), value=1.0 if key == "importance_sampling_ratio" else 0)
        finished_all = self.accelerator.gather(eos.finished.to(torch.long)).bool()
        weights_all = core.class_balance_weights(
            rewards_all.float(), finished_all & scorable_all, args.laser_class_balanced, args.laser_correct_threshold
        )
        out["laser_z_column"] = appended.z_position
        out["laser_rewards"] = rewards_all[mine].float()
        out["laser_weights"] = weights_all[mine]
        out["laser_weight_sum"] = weights_all.sum()

        # Eq. 15 on the advantages TRL computed, from the rollout-time policy's score.
        phase = self._laser_phase()
        buf = self._laser_buffer[mode]
        buf["phase_integration"].append(torch.tensor(float(phase.integration)))
        if mode == "train" and phase.integration and args.laser_tau > 0:
            with torch.no_grad():
                lp_z = self._laser_forward_lp_z(self.model, out, batch_size=args.per_device_train_batch_size)
            scores_all = self.accelerator.gather(self.laser_score.score(lp_z))
            adv_all = self.accelerator.gather(out["advantages"])
            group = torch.arange(adv_all.shape[0], device=device) // self.num_generations
            mixed, passed = core.self_reward_advantages(
                adv_all, scores_all, finished_all, group, args.laser_tau, args.laser_filter_threshold
            )
            out["advantages"] = mixed[mine].to(out["advantages"].dtype)
            logged = self._logs["advantages"]  # TRL logged the unmixed advantages of all processes last
            for _ in range(min(mixed.numel(), len(logged))):
                logged.pop()
            logged.extend(mixed.tolist())
            self._metrics[mode]["laser/filter_pass_fraction"].append(passed.float().mean().item())
        return out

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        z_column = inputs.get("laser_z_column")
        if z_column is None:
            return super()._compute_loss(model, inputs)
        args: LaserGRPOConfig = self.args  # type: ignore[assignment]
        self._laser_z_column = z_column
        try:
            loss = super()._compute_loss(model, inputs)
            lp_z = self._laser_lp_z
        finally:
            self._laser_z_column, self._laser_lp_z = None, None
        assert lp_z is not None
        mode = "train" if self.model.training else "eval"
        step = self.state.global_step + 1
        phase = self._laser_phase()
        alpha = core.alpha_schedule(step, args.laser_alpha, args.laser_reasoning_warmup_steps,
                                    args.laser_alpha_warmup_steps) if phase.mse else 0.0
        finished = z_column >= 0
        scores = self.laser_score.score(lp_z, finished=finished)  # 0 where unfinished: no EOS, no score
        # Like TRL's token-level losses: the weight sum spans the generation batch of all processes, so rescale
        # it to one accumulation window on one process (DDP averages the processes' gradients).
        normalizer = inputs["laser_weight_sum"] / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        mse = core.class_balanced_mse(scores, inputs["laser_rewards"], finished, weights=inputs["laser_weights"],
                                      weight_sum=normalizer)
        if alpha > 0:
            loss = loss + alpha * mse
        self._laser_record(mode, scores.detach(), lp_z.detach(), inputs, alpha, phase)
        return loss

    # ------------------------------------------------------------------ metrics

    def _laser_record(self, mode: str, scores: torch.Tensor, lp_z: torch.Tensor, inputs: dict[str, Any],
                      alpha: float, phase: core.LaserPhase) -> None:
        """Collect one micro-batch; at the end of an optimisation step log the step's batch-level metrics."""
        finished = inputs["laser_z_column"] >= 0
        w, r = inputs["laser_weights"], inputs["laser_rewards"]
        sq = torch.where(finished, (scores - r) ** 2, torch.zeros_like(scores))
        buf = self._laser_buffer[mode]
        buf["score"].append(scores)  # already 0 where unfinished (ScoreParams.score)
        buf["lp_z"].append(torch.where(finished, lp_z, torch.zeros_like(lp_z)))
        buf["reward"].append(r)
        buf["finished"].append(finished.float())
        buf["sums"].append(torch.stack([(w * sq).sum(), w.sum()]))
        if mode == "train" and not self.accelerator.sync_gradients:
            return
        from laser_rl.evaluation.metrics import verification_metrics

        gather = self.accelerator.gather
        score = gather(torch.cat(buf["score"])).cpu().numpy()
        lp = gather(torch.cat(buf["lp_z"])).cpu()
        reward = gather(torch.cat(buf["reward"])).cpu().numpy()
        fin = gather(torch.cat(buf["finished"])).cpu().bool()
        sums = self.accelerator.reduce(torch.stack(buf["sums"]).sum(dim=0), reduction="sum")
        integration = [float(x) for x in buf["phase_integration"]]
        buf.clear()
        correct = is_correct(reward, self.args.laser_correct_threshold)  # type: ignore[attr-defined]
        v = verification_metrics(score, correct)
        m = self._metrics[mode]
        m["laser/sr_loss"].append(float(sums[0] / sums[1].clamp(min=torch.finfo(sums.dtype).tiny)))
        # undefined values are NaN, which TRL's log averages away (None where nothing is defined)
        nan = float("nan")
        m["laser/score_mean"].append(float(score[fin.numpy()].mean()) if fin.any() else nan)
        m["laser/score_mean_correct"].append(float(score[correct].mean()) if correct.any() else nan)
        m["laser/score_mean_incorrect"].append(float(score[~correct].mean()) if (~correct).any() else nan)
        m["laser/lp_z_mean"].append(float(lp[fin].mean()) if fin.any() else nan)
        for key in ("tpr", "tnr", "hm_tpr_tnr", "auroc"):
            m[f"laser/{key}"].append(nan if v[key] is None else v[key])
        m["laser/alpha"].append(alpha)
        m["laser/phase_mse"].append(float(phase.mse))
        m["laser/phase_integration"].append(max(integration) if integration else float(phase.integration))

    # ------------------------------------------------------------------ saving and leaving

    def finish(self) -> None:
        """End a multi-process run (torchrun / accelerate launch) after the last ``save_model``, on every rank.

        Releases the accelerator's DDP wrapper, which holds its own reference to the process group,
        then every rank waits for the others and the group is destroyed while Python is still up. Left to
        interpreter shutdown, a gloo group's teardown can abort a rank (SIGABRT, "terminate called without
        an active exception") after the run has succeeded. The trainer cannot train again afterwards.
        A no-op beyond releasing the wrapper in a single process.
        """
        from laser_rl.training.sharding import leave_process_group

        self.accelerator.free_memory()
        self.model_wrapped = self.model
        leave_process_group()


    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's save, plus ``laser.json`` (and the embedded task's ``task.json``) so ``laser eval`` reads the score."""
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        from laser_rl.io import write_text_atomic

        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        s = self.laser_score
        extra = dict(s.extra, stop_ids=self.laser_stop_ids, prompt_style=self.laser_prompt_style,
                     max_new_tokens=self.args.max_completion_length, step=self.state.global_step, trainer="trl")
        replace(s, extra=extra).save(folder)
        base = self._laser_model_folder
        task = Path(base) / "task.json" if base else None
        if task is not None and task.is_file() and task.resolve() != (folder / "task.json").resolve():
            write_text_atomic(folder / "task.json", task.read_text(encoding="utf-8"))
        if hasattr(self.accelerator.unwrap_model(self.model), "peft_config"):
            warnings.warn(
                f"{folder} holds a PEFT adapter: merge it (model.merge_and_unload()) and save the full model with "
                "laser.json before `laser eval`", stacklevel=2,
            )
