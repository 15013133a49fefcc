"""PPO math against plain-Python references: rewards, GAE, whitening, losses, the value head.

Every reference below is written over Python lists, one row and one token at a time, from the
formula in the docstring; the batch mixes right padding, an EOS mid-batch, an all-masked row and
holes (tool tokens inside a response). Padding holds NaN so any leak shows.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from flywheel.train.ppo import (
    HEAD_FILE,
    ValueHead,
    gae,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)

T = 9
MASKS = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1],  # ran to the length limit (truncated, no padding)
    [1, 1, 1, 1, 1, 0, 0, 0, 0],  # EOS at 4, then padding
    [0, 0, 0, 0, 0, 0, 0, 0, 0],  # nothing generated
    [1, 1, 0, 0, 1, 1, 1, 0, 0],  # a tool call answered at 2-3, EOS at 6
    [1, 0, 0, 0, 0, 0, 0, 0, 0],  # EOS first
    [1, 0, 1, 1, 0, 0, 1, 1, 0],  # two holes, EOS at 7
]


def rand_rows(seed: int, lo: float = -1.0, hi: float = 1.0) -> list[list[float]]:
    """Random values on generated tokens, NaN on padding and holes."""
    rng = random.Random(seed)
    return [[rng.uniform(lo, hi) if m else math.nan for m in row] for row in MASKS]


def shifted(rows: list[list[float]], seed: int, by: float) -> list[list[float]]:
    """``rows`` moved by up to ``by`` either way (NaN stays NaN)."""
    deltas = rand_rows(seed, -by, by)
    return [[v + d for v, d in zip(r, dr, strict=True)] for r, dr in zip(rows, deltas, strict=True)]


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


MASK = torch.tensor(MASKS, dtype=torch.bool)


def assert_rows(got: torch.Tensor, want: list[list[float]]) -> None:
    assert not torch.isnan(got).any()
    assert torch.allclose(got, tensor(want), atol=1e-10), (got, want)


# --- references --------------------------------------------------------------------------------


def ref_token_rewards(scores, logprobs, refs, kl_coef):
    out = []
    for b, row in enumerate(MASKS):
        r = [0.0] * T
        last = None
        for t in range(T):
            if row[t]:
                r[t] = -kl_coef * (logprobs[b][t] - refs[b][t])
                last = t
        if last is not None:
            r[last] += scores[b]
        out.append(r)
    return out


def ref_gae(rewards, values, gamma, lam):
    advs, rets = [], []
    for b, row in enumerate(MASKS):
        idx = [t for t in range(T) if row[t]]
        a, r = [0.0] * T, [0.0] * T
        nxt_v, nxt_a = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b][t] + gamma * nxt_v - values[b][t]
            nxt_a = delta + gamma * lam * nxt_a
            a[t], r[t] = nxt_a, nxt_a + values[b][t]
            nxt_v = values[b][t]
        advs.append(a)
        rets.append(r)
    return advs, rets


def ref_reward_to_go(rewards, gamma):
    out = []
    for b, row in enumerate(MASKS):
        idx = [t for t in range(T) if row[t]]
        g = [0.0] * T
        for k, t in enumerate(idx):
            g[t] = sum(gamma**j * rewards[b][s] for j, s in enumerate(idx[k:]))
        out.append(g)
    return out


def ref_whiten(x, shift_mean, eps=1e-8):
    flat = [x[b][t] for b, row in enumerate(MASKS) for t in range(T) if row[t]]
    mean = sum(flat) / len(flat)
    var = sum((v - mean) ** 2 for v in flat) / (len(flat) - 1)
    scale, back = 1 / math.sqrt(var + eps), 0.0 if shift_mean else mean
    rows = enumerate(MASKS)
    return [
        [(x[b][t] - mean) * scale + back if row[t] else 0.0 for t in range(T)] for b, row in rows
    ]


def ref_policy_loss(logprobs, old, adv, eps):
    total, clipped, kl, n = 0.0, 0, 0.0, 0
    for b, row in enumerate(MASKS):
        for t in range(T):
            if not row[t]:
                continue
            ratio = math.exp(logprobs[b][t] - old[b][t])
            unclipped = -adv[b][t] * ratio
            clip = -adv[b][t] * min(max(ratio, 1 - eps), 1 + eps)
            total += max(unclipped, clip)
            clipped += clip > unclipped
            kl += ratio - 1 - math.log(ratio)
            n += 1
    return total / n, clipped / n, kl / n


def ref_value_loss(values, old, returns, eps):
    total, clipped, n = 0.0, 0, 0
    for b, row in enumerate(MASKS):
        for t in range(T):
            if not row[t]:
                continue
            v_clip = old[b][t] + min(max(values[b][t] - old[b][t], -eps), eps)
            e, e_clip = (values[b][t] - returns[b][t]) ** 2, (v_clip - returns[b][t]) ** 2
            total += 0.5 * max(e, e_clip)
            clipped += e_clip > e
            n += 1
    return total / n, clipped / n


# --- rewards and GAE ---------------------------------------------------------------------------


def test_token_rewards_match_the_reference() -> None:
    lp, ref = rand_rows(1, -3, 0), rand_rows(2, -3, 0)
    scores = [1.0, 0.5, 7.0, -1.0, 2.0, 3.0]
    got = token_rewards(
        torch.tensor(scores, dtype=torch.float64), tensor(lp), tensor(ref), MASK, 0.1
    )
    assert_rows(got, ref_token_rewards(scores, lp, ref, 0.1))
    assert got[2].abs().sum() == 0  # the all-masked row's score lands nowhere
    assert got[3, 6] != 0 and got[3, 7] == 0 and got[3, 2] == 0  # score at EOS, not in the hole


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.7, 0.0)])
def test_gae_matches_the_reference(gamma: float, lam: float) -> None:
    rewards, values = rand_rows(3), rand_rows(4)
    adv, ret = gae(tensor(rewards), tensor(values), MASK, gamma, lam)
    want_adv, want_ret = ref_gae(rewards, values, gamma, lam)
    assert_rows(adv, want_adv)
    assert_rows(ret, want_ret)


def test_gae_lambda_one_returns_the_discounted_reward_to_go() -> None:
    rewards, values = rand_rows(5), rand_rows(6)
    _, ret = gae(tensor(rewards), tensor(values), MASK, 0.9, 1.0)
    assert_rows(ret, ref_reward_to_go(rewards, 0.9))


def test_gae_lambda_zero_is_the_one_step_td_error_across_holes() -> None:
    rewards, values = rand_rows(7), rand_rows(8)
    adv, _ = gae(tensor(rewards), tensor(values), MASK, 0.8, 0.0)
    # row 3 (holes at 2-3): the token before the hole bootstraps from the one after it
    assert adv[3, 1].item() == pytest.approx(rewards[3][1] + 0.8 * values[3][4] - values[3][1])
    # the EOS is terminal: no bootstrap
    assert adv[3, 6].item() == pytest.approx(rewards[3][6] - values[3][6])
    assert adv[0, 8].item() == pytest.approx(rewards[0][8] - values[0][8])


def test_gae_does_not_read_padding() -> None:
    rewards, values = rand_rows(9), rand_rows(10)
    a1, r1 = gae(tensor(rewards), tensor(values), MASK, 0.95, 0.9)
    a2, r2 = gae(tensor(rewards).nan_to_num(1e6), tensor(values).nan_to_num(-1e6), MASK, 0.95, 0.9)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


# --- whitening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_the_reference(shift_mean: bool) -> None:
    x = rand_rows(11, 0, 5)
    got = whiten(tensor(x), MASK, shift_mean=shift_mean)
    assert_rows(got, ref_whiten(x, shift_mean))
    if shift_mean:
        assert got[MASK].mean().item() == pytest.approx(0.0, abs=1e-12)
        assert got[MASK].std(correction=1).item() == pytest.approx(1.0, abs=1e-6)


def test_whiten_needs_two_elements() -> None:
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[1, 0] = True
    with pytest.raises(ValueError, match="at least 2 masked elements, got 1"):
        whiten(torch.ones(2, 3), one)


# --- losses --------------------------------------------------------------------------------------


def test_policy_loss_matches_the_reference() -> None:
    old = rand_rows(12, -3, -0.1)
    lp = shifted(old, 13, 0.4)
    adv = rand_rows(14, -2, 2)
    out = policy_loss(tensor(lp), tensor(old), tensor(adv), MASK, 0.2)
    loss, clip, kl = ref_policy_loss(lp, old, adv, 0.2)
    assert out.loss.item() == pytest.approx(loss, rel=1e-10)
    assert out.clip_fraction.item() == pytest.approx(clip)
    assert 0 < clip < 1  # the draw exercises both branches
    assert out.approx_kl.item() == pytest.approx(kl, rel=1e-10)


def test_value_loss_matches_the_reference() -> None:
    old, returns = rand_rows(15), rand_rows(16, -2, 2)
    values = shifted(old, 17, 0.5)
    out = value_loss(tensor(values), tensor(old), tensor(returns), MASK, 0.2)
    loss, clip = ref_value_loss(values, old, returns, 0.2)
    assert out.loss.item() == pytest.approx(loss, rel=1e-10)
    assert out.clip_fraction.item() == pytest.approx(clip)
    assert 0 < clip < 1


def one_token(x: float) -> torch.Tensor:
    return torch.tensor([[x]], dtype=torch.float64, requires_grad=True)


ONE = torch.ones(1, 1, dtype=torch.bool)


@pytest.mark.parametrize(
    "log_ratio,advantage,clipped",
    [
        (math.log(1.199), 1.0, False),  # just inside 1 + ε, pushed up: still gets gradient
        (math.log(1.201), 1.0, True),  # just outside: clipped, no gradient
        (math.log(1.201), -1.0, False),  # outside but the advantage pulls it back: unclipped
        (math.log(0.801), -1.0, False),  # just inside 1 - ε
        (math.log(0.799), -1.0, True),  # just outside
        (math.log(0.799), 1.0, False),
    ],
)
def test_policy_clipping_at_the_edges(log_ratio: float, advantage: float, clipped: bool) -> None:
    lp = one_token(log_ratio)
    out = policy_loss(lp, torch.zeros(1, 1), torch.full((1, 1), advantage), ONE, 0.2)
    out.loss.backward()
    assert out.clip_fraction.item() == float(clipped)
    assert (lp.grad.abs().item() == 0) == clipped


@pytest.mark.parametrize(
    "value,target,clipped",
    [
        (0.199, 1.0, False),  # within ε of the old value 0: plain squared error
        (0.201, 1.0, True),  # beyond ε toward the target: the clipped error is larger, no gradient
        (0.201, -1.0, False),  # beyond ε away from the target: gradient pulls it back
        (-0.201, 1.0, False),
        (-0.201, -1.0, True),
    ],
)
def test_value_clipping_at_the_edges(value: float, target: float, clipped: bool) -> None:
    v = one_token(value)
    out = value_loss(v, torch.zeros(1, 1), torch.full((1, 1), target), ONE, 0.2)
    out.loss.backward()
    assert out.clip_fraction.item() == float(clipped)
    assert (v.grad.abs().item() == 0) == clipped
    v_clip = min(max(value, -0.2), 0.2)
    assert out.loss.item() == pytest.approx(
        0.5 * max((value - target) ** 2, (v_clip - target) ** 2)
    )


def test_gradients_reach_only_generated_tokens() -> None:
    lp = torch.tensor(rand_rows(18, -2, -0.1), dtype=torch.float64).nan_to_num(7.0)
    lp.requires_grad_(True)
    v = torch.tensor(rand_rows(19), dtype=torch.float64).nan_to_num(-7.0).requires_grad_(True)
    old = lp.detach() + 0.01  # ratios near 1: nothing clipped
    adv, ret = tensor(rand_rows(20)).nan_to_num(3.0), tensor(rand_rows(21)).nan_to_num(3.0)
    (
        policy_loss(lp, old, adv, MASK, 0.2).loss + value_loss(v, v.detach(), ret, MASK, 0.5).loss
    ).backward()
    for grad in (lp.grad, v.grad):
        assert torch.all(grad[~MASK] == 0)
        assert torch.all(grad[MASK] != 0)


def test_an_empty_batch_has_zero_loss() -> None:
    none = torch.zeros(2, 3, dtype=torch.bool)
    lp = torch.randn(2, 3, requires_grad=True)
    out = policy_loss(lp, torch.randn(2, 3), torch.randn(2, 3), none, 0.2)
    out.loss.backward()
    assert out.loss.item() == 0 and torch.all(lp.grad == 0)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"scores must be \[batch\] = \[2\]"):
        token_rewards(torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 0.1)


# --- the value head ------------------------------------------------------------------------------


def tiny_champion(directory: Path) -> Path:
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model
    from tests.train.test_loop import LLAMA

    build_model(ModelSettings(config=LLAMA), vocab_size=50, seq_len=16).save_pretrained(directory)
    return directory


def test_value_head_from_a_champion_then_round_trip(tmp_path: Path) -> None:
    champion = tiny_champion(tmp_path / "champion")
    critic = ValueHead.from_pretrained(champion)
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(champion)
    for name, p in critic.backbone.named_parameters():
        assert torch.equal(p, policy.model.get_parameter(name)), name
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0
    assert torch.equal(critic(ids, attn), torch.zeros(3, 10))  # a zero head: a neutral start

    with torch.no_grad():
        critic.head.weight.normal_(generator=torch.Generator().manual_seed(1))
        critic.head.bias.fill_(0.3)
    critic.save_pretrained(tmp_path / "critic")
    assert (tmp_path / "critic" / HEAD_FILE).exists()
    again = ValueHead.from_pretrained(tmp_path / "critic")
    values = again(ids, attn)
    assert values.shape == (3, 10) and values.abs().sum() > 0
    assert torch.equal(values, critic(ids, attn))


def test_value_head_gradient_reaches_the_backbone(tmp_path: Path) -> None:
    critic = ValueHead.from_pretrained(tiny_champion(tmp_path / "champion"))
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # step one moves the zero head; step two reaches the backbone
        opt.zero_grad()
        ((critic(ids) - 1.0) ** 2).mean().backward()
        opt.step()
    embed = critic.backbone.get_input_embeddings().weight
    assert critic.head.weight.grad.abs().sum() > 0 and embed.grad.abs().sum() > 0


def test_value_head_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
        ValueHead.from_pretrained(tmp_path)


# --- learning ------------------------------------------------------------------------------------


def test_ppo_learns_a_token_bandit() -> None:
    """A per-position softmax over 4 tokens, rewarded by the share of tokens equal to 2.

    Responses are 2 or 3 tokens (right-padded to 3) so padding is in every batch; the score comes
    once per sequence, at its last token, and GAE has to carry it back. Uniform at the start
    (mean reward 0.25); 12 PPO iterations of 4 epochs each take it past 0.8.
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vocab, length, batch, target = 4, 3, 64, 2
    logits = torch.zeros(length, vocab, requires_grad=True)
    value = torch.zeros(length, requires_grad=True)
    opt = torch.optim.Adam([logits, value], lr=0.1)
    ref_logprobs = torch.full((batch, length), math.log(1 / vocab))
    means = []
    for _ in range(12):
        with torch.no_grad():
            probs = torch.softmax(logits, -1).expand(batch, length, vocab).reshape(-1, vocab)
            tokens = torch.multinomial(probs, 1, generator=gen).view(batch, length)
            lengths = torch.randint(2, length + 1, (batch,), generator=gen)
            mask = torch.arange(length) < lengths[:, None]
            hits = ((tokens == target) & mask).sum(1).float()
            scores = hits / lengths
            old_lp = torch.log_softmax(logits, -1).expand(batch, -1, -1)
            old_lp = old_lp.gather(2, tokens[..., None]).squeeze(2)
            old_v = value.expand(batch, length).clone()
            rewards = token_rewards(scores, old_lp, ref_logprobs, mask, kl_coef=0.01)
            adv, ret = gae(rewards, old_v, mask, gamma=1.0, lam=0.95)
            adv = whiten(adv, mask)
        means.append(scores.mean().item())
        for _ in range(4):
            lp = torch.log_softmax(logits, -1).expand(batch, -1, -1)
            lp = lp.gather(2, tokens[..., None]).squeeze(2)
            pl = policy_loss(lp, old_lp, adv, mask, clip_eps=0.2)
            vl = value_loss(value.expand(batch, length), old_v, ret, mask, clip_eps=0.2)
            opt.zero_grad()
            (pl.loss + vl.loss).backward()
            opt.step()
    assert means[0] < 0.4
    assert sum(means[-3:]) / 3 > 0.8, means
