"""Generative self-verification (the two-template baseline, issue 24) on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from laser_rl.errors import LaserError
from laser_rl.evaluation.self_verify import self_verify, verdict_token_ids


@pytest.fixture(scope="module")
def pairsum_model_dir(tmp_path_factory):
    from conftest import make_tiny_model_dir
    from laser_rl.tasks.pairsum import PairSumConfig

    return make_tiny_model_dir(tmp_path_factory.mktemp("sv") / "model", task=PairSumConfig(check_text=True, test_size=40))


def _load(folder):
    from laser_rl.integrations.hf import load_model, load_tokenizer

    return load_model(folder, dtype="float32", device="cpu"), load_tokenizer(folder)


def test_verdict_tokens_come_from_the_tokenizer(pairsum_model_dir):
    _, tok = _load(pairsum_model_dir)
    yes, no = verdict_token_ids(tok, ("ok", "no"))
    assert (yes, no) == (tok.convert_tokens_to_ids("o"), tok.convert_tokens_to_ids("n"))
    with pytest.raises(LaserError, match="start with the same token"):
        verdict_token_ids(tok, ("no", "n"))
    with pytest.raises(LaserError, match="cannot encode 'yes'|'yes' is not in the tokenizer"):
        verdict_token_ids(tok, ("yes", "no"))


def test_p_yes_equals_a_teacher_forced_pass_and_the_cost_is_exact(pairsum_model_dir, one_thread):
    model, tok = _load(pairsum_model_dir)
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    prompts = [enc("[11,22,33,44,15]55="), enc("[10,20,30,40,12]42="), enc("[13,24,35,46,17]81=")]
    responses = [enc("11+44=55;ok;#11,44"), enc("10+20=30;no;#10,20"), enc("35+46=81;#35,46")]
    template = enc(";")
    yes, no = verdict_token_ids(tok, ("ok", "no"))
    res = self_verify(model, prompts, responses, template, yes_id=yes, no_id=no, pad_id=tok.pad_token_id, batch_size=2)
    assert res.prefill_tokens.tolist() == [len(p) + len(r) + len(template) for p, r in zip(prompts, responses)]
    assert res.decode_tokens.tolist() == [1, 1, 1]
    assert (res.seconds > 0).all() and res.seconds.dtype == torch.float64
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses)):
            probs = model(torch.tensor([p + r + template])).logits[0, -1].float().softmax(-1)
            expected = probs[yes] / (probs[yes] + probs[no])
            assert res.scores[i].item() == pytest.approx(expected.item(), abs=1e-5)
    assert len({round(v, 6) for v in res.scores.tolist()}) == 3  # the rows are not mixed up
    with pytest.raises(LaserError, match="template encodes to no tokens"):
        self_verify(model, prompts, responses, [], yes_id=yes, no_id=no, pad_id=tok.pad_token_id)


def test_laser_eval_self_verify_and_verdict_land_in_metrics_and_report(pairsum_model_dir, tmp_path, capsys, one_thread):
    from laser_rl.cli import main
    from laser_rl.evaluation.self_verify import CACHE_FILE

    out = tmp_path / "ev"
    args = ["eval", "--model", str(pairsum_model_dir), "--data", "pairsum", "--n", "4", "--limit", "3", "--out", str(out),
            "--max-new-tokens", "24", "--quiet", "--self-verify", ";", "--self-verify-words", "ok,no"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    sv, verdict = m["baselines"]["self_verify"], m["baselines"]["verdict"]
    for key in ("auroc", "within_problem_auroc", "hm_tpr_tnr", "weighted_maj@4", "best_of@4"):
        assert key in sv and key in verdict, key
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    cache = [json.loads(line) for line in (out / CACHE_FILE).read_text().splitlines()]
    assert len(cache) == 3 and all(len(c["self_verify_scores"]) == 4 for c in cache)
    # cost: every finished response re-reads prompt + response + the one-token template, decodes one token
    lengths = [len(r["problem"]) + len(text) + 1 for r in recs for text, f in zip(r["responses"], r["finished"]) if f]
    cost = sv["cost"]
    assert cost["verified_responses"] == len(lengths)
    if lengths:
        assert cost["prefill_tokens_per_response"] == pytest.approx(sum(lengths) / len(lengths))
        assert cost["decode_tokens_per_response"] == 1.0
    report = (out / "report.md").read_text()
    assert "| self_verify |" in report and "| verdict |" in report and "self-reward 0 prefill + 1 decode token" in report
    printed = capsys.readouterr()
    assert "baseline self_verify:" in printed.out and "self-verify: 3 problems" in printed.err
    # a rerun reuses the samples and the cached verification (the model is not asked again)
    assert main(args) == 0
    assert "self-verify:" not in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["baselines"] == m["baselines"]
    # a smaller --limit: metrics over the first 2 problems, the report says so, the cache still serves
    assert main([*args[:8], "2", *args[9:]]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_problems"] == 2
    assert "first 2 of the 3 problems" in (out / "report.md").read_text()
    assert "self-verify:" not in capsys.readouterr().err
    # bad flags fail before anything is sampled
    bad = tmp_path / "bad"
    assert main([*args[:9], "--out", str(bad), "--verdict-pattern", "(unclosed"]) == 2
    assert main([*args[:9], "--out", str(bad), "--self-verify", ";", "--self-verify-words", "ok"]) == 2
    assert not bad.exists()


def test_self_verify_fields_get_the_score_metrics_and_a_cost_per_verified_response():
    from laser_rl.evaluation.metrics import compute_metrics

    rec = {"problem": "p", "answer": "1", "responses": ["", "", ""], "pred_answers": ["1", "2", "2"],
           "acc_list": [True, False, False], "self_rewarding_scores": [0.0, 0.0, 0.0],
           "self_verify_scores": [0.9, 0.2, 0.0], "self_verify_prefill_tokens": [30, 40, 0],
           "self_verify_decode_tokens": [1, 1, 0], "self_verify_seconds": [0.5, 0.25, 0.0]}
    sv = compute_metrics([rec], ks=[3])["baselines"]["self_verify"]
    assert sv["auroc"] == 1.0 and sv["hm_tpr_tnr"] == 1.0 and sv["coverage"] == 1.0
    assert sv["weighted_maj@3"] == 1.0 and sv["best_of@3"] == 1.0  # 0.9 for "1" beats 0.2 for "2"
    # the third response was not verified (unfinished): the cost is per verified response
    assert sv["cost"] == {"verified_responses": 2, "prefill_tokens_per_response": 35.0,
                          "decode_tokens_per_response": 1.0, "seconds_per_response": 0.375, "seconds_total": 0.75}
