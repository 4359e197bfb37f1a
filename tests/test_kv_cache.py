"""The sampler's growing KV cache: the same rollouts as transformers' ``DynamicCache``, bit for bit,
through growth, compaction and the in-loop score; memory bounded by the sampler's longest sequence."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicLayer

from laser_rl.rollout import SamplingConfig, kv_cache, sample
from laser_rl.rollout import sampler as sampler_module
from laser_rl.rollout.kv_cache import GrowingLayer, growing_cache

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 3, 9], [5, 5, 5, 5, 5, 6], [7, 16]]


def llama() -> torch.nn.Module:  # grouped-query attention: 4 query heads over 2 key/value heads
    cfg = LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg).eval()


def qwen2_half_sliding() -> torch.nn.Module:  # layer 0 full attention, layer 1 a 4-token sliding window
    cfg = Qwen2Config(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None, tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
                      max_window_layers=1)
    torch.manual_seed(4)
    return Qwen2ForCausalLM(cfg).eval()


def rollouts(model: torch.nn.Module, cache_factory: object, monkeypatch: pytest.MonkeyPatch) -> list:
    monkeypatch.setattr(sampler_module, "growing_cache", cache_factory)
    out = []
    for stops, z in (((), None), ((1, 2), 19)):  # every row to the end; rows stopping, compaction, lp_z
        for seed in range(3):
            r = sample(model, PROMPTS, pad_id=0, stop_ids=stops, z_id=z, config=SamplingConfig(max_new_tokens=40),
                       generator=torch.Generator().manual_seed(seed))
            out.append((r.response_ids, r.logprobs, torch.nan_to_num(r.lp_z, nan=123.0)))
    return out


@pytest.mark.parametrize("make", [llama, qwen2_half_sliding])
def test_rollouts_are_bit_identical_to_dynamic_cache(make, monkeypatch) -> None:  # noqa: ANN001
    model = make()
    monkeypatch.setattr(kv_cache, "MIN_GROWTH", 1)  # grow often: 40 tokens take several reallocations
    ours = rollouts(model, growing_cache, monkeypatch)
    theirs = rollouts(model, lambda m, max_length: DynamicCache(config=m.config), monkeypatch)
    assert any(bool(lp_z.ne(123.0).any()) for _, _, lp_z in ours)  # some rows were scored
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_only_plain_full_attention_layers_are_replaced() -> None:
    kinds = [type(layer) for layer in growing_cache(qwen2_half_sliding(), 50).layers]
    assert kinds[0] is GrowingLayer and kinds[1] is not GrowingLayer and issubclass(kinds[1], DynamicLayer)


def test_growth_is_geometric_capped_and_views_match_concatenation() -> None:
    layer, reference = GrowingLayer(length_limit=300), DynamicLayer()
    capacities = []
    for n in [10] + [1] * 289:
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 5)
        keys, values = layer.update(k, v)
        ref_keys, ref_values = reference.update(k, v)
        assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)
        capacities.append(layer._key_buf.shape[-2])
    assert capacities[0] == 10 + kv_cache.MIN_GROWTH and max(capacities) == 300
    assert len(set(capacities)) <= 6  # 299 appends, a handful of reallocations
    assert all(c - n <= max(kv_cache.MIN_GROWTH, n // 4) for c, n in zip(capacities, range(10, 300)))
    layer.batch_select_indices(torch.tensor([1]))
    reference.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, reference.keys) and layer.get_seq_length() == 299
    layer.crop(-9)
    reference.crop(-9)
    assert torch.equal(layer.keys, reference.keys) and layer.length == 290
    k, v = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 5)
    assert torch.equal(layer.update(k, v)[1], reference.update(k, v)[1]) and layer.length == 291
    layer.batch_repeat_interleave(2)
    reference.batch_repeat_interleave(2)
    assert torch.equal(layer.keys, reference.keys) and torch.equal(layer.values, reference.values)
    layer.reset()
    assert layer.get_seq_length() == 0 and torch.equal(layer.update(k, v)[0], k)
