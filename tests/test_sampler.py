"""The batched sampler: greedy equals ``model.generate``, the in-loop score equals teacher forcing,
rows do not depend on their batch, and bad input names the row.

Tolerances: the model runs in float32; values computed with and without a KV cache / padding
differ by float rounding only, so log-probabilities are compared with atol 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from laser_rl.errors import LaserError
from laser_rl.rollout import Rollout, SamplingConfig, sample, score_responses

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(attn: str = "sdpa", seed: int = 9) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
        bos_token_id=None, tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    # A random tiny model is close to uniform; sharpen it so greedy decoding has clear winners and
    # sampled sequences are not all noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return make_model()


def ids_of(model: LlamaForCausalLM) -> tuple[int, int, int, frozenset[int]]:
    """pad, eos, z, stops, derived from the config: z is the last id, the second stop is eos + 1."""
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    z = model.config.vocab_size - 1
    return pad, eos, z, frozenset({eos, eos + 1})


PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 3, 9], [5, 5, 5, 5, 5, 6], [7, 16]]


def teacher_forced_logits(model: LlamaForCausalLM, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Float32 logits predicting each response token and the token after it (no cache, no padding)."""
    seq = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=seq).logits[0].float()
    return logits[len(prompt) - 1 :]


def test_greedy_matches_generate_for_every_row(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    r = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(temperature=0, max_new_tokens=20),
               z_id=z)
    for i, p in enumerate(PROMPTS):
        out = model.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
            max_new_tokens=20, eos_token_id=sorted(stops), pad_token_id=pad, suppress_tokens=[z],
        )[0, len(p):].tolist()
        assert r.responses()[i] == out[: len(r.responses()[i])]
        assert len(out) == len(r.responses()[i]) or all(t == pad for t in out[len(r.responses()[i]):])
    assert r.finished.any() and not r.finished.all(), "fixture should give finished and truncated rows"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_batch_equals_single_rows(attn: str) -> None:
    """Padding and batch composition must not change a row (also checks the eager mask path)."""
    m = make_model(attn)
    pad, eos, z, stops = ids_of(m)
    cfg = SamplingConfig(temperature=0, max_new_tokens=16)
    batch = sample(m, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z)
    for i, p in enumerate(PROMPTS):
        one = sample(m, [p], pad_id=pad, stop_ids=stops, config=cfg, z_id=z)
        assert one.responses()[0] == batch.responses()[i]
        n = len(one.responses()[0])
        torch.testing.assert_close(one.logprobs[0, :n], batch.logprobs[i, :n], atol=ATOL, rtol=0)
        torch.testing.assert_close(one.lp_z[0], batch.lp_z[i], atol=ATOL, rtol=0, equal_nan=True)
        assert bool(one.finished[0]) == bool(batch.finished[i])


def test_in_loop_lp_z_equals_teacher_forced(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    prompts = PROMPTS * 3
    r = sample(model, prompts, pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=24), z_id=z,
               generator=torch.Generator().manual_seed(0))
    assert 0 < int(r.finished.sum()) < len(prompts)
    responses = r.responses()
    tf = score_responses(model, prompts, responses, z_id=z, pad_id=pad, stop_ids=stops, eos_id=eos)
    fin = r.finished
    torch.testing.assert_close(r.lp_z[fin], tf[fin], atol=ATOL, rtol=0)
    assert torch.isnan(r.lp_z[~fin]).all()
    # independent of the scorer: a plain full forward per row
    for i in fin.nonzero().flatten().tolist():
        logits = teacher_forced_logits(model, prompts[i], responses[i])[-1]
        assert abs(float(torch.log_softmax(logits, -1)[z]) - float(r.lp_z[i])) < ATOL


def test_sampled_logprobs_equal_teacher_forced_tempered_logprobs(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    temp = 0.7
    r = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(temperature=temp, max_new_tokens=12),
               z_id=z, generator=torch.Generator().manual_seed(1))
    for i, p in enumerate(PROMPTS):
        resp = r.responses()[i]
        logits = teacher_forced_logits(model, p, resp)[: len(resp)]
        expected = torch.log_softmax(logits / temp, -1).gather(1, torch.tensor(resp)[:, None]).squeeze(1)
        torch.testing.assert_close(r.logprobs[i, : len(resp)], expected, atol=ATOL, rtol=0)
        assert (r.logprobs[i, len(resp):] == 0).all()
        assert (r.response_ids[i, len(resp):] == pad).all()


def test_two_stop_ids_both_end_rows(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    r = sample(model, PROMPTS * 4, pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=30), z_id=z,
               generator=torch.Generator().manual_seed(2))
    enders = set()
    for resp, fin in zip(r.responses(), r.finished.tolist()):
        assert not any(t in stops for t in resp[:-1]), "a row must end at its first stop id"
        if fin:
            assert resp[-1] in stops
            enders.add(resp[-1])
        else:
            assert len(resp) == 30
    assert enders == set(stops)
    assert torch.equal(r.truncated, ~r.finished)
    assert torch.equal(r.response_mask.sum(1), torch.tensor([len(x) for x in r.responses()]))


def test_all_rows_truncated(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    # the stop ids are impossible to reach: suppress nothing, but stop on an id no row emits greedily
    greedy = sample(model, PROMPTS, pad_id=pad, stop_ids=(), config=SamplingConfig(temperature=0, max_new_tokens=5))
    unused = sorted(set(range(model.config.vocab_size)) - {t for r in greedy.responses() for t in r} - {pad, z})
    r = sample(model, PROMPTS, pad_id=pad, stop_ids=unused[:2], config=SamplingConfig(temperature=0, max_new_tokens=5),
               z_id=z)
    assert not r.finished.any() and r.truncated.all()
    assert torch.isnan(r.lp_z).all()
    assert r.response_mask.all()
    assert r.responses() == greedy.responses()


class ForwardCounter:
    """Record the batch size of every forward call of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.batches.append(int(kwargs["input_ids"].shape[0]))

    def close(self) -> None:
        self.handle.remove()


def test_score_costs_at_most_one_extra_step_and_finished_rows_leave_the_batch(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    prompts = PROMPTS * 3
    cfg = SamplingConfig(max_new_tokens=60)
    runs = {}
    for with_z in (True, False):
        counter = ForwardCounter(model)
        try:
            runs[with_z] = sample(
                model, prompts, pad_id=pad, stop_ids=stops, config=cfg,
                z_id=z if with_z else None, suppress_ids=() if with_z else (z,),
                generator=torch.Generator().manual_seed(3),
            )
        finally:
            counter.close()
        runs[(with_z, "batches")] = counter.batches
    a, b = runs[True], runs[False]
    # same seed and same masked ids: the same tokens, the score changes nothing but lp_z (the batches
    # are compacted at different steps, so log-probs may differ by float rounding)
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=ATOL, rtol=0)
    assert a.finished.all(), "every row should finish within 60 steps"
    assert torch.isfinite(a.lp_z).all() and torch.isnan(b.lp_z).all()
    longest = int(a.response_mask.sum(1).max())
    # prefill + one decode step per generated token; with z the last finisher is fed its stop once more
    assert len(runs[(False, "batches")]) == longest
    assert len(runs[(True, "batches")]) == longest + 1
    batches = runs[(True, "batches")]
    assert batches[0] == len(prompts) and batches[-1] < len(prompts) and batches == sorted(batches, reverse=True)


def test_max_new_tokens_reached_with_a_pending_score() -> None:
    """A row that stops at the very last step still gets its score (one extra step for it only)."""
    m = make_model()
    pad, eos, z, stops = ids_of(m)
    cfg = SamplingConfig(temperature=0, max_new_tokens=30)
    full = sample(m, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z)
    lengths = full.response_mask.sum(1)
    i = int(torch.where(full.finished, lengths, 0).argmax())  # the last row to finish
    n = int(lengths[i])
    short = sample(m, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(temperature=0, max_new_tokens=n),
                   z_id=z)
    assert bool(short.finished[i])
    torch.testing.assert_close(short.lp_z[i], full.lp_z[i], atol=ATOL, rtol=0)
    assert torch.equal(short.finished, full.finished & (lengths <= n))
    assert torch.equal(short.response_ids, full.response_ids[:, :n])


def test_seeded_generator_reproducible(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, top_k=8, max_new_tokens=16)

    def run(seed: int) -> Rollout:
        return sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z,
                      generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.lp_z.nan_to_num(), b.lp_z.nan_to_num())
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_one_and_tiny_top_p_equal_greedy(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    greedy = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(temperature=0, max_new_tokens=12),
                    z_id=z)
    for cfg in (SamplingConfig(temperature=1.3, top_k=1, max_new_tokens=12),
                SamplingConfig(temperature=1.0, top_p=1e-4, max_new_tokens=12)):
        r = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z,
                   generator=torch.Generator().manual_seed(0))
        assert r.responses() == greedy.responses()
        torch.testing.assert_close(r.lp_z, greedy.lp_z, atol=ATOL, rtol=0, equal_nan=True)


def test_top_k_samples_only_among_the_k_best(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    k = 3
    r = sample(model, PROMPTS * 2, pad_id=pad, stop_ids=stops, config=SamplingConfig(top_k=k, max_new_tokens=10),
               z_id=z, generator=torch.Generator().manual_seed(4))
    ranks = []
    for p, resp in zip(PROMPTS * 2, r.responses()):
        logits = teacher_forced_logits(model, p, resp)[: len(resp)]
        logits[:, z] = float("-inf")
        tok = torch.tensor(resp)
        ranks += (logits > logits.gather(1, tok[:, None])).sum(1).tolist()
    assert max(ranks) < k and len(set(ranks)) > 1


def test_top_p_samples_only_inside_the_nucleus(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    top_p, temp = 0.6, 1.2
    r = sample(model, PROMPTS * 2, pad_id=pad, stop_ids=stops,
               config=SamplingConfig(temperature=temp, top_p=top_p, max_new_tokens=10), z_id=z,
               generator=torch.Generator().manual_seed(5))
    above = []
    for p, resp in zip(PROMPTS * 2, r.responses()):
        logits = teacher_forced_logits(model, p, resp)[: len(resp)]
        logits[:, z] = float("-inf")
        probs = torch.softmax(logits / temp, -1)
        tok = torch.tensor(resp)
        p_tok = probs.gather(1, tok[:, None])
        above += (probs * (probs > p_tok)).sum(1).tolist()  # mass of the tokens ranked above it
    assert max(above) < top_p + 1e-6
    assert max(above) > 0.05, "some sampled tokens should not be the top token"


def test_z_and_suppressed_ids_are_never_sampled() -> None:
    m = make_model()
    pad, eos, z, stops = ids_of(m)
    favourite = [z, 7, pad]

    def boost(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., favourite] += 30.0  # these ids would win every step
        return out

    handle = m.lm_head.register_forward_hook(boost)
    try:
        r = sample(m, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=20), z_id=z,
                   suppress_ids=[7, pad], generator=torch.Generator().manual_seed(0))
        g = sample(m, PROMPTS, pad_id=pad, stop_ids=stops, config=SamplingConfig(temperature=0, max_new_tokens=20),
                   z_id=z, suppress_ids=[7, pad])
    finally:
        handle.remove()
    for resp in r.responses() + g.responses():
        assert not set(resp) & set(favourite)
    # the score reads the unmasked logits, where z is now likely
    assert (r.lp_z[r.finished] > -2).all()


def test_model_mode_is_restored(model: LlamaForCausalLM) -> None:
    pad, eos, z, stops = ids_of(model)
    model.train()
    try:
        sample(model, [[3, 4]], pad_id=pad, stop_ids=stops, config=SamplingConfig(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "prompts", "message"),
    [
        ({"z_id": 20}, PROMPTS, "z_id=20 is not in the model's vocabulary"),
        ({"z_id": 1}, PROMPTS, "z_id=1 is also a stop id"),
        ({}, [[3], [], [4]], "prompt row 1 is empty"),
        ({}, [[3], [4], list(range(2, 19)) * 8], "prompt row 2 (136 tokens) is longer than the model's context of 128"),
        ({}, [[3], [4] * 120], "prompt row 1 (120 tokens) plus max_new_tokens=16 exceeds"),
        ({}, [[3], [4, 25]], "prompt row 1: token id 25 is not in the model's vocabulary"),
        ({"pad_id": -1}, PROMPTS, "pad_id=-1"),
        ({"suppress_ids": [2]}, PROMPTS, "overlap stop_ids [2]"),
        ({}, [], "prompts is empty"),
        ({}, ["hello"], "prompt row 0: expected token ids, got text"),
    ],
)
def test_bad_input_names_the_problem(model: LlamaForCausalLM, kwargs: dict, prompts: list, message: str) -> None:
    args = {"pad_id": 0, "stop_ids": {1, 2}, "config": SamplingConfig(max_new_tokens=16), **kwargs}
    with pytest.raises(LaserError) as err:
        sample(model, prompts, **args)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("max_new_tokens", 0),
     ("temperature", float("nan"))],
)
def test_bad_sampling_config(field: str, value: float) -> None:
    with pytest.raises(LaserError, match=field):
        SamplingConfig(**{field: value})


def test_bench_runs_end_to_end_on_the_tiny_model(tmp_path) -> None:  # noqa: ANN001
    """`laser bench` (tiny model only, few tokens) writes the ratios and runs registered benchmarks."""
    import json

    from laser_rl import bench
    from laser_rl.cli import main

    def extra(ctx: bench.BenchContext) -> dict[str, float]:
        return {"extra_models": float(len(ctx.models))}

    bench.register_benchmark(extra)
    try:
        out = tmp_path / "bench.json"
        argv = ["bench", "--no-large", "--reps", "1", "--max-new-tokens", "8", "--batch", "4", "--out", str(out)]
        assert main(argv) == 0
    finally:
        bench.EXTRA_BENCHMARKS.remove(extra)
    results = json.loads(out.read_text())
    for key in ("sampler_vs_generate", "score_overhead", "score_vs_reforward", "laser_vs_grpo_step"):
        assert results[key] == results[f"{key}_tiny"] and results[key] > 0
    assert results["extra_models"] == 1.0
    assert results["lp_z_in_loop_vs_teacher_forced_max_abs_diff_tiny"] < ATOL or results[
        "finished_fraction_tiny"] == 0


def test_row_seeds_make_a_row_independent_of_its_batch(model: LlamaForCausalLM) -> None:
    pad, eos, z, _ = ids_of(model)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=10)
    seeds = [101, 202, 303, 404]
    whole = sample(model, prompts, pad_id=pad, stop_ids=[eos], config=cfg, z_id=z, row_seeds=seeds)
    # the same rows, reversed and split into other batches, draw the same tokens
    parts = [sample(model, prompts[i::-1][:2], pad_id=pad, stop_ids=[eos], config=cfg, z_id=z,
                    row_seeds=seeds[i::-1][:2]) for i in (1, 3)]
    by_row = {1: parts[0].responses()[0], 0: parts[0].responses()[1], 3: parts[1].responses()[0],
              2: parts[1].responses()[1]}
    assert [by_row[i] for i in range(4)] == whole.responses()
    assert len({tuple(r) for r in whole.responses()}) > 1
    with pytest.raises(LaserError, match="either generator or row_seeds"):
        sample(model, prompts, pad_id=pad, stop_ids=[eos], config=cfg, row_seeds=seeds,
               generator=torch.Generator().manual_seed(0))
    with pytest.raises(LaserError, match="row_seeds has 2 entries for 4 prompts"):
        sample(model, prompts, pad_id=pad, stop_ids=[eos], config=cfg, row_seeds=seeds[:2])


def test_decode_observer_sees_every_step_and_changes_nothing(model):
    """`laser bench` times the in-loop score through an observer; watching must not change a token."""
    from laser_rl.bench import ScoreTiming

    pad, eos, z, stops = ids_of(model)
    cfg = SamplingConfig(max_new_tokens=12)
    plain = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z,
                   generator=torch.Generator().manual_seed(3))
    timing = ScoreTiming()
    watched = sample(model, PROMPTS, pad_id=pad, stop_ids=stops, config=cfg, z_id=z,
                     generator=torch.Generator().manual_seed(3), observer=timing)
    assert torch.equal(plain.response_ids, watched.response_ids)
    assert torch.allclose(plain.lp_z, watched.lp_z, equal_nan=True)
    assert plain.finished.any(), "the fixture should finish some rows"
    steps = len(timing.step_rows) + timing.score_only_steps
    assert steps == int(plain.lengths.max()) - (0 if timing.score_only_steps else 1)
    assert timing.lp_z_reads_s > 0 and timing.pending_row_steps + timing.score_only_steps > 0
    assert timing.extra_s() >= timing.lp_z_reads_s
