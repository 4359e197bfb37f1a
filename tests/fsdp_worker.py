"""Worker for tests/test_sharding.py, started as ``torchrun --nproc_per_node 2 tests/fsdp_worker.py MODEL OUT``.

On CPU with gloo it runs, for the tiny embedded model:
1. one LaSeR step (PolicyWithScore forward, PPO-clip + class-balanced MSE backward, AdamW step) on
   the same global batch as (a) one unsharded process, (b) 2-process DDP, (c) 2-process FSDP2 and
   (d) FSDP2 with gradient checkpointing, and records loss, gradient norm and updated weights;
2. generation under FSDP2 with ``generation_window`` in both gather modes, rank 1 having fewer and
   shorter rows, against the unsharded sampler (tokens and lp_z), counting real and dummy forwards;
3. a frozen reference model sharded the same way (no-grad forward) against the unsharded one;
   sharded save → load into a fresh model/optimizer, and the full-state gather → ``save_pretrained``;
4. bf16 compute with float32 master weights (MixedPrecisionPolicy).
Rank 0 writes the measurements to OUT/results.json; the test asserts on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def forward_args(b):  # noqa: ANN001, ANN201 - PolicyWithScore's positional inputs of a TrainBatch
    q = b.seq
    return q.input_ids, q.attention_mask, q.position_ids, q.pred_mask, q.eos_column, q.finished


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser_rl.core import laser as core
    from laser_rl.rollout import SamplingConfig, sample
    from laser_rl.score_params import ScoreParams
    from laser_rl.training.batch import TrainBatch, build_sequences
    from laser_rl.training.checkpoint import load_sharded_state, save_sharded_state
    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import (
        decoder_layers,
        enable_gradient_checkpointing,
        full_state_dict,
        generation_window,
        save_pretrained_full,
        shard_model,
    )
    from laser_rl.training.update import Collective, UpdateSettings, update_policy

    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = AutoTokenizer.from_pretrained(model_dir)
    z = tok.convert_tokens_to_ids("<z>")
    stops, pad = [tok.eos_token_id], tok.pad_token_id
    score = ScoreParams("<z>", z, 0.5, -3.0)
    lo = core.PolicyLossConfig(clip_low=0.2, clip_high=0.28)
    results: dict[str, object] = {}

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    # ---- the global batch: every rank samples all of it the same way, then keeps its half
    base = load()
    texts = ["12+34=", "5-3+77=", "90-1=", "7+7=", "31-4=", "8+15=", "2+2=", "60-13="]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    roll = sample(base, prompts, pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=12), z_id=z,
                  generator=torch.Generator().manual_seed(0))
    B = len(prompts)
    rewards = (torch.arange(B) % 2).float()
    advantages = torch.linspace(-1.0, 1.0, B)
    weights = core.class_balance_weights(rewards, roll.finished)
    batch = TrainBatch(build_sequences(prompts, roll, pad_id=pad, z_id=z, stop_ids=stops), advantages, rewards, weights)
    results["finished_rows"] = int(roll.finished.sum())
    local = batch.select(torch.arange(rank * B // world, (rank + 1) * B // world))

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    settings = UpdateSettings(lo)  # one epoch, one mini-batch, no clipping

    def step(policy: torch.nn.Module, sub, parts: int, opt=None) -> tuple[float, float]:  # noqa: ANN001
        """One update through the trainer's update function; ``parts`` processes share the batch."""
        opt = opt or torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
        comm = Collective(rank=rank, world=parts, reduce_sum=all_sum) if parts > 1 else Collective()
        stats = update_policy(policy, opt, sub, settings, alpha=0.5, score=score, comm=comm)
        total = torch.tensor(stats.policy_loss + 0.5 * stats.sr_loss)
        if parts > 1:
            total = all_sum(total) / parts
        return float(total), stats.grad_norm

    def full_params(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
        sd = full_state_dict(policy, "model.") if hasattr(policy, "_get_fsdp_state") else {
            k.removeprefix("module.").removeprefix("model."): v.detach().clone() for k, v in policy.state_dict().items()}
        return sd

    # (a) one process, whole batch
    ref_policy = PolicyWithScore(load())
    ref_loss, ref_norm = step(ref_policy, batch, 1)
    ref_params = full_params(ref_policy)

    def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return max(float(((a[k] - v).abs() / v.abs().clamp_min(1e-3)).max()) for k, v in b.items())

    def compare(name: str, loss: float, norm: float, params: dict[str, torch.Tensor]) -> None:
        if rank == 0:
            results[name] = {"loss": loss, "grad_norm": norm, "param_rel_diff": rel_diff(params, ref_params)}
            if name != "ddp":
                results[name]["param_rel_diff_vs_ddp"] = rel_diff(params, ddp_params)

    results["unsharded"] = {"loss": ref_loss, "grad_norm": ref_norm}
    # (b) DDP
    ddp = torch.nn.parallel.DistributedDataParallel(PolicyWithScore(load()))
    loss, norm = step(ddp, local, world)
    ddp_params = full_params(ddp)
    compare("ddp", loss, norm, ddp_params)
    # (c) FSDP2
    fsdp = shard_model(PolicyWithScore(load()))
    loss, norm = step(fsdp, local, world)
    compare("fsdp2", loss, norm, full_params(fsdp))
    # (d) FSDP2 + the model's own gradient checkpointing
    inner = load()
    enable_gradient_checkpointing(inner)
    inner.train()
    ckpt_policy = shard_model(PolicyWithScore(inner))
    loss, norm = step(ckpt_policy, local, world)
    compare("fsdp2_checkpointing", loss, norm, full_params(ckpt_policy))

    # ---- generation: rank 1 has fewer and shorter rows; compare with the unsharded sampler
    gen_model = load()
    gen_root = shard_model(PolicyWithScore(gen_model))
    mine = prompts[:5] if rank == 0 else prompts[5:6]
    cfg = SamplingConfig(max_new_tokens=16 if rank == 0 else 3)
    want = sample(base, mine, pad_id=pad, stop_ids=stops, config=cfg, z_id=z, generator=torch.Generator().manual_seed(1))
    real = {"n": 0}  # every forward of the model, real or dummy
    gen_model.register_forward_pre_hook(lambda m, a: real.__setitem__("n", real["n"] + 1))
    gen: dict[str, object] = {}
    for gather in ("window", "per_step"):
        real["n"] = 0
        with generation_window(gen_root, gather, forward_module=gen_model) as lockstep:
            got = sample(gen_model, mine, pad_id=pad, stop_ids=stops, config=cfg, z_id=z,
                         generator=torch.Generator().manual_seed(1))
        fin = want.finished
        lp_diff = float((got.lp_z[fin] - want.lp_z[fin]).abs().max()) if fin.any() else 0.0
        mine_stats = torch.tensor([real["n"], lockstep.dummy_forwards if lockstep else 0,
                                   int(torch.equal(got.response_ids, want.response_ids)), int(fin.sum())])
        every = [torch.zeros_like(mine_stats) for _ in range(world)]
        dist.all_gather(every, mine_stats)
        lp_all = torch.tensor([lp_diff])
        dist.all_reduce(lp_all, op=dist.ReduceOp.MAX)
        gen[gather] = {"forwards": [int(e[0]) for e in every], "dummy_forwards": [int(e[1]) for e in every],
                       "same_tokens": [bool(e[2]) for e in every], "finished_rows": [int(e[3]) for e in every],
                       "lp_z_max_abs_diff": float(lp_all)}
    results["generation"] = gen
    # training still works after generating (no inference tensors or gathered weights left behind)
    loss, norm = step(gen_root, local, world)
    results["step_after_generation_finite"] = bool(torch.isfinite(torch.tensor([loss, norm])).all())

    # ---- a frozen reference model, sharded the same way, scores like the unsharded one
    frozen = load().requires_grad_(False).eval()
    ref_sharded = shard_model(PolicyWithScore(frozen))
    with torch.no_grad():
        args = forward_args(local)
        got_ref, want_ref = ref_sharded(*args), PolicyWithScore(base)(*args)
    diff = torch.tensor([float((got_ref.token_logprobs - want_ref.token_logprobs).abs().max()),
                         float((got_ref.lp_z - want_ref.lp_z).nan_to_num().abs().max())])
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    results["reference_max_abs_diff"] = diff.tolist()

    # ---- sharded checkpoint round trip (after one step, so the optimizer has state)
    ck = out_dir / "sharded-ckpt"
    opt = torch.optim.AdamW(fsdp.parameters(), lr=1e-2)
    step(fsdp, local, world, opt)
    if rank == 0:
        ck.mkdir(parents=True)
    dist.barrier()
    save_sharded_state(ck, fsdp, opt, rank)
    fresh = shard_model(PolicyWithScore(load()))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=5.0)  # wrong lr on purpose: the checkpoint's must win
    load_sharded_state(ck, fresh, fresh_opt)
    same_params = all(torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(fsdp.parameters(), fresh.parameters()))
    sa, sb = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    same_optim = all(torch.equal(_full(sa[k][n]), _full(sb[k][n])) for k in sa for n in sa[k]) and len(sa) == len(sb)
    same_lr = fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    flags = torch.tensor([int(same_params), int(same_optim), int(same_lr)])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    results["sharded_checkpoint"] = {"params": bool(flags[0]), "optimizer": bool(flags[1]), "lr": bool(flags[2]),
                                     "files": sorted(p.name for p in ck.rglob("*") if p.is_file())}

    # ---- the full state gathered on rank 0 → an ordinary save_pretrained folder
    final = out_dir / "final"
    save_pretrained_full(fsdp, fsdp.model, final, rank)
    gathered = full_state_dict(fsdp, "model.")
    if rank == 0:
        loaded = AutoModelForCausalLM.from_pretrained(final).state_dict()
        results["final_loads"] = all(torch.equal(loaded[k], v) for k, v in gathered.items())
        results["final_differs_from_base"] = any(not torch.equal(base.state_dict()[k], v) for k, v in gathered.items())

    # ---- bf16 compute, float32 master weights and optimizer state
    mp = shard_model(PolicyWithScore(load()), compute_dtype=torch.bfloat16)
    layer_out: list[str] = []
    decoder_layers(mp)[0].register_forward_hook(
        lambda m, a, o: layer_out.append(str((o[0] if isinstance(o, tuple) else o).dtype)))
    mp_opt = torch.optim.AdamW(mp.parameters(), lr=1e-2)
    with torch.no_grad():
        out = mp(*forward_args(local))
    step(mp, local, world, mp_opt)
    dtypes = {str(p.dtype) for p in mp.parameters()} | {str(v.dtype) for s in mp_opt.state.values()
                                                      for k, v in s.items() if k != "step"}
    results["bf16"] = {"stored_dtypes": sorted(dtypes), "layer_output_dtype": layer_out[0],
                       "logprob_dtype": str(out.token_logprobs.dtype),
                       "lp_z_dtype": str(out.lp_z.dtype)}

    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


if __name__ == "__main__":
    main()
