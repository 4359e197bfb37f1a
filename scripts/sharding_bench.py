"""Peak memory and step time of one LaSeR update, unsharded vs FSDP2, and sampler vs generate tokens/s.

Random-weight models built from a config written below (Qwen2.5-1.5B / -7B shapes, or a tiny
Llama): nothing is downloaded. Used by scripts/gpu_check.sh on a GPU machine and by the CPU
measurements in docs/reproducing-the-paper.md ("Memory plan"). Every measurement prints one JSON
line; a measurement that runs out of memory prints {"oom": true, ...} and the script goes on.

    python scripts/sharding_bench.py --device cpu --shape 1.5b --layers 2 --sharding fsdp2 --steps 2 --no-gen
    python scripts/sharding_bench.py --device cuda --shape 7b --sharding both --gen-batch 64 --gen-tokens 1024

With one process a one-rank process group is started (FSDP2 world size 1); under torchrun each
rank shards over all ranks.

Loading for FSDP2 (``--load-compare``): saves a random model of the shape to a folder, then runs
``torchrun --nproc_per_node N`` twice, once loading as the trainer did (every rank loads the full
float32 model, then ``shard_model``) and once with meta-device initialisation
(``fsdp_load.load_sharded``: rank 0 loads, the others build on meta and receive their shards), and
prints each rank's peak memory side by side (one JSON line per rank, then the ratios):

    python scripts/sharding_bench.py --load-compare --device cpu --shape 1.5b --layers 4 --nproc 2
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

# Public config.json values of the Qwen2.5 base models (hub: Qwen/Qwen2.5-1.5B, Qwen/Qwen2.5-7B).
SHAPES: dict[str, dict[str, Any]] = {
    "1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
               max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6),
    # OctoThinker-3B-Short-Base keeps the Llama-3.2-3B architecture (hub: OctoThinker/OctoThinker-3B-Short-Base)
    "3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
               num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
               max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=512, tie_word_embeddings=False,
                 max_position_embeddings=4096),
}


def build_model(shape: str, layers: int | None, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(SHAPES[shape])
    if layers:
        values["num_hidden_layers"] = layers
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def memory_plan(shape: str, gpus: int, micro_batch: int, tokens: int, gen_rows: int, chunk: int = 1024) -> dict:
    """Per-GPU memory arithmetic (GB = 1e9 bytes) for FSDP2 over ``gpus`` ranks vs DDP; see the doc's table.

    Parameters are counted on the meta device. Training: float32 weights, gradients and AdamW m, v
    sharded (16 B/param / gpus), the gathered bf16 root (embeddings, head) and two layers (one
    prefetched), activations with per-layer checkpointing for ``micro_batch`` rows of ``tokens``:
    the bf16 layer inputs kept for every layer, one layer recomputed (hidden, q/k/v/o, and the MLP's
    gate/up/act intermediates, twice for their gradients) and one float32 logits chunk (+ its gradient).
    Generation: the whole bf16 model gathered (window) plus the bf16 KV cache of ``gen_rows`` rows.
    Gradient accumulation without a reduce-scatter per micro-batch (``sharding.no_grad_sync``) adds
    the unsharded float32 gradients of the whole model (4 B/param) to the training peak.
    """
    cfg = dict(SHAPES[shape])
    model = build_model(shape, None, torch.bfloat16, torch.device("meta"))
    n = n_params(model)
    embed = model.get_input_embeddings().weight.numel()
    head = 0 if cfg["tie_word_embeddings"] else model.get_output_embeddings().weight.numel()
    per_layer = (n - embed - head) / cfg["num_hidden_layers"]
    H, inter, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv_dim = cfg["num_key_value_heads"] * H // cfg["num_attention_heads"]
    gb = 1e9
    rows_tokens = micro_batch * tokens
    sharded_state = 16 * n / gpus / gb
    gathered_train = 2 * (embed + head + 2 * per_layer) / gb
    act_boundaries = 2 * rows_tokens * H * L / gb
    act_layer = 2 * 2 * rows_tokens * (4 * H + 2 * kv_dim + 3 * inter) / gb
    logits = 2 * 4 * chunk * V / gb
    kv_per_token = 2 * 2 * kv_dim * L  # K and V, bf16, all layers
    kv = gen_rows * tokens * kv_per_token / gb
    train_peak = sharded_state + gathered_train + act_boundaries + act_layer + logits
    gen_peak = 12 * n / gpus / gb + 2 * n / gb + kv  # weights + AdamW (grads freed), gathered model, cache
    return {
        "shape": shape, "params_b": round(n / 1e9, 3), "gpus": gpus, "micro_batch": micro_batch, "tokens": tokens,
        "fsdp2_sharded_weights_grads_adam_gb": round(sharded_state, 1),
        "fsdp2_gathered_bf16_during_step_gb": round(gathered_train, 1),
        "activations_checkpointed_gb": round(act_boundaries + act_layer + logits, 1),
        "fsdp2_train_peak_gb": round(train_peak, 1),
        # sharding.no_grad_sync: every unit keeps its unsharded float32 gradient until the last micro-batch
        "fsdp2_no_grad_sync_extra_gb": round(4 * n / gb, 1),
        "fsdp2_train_peak_no_grad_sync_gb": round(train_peak + 4 * n / gb, 1),
        "kv_cache_kb_per_token": round(kv_per_token / 1e3, 1), "gen_rows": gen_rows, "kv_cache_gb": round(kv, 1),
        "fsdp2_generation_window_peak_gb": round(gen_peak, 1),
        "fsdp2_generation_per_step_peak_gb": round(gen_peak - 2 * n / gb + gathered_train, 1),
        # loading the float32 masters: every GPU gets the full model before fully_shard frees it, or
        # (fsdp_load.load_sharded) its shards plus one full tensor in flight, the largest being the embedding
        "load_full_then_shard_per_gpu_gb": round(4 * n / gb, 1),
        "load_meta_init_per_gpu_gb": round(4 * n / gpus / gb + 4 * max(p.numel() for p in model.parameters()) / gb, 1),
        "load_meta_init_rank0_host_gb": round(4 * n / gb, 1),
        "ddp_fp32_master_gb": round(16 * n / gb + act_boundaries + act_layer + logits, 1),
        "ddp_bf16_only_gb": round(8 * n / gb + act_boundaries + act_layer + logits, 1),
    }


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Memory:
    """Peak memory of a phase: CUDA allocator peak, or the process's peak RSS on CPU (never resets)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def now_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated() / 2**30
        return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(vocab: int, batch: int, prompt: int, response: int, device: torch.device) -> Any:
    """A right-padded training batch with z after EOS in the last column (every row finished)."""
    from laser_rl.training.batch import Sequences, TrainBatch

    g = torch.Generator().manual_seed(0)
    L = prompt + response + 1
    ids = torch.randint(0, vocab, (batch, L), generator=g)
    cols = torch.arange(L - 1).expand(batch, L - 1)
    seq = Sequences(
        input_ids=ids, attention_mask=torch.ones(batch, L, dtype=torch.long), position_ids=torch.arange(L).expand(batch, L),
        pred_mask=(cols >= prompt - 1) & (cols < L - 2), eos_column=torch.full((batch,), L - 2),
        finished=torch.ones(batch, dtype=torch.bool), old_logprobs=torch.zeros(batch, L - 1),
    ).to(device)
    return TrainBatch(seq, torch.randn(batch, generator=g).to(device), (torch.arange(batch) % 2).float().to(device),
                      torch.ones(batch, device=device))


def make_optimizer(params: list[torch.nn.Parameter], device: torch.device, sharded: bool) -> torch.optim.Optimizer:
    # fused for plain CUDA tensors, else one parameter at a time: no foreach temporaries the size of the weights
    if device.type == "cuda" and not sharded:
        try:
            return torch.optim.AdamW(params, lr=1e-6, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=1e-6, foreach=False)


def train_steps(args: argparse.Namespace, sharding: str, device: torch.device, mem: Memory) -> dict[str, Any]:
    from laser_rl.core.laser import PolicyLossConfig
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import enable_gradient_checkpointing, shard_model
    from laser_rl.training.trainer import micro_batch_loss

    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    # unsharded = today's trainer: weights and AdamW state in model.dtype; fsdp2: float32 masters
    store = torch.float32 if sharding == "fsdp2" else compute
    mem.reset()
    model = build_model(args.shape, args.layers, store, device)
    if args.grad_ckpt:
        enable_gradient_checkpointing(model)
    model.train()
    policy = PolicyWithScore(model, chunk_size=1024)
    if sharding == "fsdp2":
        shard_model(policy, compute_dtype=compute)
    opt = make_optimizer(list(policy.parameters()), device, sharding == "fsdp2")
    batch = synthetic_batch(model.config.vocab_size, args.batch, args.prompt, args.response, device)
    lo = PolicyLossConfig()
    score = ScoreParams("z", 1, 0.1, -23.0)
    times, losses = [], []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        q = batch.seq
        out = policy(q.input_ids, q.attention_mask, q.position_ids, q.pred_mask, q.eos_column, q.finished)
        loss = micro_batch_loss(out, batch, lo, alpha=0.1, score=score, normalizer=float(q.pred_mask.sum()),
                                weight_sum=float(batch.mse_weights.sum())).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    result = {
        "what": "train_step", "shape": args.shape, "layers": model.config.num_hidden_layers, "sharding": sharding,
        "device": device.type, "params_m": round(n_params(model) / 1e6, 1), "stored_dtype": str(store).split(".")[-1],
        "compute_dtype": str(compute).split(".")[-1], "gradient_checkpointing": args.grad_ckpt,
        "batch": args.batch, "tokens_per_row": args.prompt + args.response + 1,
        "step_s": [round(t, 3) for t in times], "peak_gib": round(mem.peak_gib(), 2), "loss_finite": all(
            map(lambda v: v == v and abs(v) < float("inf"), losses)),
    }
    del policy, model, opt, batch, out, loss
    free(device)
    return result


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def generation(args: argparse.Namespace, device: torch.device, mem: Memory) -> list[dict[str, Any]]:
    """Built-in sampler vs model.generate, same prompts, no stop token (every row runs to the end)."""
    from laser_rl.rollout import SamplingConfig, sample
    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import generation_window, shard_model

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args.shape, args.layers, dtype, device).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, vocab, (args.gen_batch, args.gen_prompt), generator=g)
    new = args.gen_tokens * args.gen_batch
    out: list[dict[str, Any]] = []
    base = {"what": "generation", "shape": args.shape, "layers": model.config.num_hidden_layers, "device": device.type,
            "dtype": str(dtype).split(".")[-1], "batch": args.gen_batch, "new_tokens": args.gen_tokens}

    def timed(name: str, fn: Any) -> None:
        mem.reset()
        sync(device)
        t0 = time.perf_counter()
        try:
            fn()
        except torch.OutOfMemoryError:
            out.append({**base, "engine": name, "oom": True})
            free(device)
            return
        sync(device)
        dt = time.perf_counter() - t0
        out.append({**base, "engine": name, "seconds": round(dt, 2), "tokens_per_s": round(new / dt, 1),
                    "peak_gib": round(mem.peak_gib(), 2)})
        print(json.dumps(out[-1]), flush=True)

    cfg = SamplingConfig(temperature=1.0, max_new_tokens=args.gen_tokens)
    timed("laser sampler", lambda: sample(model, prompts, pad_id=0, stop_ids=[], config=cfg, z_id=1,
                                          generator=torch.Generator(device=device).manual_seed(0)))

    def hf_generate() -> None:
        with torch.inference_mode():
            model.generate(prompts.to(device), attention_mask=torch.ones_like(prompts, device=device), do_sample=True,
                           temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.gen_tokens,
                           min_new_tokens=args.gen_tokens, pad_token_id=0, eos_token_id=None)

    timed("hf generate", hf_generate)
    if args.gen_fsdp:  # the sampler on a sharded model inside the generation window
        del model
        free(device)
        master = build_model(args.shape, args.layers, torch.float32, device)
        root = shard_model(PolicyWithScore(master), compute_dtype=dtype)

        def sharded() -> None:
            with generation_window(root, "window", forward_module=master):
                sample(master, prompts, pad_id=0, stop_ids=[], config=cfg, z_id=1,
                       generator=torch.Generator(device=device).manual_seed(0))

        timed("laser sampler, fsdp2 window", sharded)
        del root, master
    free(device)
    return out


# ----------------------------------------------------------------------------------------- loading


def rss_now_gib() -> float:
    """The process's resident memory now (Linux /proc), GiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * resource.getpagesize() / 2**30


def load_once(mode: str, folder: str, device: torch.device) -> dict[str, Any]:
    """One rank's side of a load for FSDP2 (run under torchrun): ``full`` = every rank loads the float32
    model and shards it (the trainer's path before meta init), ``meta`` = ``fsdp_load.load_sharded``."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM

    from laser_rl.integrations.hf import load_model
    from laser_rl.training.fsdp_load import load_sharded
    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import ensure_process_group, shard_model

    ensure_process_group(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    mem = Memory(device)
    with torch.device("meta"):  # import the model's code now, so its ~0.1 GiB is not counted as the load's
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    gc.collect()
    dist.barrier()
    start = rss_now_gib()  # after imports and the process group; the load's peak is measured above it
    mem.reset()
    t0 = time.perf_counter()
    if mode == "full":
        model = load_model(folder, dtype=torch.float32, device=device)
        root = shard_model(PolicyWithScore(model))
    else:
        model, root = load_sharded(folder, device=device, wrap=PolicyWithScore)
    dist.barrier()
    seconds = time.perf_counter() - t0
    gc.collect()
    params = list(root.parameters())
    local = sum(p.to_local().numel() for p in params)
    total = sum(p.numel() for p in params)
    out = {
        "what": "load", "mode": mode, "rank": rank, "world": world, "device": device.type, "seconds": round(seconds, 2),
        "params_m": round(total / 1e6, 1), "model_fp32_gib": round(4 * total / 2**30, 3),
        "local_shard_gib": round(4 * local / 2**30, 3), "peak_gib": round(mem.peak_gib(), 3),
        "after_gib": round(rss_now_gib() if device.type == "cpu" else mem.now_gib(), 3),
    }
    if device.type == "cpu":  # ru_maxrss never resets: what the process held before loading is subtracted
        out["start_gib"] = round(start, 3)
        out["peak_above_start_gib"] = round(mem.peak_gib() - start, 3)
    else:
        out["peak_above_start_gib"] = out["peak_gib"]
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Save a random model of ``args.shape``, load it for FSDP2 both ways under torchrun, compare per rank."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sharding_bench_") as tmp:
        folder = Path(tmp) / "model"
        # bf16 like the published checkpoints: loading as float32 then converts every tensor. (A float32 file
        # would be memory-mapped, and fully_shard reads only each rank's slice of it, which hides the full
        # copy that a GPU load or a bf16 checkpoint makes.)
        model = build_model(args.shape, args.layers, getattr(torch, args.save_dtype), torch.device("cpu"))
        model.save_pretrained(folder, safe_serialization=True)
        del model
        gc.collect()
        rows: dict[str, list[dict[str, Any]]] = {}
        for mode in ("full", "meta"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                   "--master_port", str(free_port()), str(Path(__file__).resolve()), "--load", mode,
                   "--load-from", str(folder), "--load-out", tmp, "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"torchrun --load {mode} failed:\n{res.stderr[-3000:]}")
            # one file per rank: lines printed by several ranks at once can interleave
            rows[mode] = [json.loads((Path(tmp) / f"load-{mode}-rank{r}.json").read_text()) for r in range(args.nproc)]
            for r in rows[mode]:
                print(json.dumps(r), flush=True)
    out = []
    for full, meta in zip(rows["full"], rows["meta"]):
        out.append({
            "what": "load_compare", "shape": args.shape, "checkpoint_dtype": args.save_dtype, "rank": full["rank"],
            "world": full["world"],
            "device": full["device"], "model_fp32_gib": full["model_fp32_gib"],
            "full_peak_above_start_gib": full["peak_above_start_gib"],
            "meta_peak_above_start_gib": meta["peak_above_start_gib"],
            "meta_over_full": round(meta["peak_above_start_gib"] / max(full["peak_above_start_gib"], 1e-9), 3),
            "full_over_model": round(full["peak_above_start_gib"] / full["model_fp32_gib"], 3),
            "meta_over_model": round(meta["peak_above_start_gib"] / meta["model_fp32_gib"], 3),
            "full_seconds": full["seconds"], "meta_seconds": meta["seconds"],
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--layers", type=int, default=0, help="override the number of decoder layers (0 = the shape's)")
    p.add_argument("--sharding", choices=["none", "fsdp2", "both"], default="both")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--response", type=int, default=192)
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    p.add_argument("--no-train", dest="train", action="store_false")
    p.add_argument("--no-gen", dest="gen", action="store_false")
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--gen-prompt", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=1024)
    p.add_argument("--gen-fsdp", action="store_true", help="also time the sampler on an FSDP2 model (generation window)")
    p.add_argument("--plan", action="store_true", help="print the per-GPU memory arithmetic (no model is run)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--plan-micro-batch", type=int, default=2)
    p.add_argument("--plan-tokens", type=int, default=2048 + 8192)
    p.add_argument("--plan-gen-rows", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--load-compare", action="store_true",
                   help="peak memory per rank of loading for FSDP2: full load + shard vs meta-device init (torchrun)")
    p.add_argument("--nproc", type=int, default=2, help="ranks for --load-compare")
    p.add_argument("--save-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="dtype of the checkpoint --load-compare writes (the load is float32 either way)")
    p.add_argument("--load", choices=["full", "meta"], help=argparse.SUPPRESS)  # one side of --load-compare
    p.add_argument("--load-from", help=argparse.SUPPRESS)
    p.add_argument("--load-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plan:
        print(json.dumps(memory_plan(args.shape, args.gpus, args.plan_micro_batch, args.plan_tokens, args.plan_gen_rows)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.load_compare:
        load_compare(args)
        return 0
    device = torch.device(args.device)
    if args.load:
        import os

        import torch.distributed as dist

        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
            if "RANK" in os.environ and not dist.is_initialized():
                dist.init_process_group("nccl")
        elif "RANK" in os.environ and not dist.is_initialized():
            dist.init_process_group("gloo")
        row = load_once(args.load, args.load_from, device)
        if args.load_out:
            (Path(args.load_out) / f"load-{args.load}-rank{row['rank']}.json").write_text(json.dumps(row))
        else:
            print(json.dumps(row), flush=True)
        dist.destroy_process_group()
        return 0
    if device.type == "cuda":
        import torch.distributed as dist

        local = int(__import__("os").environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        if dist.is_available() and "RANK" in __import__("os").environ and not dist.is_initialized():
            dist.init_process_group("nccl")
    from laser_rl.training.sharding import ensure_process_group

    mem = Memory(device)
    modes = ["none", "fsdp2"] if args.sharding == "both" else [args.sharding]
    if "fsdp2" in modes or args.gen_fsdp:
        ensure_process_group(device)
    if args.train:
        for mode in modes:
            try:
                print(json.dumps(train_steps(args, mode, device, mem)), flush=True)
            except torch.OutOfMemoryError:
                print(json.dumps({"what": "train_step", "shape": args.shape, "sharding": mode, "oom": True}), flush=True)
                free(device)
    if args.gen:
        generation(args, device, mem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
