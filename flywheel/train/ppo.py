"""PPO math: KL-shaped token rewards, GAE, whitening, the clipped losses, a value head.

Pure torch functions (transformers only inside ``ValueHead``), called by a PPO training loop;
nothing here samples, schedules or launches. Its tests run them against plain-Python loops:

    pytest tests/train/test_ppo.py

Layout shared by every function: right-padded ``[batch, T]`` tensors over the *response* (the
prompt is cut off before), position ``t`` holding token ``t`` of the response, and a response
``mask`` (bool or 0/1) that is 1 exactly where the policy generated the token. ``logprobs[:, t]``
is log π(token t | prefix); ``values[:, t]`` is V of the state in which token t is generated
(the hidden state *before* it). Positions with mask 0 are either padding after the sequence or
*holes*: tokens inside a multi-turn response written by a tool or environment, not the policy.

Holes are not actions. They get no reward and no advantage, and GAE steps over them: the
generated token before a hole bootstraps from the value of the next generated token after it, as
if the tool's output were part of the environment's transition (which it is: the policy chose the
call, the environment answered). The discount γ is applied once per generated token, so a long tool
output does not shrink the value of what follows. Nothing is read at masked positions, so padding
may hold anything (NaN included) without leaking into valid ones.

Means over tokens are "token-mean": one mean over every masked token of the batch (verl's and
OpenRLHF's default), so long responses weigh more than short ones, per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

HEAD_FILE = "value_head.safetensors"


def _as_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """The mask as bool, after checking it has the shape of ``like``."""
    if mask.shape != like.shape or like.dim() != 2:
        raise ValueError(
            f"{name} must be [batch, T] like the values: {tuple(mask.shape)} vs {tuple(like.shape)}"
        )
    return mask.bool()


def _same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the masked positions; 0 when none are (a batch with no tokens to learn
    from contributes nothing, and every rank still runs backward)."""
    mask = mask.bool()
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def token_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """Per-token reward ``[batch, T]``: a KL penalty per generated token, the score at the end.

    r_t = -kl_coef · (log π(y_t) - log π_ref(y_t))          where mask_t = 1
    r_t += score_b                                           at t = the row's last generated token
    r_t = 0                                                  where mask_t = 0 (padding, holes)

    ``scores`` is ``[batch]``, one sequence-level reward (the verifier's) per row. The KL term is
    the single-sample (k1) estimate of KL(π‖π_ref) at each token; summed over a sequence it is an
    unbiased estimate of the sequence KL. The last generated token is the EOS when the policy
    ended, else the last unpadded one (truncated). A row with no generated token gets no reward.
    """
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    m = _as_mask(mask, logprobs)
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"scores must be [batch] = [{logprobs.shape[0]}]: {tuple(scores.shape)}")
    kl = torch.where(m, logprobs - ref_logprobs, 0.0)
    rewards = -kl_coef * kl
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, -1).max(dim=1).values  # -1: nothing generated
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].to(rewards.dtype)
    return rewards


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE over generated tokens; ``(advantages, returns)``, each ``[batch, T]``.

    With the row's generated positions t_1 < … < t_n (holes and padding skipped):

        δ_k = r_{t_k} + γ · V_{t_{k+1}} − V_{t_k}           V_{t_{n+1}} = 0 (terminal after t_n)
        A_k = δ_k + γ·λ · A_{k+1}                           A_{n+1} = 0
        R_k = A_k + V_{t_k}                                 (the value target)

    λ = 1 gives A + V = the discounted reward-to-go; λ = 0 the one-step TD error. Advantages and
    returns are 0 at masked positions, and rewards or values there are never read. The recursion
    runs backwards over T, vectorised over the batch, carrying (next value, next advantage) across
    masked positions unchanged, which is what lets a hole be stepped over.
    """
    _same_shape(rewards=rewards, values=values)
    m = _as_mask(mask, values)
    r = torch.where(m, rewards, 0.0)
    v = torch.where(m, values, 0.0)
    next_value = torch.zeros_like(v[:, 0])
    next_adv = torch.zeros_like(v[:, 0])
    advantages = torch.zeros_like(v)
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = delta + gamma * lam * next_adv
        here = m[:, t]
        advantages[:, t] = torch.where(here, adv, 0.0)
        next_value = torch.where(here, v[:, t], next_value)
        next_adv = torch.where(here, adv, next_adv)
    returns = torch.where(m, advantages + v, 0.0)
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x − mean) / sqrt(var + eps)`` over the masked elements of the whole batch; 0 elsewhere.

    The variance is unbiased (divides by n − 1), as verl's and TRL's ``masked_var``; at least two
    masked elements are needed. ``shift_mean=False`` adds the mean back: only the scale changes
    (for rewards, where the sign carries meaning).
    """
    m = _as_mask(mask, x)
    n = int(m.sum())
    if n < 2:
        raise ValueError(f"whiten needs at least 2 masked elements, got {n}")
    mean = torch.where(m, x, 0.0).sum() / n
    var = torch.where(m, (x - mean) ** 2, 0.0).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


class PolicyLoss(NamedTuple):
    loss: Tensor  # differentiable, scalar
    clip_fraction: Tensor  # share of masked tokens whose clipped term was the active one
    approx_kl: Tensor  # KL(π_old ‖ π) estimate over masked tokens, for early stopping/logging


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> PolicyLoss:
    """PPO's clipped surrogate, token-mean over every masked token of the batch.

    ρ_t = exp(log π(y_t) − log π_old(y_t))
    ℓ_t = max(−A_t · ρ_t, −A_t · clip(ρ_t, 1 − ε, 1 + ε))      loss = Σ_mask ℓ_t / Σ mask

    A token whose clipped term is the max has no gradient (that is the trust region);
    ``clip_fraction`` counts those tokens (strictly greater: ties are unclipped). ``approx_kl`` is
    the k3 estimator (ρ − 1) − log ρ, non-negative and unbiased for KL(π_old‖π) under samples of
    π_old. The log-ratio is zeroed at masked positions before exp, so garbage there (−inf, NaN)
    neither overflows nor sends gradient.
    """
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    m = _as_mask(mask, logprobs)
    log_ratio = torch.where(m, logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages, 0.0)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), m)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, m)
    return PolicyLoss(loss, clip_fraction, approx_kl)


class ValueLoss(NamedTuple):
    loss: Tensor
    clip_fraction: Tensor  # share of masked tokens whose clipped error was the larger


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> ValueLoss:
    """Clipped value loss, token-mean over masked tokens.

    V^clip_t = V_old,t + clip(V_t − V_old,t, −ε, ε)
    ℓ_t = ½ · max((V_t − R_t)², (V^clip_t − R_t)²)

    The max keeps the update pessimistic, as in the policy loss: a value that moved more than ε
    from the rollout's gets no gradient when moving further would have lowered the error.
    """
    _same_shape(values=values, old_values=old_values, returns=returns)
    m = _as_mask(mask, values)
    v = torch.where(m, values, 0.0)
    old = torch.where(m, old_values, 0.0)
    target = torch.where(m, returns, 0.0)
    v_clipped = old + torch.clamp(v - old, -clip_eps, clip_eps)
    err = (v - target) ** 2
    err_clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), m)
    with torch.no_grad():
        clip_fraction = masked_mean((err_clipped > err).float(), m)
    return ValueLoss(loss, clip_fraction)


class ValueHead(nn.Module):
    """A critic: a transformers backbone's last hidden state → Linear(hidden, 1), a value per token.

    ``from_pretrained(dir)`` loads the backbone with ``AutoModel`` (a causal-LM checkpoint such as
    the champion works: its LM head is simply not loaded) and the head from
    ``value_head.safetensors`` in the same directory, or a zero head when there is none: every
    value starts at 0, a neutral baseline for rewards in [0, 1], and the head gets gradient from
    the first step (the backbone from the second). ``save_pretrained(dir)`` writes the backbone
    and the head side by side.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: Path | str, attn_implementation: str = "sdpa") -> ValueHead:
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model checkpoint at {path} (config.json missing)")
        backbone = AutoModel.from_pretrained(
            path,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            local_files_only=True,
        )
        model = cls(backbone, backbone.config.hidden_size)
        if (path / HEAD_FILE).exists():
            model.head.load_state_dict(load_file(path / HEAD_FILE))
        return model

    def save_pretrained(self, path: Path | str) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.backbone.save_pretrained(path)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, path / HEAD_FILE)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Tensor:
        """Values ``[batch, L]``: position i is V of the prefix ending at token i (so the value of
        the state generating response token t sits at the position just before it)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)
        hidden = out.last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)
