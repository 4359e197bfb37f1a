"""The rollout → verify → score pipeline: one owner of batching, decoding, the correctness threshold
and the unfinished-rows-score-0 rule, for any generation engine."""

from __future__ import annotations

import pytest
import torch

from laser_rl.rollout import Rollout, SamplingConfig
from laser_rl.rollout.engine import SamplerEngine, build_engine
from laser_rl.rollout.pipeline import concat_rollouts, rollout_verify_score
from laser_rl.score_params import ScoreParams
from laser_rl.tasks.arith import ArithVerifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok, ScoreParams.load(tiny_model_dir)


def _prompts(tok, texts):
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def test_pipeline_verifies_scores_and_lays_out_groups(tiny):
    model, tok, params = tiny
    engine = SamplerEngine(model, tok.pad_token_id, [tok.eos_token_id], params.token_id, (tok.pad_token_id,))
    prompts = _prompts(tok, ["12+34=", "5-3+7=", "9+9="])
    answers = ["46", "9", "18"]
    rb = rollout_verify_score(engine, tok, prompts, answers, ArithVerifier(), sampling=SamplingConfig(max_new_tokens=12),
                              n=4, batch_size=5, score=params, generator=torch.Generator().manual_seed(0))
    assert rb.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and len(rb.texts) == 12
    assert rb.prompt_ids[4] == prompts[1]
    want = [ArithVerifier().reward(t, answers[i // 4]) for i, t in enumerate(rb.texts)]
    assert rb.rewards.tolist() == want and rb.correct.tolist() == [w > 0.5 for w in want]
    fin = rb.finished
    assert fin.any() and (~fin).any(), "the fixture should give finished and truncated rows"
    assert (rb.scores[~fin] == 0).all()  # no EOS, no score
    assert torch.allclose(rb.scores[fin], params.score(rb.rollout.lp_z)[fin])
    assert all(tok.eos_token not in t for t in rb.texts)


def test_row_seeds_make_samples_independent_of_batch_size(tiny):
    model, tok, params = tiny
    engine = build_engine("hf", model, pad_id=tok.pad_token_id, stop_ids=[tok.eos_token_id], z_id=params.token_id)
    prompts = _prompts(tok, ["12+34=", "5-3+7=", "9+9="])
    seeds = list(range(100, 106))
    runs = [rollout_verify_score(engine, tok, prompts, ["46", "9", "18"], ArithVerifier(),
                                 sampling=SamplingConfig(max_new_tokens=12), n=2, batch_size=bs, score=params,
                                 row_seeds=seeds) for bs in (1, 4, 6)]
    for rb in runs[1:]:
        assert rb.texts == runs[0].texts
        assert torch.allclose(rb.scores, runs[0].scores, atol=1e-5)
    with pytest.raises(ValueError, match="row_seeds"):
        rollout_verify_score(engine, tok, prompts, ["46", "9", "18"], ArithVerifier(),
                             sampling=SamplingConfig(max_new_tokens=4), n=2, row_seeds=seeds[:3])


class ReplayEngine:
    """A second engine: replays fixed responses (as a vLLM engine would return them), with lp_z."""

    reads_score = True
    pad_id = 0

    def __init__(self, stop_ids, responses, lp_z):
        self.stop_ids, self.responses, self.lp_z = stop_ids, responses, lp_z

    def generate(self, prompts, sampling, *, generator=None, row_seeds=None):
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in self.responses], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.bool) for r in self.responses],
                                               batch_first=True)
        finished = torch.tensor([r[-1] in self.stop_ids for r in self.responses])
        return Rollout(ids, mask, torch.zeros(ids.shape), finished, ~finished, self.lp_z)


def test_another_engine_plugs_in_without_touching_the_pipeline(tiny):
    _, tok, params = tiny
    eos = tok.eos_token_id
    resp = [tok.encode("1+2=3;#3", add_special_tokens=False) + [eos], tok.encode("1+2=4;#", add_special_tokens=False)]
    engine = ReplayEngine([eos], resp, torch.tensor([params.c_ref + 2.0, float("nan")]))
    rb = rollout_verify_score(engine, tok, [[5], [5]], ["3", "3"], ArithVerifier(), sampling=SamplingConfig(), score=params)
    assert rb.texts == ["1+2=3;#3", "1+2=4;#"] and rb.correct.tolist() == [True, False]
    assert rb.scores.tolist() == pytest.approx([params.beta_v * 2.0, 0.0])


def test_concat_rollouts_pads_to_the_longest():
    a = Rollout(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3),
                torch.tensor([True, False]), torch.tensor([False, True]), torch.zeros(2))
    b = Rollout(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5),
                torch.tensor([True]), torch.tensor([False]), torch.zeros(1))
    c = concat_rollouts([a, b], pad_id=7)
    assert c.response_ids.shape == (3, 5) and c.response_ids[0, 3:].tolist() == [7, 7]
    assert c.lengths.tolist() == [3, 3, 5] and c.finished.tolist() == [True, False, True]
