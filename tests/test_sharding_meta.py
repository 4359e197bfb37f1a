"""FSDP2 at scale: meta-device loading (training/fsdp_load.py) and gradient accumulation without a
reduce-scatter per micro-batch (sharding.no_grad_sync), on 2 CPU ranks (gloo).

This file is also the worker: ``torchrun --nproc_per_node 2 tests/test_sharding_meta.py MODEL TIED OUT``
runs :func:`worker` on each rank, which writes OUT/rank<r>.json; the tests assert on those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]



def _batch(vocab: int, rows: int, seed: int, length: int = 9) -> tuple[torch.Tensor, ...]:
    """PolicyWithScore's inputs for ``rows`` finished rows: prompt 3 tokens, EOS at L-2, z at L-1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    cols = torch.arange(length - 1).expand(rows, length - 1)
    return (ids, torch.ones(rows, length, dtype=torch.long), torch.arange(length).expand(rows, length),
            (cols >= 2) & (cols < length - 2), torch.full((rows,), length - 2), torch.ones(rows, dtype=torch.bool))


def _loss(out, scale: float) -> torch.Tensor:  # noqa: ANN001 - a PolicyOutput
    """Something that reaches every parameter through both outputs (token log-probs and lp_z)."""
    return (out.token_logprobs.sum() + (out.lp_z + 3.0).square().sum()) * scale


def _grads(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for n, p in policy.named_parameters()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def worker(model_dir: Path, tied_dir: Path, out_dir: Path) -> None:
    import torch.distributed as dist

    import laser_rl.integrations.hf as hf
    from laser_rl.errors import LaserError
    from laser_rl.integrations.special_token import resize_embeddings_if_needed
    from laser_rl.training.fsdp_load import load_sharded
    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import (
        enable_gradient_checkpointing,
        full_state_dict,
        no_grad_sync,
        shard_model,
    )

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")
    res: dict[str, object] = {}

    real_load = hf.load_model
    full_loads: list[str] = []

    def counting_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        full_loads.append(str(args[0]))
        return real_load(*args, **kwargs)

    hf.load_model = counting_load

    # ---- 1. meta-device loading equals the ordinary load, with and without tied embeddings
    class grown_tokenizer:  # noqa: N801 - stands in for a tokenizer with one added token
        def __len__(self) -> int:
            return base_vocab + 1

    grown_tokenizer = grown_tokenizer()
    base_vocab = hf.config_vocab_size(model_dir)
    for name, path, grow in (("untied", model_dir, True), ("tied", tied_dir, False)):
        seen: list[dict[str, object]] = []

        def prepare(m: torch.nn.Module, grow: bool = grow, seen: list = seen) -> None:
            seen.append({"all_meta": all(p.is_meta for p in m.parameters()),
                         "real_bytes": sum(p.numel() * p.element_size() for p in m.parameters() if not p.is_meta)})
            enable_gradient_checkpointing(m)  # flags only: fine on meta
            if grow:  # what the trainer does once z was added to the tokenizer (one token more than the model)
                torch.manual_seed(0)  # the new row is drawn at random
                resize_embeddings_if_needed(m, grown_tokenizer)

        full_loads.clear()
        model, root = load_sharded(str(path), device=cpu, wrap=PolicyWithScore, prepare=prepare)
        loads_here = list(full_loads)
        ref = real_load(path, dtype=torch.float32, device=cpu)
        prepare(ref)
        seen.pop()
        want_sd = {k: v.clone() for k, v in ref.state_dict().items()}
        got_sd = full_state_dict(root, "model.")
        params = list(root.parameters())
        r: dict[str, object] = {
            "prepare_calls": seen, "full_loads": len(loads_here),
            "local_numel": sum(p.to_local().numel() for p in params), "global_numel": sum(p.numel() for p in params),
            "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            "checkpointing": bool(model.is_gradient_checkpointing),
            "generation_config_same": model.generation_config.to_diff_dict() == ref.generation_config.to_diff_dict(),
            "config_tied": bool(model.config.tie_word_embeddings), "vocab": model.get_input_embeddings().num_embeddings,
            "buffers_max_abs_diff": max(float((b - dict(ref.named_buffers())[n]).abs().max())
                                        for n, b in model.named_buffers()),
        }
        if rank == 0:
            r["same_keys"] = sorted(got_sd) == sorted(want_sd)
            r["state_max_abs_diff"] = max(float((got_sd[k] - want_sd[k]).abs().max()) for k in want_sd)
        # the forward the trainer runs (rotary buffers included) equals the unsharded one on every rank
        args = _batch(r["vocab"], 3, seed=10 + rank)
        with torch.no_grad():
            got, want = root(*args), PolicyWithScore(ref)(*args)
        r["forward_max_abs_diff"] = max(float((got.token_logprobs - want.token_logprobs).abs().max()),
                                        float((got.lp_z - want.lp_z).abs().max()))
        # the same as shard_model on an ordinary load (today's path), parameter by parameter
        plain = shard_model(PolicyWithScore(ref))
        ordinary = full_state_dict(plain, "model.")
        if rank == 0:
            r["vs_shard_model_max_abs_diff"] = max(float((got_sd[k] - ordinary[k]).abs().max()) for k in ordinary)
        res[name] = r
        del model, root, plain, ref

    # a folder rank 0 cannot load (config.json, no weights): every rank stops with rank 0's message, none hangs
    broken = out_dir / f"broken-{rank}"
    broken.mkdir()
    (broken / "config.json").write_text((Path(model_dir) / "config.json").read_text())
    try:
        load_sharded(str(out_dir / "broken-0"), device=cpu, wrap=PolicyWithScore)
        res["broken"] = "loaded"
    except LaserError as e:
        res["broken"] = str(e)

    # bf16 compute (MixedPrecisionPolicy) over float32 shards, as on GPUs: the masters stay float32
    model, root = load_sharded(str(model_dir), device=cpu, wrap=PolicyWithScore, compute_dtype=torch.bfloat16)
    ref = PolicyWithScore(real_load(model_dir, dtype=torch.float32, device=cpu))
    stored = sorted({str(p.dtype) for p in root.parameters()})  # before a forward (the root then stays gathered)
    args = _batch(model.config.vocab_size, 3, seed=20 + rank)
    with torch.no_grad():
        got, want = root(*args), ref(*args)
    res["bf16"] = {"stored": stored, "forward_max_abs_diff": float((got.token_logprobs - want.token_logprobs).abs().max())}
    del model, root, ref

    # ---- 2. gradient accumulation: one reduction per update equals one per micro-batch
    vocab = res["untied"]["vocab"] - 1
    local = _batch(vocab, 4, seed=100 + rank)  # each rank its own rows
    micro = [tuple(t[:2] for t in local), tuple(t[2:] for t in local)]
    scale = 1.0 / 8

    def accumulate(policy: torch.nn.Module, defer: bool) -> dict[str, object]:
        policy.zero_grad(set_to_none=True)
        with no_grad_sync(policy, enabled=defer):
            _loss(policy(*micro[0]), scale).backward()
            after_first = [p.grad for p in policy.parameters()]
            probe = next((g for g in after_first if g is not None), None)
            if probe is not None:  # (cloned: grads accumulate in place)
                probe = (probe.to_local() if hasattr(probe, "to_local") else probe).clone()
        with no_grad_sync(policy, enabled=False):
            _loss(policy(*micro[1]), scale).backward()
        return {"grads": _grads(policy), "no_grad_after_first": all(g is None for g in after_first), "probe": probe}

    fsdp = shard_model(PolicyWithScore(real_load(model_dir, dtype=torch.float32, device=cpu)))
    synced, deferred = accumulate(fsdp, False), accumulate(fsdp, True)
    ddp = torch.nn.parallel.DistributedDataParallel(PolicyWithScore(real_load(model_dir, dtype=torch.float32, device=cpu)))
    ddp_synced, ddp_deferred = accumulate(ddp, False), accumulate(ddp, True)
    # DDP inside no_sync keeps each rank's own gradient: the two ranks' first-micro-batch grads differ
    probes = [torch.zeros_like(ddp_deferred["probe"]) for _ in range(world)]
    dist.all_gather(probes, ddp_deferred["probe"])
    synced_probes = [torch.zeros_like(ddp_synced["probe"]) for _ in range(world)]
    dist.all_gather(synced_probes, ddp_synced["probe"])
    # one process, the whole global batch: the mean over ranks of the local losses
    everything = [_batch(vocab, 4, seed=100 + r) for r in range(world)]
    single = PolicyWithScore(real_load(model_dir, dtype=torch.float32, device=cpu))
    for rows in everything:
        _loss(single(*rows), scale / world).backward()
    one = _grads(single)
    res["accumulation"] = {
        "fsdp2_synced_leaves_grads_after_first": not synced["no_grad_after_first"],
        "fsdp2_deferred_no_grad_after_first": deferred["no_grad_after_first"],
        "fsdp2_deferred_vs_synced": _max_diff(deferred["grads"], synced["grads"]),
        "fsdp2_synced_vs_one_process": _max_diff(synced["grads"], one),
        "ddp_deferred_vs_synced": _max_diff(ddp_deferred["grads"], ddp_synced["grads"]),
        "ddp_deferred_vs_one_process": _max_diff(ddp_deferred["grads"], one),
        "ddp_deferred_first_grads_differ": float((probes[0] - probes[1]).abs().max()) > 0,
        "ddp_synced_first_grads_equal": float((synced_probes[0] - synced_probes[1]).abs().max()) == 0,
        "grad_scale": max(float(g.abs().max()) for g in one.values()),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tiny_model_dir, tmp_path_factory) -> list[dict]:
    """One 2-process gloo run of :func:`worker` (≈ 15 s on 2 cores); every test below reads it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import free_port  # here: this file is also a torchrun worker

    out = tmp_path_factory.mktemp("meta")
    tied = out / "tied"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=40, tie_word_embeddings=True)).save_pretrained(tied)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           __file__, str(tiny_model_dir), str(tied), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_meta_init_loads_only_on_rank0_and_equals_the_ordinary_load(ranks, name):
    r0, r1 = ranks[0][name], ranks[1][name]
    # rank 0 read the weights once; rank 1 never built a real model: its only model was on meta
    assert r0["full_loads"] == 1 and r1["full_loads"] == 0
    assert r1["prepare_calls"] == [{"all_meta": True, "real_bytes": 0}]
    assert len(r0["prepare_calls"]) == 2 and r0["prepare_calls"][1]["all_meta"]  # real model, then the meta one
    # after loading each rank holds half the parameters (its shard), not a full copy
    for r in (r0, r1):
        assert r["local_numel"] <= r["global_numel"] // 2 + 64
    assert r0["local_numel"] + r1["local_numel"] >= r0["global_numel"]
    # the weights equal an ordinary load (+ prepare), and the sharding of one (shard_model)
    assert r0["same_keys"] and r0["state_max_abs_diff"] == 0.0 and r0["vs_shard_model_max_abs_diff"] == 0.0
    for r in (r0, r1):
        assert r["buffers_max_abs_diff"] == 0.0  # rotary inv_freq re-made from rank 0's, not left uninitialised
        assert r["forward_max_abs_diff"] <= 1e-5
        assert r["tied"] == r["config_tied"] == (name == "tied")  # tied weights stay one parameter
        assert r["checkpointing"]  # prepare's changes reached the model that is returned
        assert r["generation_config_same"]  # save_pretrained writes the folder's own generation settings
    if name == "untied":
        assert r0["vocab"] == r1["vocab"]  # prepare grew the embeddings alike on real and meta models


def test_a_load_failure_on_rank0_stops_every_rank_with_its_message(ranks):
    assert "is missing: weights" in ranks[0]["broken"] and ranks[1]["broken"] == ranks[0]["broken"]


def test_meta_init_with_bf16_compute_keeps_float32_masters(ranks):
    for r in ranks:
        assert r["bf16"]["stored"] == ["torch.float32"]
        assert 0 < r["bf16"]["forward_max_abs_diff"] < 0.1  # bf16 rounding, not garbage or a second float32 copy


def test_gradient_accumulation_without_a_reduce_scatter_per_micro_batch(ranks):
    for r in ranks:
        a = r["accumulation"]
        tol = 1e-6 * max(1.0, a["grad_scale"])
        # FSDP2: inside no_grad_sync the first backward left no sharded gradient, i.e. no reduce-scatter ran
        assert a["fsdp2_deferred_no_grad_after_first"] and a["fsdp2_synced_leaves_grads_after_first"]
        assert a["fsdp2_deferred_vs_synced"] <= tol and a["fsdp2_synced_vs_one_process"] <= tol
        # DDP: the first micro-batch's gradients stayed local, the final ones are the all-reduced ones
        assert a["ddp_deferred_first_grads_differ"] and a["ddp_synced_first_grads_equal"]
        assert a["ddp_deferred_vs_synced"] <= tol and a["ddp_deferred_vs_one_process"] <= tol


def test_no_grad_sync_in_one_process_is_plain_accumulation(tiny_model_dir, one_thread):
    from transformers import AutoModelForCausalLM

    from laser_rl.training.policy import PolicyWithScore
    from laser_rl.training.sharding import no_grad_sync

    policy = PolicyWithScore(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    args = _batch(policy.model.config.vocab_size, 2, seed=0)
    with no_grad_sync(policy, enabled=True):
        _loss(policy(*args), 1.0).backward()
    with no_grad_sync(policy, enabled=False):
        _loss(policy(*args), 1.0).backward()
    twice = _grads(policy)
    policy.zero_grad(set_to_none=True)
    _loss(policy(*args), 2.0).backward()
    assert _max_diff(twice, _grads(policy)) <= 1e-5


def test_load_sharded_needs_a_process_group(tiny_model_dir):
    import torch.distributed as dist

    from laser_rl.errors import LaserError
    from laser_rl.training.fsdp_load import load_sharded

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    with pytest.raises(LaserError, match="initialised process group"):
        load_sharded(str(tiny_model_dir), device=torch.device("cpu"))


@pytest.mark.slow
def test_load_compare_bench_runs_both_loads_per_rank():
    """scripts/sharding_bench.py --load-compare (the measurement in docs/reproducing-the-paper.md) on a tiny
    shape: two torchrun launches of 2 ranks (≈ 45 s on 2 shared cores), one JSON row per rank and mode."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "sharding_bench.py"), "--load-compare", "--device", "cpu",
                          "--shape", "tiny", "--nproc", "2", "--threads", "1"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    loads = {(r["mode"], r["rank"]): r for r in rows if r["what"] == "load"}
    assert set(loads) == {(m, r) for m in ("full", "meta") for r in (0, 1)}
    assert all(r["local_shard_gib"] * 2 == pytest.approx(r["model_fp32_gib"], abs=2e-3) for r in loads.values())
    compare = [r for r in rows if r["what"] == "load_compare"]
    assert [r["rank"] for r in compare] == [0, 1] and all(r["meta_over_full"] > 0 for r in compare)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
