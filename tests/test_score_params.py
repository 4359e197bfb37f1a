"""The score owner: ScoreParams.score (constant c_ref or reference model, the unfinished rule),
resolve_beta_v (the one β_v derivation) and laser.json round trips."""

from __future__ import annotations

import math

import pytest
import torch

from laser_rl.core import laser as core
from laser_rl.errors import LaserError
from laser_rl.score_params import ScoreParams, resolve_beta_v


def test_score_constant_reference_applies_the_unfinished_rule_once():
    p = ScoreParams("<z>", 3, 0.5, -6.0)
    lp_z = torch.tensor([-4.0, float("nan"), -6.0])
    finished = torch.tensor([True, False, True])
    assert p.score(lp_z, finished=finished).tolist() == [1.0, 0.0, 0.0]
    raw = p.score(lp_z)
    assert raw[0] == 1.0 and math.isnan(float(raw[1]))  # without `finished` the caller keeps NaN
    assert torch.allclose(raw, core.self_reward_score(lp_z, 0.5, -6.0), equal_nan=True)


def test_score_with_reference_model_needs_its_lp_z():
    p = ScoreParams("<z>", 3, 0.5, -6.0, reference="model")
    lp_z, ref = torch.tensor([-4.0, -5.0]), torch.tensor([-5.0, -5.0])
    assert p.score(lp_z, ref).tolist() == [0.5, 0.0]
    with pytest.raises(LaserError, match="reference lp_z"):
        p.score(lp_z)
    with pytest.raises(LaserError, match="--c-ref"):
        p.require_constant_reference("laser eval")
    ScoreParams("<z>", 3, 0.5, -6.0).require_constant_reference("laser eval")  # constant: fine


def test_resolve_beta_v_is_the_one_derivation():
    assert resolve_beta_v(0.1, -23.0, -4.0) == 0.1
    assert resolve_beta_v("auto", -12.0, -4.0) == pytest.approx(core.derive_beta_v(-12.0, -4.0)) == 0.125
    with pytest.raises(LaserError, match=r"laser\.beta_v=auto needs"):
        resolve_beta_v("auto", -3.0, -4.0, "laser.beta_v")
    with pytest.raises(LaserError, match="positive"):
        resolve_beta_v(-1.0, -12.0, -4.0)


def test_laser_json_round_trip_and_errors(tmp_path):
    p = ScoreParams("<z>", 3, 0.5, -6.0, 0.2, {"stop_ids": [1]}, reference="model")
    p.save(tmp_path)
    assert ScoreParams.load(tmp_path) == p
    assert p.target_logprob == pytest.approx(-4.0)
    (tmp_path / "laser.json").write_text('{"token": "<z>", "token_id": 3, "beta_v": 0.5, "c_ref": -6, "reference": "x"}')
    with pytest.raises(LaserError, match=r"laser\.json: reference must be one of"):
        ScoreParams.load(tmp_path)
    assert ScoreParams.load(tmp_path / "missing") is None


def test_eval_refuses_a_reference_model_run_unless_c_ref_is_given(tiny_model_dir, tmp_path, capsys):
    import shutil

    from laser_rl.cli import main

    folder = tmp_path / "ref-run"
    shutil.copytree(tiny_model_dir, folder)
    p = ScoreParams.load(folder)
    ScoreParams(p.token, p.token_id, p.beta_v, p.c_ref, p.c_ref_std, p.extra, reference="model").save(folder)
    args = ["eval", "--model", str(folder), "--data", "arith", "--n", "1", "--limit", "2", "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "e1")]) == 2
    assert "laser.reference=model" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "e2"), "--c-ref", "-6"]) == 0
