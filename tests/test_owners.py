"""Each shared fact has one owner that the callers use (issue 22, deliverable 4).

Where a test swaps an owner (monkeypatch) it proves the caller goes through it; where it compares
defaults it proves the callers' defaults *are* the owner's value, not a copy that could drift.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

import laser_rl.core as facts
from laser_rl.core import laser as core
from laser_rl.core.settings import LaserSettings
from laser_rl.errors import LaserError
from laser_rl.rollout import pipeline
from laser_rl.rollout.sampler import Rollout, SamplingConfig
from laser_rl.score_params import ScoreParams
from laser_rl.training.config import LaserConfig, load_config

REQUIRED = ["output_dir=runs/x", "model.path=some/model", "data.train=arith:train"]


# ------------------------------------------------------------------ a pipeline without a model


class _Engine:
    """Returns fixed finished responses; lp_z −4 everywhere (finished) so the score is defined."""

    reads_score = True
    stop_ids = [2]
    pad_id = 0

    def generate(self, prompts, sampling, *, generator=None, row_seeds=None) -> Rollout:
        B = len(prompts)
        ids = torch.tensor([[5, 2]] * B)
        mask = torch.ones(B, 2, dtype=torch.bool)
        fin = torch.ones(B, dtype=torch.bool)
        return Rollout(ids, mask, torch.zeros(B, 2), fin, ~fin, torch.full((B,), -4.0))


class _Tokenizer:
    def batch_decode(self, rows, **_):
        return ["x" * len(r) for r in rows]


class _Verifier:
    def __init__(self, rewards: list[float]):
        self.rewards = iter(rewards)

    def reward(self, text, answer):
        return next(self.rewards)

    def extract_answer(self, text):
        return text


def _pipeline(rewards: list[float], **kw) -> pipeline.RolloutBatch:
    return pipeline.rollout_verify_score(
        _Engine(), _Tokenizer(), [[1, 3]] * len(rewards), ["a"] * len(rewards), _Verifier(rewards),
        sampling=SamplingConfig(), batch_size=8, **kw,
    )


# ------------------------------------------------------------------ the correctness threshold


def test_non_default_correct_threshold_makes_reward_06_incorrect_in_pipeline_and_mse_balance():
    rewards = [0.6, 0.6, 1.0, 0.0]
    assert _pipeline(rewards).correct.tolist() == [True, True, True, False]  # default 0.5
    rb = _pipeline(rewards, correct_threshold=0.7)
    assert rb.correct.tolist() == [False, False, True, False]
    r, fin = torch.tensor(rewards), torch.ones(4, dtype=torch.bool)
    # Eq. 14 with threshold 0.7: one correct (weight 4/2), three incorrect (weight 4/6 each)
    w = core.class_balance_weights(r, fin, True, 0.7)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 6, 2.0, 4 / 6]))
    # the trainer's path: weights from the pipeline's booleans equal the reward-threshold ones
    torch.testing.assert_close(core.class_balance_weights_from_correct(rb.correct, fin), w)
    scores = torch.tensor([0.6, 0.6, 1.0, 0.0])
    assert float(core.class_balanced_mse(scores, r, fin, correct_threshold=0.7)) == 0.0
    assert float(core.class_balanced_mse(torch.zeros(4), r, fin, correct_threshold=0.7)) != pytest.approx(
        float(core.class_balanced_mse(torch.zeros(4), r, fin)))


def test_every_default_threshold_is_the_owners():
    owner = facts.CORRECT_THRESHOLD
    assert LaserSettings().correct_threshold is owner and LaserConfig().correct_threshold is owner
    for fn in (pipeline.rollout_verify_score, core.class_balance_weights, core.class_balanced_mse):
        assert inspect.signature(fn).parameters["correct_threshold"].default is owner, fn.__name__
    assert load_config(None, [*REQUIRED, "laser.correct_threshold=0.7"]).laser.correct_threshold == 0.7


def test_pipeline_and_metrics_classify_through_is_correct(monkeypatch):
    from laser_rl.evaluation import metrics

    calls = []

    def spy(values, threshold=facts.CORRECT_THRESHOLD):
        calls.append(threshold)
        return values > 0.95  # a rule no copy of "> 0.5" would give

    monkeypatch.setattr(pipeline, "is_correct", spy)
    assert _pipeline([0.6, 1.0]).correct.tolist() == [False, True] and calls == [facts.CORRECT_THRESHOLD]
    monkeypatch.setattr(metrics, "is_correct", spy)
    rec = {"problem": "p", "answer": "a", "responses": ["a", "b"], "pred_answers": ["a", "b"],
           "acc_list": [0.9, 1.0], "self_rewarding_scores": [0.9, 0.9]}
    assert metrics.compute_metrics([rec], ks=(1,))["accuracy"] == pytest.approx(0.5)


# ------------------------------------------------------------------ score > 0.5 = predicted correct


def test_verification_metrics_report_and_demo_use_the_verdict_owner(monkeypatch):
    from laser_rl import demo
    from laser_rl.evaluation import metrics, report

    scores, truth = np.array([0.6, 0.8, 0.1]), np.array([True, True, False])
    assert metrics.verification_metrics(scores, truth)["tpr"] == 1.0
    monkeypatch.setattr(metrics, "predicted_correct", lambda s: s > 0.7)
    assert metrics.verification_metrics(scores, truth)["tpr"] == 0.5
    monkeypatch.setattr(report, "SCORE_THRESHOLD", 0.7)
    rec = {"problem": "p", "answer": "a", "responses": ["a"], "pred_answers": ["a"], "acc_list": [True],
           "self_rewarding_scores": [0.9]}
    assert "score > 0.7." in report.render_markdown({"": metrics.compute_metrics([rec], ks=(1,))})
    assert "SCORE_THRESHOLD" in inspect.getsource(demo.render_report)
    assert demo.SCORE_THRESHOLD is facts.SCORE_THRESHOLD and report.SCORE_THRESHOLD != facts.SCORE_THRESHOLD


# ------------------------------------------------------------------ target log-prob, c_ref + 1/β_v, −3 warning


def test_default_target_logprob_has_one_owner():
    owner = facts.DEFAULT_TARGET_LOGPROB
    assert LaserSettings().target_logprob is owner and LaserConfig().target_logprob is owner
    assert inspect.signature(core.derive_beta_v).parameters["target_logprob"].default is owner
    assert core.derive_beta_v is facts.derive_beta_v and core.correct_target_logprob is facts.correct_target_logprob
    from laser_rl import score_params

    assert score_params.HIGH_TARGET_LOGPROB is facts.HIGH_TARGET_LOGPROB == -3.0


def test_config_checks_and_score_params_derive_the_target_through_the_owner(monkeypatch):
    from laser_rl.core import settings

    ok = [*REQUIRED, "laser.c_ref=-23", "laser.beta_v=0.1"]
    assert load_config(None, ok).laser.beta_v == 0.1  # target −13: fine
    monkeypatch.setattr(settings, "correct_target_logprob", lambda c_ref, beta_v: 1.0)
    with pytest.raises(LaserError, match=r"c_ref \+ 1/beta_v at 1 >= 0"):
        load_config(None, ok)
    monkeypatch.undo()
    from laser_rl import score_params

    monkeypatch.setattr(score_params, "correct_target_logprob", lambda c_ref, beta_v: -7.5)
    assert ScoreParams("z", 5, 0.1, -23.0).target_logprob == -7.5


# ------------------------------------------------------------------ where a response ends


def test_sampler_and_scorer_find_the_end_through_core_find_eos(monkeypatch, tiny_model_dir, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser_rl.rollout import sampler, scorer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tok.eos_token_id
    calls = {"sampler": 0, "scorer": 0}

    def spy(name):
        def find(*a, **kw):
            calls[name] += 1
            return core.find_eos(*a, **kw)
        return find

    monkeypatch.setattr(sampler, "find_eos", spy("sampler"))
    monkeypatch.setattr(scorer, "find_eos", spy("scorer"))
    prompt = tok.encode("1+2=", add_special_tokens=False)
    out = sampler.sample(model, [prompt] * 3, pad_id=tok.pad_token_id, stop_ids=[eos],
                         config=SamplingConfig(max_new_tokens=6), generator=torch.Generator().manual_seed(0))
    assert calls["sampler"] == 1
    expected = core.find_eos(out.response_ids, [eos], out.response_mask)
    assert torch.equal(out.finished, expected.finished)
    # the scorer cuts a response after its first stop id: one forward of the cut response scores the same
    z = ScoreParams.load(tiny_model_dir).token_id
    args = dict(z_id=z, pad_id=tok.pad_token_id, stop_ids=[eos], eos_id=eos)
    lp = scorer.score_responses(model, [prompt, prompt], [[5, eos, 6, 7], [5, eos]], **args)
    assert calls["scorer"] == 1
    torch.testing.assert_close(lp[0], lp[1])


def test_find_eos_allows_an_empty_stop_set_only_when_asked():
    ids = torch.tensor([[4, 5, 6]])
    assert core.find_eos(ids, [], allow_no_stops=True).finished.tolist() == [False]
    with pytest.raises(ValueError, match="at least one"):
        core.find_eos(ids, [])


# ------------------------------------------------------------------ unfinished → no score


def test_unfinished_rows_score_zero_through_one_owner(monkeypatch):
    lp_z = torch.tensor([-5.0, float("nan")])
    fin = torch.tensor([True, False])
    s = ScoreParams("z", 5, 0.5, -6.0)
    assert s.score(lp_z, finished=fin).tolist() == [0.5, 0.0]
    adv, _ = core.self_reward_advantages(torch.zeros(2), torch.tensor([0.9, 0.9]), fin, torch.tensor([0, 0]), 1.0, 0.0)
    assert torch.isfinite(adv).all()
    marks = []

    def spy(scores, finished):
        marks.append(len(scores))
        return torch.where(finished.bool(), scores, torch.full_like(scores, -1.0))

    monkeypatch.setattr(core, "unfinished_score_zero", spy)
    assert s.score(lp_z, finished=fin).tolist() == [0.5, -1.0]
    core.self_reward_advantages(torch.zeros(2), torch.tensor([0.9, 0.9]), fin, torch.tensor([0, 0]), 1.0, 0.0)
    assert marks == [2, 2]


# ------------------------------------------------------------------ task registry


def test_task_modules_import_without_the_registry_and_the_registry_lists_each_task_once():
    code = ("import sys, laser_rl.tasks.arith, laser_rl.tasks.pairsum, laser_rl.tasks.generated; "
            "print('laser_rl.tasks.embedded' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from laser_rl.tasks import embedded

    assert embedded.EMBEDDED_TASKS == tuple(embedded.TASKS) == ("arith", "pairsum")
    for name, (cls, _load) in embedded.TASKS.items():
        assert cls.name == name and isinstance(embedded.default_task_config(name), cls)


def test_registry_dispatch_goes_through_tasks(monkeypatch):
    from laser_rl.tasks import embedded
    from laser_rl.tasks.base import TaskData

    fake = TaskData(name="fake:test", verifier=None, prompt_style="raw", problems=[])
    monkeypatch.setitem(embedded.TASKS, "fake", (object, lambda split, **kw: fake))
    assert embedded.is_embedded_task("fake:test") and embedded.load_embedded_task("fake") is fake


# ------------------------------------------------------------------ LaserSettings


def test_laser_config_is_laser_settings():
    assert issubclass(LaserConfig, LaserSettings)
    assert [f.name for f in dataclasses.fields(LaserConfig)] == [f.name for f in dataclasses.fields(LaserSettings)]
    assert len(dataclasses.fields(LaserSettings)) >= 14
    assert all(f.metadata["help"] for f in dataclasses.fields(LaserSettings))


def test_calibrate_c_ref_measures_once_with_every_sample_and_broadcasts(monkeypatch):
    from laser_rl import calibrate

    seen = {}

    def fake(model, tokenizer, prompts, **kw):
        seen.update(kw, prompts=len(prompts))
        return -9.0, 0.5, 7

    monkeypatch.setattr(calibrate, "calibrate_c_ref", fake)
    s = LaserSettings(c_ref_samples=512)
    got = s.calibrate_c_ref(None, None, [[1]] * 600, z_id=3, stop_ids=[2], pad_id=0, sampling=None, seed=1)
    assert got == (-9.0, 0.5, 7) and seen["n"] == 512 and seen["prompts"] == 512  # no silent cap at 300
    # a process that does not sample receives the main process's value through broadcast
    box_seen = []

    def broadcast(box):
        box_seen.append(list(box))
        box[0] = (-11.0, 0.25, 9)

    assert s.calibrate_c_ref(None, None, [], z_id=3, stop_ids=[2], pad_id=0, sampling=None, seed=1,
                             sample_here=False, broadcast=broadcast) == (-11.0, 0.25, 9)
    assert box_seen == [[None]]
    assert LaserSettings(c_ref=-4.0).calibrate_c_ref(None, None, [], z_id=3, stop_ids=[2], pad_id=0,
                                                     sampling=None, seed=0) == (-4.0, None, 0)


def test_laser_score_gives_unfinished_responses_the_owners_no_score(monkeypatch, tiny_model_dir, tmp_path, one_thread):
    import json

    from laser_rl.evaluation.runner import score_file

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rec = {"prompt_ids": [5, 6, 7], "responses": ["a", "b"], "response_ids": [[5, 1], [5, 6]], "finished": [True, False]}
    src.write_text(json.dumps(rec) + "\n")
    assert score_file(str(tiny_model_dir), str(src), str(out)) == 1
    scores = json.loads(out.read_text())["self_rewarding_scores"]
    assert scores[1] == 0.0 and scores[0] != 0.0
    monkeypatch.setattr(core, "unfinished_score_zero", lambda s, fin: torch.where(fin, s, torch.full_like(s, -1.0)))
    score_file(str(tiny_model_dir), str(src), str(out))
    assert json.loads(out.read_text())["self_rewarding_scores"] == [scores[0], -1.0]
