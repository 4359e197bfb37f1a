"""The LaSeR mathematics against slow, obviously-correct loop implementations and the spec's edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from laser_rl.core import laser as L

# ---------------------------------------------------------------- slow references (loops on purpose)


def ref_find_eos(ids, stops, mask):
    out = []
    for row, mrow in zip(ids.tolist(), mask.tolist()):
        eos = -1
        for j, (t, m) in enumerate(zip(row, mrow)):
            if m and t in stops:
                eos = j
                break
        length = eos + 1 if eos >= 0 else sum(mrow)
        out.append((eos, eos >= 0, length))
    return out


def ref_grpo(rewards, groups, eps=1e-6):
    adv = []
    for r, g in zip(rewards, groups):
        members = [rr for rr, gg in zip(rewards, groups) if gg == g]
        if len(members) < 2:
            adv.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1))
        adv.append((r - mean) / (std + eps))
    return adv


def ref_mix(adv, scores, finished, groups, tau, thr):
    s_hat = [min(max(s, 0.0), 1.0) if f else 0.0 for s, f in zip(scores, finished)]
    out = []
    for i, g in enumerate(groups):
        members = [s_hat[j] for j in range(len(groups)) if groups[j] == g]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1)) if len(members) > 1 else 0.0
        s = (s_hat[i] - mean) / std if std > thr else adv[i]
        out.append((1 - tau) * adv[i] + tau * s)
    return out


def ref_mse(scores, rewards, finished, balanced=True):
    rows = [(s, r) for s, r, f in zip(scores, rewards, finished) if f]
    n_c = sum(1 for _, r in rows if r > 0.5)
    n_i = len(rows) - n_c
    num = den = 0.0
    for s, r in rows:
        if balanced:
            w = len(rows) / (2 * n_c) if r > 0.5 else len(rows) / (2 * n_i)
        else:
            w = 1.0
        num += w * (s - r) ** 2
        den += w
    return num / den if den else 0.0


def ref_policy_loss(lp, old, adv, mask, lo, hi, agg, ref=None, kl_coef=0.0, clip_ratio_c=None, w=None):
    rows = []
    for b in range(len(lp)):
        toks = []
        for t in range(len(lp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(min(max(lp[b][t] - old[b][t], -20), 20))
            loss = max(-adv[b] * ratio, -adv[b] * min(max(ratio, 1 - lo), 1 + hi))
            if clip_ratio_c is not None and adv[b] < 0:
                loss = min(loss, -adv[b] * clip_ratio_c)
            if w is not None:  # importance weights scale the PG term, not the KL
                loss *= w[b][t]
            if ref is not None:
                d = min(max(ref[b][t] - lp[b][t], -20), 20)
                loss += kl_coef * min(max(math.exp(d) - d - 1, -10), 10)
            toks.append(loss)
        rows.append(toks)
    if agg == "token-mean":
        flat = [x for r in rows for x in r]
        return sum(flat) / max(len(flat), 1)
    kept = [r for r in rows if r]
    if agg == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in kept) / max(len(kept), 1)
    return sum(sum(r) for r in kept) / max(len(kept), 1)


# ---------------------------------------------------------------- find_eos


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 10_000))
def test_find_eos_matches_loop(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (B, T), generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    stops = [1, 4]  # two stop ids; pad (0) is a different id
    info = L.find_eos(ids, stops, mask)
    for b, (eos, fin, length) in enumerate(ref_find_eos(ids, stops, mask)):
        assert int(info.eos_index[b]) == eos
        assert bool(info.finished[b]) == fin and bool(info.truncated[b]) == (not fin)
        assert int(info.lengths[b]) == length == int(info.response_mask[b].sum())


def test_find_eos_edge_cases():
    pad, eos = 0, 2
    ids = torch.tensor(
        [
            [5, 6, eos, pad],  # normal
            [5, 6, 7, 8],  # truncated
            [5, 6, 7, eos],  # EOS in the last slot
            [pad, pad, pad, pad],  # empty response
            [eos, 5, eos, pad],  # tokens after the first EOS are excluded
        ]
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]).bool()
    info = L.find_eos(ids, [eos], mask)
    assert info.eos_index.tolist() == [2, -1, 3, -1, 0]
    assert info.finished.tolist() == [True, False, True, False, True]
    assert info.lengths.tolist() == [3, 4, 4, 0, 1]
    # EOS == pad tokenizers: the mask, not the id, says where padding is.
    same = torch.tensor([[5, 0, 0], [5, 6, 7]])
    info = L.find_eos(same, [0], torch.tensor([[1, 1, 0], [1, 1, 1]]).bool())
    assert info.eos_index.tolist() == [1, -1]


def test_find_eos_rejects_bad_input():
    with pytest.raises(ValueError, match="response_ids"):
        L.find_eos(torch.zeros(3, dtype=torch.long), [1])
    with pytest.raises(ValueError, match="stop_ids"):
        L.find_eos(torch.zeros(2, 3, dtype=torch.long), [])
    with pytest.raises(ValueError, match="response_mask"):
        L.find_eos(torch.zeros(2, 3, dtype=torch.long), [1], torch.ones(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------- append z


def test_append_z_places_token_after_eos_and_grows_for_last_column():
    pad, eos, z = 0, 2, 9
    # rows: [prompt | response] right-padded; row 1 truncated; row 2 EOS in last column.
    ids = torch.tensor([[3, 4, eos, pad, pad], [3, 4, 5, 6, 7], [3, 4, 5, 6, eos]])
    attn = (ids != pad).long()
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    eos_pos = torch.tensor([2, -1, 4])
    finished = torch.tensor([True, False, True])
    out = L.append_self_reward_token(ids, attn, pos, eos_pos, finished, z, pad, stop_ids=[eos])
    assert out.input_ids.shape == (3, 6)
    assert out.z_position.tolist() == [3, -1, 5]
    assert out.input_ids.tolist() == [[3, 4, eos, z, pad, pad], [3, 4, 5, 6, 7, pad], [3, 4, 5, 6, eos, z]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert out.position_ids[0, 3] == pos[0, 2] + 1 and out.position_ids[2, 5] == pos[2, 4] + 1


def test_append_z_no_growth_when_room_and_left_padded_prompts():
    pad, eos, z = 0, 1, 7
    ids = torch.tensor([[pad, 3, 4, eos, pad], [3, 3, 4, 5, eos]])
    attn = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    out = L.append_self_reward_token(ids, attn, pos, torch.tensor([3, 4]), torch.tensor([True, False]), z, pad)
    assert out.input_ids.shape == (2, 5)
    assert out.input_ids[0].tolist() == [pad, 3, 4, eos, z]
    assert out.position_ids[0, 4] == 3  # EOS has position 2 (one left pad)
    assert out.input_ids[1].tolist() == ids[1].tolist()


def test_append_z_matches_loop_on_random_batches():
    g = torch.Generator().manual_seed(0)
    pad, z = 0, 99
    for _ in range(20):
        B, Lc = 5, 7
        lengths = torch.randint(1, Lc + 1, (B,), generator=g)
        ids = torch.randint(2, 9, (B, Lc), generator=g)
        attn = (torch.arange(Lc).unsqueeze(0) < lengths.unsqueeze(1)).long()
        ids = torch.where(attn.bool(), ids, torch.full_like(ids, pad))
        pos = torch.arange(Lc).expand(B, Lc).clone()
        finished = torch.rand(B, generator=g) < 0.6
        eos_pos = lengths - 1
        out = L.append_self_reward_token(ids, attn, pos, eos_pos, finished, z, pad)
        for b in range(B):
            row = ids[b].tolist() + [pad] * (out.input_ids.shape[1] - Lc)
            if finished[b]:
                row[int(eos_pos[b]) + 1] = z
            assert out.input_ids[b].tolist() == row


def test_append_z_rejects_bad_input():
    ids = torch.tensor([[3, 2, 0]])
    attn = torch.tensor([[1, 1, 0]])
    pos = torch.tensor([[0, 1, 2]])
    fin = torch.tensor([True])
    with pytest.raises(ValueError, match="pad_id"):
        L.append_self_reward_token(ids, attn, pos, torch.tensor([1]), fin, 0, 0)
    with pytest.raises(ValueError, match="stop id"):
        L.append_self_reward_token(ids, attn, pos, torch.tensor([1]), fin, 2, 0, stop_ids=[2])
    with pytest.raises(ValueError, match="eos_position"):
        L.append_self_reward_token(ids, attn, pos, torch.tensor([1, 1]), fin, 5, 0)
    with pytest.raises(ValueError, match="attention_mask"):
        L.append_self_reward_token(ids, attn[:, :2], pos, torch.tensor([1]), fin, 5, 0)
    with pytest.raises(ValueError, match="padding"):
        L.append_self_reward_token(ids, torch.ones_like(attn), pos, torch.tensor([1]), fin, 5, 0)


# ---------------------------------------------------------------- score


def test_self_reward_score_and_reference_variant():
    lp = torch.tensor([-23.0, -13.0, float("nan")])
    s = L.self_reward_score(lp, 0.1, -23.0)
    assert torch.allclose(s[:2], torch.tensor([0.0, 1.0]))
    assert torch.isnan(s[2])
    ref = torch.tensor([-23.0, -23.0, -20.0])
    assert torch.allclose(L.self_reward_score_with_reference(lp, ref, 0.1)[:2], torch.tensor([0.0, 1.0]))
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta_v"):
            L.self_reward_score(lp, bad, -23.0)
    with pytest.raises(ValueError, match="lp_z_ref"):
        L.self_reward_score_with_reference(lp, ref[:2], 0.1)


def test_derive_beta_v():
    assert L.derive_beta_v(-12.0) == pytest.approx(0.125)
    assert L.correct_target_logprob(-12.0, L.derive_beta_v(-12.0, -5.0)) == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="target_logprob"):
        L.derive_beta_v(-2.0, -4.0)


# ---------------------------------------------------------------- MSE


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10_000), st.booleans())
def test_mse_matches_loop(B, seed, balanced):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    rewards = (torch.rand(B, generator=g) < 0.5).double()
    finished = torch.rand(B, generator=g) < 0.8
    scores = torch.where(finished, scores, torch.full_like(scores, float("nan")))
    got = L.class_balanced_mse(scores, rewards, finished, class_balanced=balanced)
    assert float(got) == pytest.approx(ref_mse(scores.tolist(), rewards.tolist(), finished.tolist(), balanced))


def test_mse_missing_class_and_no_finished_rows():
    scores = torch.tensor([0.2, 0.4], requires_grad=True)
    rewards = torch.tensor([1.0, 1.0])
    loss = L.class_balanced_mse(scores, rewards, torch.tensor([True, True]))
    assert float(loss.detach()) == pytest.approx(((0.8**2) + (0.6**2)) / 2)
    w = L.class_balance_weights(rewards, torch.tensor([True, True]))
    assert w.tolist() == [0.5, 0.5]
    none = L.class_balanced_mse(scores, rewards, torch.tensor([False, False]))
    assert float(none.detach()) == 0.0
    none.backward()  # still differentiable
    assert scores.grad is not None and float(scores.grad.abs().sum()) == 0.0


def test_mse_micro_batches_add_up_to_full_batch():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(10, generator=g)
    rewards = (torch.rand(10, generator=g) < 0.3).float()
    finished = torch.rand(10, generator=g) < 0.8
    full = L.class_balanced_mse(scores, rewards, finished)
    w = L.class_balance_weights(rewards, finished)
    parts = sum(
        L.class_balanced_mse(scores[i : i + 3], rewards[i : i + 3], finished[i : i + 3], weights=w[i : i + 3], weight_sum=w.sum())
        for i in range(0, 10, 3)
    )
    assert float(parts) == pytest.approx(float(full), rel=1e-6)


def test_mse_gradient_reaches_policy_only_through_lp_z():
    """A toy 'policy': logits over a vocab at each position; the MSE touches only the EOS row's z entry."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)  # [B, L, V]
    z, eos_pos = 10, torch.tensor([2, 4, 1])
    finished = torch.tensor([True, True, False])
    lp = torch.log_softmax(logits.float(), dim=-1)
    lp_z = lp[torch.arange(3), eos_pos, z]
    scores = L.self_reward_score(lp_z, 0.1, -23.0)
    loss = L.class_balanced_mse(scores, torch.tensor([1.0, 0.0, 1.0]), finished)
    loss.backward()
    grad = logits.grad
    touched = grad.abs().sum(-1) > 0  # [B, L]
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[0, 2] = expected[1, 4] = True  # finished rows, EOS position only; truncated row untouched
    assert torch.equal(touched, expected)
    # within the EOS position the gradient is that of log_softmax(.)[z]: ∂/∂logit_v = c·(1[v=z] − p_v)
    p = torch.softmax(logits[0, 2].detach(), -1)
    g = grad[0, 2]
    c = g[z] / (1 - p[z])
    assert torch.allclose(g[:z], -c * p[:z], atol=1e-6)


# ---------------------------------------------------------------- advantages


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.integers(1, 5), st.integers(0, 10_000))
def test_grpo_advantages_match_loop(B, G, seed):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, G, (B,), generator=g)
    rewards = torch.randint(0, 2, (B,), generator=g).double()
    got = L.grpo_advantages(rewards, groups)
    assert torch.allclose(got, torch.tensor(ref_grpo(rewards.tolist(), groups.tolist()), dtype=torch.float64))


@pytest.mark.parametrize("value", [0.7, 1 / 3, 0.1, 123.456])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_grpo_equal_rewards_give_zero_advantage_despite_rounding(value, dtype):
    # eight 0.7s in float32 have a rounding std of 6e-8, which ε = 1e-6 does not absorb (|A| ≈ 0.056)
    rewards = torch.full((8,), value, dtype=dtype)
    assert L.grpo_advantages(rewards, torch.zeros(8, dtype=torch.long)).abs().max() == 0
    thirds = torch.tensor([1 / 3] * 3 + [2 / 3] * 3, dtype=dtype)
    adv = L.grpo_advantages(thirds, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert adv.abs().max() == 0
    mixed = torch.tensor([0.7, 0.7, 0.2, 0.7], dtype=dtype)
    adv = L.grpo_advantages(mixed, torch.zeros(4, dtype=torch.long))
    assert adv.dtype == dtype and float(adv[2]) < 0 < float(adv[0])


def test_grpo_edge_cases():
    # group of size 1, zero-std group, normal group
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 1, 1, 2, 2])
    adv = L.grpo_advantages(rewards, groups)
    assert adv[0] == 0 and adv[1] == 0 and adv[2] == 0
    assert adv[3] < 0 < adv[4]
    with pytest.raises(ValueError, match="group_index"):
        L.grpo_advantages(rewards, groups[:4])
    with pytest.raises(ValueError, match="group_index"):
        L.grpo_advantages(rewards, groups.float())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.integers(1, 4), st.integers(0, 10_000))
def test_self_reward_advantages_match_loop(B, G, seed):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, G, (B,), generator=g)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    scores = torch.rand(B, generator=g, dtype=torch.float64) * 1.6 - 0.3
    finished = torch.rand(B, generator=g) < 0.8
    got, passed = L.self_reward_advantages(adv, scores, finished, groups, 0.1, 0.1)
    want = ref_mix(adv.tolist(), scores.tolist(), finished.tolist(), groups.tolist(), 0.1, 0.1)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64))
    assert passed.shape[0] == int(groups.max()) + 1


def test_self_reward_advantages_agreeing_group_learns_from_scores():
    # all verifier rewards agree → A = 0, but the scores differ enough → τ·S survives
    adv = torch.zeros(4)
    scores = torch.tensor([0.9, 0.1, 0.8, float("nan")])
    finished = torch.tensor([True, True, True, False])
    mixed, passed = L.self_reward_advantages(adv, scores, finished, torch.zeros(4, dtype=torch.long), 0.1, 0.1)
    assert bool(passed[0])
    assert mixed[0] > 0 > mixed[1] and mixed[3] < 0  # truncated row scores ŝ = 0
    # low spread → filtered out → unchanged
    mixed, passed = L.self_reward_advantages(adv, torch.full((4,), 0.5), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long), 0.1, 0.1)
    assert not bool(passed[0]) and torch.equal(mixed, adv)


# ---------------------------------------------------------------- schedule


def test_alpha_schedule():
    assert [L.alpha_schedule(s, 0.3, 2, 3) for s in range(1, 8)] == pytest.approx([0, 0, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert L.alpha_schedule(1, 0.3, 0, 0) == 0.3  # the paper's constant α
    with pytest.raises(ValueError):
        L.alpha_schedule(1, 0.3, 0, -1)


def test_laser_phase():
    phases = [L.laser_phase(s, 2, 3) for s in range(1, 8)]
    assert [(p.mse, p.integration) for p in phases] == [
        (False, False), (False, False), (True, False), (True, False), (True, False), (True, True), (True, True)
    ]
    assert L.laser_phase(1, 0, 0) == L.LaserPhase(True, True)
    with pytest.raises(ValueError):
        L.laser_phase(1, -1, 0)


# ---------------------------------------------------------------- policy loss


@pytest.mark.parametrize("agg", L.AGGREGATIONS)
@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("clip_ratio_c", [None, 1.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_policy_loss_matches_loop(agg, with_kl, clip_ratio_c, weighted):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 6
    lp = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 - 1
    old = lp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.6
    old[0, 0] = lp[0, 0] - 25.0  # a stale token: log-ratio beyond the ±20 clamp
    ref = lp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 if with_kl else None
    if ref is not None:
        ref[1, 0] = lp[1, 0] + 30.0  # beyond both the log-ratio clamp and the KL bound
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[0] = -1.0
    lengths = torch.tensor([6, 3, 0, 1, 4])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    w = torch.rand(B, T, generator=g, dtype=torch.float64) * 2 if weighted else None
    loss, stats = L.policy_loss(lp, old, adv, mask, 0.2, 0.28, agg, ref_logprobs=ref, kl_coef=0.05 if with_kl else 0.0,
                                clip_ratio_c=clip_ratio_c, token_weights=w)
    want = ref_policy_loss(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, agg,
                           ref.tolist() if with_kl else None, 0.05, clip_ratio_c, w.tolist() if weighted else None)
    assert float(loss) == pytest.approx(want, rel=1e-9)
    assert 0.0 <= float(stats["clip_fraction"]) <= 1.0
    assert (float(stats["dual_clip_fraction"]) > 0) == (clip_ratio_c is not None)


def test_policy_loss_is_bounded_for_a_stale_token():
    """One token whose log-ratio is 25 under a negative advantage: e^25 ≈ 7e10 without the clamp."""
    lp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    old[0, 0] = -25.0
    adv = torch.tensor([-1.0], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, _ = L.policy_loss(lp, old, adv, mask)
    assert float(loss.detach()) == pytest.approx((math.exp(20) + 3) / 4)  # clamped at ±20, not e^25
    dual, stats = L.policy_loss(lp, old, adv, mask, clip_ratio_c=3.0)
    assert float(dual.detach()) == pytest.approx((3.0 + 3) / 4)  # dual-clip: at most c·|A| per token
    assert float(stats["dual_clip_fraction"]) == pytest.approx(0.25)
    dual.backward()
    assert torch.isfinite(lp.grad).all() and float(lp.grad[0, 0]) == 0.0  # the clipped token gives no gradient
    ref = torch.full((1, 4), 50.0, dtype=torch.float64)
    _, stats = L.policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.1)
    assert float(stats["kl"]) == pytest.approx(L.KL_CLAMP)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        L.policy_loss(lp, old, adv, mask, clip_ratio_c=1.0)


def test_policy_loss_on_policy_gradient_is_advantage_weighted():
    lp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, stats = L.policy_loss(lp, lp.detach(), adv, mask)
    loss.backward()
    assert torch.allclose(lp.grad, -adv.unsqueeze(1).expand(2, 3) / 6)
    assert float(stats["clip_fraction"]) == 0.0 and float(stats["ratio_mean"]) == 1.0


def test_policy_loss_normalizer_and_bad_input():
    lp = torch.randn(4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    adv = torch.randn(4)
    full, _ = L.policy_loss(lp, lp - 0.1, adv, mask)
    halves = sum(L.policy_loss(lp[i : i + 2], lp[i : i + 2] - 0.1, adv[i : i + 2], mask[i : i + 2], normalizer=12)[0] for i in (0, 2))
    assert float(halves) == pytest.approx(float(full))
    with pytest.raises(ValueError, match="aggregation"):
        L.policy_loss(lp, lp, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="advantages"):
        L.policy_loss(lp, lp, adv[:3], mask)


def test_class_balance_weights_with_global_counts():
    # this process holds 1 correct + 1 incorrect, but the whole batch has 1 correct and 3 incorrect
    rewards = torch.tensor([1.0, 0.0])
    w = L.class_balance_weights(rewards, torch.tensor([True, True]), class_counts=(torch.tensor(1.0), torch.tensor(3.0)))
    assert w.tolist() == pytest.approx([4 / 2, 4 / 6])
