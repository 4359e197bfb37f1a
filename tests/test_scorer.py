"""Teacher-forced scoring: lp_z at the EOS position equals a plain full forward per row, whatever the
batching, padding or order; bad input names the row. Tolerance: atol 1e-5 (float32 rounding)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from laser_rl.errors import LaserError
from laser_rl.rollout import score_responses

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
        bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def ids_of(model: LlamaForCausalLM) -> dict:
    eos = model.config.eos_token_id
    return {"pad_id": model.config.pad_token_id, "eos_id": eos, "stop_ids": {eos, eos + 1},
            "z_id": model.config.vocab_size - 1}


def reference(model: LlamaForCausalLM, prompt: list[int], full_response: list[int], z: int) -> float:
    """log_softmax(float32 logits at the last position)[z] of one unpadded, uncached forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + full_response])).logits[0, -1].float()
    return float(torch.log_softmax(logits, -1)[z])


PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 3, 9]]
RESPONSES = [[5, 6, 1], [7, 2], [8, 9, 10, 11, 12], []]  # ends in eos / in the 2nd stop id / none / empty


def test_matches_a_plain_forward_per_row(model: LlamaForCausalLM) -> None:
    ids = ids_of(model)
    got = score_responses(model, PROMPTS, RESPONSES, **ids, batch_size=3)
    eos = ids["eos_id"]
    full = [[5, 6, 1], [7, 2], [8, 9, 10, 11, 12, eos], [eos]]  # eos appended where no stop id ends it
    want = torch.tensor([reference(model, p, r, ids["z_id"]) for p, r in zip(PROMPTS, full)])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_independent_of_batch_size_order_and_padding(model: LlamaForCausalLM) -> None:
    ids = ids_of(model)
    base = score_responses(model, PROMPTS, RESPONSES, **ids, batch_size=1)
    for bs in (2, 4, 32):
        torch.testing.assert_close(score_responses(model, PROMPTS, RESPONSES, **ids, batch_size=bs), base,
                                   atol=ATOL, rtol=0)
    rev = score_responses(model, PROMPTS[::-1], RESPONSES[::-1], **ids)
    torch.testing.assert_close(rev, base.flip(0), atol=ATOL, rtol=0)
    # tensors are accepted as well as lists
    as_tensors = score_responses(model, [torch.tensor(p) for p in PROMPTS], [torch.tensor(r, dtype=torch.long)
                                                                             for r in RESPONSES], **ids)
    torch.testing.assert_close(as_tensors, base, atol=ATOL, rtol=0)


def test_response_is_cut_after_its_first_stop_id(model: LlamaForCausalLM) -> None:
    ids = ids_of(model)
    a = score_responses(model, [[3, 4]], [[5, 2, 6, 7, 1]], **ids)
    b = score_responses(model, [[3, 4]], [[5, 2]], **ids)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    c = score_responses(model, [[3, 4]], [[5, 1]], **ids)
    assert abs(float(a[0]) - float(c[0])) > 1e-4, "the stop id itself is part of the scored sequence"


class NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` argument (the scorer's fallback path)."""

    def __init__(self, inner: LlamaForCausalLM) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):  # noqa: ANN001, ANN201
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_models_without_logits_to_keep(model: LlamaForCausalLM) -> None:
    ids = ids_of(model)
    torch.testing.assert_close(score_responses(NoLogitsToKeep(model), PROMPTS, RESPONSES, **ids),
                               score_responses(model, PROMPTS, RESPONSES, **ids), atol=ATOL, rtol=0)


def test_empty_input_and_mode_restored(model: LlamaForCausalLM) -> None:
    assert score_responses(model, [], [], **ids_of(model)).numel() == 0
    model.train()
    try:
        score_responses(model, [[3]], [[4]], **ids_of(model))
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("override", "prompts", "responses", "message"),
    [
        ({}, [[3], [4]], [[5]], "got 2 prompts but 1 responses"),
        ({"z_id": 1}, [[3]], [[5]], "z_id=1 is also a stop id"),
        ({"z_id": 20}, [[3]], [[5]], "z_id=20 is not in the model's vocabulary"),
        ({"eos_id": 5}, [[3]], [[5]], "eos_id=5 must be one of stop_ids"),
        ({}, [[3], []], [[5], [6]], "prompt row 1 is empty"),
        ({}, [[3], [4]], [[5], [6, 99]], "response row 1: token id 99 is not in the model's vocabulary"),
        ({}, [[3], [-4]], [[5], [6]], "prompt row 1: token id -4"),
        ({}, [[3], [4] * 20], [[5], [6] * 12], "row 1: prompt + response + EOS is 33 tokens, longer than the model's "
                                              "context of 32"),
        ({"batch_size": 0}, [[3]], [[5]], "batch_size must be an integer >= 1"),
        ({}, ["2 + 2"], [[5]], "prompt row 0: expected token ids, got text"),
    ],
)
def test_bad_input_names_the_row(model: LlamaForCausalLM, override: dict, prompts: list, responses: list,
                                 message: str) -> None:
    with pytest.raises(LaserError) as err:
        score_responses(model, prompts, responses, **{**ids_of(model), **override})
    assert message in str(err.value)
