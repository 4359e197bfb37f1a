"""The training forward (``PolicyWithScore``) sees the model's own logits: soft-capping (Gemma 2),
logit scaling (Granite, Cohere) and none (Llama) give the same token log-probs and lp_z as the
model's forward, the sampler and the teacher-forced scorer; its entropy is that of the full logits;
a transform the config does not describe is refused; temperature 0 is refused.

Tolerances: float32 tiny random models; the same logits computed with and without a KV cache,
padding or chunking differ by float rounding only (atol 1e-5).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from laser_rl.errors import LaserError
from laser_rl.rollout import SamplingConfig, sample, score_responses
from laser_rl.training.batch import build_sequences
from laser_rl.training.policy import PolicyWithScore

ATOL = 1e-5
TEMPERATURE = 0.7

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(
    vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    tie_word_embeddings=False,
)
# Each family with its logit transform set so that it matters: logits of a few units, a soft-cap of 5.
FAMILIES = {
    "gemma2": (Gemma2ForCausalLM, Gemma2Config(**COMMON, head_dim=8, query_pre_attn_scalar=8, sliding_window=64,
                                               final_logit_softcapping=5.0, attn_implementation="eager")),
    "granite": (GraniteForCausalLM, GraniteConfig(**COMMON, logits_scaling=8.0)),
    "cohere": (CohereForCausalLM, CohereConfig(**COMMON, logit_scale=0.5)),
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON)),
}
PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 3, 9], [5, 5, 5, 5, 5, 6], [7, 16], [20, 21, 3]]


def make_model(family: str, seed: int = 0) -> torch.nn.Module:
    cls, cfg = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(copy.deepcopy(cfg)).eval()  # a test may change its config
    with torch.no_grad():  # random init gives logits near 0, where no transform shows; make them a few units
        head = model.get_output_embeddings().weight
        head.mul_(3.0 / head.norm(dim=1, keepdim=True).mean())
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def rollout_case(request: pytest.FixtureRequest):
    """(model, prompts, rollout, sequences, policy output at T) for one family."""
    model = make_model(request.param)
    z, stops = model.config.vocab_size - 1, [model.config.eos_token_id]
    roll = sample(model, PROMPTS * 2, pad_id=0, stop_ids=stops, z_id=z,
                  config=SamplingConfig(temperature=TEMPERATURE, max_new_tokens=16),
                  generator=torch.Generator().manual_seed(1))
    assert roll.finished.any() and (~roll.finished).any(), "fixture should give finished and truncated rows"
    seq = build_sequences(PROMPTS * 2, roll, pad_id=0, z_id=z, stop_ids=stops)
    out = PolicyWithScore(model, chunk_size=5)(seq.input_ids, seq.attention_mask, seq.position_ids, seq.pred_mask,
                                               seq.eos_column, seq.finished, TEMPERATURE)
    return request.param, model, roll, seq, out


def model_logits(model: torch.nn.Module, seq) -> torch.Tensor:  # noqa: ANN001
    """[B, L-1, V] float32 logits of the model's own forward over the right-padded batch."""
    with torch.no_grad():
        return model(input_ids=seq.input_ids, attention_mask=seq.attention_mask,
                     position_ids=seq.position_ids).logits[:, :-1].float()


def test_logprobs_and_lp_z_equal_the_models_own_forward(rollout_case) -> None:
    family, model, roll, seq, out = rollout_case
    logits = model_logits(model, seq)
    targets = seq.input_ids[:, 1:]
    want = (logits / TEMPERATURE).log_softmax(-1).gather(2, targets[..., None]).squeeze(2)
    torch.testing.assert_close(out.token_logprobs[seq.pred_mask], want[seq.pred_mask], atol=ATOL, rtol=0)
    fin = seq.finished
    rows = fin.nonzero().squeeze(1)
    want_z = logits.log_softmax(-1)[rows, seq.eos_column[rows], targets[rows, seq.eos_column[rows]]]
    torch.testing.assert_close(out.lp_z[fin], want_z, atol=ATOL, rtol=0)
    assert torch.isnan(out.lp_z[~fin]).all()


def test_logprobs_and_lp_z_equal_the_samplers(rollout_case) -> None:
    family, model, roll, seq, out = rollout_case
    torch.testing.assert_close(out.token_logprobs[seq.pred_mask], roll.logprobs[roll.response_mask], atol=ATOL,
                               rtol=0)
    torch.testing.assert_close(out.lp_z[seq.finished], roll.lp_z[seq.finished], atol=ATOL, rtol=0)


def test_lp_z_equals_the_teacher_forced_scorer(rollout_case) -> None:
    family, model, roll, seq, out = rollout_case
    fin = roll.finished.tolist()
    prompts = [p for p, f in zip(PROMPTS * 2, fin) if f]
    responses = [r for r, f in zip(roll.responses(), fin) if f]
    eos = model.config.eos_token_id
    tf = score_responses(model, prompts, responses, z_id=model.config.vocab_size - 1, pad_id=0, stop_ids=[eos],
                         eos_id=eos)
    torch.testing.assert_close(out.lp_z[roll.finished], tf, atol=ATOL, rtol=0)


def test_entropy_equals_that_of_the_full_tempered_logits(rollout_case) -> None:
    family, model, roll, seq, out = rollout_case
    logp = (model_logits(model, seq) / TEMPERATURE).log_softmax(-1)
    want = -(logp.exp() * logp).sum(-1)  # [B, L-1]
    assert out.entropy.shape == seq.pred_mask.shape and out.entropy.dtype == torch.float32
    torch.testing.assert_close(out.entropy[seq.pred_mask], want[seq.pred_mask], atol=ATOL, rtol=0)
    assert (out.entropy[~seq.pred_mask] == 0).all()
    assert not out.entropy.requires_grad


def test_transform_is_applied_before_temperature_and_gradients_match_full_logits() -> None:
    """Gradients through the chunked, checkpointed head pass equal those of the full logits (Gemma 2)."""
    model = make_model("gemma2").train()
    ids = torch.tensor([[3, 4, 5, 6, 1, 23], [7, 8, 9, 10, 11, 1]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    pos = torch.arange(6).expand(2, 6)
    pred = torch.zeros(2, 5, dtype=torch.bool)
    pred[:, 2:4] = True
    pred[1, 4] = True
    policy = PolicyWithScore(model, chunk_size=2)
    out = policy(ids, mask, pos, pred, torch.tensor([4, -1]), torch.tensor([True, False]), TEMPERATURE)
    (got,) = torch.autograd.grad(out.token_logprobs.sum() + out.lp_z[0], model.lm_head.weight)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
    lp = (logits / TEMPERATURE).log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
    (want,) = torch.autograd.grad(lp[pred].sum() + logits[0, 4].log_softmax(-1)[23], model.lm_head.weight)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "granite", "cohere", "llama"])
def test_logit_transform_read_from_config(family: str) -> None:
    from laser_rl.training.policy import logit_transform

    t = logit_transform(FAMILIES[family][1])
    assert (t.scale, t.softcap) == {"gemma2": (1.0, 5.0), "granite": (1 / 8.0, None), "cohere": (0.5, None),
                                    "llama": (1.0, None)}[family]


def test_a_config_field_the_forward_ignores_is_refused() -> None:
    """Llama's forward does not read ``logits_scaling``: the check against the forward catches it."""
    model = make_model("llama")
    model.config.logits_scaling = 8.0
    with pytest.raises(LaserError, match="LlamaForCausalLM.*config does not describe"):
        PolicyWithScore(model)


def test_a_transform_no_config_field_names_is_refused() -> None:
    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    torch.manual_seed(0)
    model = Scaled(FAMILIES["llama"][1]).eval()
    with pytest.raises(LaserError, match="Scaled.*config does not describe"):
        PolicyWithScore(model)


def test_bad_config_value_names_the_field() -> None:
    from laser_rl.training.policy import logit_transform

    with pytest.raises(LaserError, match="final_logit_softcapping=0"):
        logit_transform(Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=0.0))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive(temperature: float) -> None:
    model = make_model("llama")
    ids = torch.tensor([[3, 4, 1, 23]])
    with pytest.raises(LaserError, match="temperature"):
        PolicyWithScore(model)(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(4)[None],
                               torch.tensor([[False, True, False]]), torch.tensor([2]), torch.tensor([True]),
                               temperature)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_check_accepts_every_family_in_bfloat16(family: str) -> None:
    """No false refusal from rounding: the check tolerates bf16 (its transform runs in the model's dtype)."""
    model = make_model(family).to(torch.bfloat16)
    assert PolicyWithScore(model).logit_transform == PolicyWithScore(make_model(family)).logit_transform


def test_check_is_skipped_for_weights_on_the_meta_device() -> None:
    """Under meta-device initialisation only the rank holding the weights can (and does) run the check."""
    cfg = copy.deepcopy(FAMILIES["llama"][1])
    cfg.logits_scaling = 8.0  # the check would refuse this (see above) if it ran
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert PolicyWithScore(model).logit_transform.scale == 1 / 8.0


def test_head_pass_keeps_no_vocab_wide_activation_beyond_one_chunk() -> None:
    """Entropy and the logit transform add no O(tokens × vocab) memory: what autograd keeps for backward
    outside the checkpointed chunks has no [rows > chunk, V] tensor (the chunks keep only their inputs)."""
    model = make_model("gemma2").train()
    V, chunk = model.config.vocab_size, 3
    ids = torch.randint(3, V - 1, (4, 12), generator=torch.Generator().manual_seed(0))
    pred = torch.ones(4, 11, dtype=torch.bool)
    widest: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 1 and t.shape[-1] == V:
            widest.append(t.numel() // V)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = PolicyWithScore(model, chunk_size=chunk)(ids, torch.ones_like(ids, dtype=torch.bool),
                                                       torch.arange(12).expand(4, 12), pred,
                                                       torch.full((4,), -1), torch.zeros(4, dtype=torch.bool))
    assert out.token_logprobs.requires_grad and out.entropy.abs().sum() > 0
    assert max(widest, default=0) <= chunk, f"a saved tensor spans {max(widest)} rows of vocab width"
