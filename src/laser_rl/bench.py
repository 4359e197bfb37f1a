"""Benchmarks of the rollout engine, measured side by side in one process (``laser bench``).

Three ratios, each on a tiny model (the embedded model's shape, or a folder given with
``--model``) and on a larger random model (keys ``<name>_tiny`` / ``<name>_large``; the plain key
is the larger model's value):

- ``sampler_vs_generate``: tokens/s of ``laser_rl.rollout.sample`` ÷ tokens/s of
  ``model.generate`` with the same settings (sampling at T = 1, no top-k/top-p, same prompts and
  batch, no stop id so both produce exactly ``max_new_tokens`` per row). Target ≥ 1.
- ``score_overhead``: time of sampling with the score (z given) ÷ without it. Target ≤ 1.02.
- ``score_vs_reforward``: the extra time of the in-loop score ÷ the time of re-scoring the same
  responses with the teacher-forced scorer (the reference code's approach). Target ≤ 0.1.

How the score's extra time is measured. Both runs use the same seed and mask z, so they sample the
very same tokens and differ only by the score. But its cost (~1% of a run) is far below the
run-to-run noise of a shared machine (±5-20%), so the difference of whole-run times cannot resolve
it. The headline values therefore time the score's own work inside the with-score run
(:class:`ScoreTiming`, an observer of the sampler's decoding loop): the lp_z reads, any decode step that runs only for the score,
and the finished rows that ride along one more step, charged at the marginal cost of a row in a
decode step (least-squares slope of step time vs. rows, pooled over repetitions):
``score_overhead = 1 + extra / t_without`` and ``score_vs_reforward = extra / t_rescore``. As
cross-checks the results also hold the whole-run estimates (``*_by_difference``: median of the
paired ratios/differences, noisy) and an upper bound that charges ride-along rows their average
share of a step (``score_vs_reforward_upper_bound``).

Repetitions are interleaved (A, B, A, B, ...; the score pair alternates its order) and every value
is a median over repetitions; the tiny model, whose runs take ~0.1 s, gets ``TINY_REPS_FACTOR``×
more repetitions.

To score a random model at realistic lengths, its stop set is EOS plus enough other ids that a row
stops with probability ≈ 2 / max_new_tokens per step (a random model is close to uniform); a loaded
model stops on its own EOS ids.

Other measurements plug in through ``EXTRA_BENCHMARKS`` (see ``register_benchmark``).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from laser_rl.errors import LaserError

TARGETS: dict[str, tuple[str, float]] = {
    "sampler_vs_generate": (">=", 1.0),
    "score_overhead": ("<=", 1.02),
    "score_vs_reforward": ("<=", 0.1),
    "laser_vs_grpo_step": ("<=", 1.03),
}


@dataclass
class BenchModel:
    """A model under test and the ids the benchmarks need (all derived from its config/folder)."""

    name: str  # "tiny" or "large": the key suffix
    model: Any
    pad_id: int
    z_id: int
    eos_id: int
    stop_ids: frozenset[int]  # stop set used for the score benchmarks
    prompts: list[list[int]]
    description: str


@dataclass
class BenchContext:
    """What a benchmark function receives: the models, settings and a progress logger."""

    models: list[BenchModel]
    reps: int
    max_new_tokens: int
    seed: int
    log: Callable[[str], None]
    extra: dict[str, Any] = field(default_factory=dict)


# The tiny model's runs take ~0.1 s: repeat them more to tame the noise.
TINY_REPS_FACTOR = 3

BenchFn = Callable[[BenchContext], dict[str, float]]

# Further measurements (e.g. the lead's ``laser_vs_grpo_step``): each returns {key: value} that is
# merged into the results. Register with ``register_benchmark``.
EXTRA_BENCHMARKS: list[BenchFn] = []


def register_benchmark(fn: BenchFn) -> BenchFn:
    """Decorator: add ``fn`` to the benchmarks ``run_bench`` runs after the built-in ones."""
    EXTRA_BENCHMARKS.append(fn)
    return fn


# ----------------------------------------------------------------------------------------------
# Models.


def _random_llama(
    vocab: int, hidden: int, layers: int, heads: int, mlp: int, context: int, seed: int
) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _first_id(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return None


def _bench_model(
    name: str, model: torch.nn.Module, z_id: int | None, synthetic_stops: bool, batch: int, T: int, seed: int
) -> BenchModel:
    """Derive pad/eos/z/stop ids from the model's config and draw random prompts of 8..24 tokens."""
    cfg = model.config
    vocab = int(model.get_input_embeddings().weight.shape[0])
    eos_cfg = cfg.eos_token_id if cfg.eos_token_id is not None else model.generation_config.eos_token_id
    eos = _first_id(eos_cfg)
    if eos is None:
        raise LaserError(f"model '{name}': config has no eos_token_id")
    eos_all = {eos} if isinstance(eos_cfg, int) else {int(e) for e in eos_cfg}
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else eos
    special = {pad, *eos_all}
    if z_id is None:  # any id that is not special will do for timing
        z_id = max(set(range(vocab)) - special)
    special.add(z_id)
    stops = set(eos_all)
    if synthetic_stops:
        want = max(1, round(2 * vocab / T))
        extra = [i for i in range(vocab - 1, -1, -1) if i not in special][: max(0, want - len(stops))]
        stops.update(extra)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 25, (batch,), generator=g).tolist()
    allowed = torch.tensor(sorted(set(range(vocab)) - special - stops))
    prompts = [allowed[torch.randint(len(allowed), (n,), generator=g)].tolist() for n in lengths]
    n_params = sum(p.numel() for p in model.parameters())
    desc = (
        f"{type(model).__name__}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {vocab}, "
        f"{n_params / 1e6:.2f}M params; pad {pad}, eos {eos}, z {z_id}, {len(stops)} stop id(s)"
    )
    return BenchModel(name, model, int(pad), int(z_id), eos, frozenset(stops), prompts, desc)


def _load_models(
    model_dir: str | None, include_large: bool, batch: int, T: int, seed: int, tiny_heads: int = 4
) -> list[BenchModel]:
    models = []
    if model_dir is not None:
        from transformers import AutoModelForCausalLM

        from laser_rl.score_params import ScoreParams

        path = Path(model_dir)
        if not path.is_dir():
            raise LaserError(f"--model {model_dir}: not a folder")
        try:
            tiny = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as e:
            raise LaserError(f"--model {model_dir}: cannot load a causal LM ({e})") from None
        params = ScoreParams.load(path)
        z = params.token_id if params is not None else None
        models.append(_bench_model("tiny", tiny, z, False, batch, T, seed))
    else:
        tiny = _random_llama(vocab=18, hidden=64, layers=4, heads=tiny_heads, mlp=192, context=256, seed=seed)
        models.append(_bench_model("tiny", tiny, None, True, batch, T, seed))
    if include_large:
        large = _random_llama(vocab=32000, hidden=512, layers=8, heads=8, mlp=1376, context=512, seed=seed)
        models.append(_bench_model("large", large, None, True, batch, T, seed))
    return models


# ----------------------------------------------------------------------------------------------
# Measurements.


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class ScoreTiming:
    """A sampler observer (``rollout.sampler.DecodeObserver``) measuring what the in-loop score costs.

    The score's extra work is (1) reading lp_z from logits, (2) decode steps that run only because
    a row awaits its score (at most one per call) and (3) rows riding along one more step in a
    batch that decodes anyway. (3) is charged at the marginal cost of a row in a decode step,
    estimated by a least-squares fit of step time against batch rows over all timed steps
    (``proportional_s`` gives the cruder average-cost charge, an upper bound). Whole-run time
    differences are too noisy on a shared machine to resolve a cost this small. Each timed section
    synchronises the accelerator.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    lp_z_reads_s: float = 0.0
    score_only_steps: int = 0
    score_only_steps_s: float = 0.0
    pending_row_steps: int = 0
    proportional_s: float = 0.0  # pending rows' share of the steps they ride in
    step_rows: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @contextlib.contextmanager
    def reading_scores(self) -> Iterator[None]:
        t0 = _clock(self.device)
        yield
        self.lp_z_reads_s += _clock(self.device) - t0

    @contextlib.contextmanager
    def decode_step(self, rows: int, pending_rows: int, score_only: bool) -> Iterator[None]:
        t0 = _clock(self.device)
        yield
        dt = _clock(self.device) - t0
        if pending_rows and score_only:  # nothing left to generate: the step exists only for the score
            self.score_only_steps += 1
            self.score_only_steps_s += dt
            return
        self.step_rows.append(rows)
        self.step_seconds.append(dt)
        if pending_rows:
            self.pending_row_steps += pending_rows
            self.proportional_s += dt * pending_rows / rows

    def marginal_row_s(self) -> float:
        """Seconds one more row adds to a decode step (slope of step time vs. rows, >= 0)."""
        n = len(self.step_rows)
        if n < 2:
            return 0.0
        mx, my = sum(self.step_rows) / n, sum(self.step_seconds) / n
        sxx = sum((x - mx) ** 2 for x in self.step_rows)
        if sxx == 0:
            return my / mx if mx else 0.0
        sxy = sum((x - mx) * (y - my) for x, y in zip(self.step_rows, self.step_seconds))
        return max(0.0, sxy / sxx)

    def extra_s(self, marginal_row_s: float | None = None) -> float:
        """Estimated seconds the score added (pass a pooled marginal row cost to reduce noise)."""
        per_row = self.marginal_row_s() if marginal_row_s is None else marginal_row_s
        return self.lp_z_reads_s + self.score_only_steps_s + self.pending_row_steps * per_row


def _sampler_vs_generate(ctx: BenchContext, bm: BenchModel, reps: int) -> dict[str, float]:
    """Throughput of the built-in sampler vs ``model.generate``: same prompts, T tokens each, no stop."""
    from transformers import GenerationConfig

    from laser_rl.rollout import SamplingConfig, sample

    model, T, B = bm.model, ctx.max_new_tokens, len(bm.prompts)
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T)
    width = max(len(p) for p in bm.prompts)
    ids = torch.tensor([[bm.pad_id] * (width - len(p)) + p for p in bm.prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in bm.prompts])
    gen_cfg = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T, pad_token_id=bm.pad_id
    )

    def ours() -> Any:
        return sample(model, bm.prompts, pad_id=bm.pad_id, stop_ids=(), config=cfg,
                      generator=torch.Generator().manual_seed(ctx.seed))

    def theirs() -> Any:
        torch.manual_seed(ctx.seed)
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, generation_config=gen_cfg)

    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # no stop: every row generates exactly T tokens
    try:
        ctx.log(f"[{bm.name}] warm-up")
        ours()
        out = theirs()
        if out.shape[1] - width != T:
            raise RuntimeError(f"model.generate produced {out.shape[1] - width} tokens instead of {T}")
        speed = []
        for r in range(reps):
            t_ours, _ = timed(ours)
            t_gen, _ = timed(theirs)
            speed.append((t_ours, t_gen))
            ctx.log(f"[{bm.name}] throughput rep {r + 1}/{reps}: sampler {t_ours:.3f}s, generate {t_gen:.3f}s")
    finally:
        model.generation_config.eos_token_id = saved_eos
    n = bm.name
    return {
        f"sampler_vs_generate_{n}": median([b / a for a, b in speed]),
        f"sampler_tokens_per_s_{n}": B * T / median([a for a, _ in speed]),
        f"generate_tokens_per_s_{n}": B * T / median([b for _, b in speed]),
    }


def _in_loop_score_cost(ctx: BenchContext, bm: BenchModel, reps: int) -> dict[str, float]:
    """What reading lp_z inside the sampling loop costs, against sampling without it and against a
    teacher-forced re-scoring forward (the reference code's way)."""
    from laser_rl.rollout import SamplingConfig, sample, score_responses

    cfg = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=ctx.max_new_tokens)

    def sampled(with_z: bool, observer: ScoreTiming | None = None) -> Any:
        return sample(bm.model, bm.prompts, pad_id=bm.pad_id, stop_ids=bm.stop_ids, config=cfg,
                      z_id=bm.z_id if with_z else None, suppress_ids=() if with_z else (bm.z_id,),
                      generator=torch.Generator().manual_seed(ctx.seed + 1), observer=observer)

    scored = sampled(True)
    sampled(False)
    responses, fin = scored.responses(), scored.finished

    def rescore() -> torch.Tensor:
        return score_responses(bm.model, bm.prompts, responses, z_id=bm.z_id, pad_id=bm.pad_id,
                               stop_ids=bm.stop_ids, eos_id=bm.eos_id, batch_size=len(bm.prompts))

    tf = rescore()
    score, timings = [], []
    for r in range(reps):
        timing = ScoreTiming(device=bm.model.device)
        t = {}
        # alternate the order within a repetition so neither run always follows the re-scoring
        for with_z in ((True, False) if r % 2 == 0 else (False, True)):
            t[with_z], _ = timed(lambda w=with_z, tm=timing: sampled(w, tm if w else None))
        t_tf, _ = timed(rescore)
        timings.append(timing)
        score.append((t[True], t[False], t_tf))
        ctx.log(
            f"[{bm.name}] score rep {r + 1}/{reps}: with z {t[True]:.3f}s (score part "
            f"{timing.extra_s() * 1e3:.2f}ms, {timing.score_only_steps} score-only step), "
            f"without {t[False]:.3f}s, teacher-forced re-scoring {t_tf:.3f}s"
        )
    # one marginal cost per decode row, fitted on the steps of every repetition together
    pooled = ScoreTiming(step_rows=[x for tm in timings for x in tm.step_rows],
                         step_seconds=[x for tm in timings for x in tm.step_seconds])
    row_cost = pooled.marginal_row_s()
    n = bm.name
    t_without = median([x[1] for x in score])
    t_tf = median([x[2] for x in score])
    t_extra = median([tm.extra_s(row_cost) for tm in timings])
    diff = (scored.lp_z[fin] - tf[fin]).abs()
    return {
        f"score_overhead_{n}": 1.0 + t_extra / t_without,
        f"score_vs_reforward_{n}": t_extra / t_tf,
        f"score_overhead_by_difference_{n}": median([w / wo for w, wo, _ in score]),
        f"score_vs_reforward_by_difference_{n}": median([w - wo for w, wo, _ in score]) / t_tf,
        f"score_vs_reforward_upper_bound_{n}": median([tm.extra_s(0.0) + tm.proportional_s for tm in timings]) / t_tf,
        f"sample_with_score_s_{n}": median([x[0] for x in score]),
        f"sample_without_score_s_{n}": t_without,
        f"in_loop_score_s_{n}": t_extra,
        f"decode_row_marginal_s_{n}": row_cost,
        f"score_only_steps_{n}": median([float(tm.score_only_steps) for tm in timings]),
        f"teacher_forced_rescore_s_{n}": t_tf,
        f"finished_fraction_{n}": float(fin.float().mean()),
        f"mean_response_tokens_{n}": float(scored.response_mask.sum(1).float().mean()),
        f"lp_z_in_loop_vs_teacher_forced_max_abs_diff_{n}": float(diff.max()) if diff.numel() else float("nan"),
    }


def bench_rollout(ctx: BenchContext, bm: BenchModel) -> dict[str, float]:
    """The three built-in ratios for one model (see the module docstring)."""
    reps = ctx.reps * TINY_REPS_FACTOR if bm.name == "tiny" else ctx.reps  # tiny runs are cheap
    return {**_sampler_vs_generate(ctx, bm, reps), **_in_loop_score_cost(ctx, bm, reps)}


def run_bench(
    model_dir: str | None = None,
    *,
    reps: int = 5,
    batch: int = 16,
    max_new_tokens: int = 64,
    include_large: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    engine: str = "hf",
) -> dict[str, float]:
    """Run every benchmark; return {key: value} (ratios with suffixes ``_tiny``/``_large`` and plain keys).
    ``engine="vllm"`` adds vLLM's throughput beside the built-in sampler and ``model.generate``
    (:func:`laser_rl.bench_vllm.vllm_throughput`); the random tiny model then has 2 heads (head size 32, which vLLM's CPU
    attention needs) instead of 4."""
    if reps < 1 or batch < 1 or max_new_tokens < 1:
        raise LaserError("reps, batch and max_new_tokens must all be >= 1")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    log(f"building models (torch threads: {torch.get_num_threads()})")
    models = _load_models(model_dir, include_large, batch, max_new_tokens, seed, tiny_heads=2 if engine == "vllm" else 4)
    for bm in models:
        log(f"[{bm.name}] {bm.description}")
    ctx = BenchContext(models=models, reps=reps, max_new_tokens=max_new_tokens, seed=seed, log=log)
    results: dict[str, float] = {}
    start = time.perf_counter()
    for bm in models:
        results.update(bench_rollout(ctx, bm))
        if engine == "vllm":
            from laser_rl.bench_vllm import vllm_throughput

            results.update(vllm_throughput(ctx, bm, ctx.reps * TINY_REPS_FACTOR if bm.name == "tiny" else ctx.reps,
                                            results))
    for fn in EXTRA_BENCHMARKS:
        log(f"running {getattr(fn, '__name__', 'benchmark')}")
        results.update(fn(ctx))
    main = models[-1].name  # the larger model when there is one
    for key in TARGETS:
        if f"{key}_{main}" in results:
            results[key] = results[f"{key}_{main}"]
    results["batch"] = float(batch)
    results["max_new_tokens"] = float(max_new_tokens)
    results["reps"] = float(reps)
    results["torch_threads"] = float(torch.get_num_threads())
    results["bench_seconds"] = time.perf_counter() - start
    return results


def format_table(results: dict[str, float]) -> str:
    """A plain-text table: the target ratios first, then every other measurement (tiny, large)."""
    suffixes = ("tiny", "large")
    header = f"{'metric':<46}{'tiny':>12}{'large':>12}"
    rows = [header + "   target    pass", "-" * (len(header) + 17)]

    def cells(key: str) -> str:
        out = ""
        for suffix in suffixes:
            v = results.get(f"{key}_{suffix}")
            out += f"{v:>12.4g}" if v is not None else f"{'-':>12}"
        return out

    for key, (op, target) in TARGETS.items():
        plain = results.get(key)
        ok = plain is not None and (plain >= target if op == ">=" else plain <= target)
        rows.append(f"{key:<46}{cells(key)}   {op} {target:<5}  {'yes' if ok else 'NO'}")
    rows.append("")
    bases: list[str] = []
    singles: list[str] = []
    for key in results:
        base, _, suffix = key.rpartition("_")
        if suffix in suffixes:
            if base not in TARGETS and base not in bases:
                bases.append(base)
        elif key not in TARGETS:
            singles.append(key)
    rows += [f"{base:<46}{cells(base)}" for base in bases]
    rows += [f"{key:<46}{results[key]:>12.4g}" for key in singles]
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Training step: LaSeR vs plain GRPO on the same rollout batch.


@register_benchmark
def bench_laser_vs_grpo_step(ctx: BenchContext) -> dict[str, float]:
    """``laser_vs_grpo_step``: time of one LaSeR training step ÷ one GRPO step on the same batch.

    A step = the one forward pass (token log-probs; LaSeR also reads lp_z at EOS) + loss
    (LaSeR adds the class-balanced MSE; the advantages already hold the integration) + backward +
    AdamW step. Steps alternate in ABBA order (GRPO, LaSeR, LaSeR, GRPO, ...) so that neither kind
    always runs second; the ratio of medians is reported.
    """
    results = {f"laser_vs_grpo_step_{bm.name}": _laser_vs_grpo_step(ctx, bm) for bm in ctx.models}
    results["laser_vs_grpo_step"] = results[f"laser_vs_grpo_step_{ctx.models[-1].name}"]
    return results


def _laser_vs_grpo_step(ctx: BenchContext, bm: BenchModel) -> float:
    from laser_rl.core import laser as core
    from laser_rl.rollout import SamplingConfig
    from laser_rl.rollout.engine import SamplerEngine
    from laser_rl.rollout.pipeline import generate
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.batch import build_sequences
    from laser_rl.training.policy import PolicyWithScore

    gen = torch.Generator().manual_seed(ctx.seed)
    stops = sorted(bm.stop_ids)
    prompts = bm.prompts
    engine = SamplerEngine(bm.model, bm.pad_id, stops, bm.z_id)
    roll = generate(engine, prompts, SamplingConfig(max_new_tokens=ctx.max_new_tokens), batch_size=len(prompts),
                    generator=gen)
    B = len(prompts)
    rewards = (torch.rand(B, generator=gen) < 0.5).float()
    adv = core.grpo_advantages(rewards, torch.arange(B) // 4)
    weights = core.class_balance_weights(rewards, roll.finished)
    seq = build_sequences(prompts, roll, pad_id=bm.pad_id, z_id=bm.z_id, stop_ids=stops)
    policy = PolicyWithScore(bm.model)
    optim = torch.optim.AdamW(bm.model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    score = ScoreParams("z", bm.z_id, 0.1, -10.0)
    normalizer = seq.pred_mask.sum().float()
    loss_cfg = core.PolicyLossConfig()

    def step(laser: bool) -> None:
        out = policy(seq.input_ids, seq.attention_mask, seq.position_ids, seq.pred_mask,
                     seq.eos_column, seq.finished, 1.0, laser)
        terms = core.laser_loss(
            out.token_logprobs, out.token_logprobs.detach(), adv, seq.pred_mask, loss_cfg, normalizer=normalizer,
            alpha=0.1 if laser else None, scores=score.score(out.lp_z) if laser else None, rewards=rewards,
            finished=seq.finished, mse_weights=weights, mse_weight_sum=weights.sum(),
        )
        terms.total.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step(False), step(True)  # warm-up
    reps = ctx.reps * (TINY_REPS_FACTOR if bm.name == "tiny" else 1)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(reps):
        for laser in ((False, True) if rep % 2 == 0 else (True, False)):
            times[laser].append(timed(lambda laser=laser: step(laser))[0])
    grpo, laser = median(times[False]), median(times[True])
    ctx.log(f"[{bm.name}] training step: GRPO {grpo * 1e3:.1f} ms, LaSeR {laser * 1e3:.1f} ms, ratio {laser / grpo:.3f}")
    return laser / grpo
