"""Compact PPO on transformers + Accelerate: a policy and a separate value model, both from a
parent checkpoint, trained on rollouts of an environment or of rewarded single-turn prompts.

    python -m flywheel.loop.agents.ppo_train --parent CKPT --out OUT \\
        --env flywheel.envs.guess:NumberGuess --env-set max_n=16 --set iterations=10
    accelerate launch -m flywheel.loop.agents.ppo_train --parent CKPT --out OUT --env ...

Each iteration: (1) the current policy plays ``episodes_per_iteration`` rollouts (split over
the processes); (2) with no gradient, the policy's logprobs (recomputed on the rollout's
tokens, temperature-scaled as sampling was), a frozen reference copy's logprobs and the value
model's values at every response token; (3) per-token rewards = −kl_coef·(log π − log π_ref)
plus the rollout's reward at its last generated token, GAE, optional whitening
(``flywheel.train.ppo``); (4) ``ppo_epochs`` passes of minibatches, each one step of the
policy (clipped surrogate) and the value model (clipped value loss). Only tokens the policy
generated (``completion_mask`` 1) carry loss: the ppo functions read nothing at mask 0. The
stop token the policy sampled belongs to its turn (mask 1), so it is the last generated token
and gets the rollout's reward; a turn cut at ``max_new_tokens`` ends on its last token.

Metrics per iteration (mean over ranks): ``reward`` (mean rollout reward), ``kl`` (per-rollout
sum of log π − log π_ref over generated tokens), ``policy_loss``, ``value_loss``, ``clipfrac``
and ``value_clipfrac`` (share of tokens whose clipped term was active), ``approx_kl``
(KL(π_old‖π) after each step), ``explained_variance`` (1 − Var(R − V) / Var(R) of the value
model on the rollout), ``logprob_drift`` (mean |sampling logprob − recomputed|: near 0 unless
the forward pass here differs from generation's), ``generated_tokens`` and ``sequence_tokens``
(a rollout's tokens, prompt and tool turns too: what each forward pass runs); ``reward_curve``;
``num_processes`` (the ranks that played and trained); ``collect_s``, ``score_s`` and
``update_s``, the wall seconds this rank spent playing, scoring and updating.

Dropout is off in every model (eval mode throughout): with it the ratio π/π_old would be noise
before the first step, and the clip would act on that noise.

Resumable: every ``save_every`` iterations (and after the last) ``<work>/step-NNNNNNN/`` holds
the policy, the value model, both optimizers, every rank's RNG state and the metrics so far,
written to a staging directory and renamed (``flywheel.train.state``). A rerun resumes from
the newest state that verifies. Each iteration reseeds from ``(seed, iteration, rank)``, so the
resumed run ends with the same weights as an uninterrupted one. The final policy (with the
tokenizer and ``ppo.json``: settings and metrics) is written to ``out`` by rank 0.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.rl import PpoSettings
from flywheel.loop.agents import ppo_state
from flywheel.loop.agents.hf_policy import TransformersPolicy
from flywheel.loop.agents.ppo_rollouts import (
    EnvRollouts,
    PromptRollouts,
    Rollout,
    env_rollouts,
    prompt_rollouts,
    response_logprobs,
    response_values,
    to_batch,
)
from flywheel.train import lora, ppo, state
from flywheel.train.optim import build_optimizer, optimizer_args
from flywheel.train.tokenizer import load_tokenizer

POLICY, VALUE = ppo_state.POLICY, ppo_state.VALUE
# An iteration's phases: play the rollouts; score them (old, reference logprobs, values, GAE);
# the PPO epochs of minibatch steps.
PHASES = ("collect_s", "score_s", "update_s")


def train_ppo(
    parent_dir: Path,
    out_dir: Path,
    work_dir: Path,
    rollouts: EnvRollouts | PromptRollouts,
    settings: PpoSettings,
    report: Reporter | None = None,
    accelerator: Any = None,
    adapter_dir: Path | None = None,
) -> dict[str, Any]:
    """Train; the final policy is in ``out_dir``; returns the run's metrics (every rank).
    With ``settings.lora`` on (``lora.policy_and_reference``) ``out_dir`` gets the merged
    policy and ``adapter_dir`` (default ``<out_dir>.adapter``) the adapter. The value model is
    trained fully: its head starts untrained, and it costs less than a second policy copy."""
    acc = accelerator or _accelerator()
    report = report or Reporter(acc.is_main_process)
    s, world = settings, acc.num_processes
    if s.episodes_per_iteration % world:
        raise ValueError(
            f"episodes_per_iteration={s.episodes_per_iteration} must divide evenly over "
            f"{world} processes (each rank runs the same number of minibatch steps)"
        )
    work_dir = Path(work_dir)
    with state.run_lock(work_dir) if acc.is_main_process else nullcontext():
        resume = state.on_main(acc, lambda: state.find_resumable(work_dir, report.warning))
        source = Path(resume) if resume else Path(parent_dir)
        adapted, saved = s.lora if lora.enabled(s.lora) else None, source / POLICY
        policy, reference = lora.policy_and_reference(
            Path(parent_dir), saved if resume else None, adapted, "cycles.ppo.lora"
        )
        policy, reference = policy.eval(), reference.to(acc.device) if reference else None
        critic = ppo.ValueHead.from_pretrained(source / VALUE if resume else source).eval()
        tokenizer = load_tokenizer(Path(parent_dir))
        # weight decay 0.01: torch AdamW's default, which PPO's optimizers used before
        args = [optimizer_args(s, lr=lr, weight_decay=0.01) for lr in (s.lr, s.value_lr)]
        opts = [build_optimizer(m, a) for m, a in zip((policy, critic), args, strict=True)]
        policy, critic, *opts = acc.prepare(policy, critic, *opts)
        start, history = 0, []
        if resume:
            start, history = ppo_state.restore(acc, Path(resume), opts, s)
            report.info(f"resuming PPO from {resume} (iteration {start})")
        models, seconds = (policy, critic, reference), dict.fromkeys(PHASES, 0.0)
        for it in range(start, s.iterations):
            metrics = _iteration(acc, models, opts, tokenizer, rollouts, s, it, seconds)
            history.append(metrics)
            report.info(f"ppo iteration {it + 1}/{s.iterations}: " + _brief(metrics))
            if (it + 1) % s.save_every == 0 or it + 1 == s.iterations:
                ppo_state.save(acc, work_dir, it + 1, policy, critic, opts, history, s)
        result = summarize(history, s) | {"num_processes": world}  # ranks that played
        # wall seconds of each phase on this rank, over the iterations this process ran (after a
        # resume, not those before it): outside the history, which a resumed run must repeat
        result |= {k: round(v, 3) for k, v in seconds.items()}
        if acc.is_main_process:
            model = acc.unwrap_model(policy)
            if adapted is not None:
                adapter = adapter_dir or Path(out_dir).with_name(f"{Path(out_dir).name}.adapter")
                model, numbers = lora.save_and_merge(model, adapted, Path(parent_dir), adapter)
                result |= numbers
            ppo_state.write_out(model, tokenizer, Path(out_dir), s, parent_dir, result)
        acc.wait_for_everyone()
    return result


def _accelerator() -> Any:
    """This process's Accelerator: one rank of the launched group, on GPU or CPU."""
    from accelerate import Accelerator

    # cpu=True on a CPU machine: under `accelerate launch --multi_gpu` or Ray Train's gloo
    # group that is what makes the ranks real (MULTI_CPU); without it every process believes
    # it is alone, plays all the episodes and takes rank 0's lock on the shared work dir.
    return Accelerator(cpu=not torch.cuda.is_available())


def _seed(s: PpoSettings, it: int, rank: int) -> int:
    return s.seed * 1_000_003 + it * 1_009 + rank


def _iteration(
    acc: Any,
    models: tuple[Any, ...],
    opts: list[Any],
    tokenizer: Any,
    rollouts: Any,
    s: PpoSettings,
    it: int,
    seconds: dict[str, float],
) -> dict[str, float]:
    """One iteration; its metrics. Adds each phase's wall seconds to ``seconds`` (each phase
    ends reading results back to the host, so on a GPU the times include its work)."""
    from accelerate.utils import set_seed

    policy, critic, reference = models
    seed = _seed(s, it, acc.process_index)
    set_seed(seed)  # python, numpy, torch: the iteration does not depend on what ran before
    clock = [time.perf_counter()]
    rows = _collect(acc, acc.unwrap_model(policy), tokenizer, rollouts, s, it)
    batch = to_batch(rows, tokenizer.pad_token_id).to(acc.device)
    clock.append(time.perf_counter())
    unwrapped = (acc.unwrap_model(policy), acc.unwrap_model(critic), reference)
    data = score_rollouts(*unwrapped, batch, s)
    data["adv"].sum().item()  # wait for the scoring before reading the clock
    clock.append(time.perf_counter())
    losses = _update(acc, policy, critic, opts, batch, data, s, seed)
    clock.append(time.perf_counter())
    for key, (began, ended) in zip(PHASES, itertools.pairwise(clock), strict=True):
        seconds[key] += ended - began
    return _metrics(acc, batch, data, losses, it)


def _collect(acc: Any, model: Any, tokenizer: Any, rollouts: Any, s: PpoSettings, it: int) -> list:
    """This rank's share of the iteration's rollouts: items walk a seeded shuffle of the pool,
    so every item is played before any is played twice."""
    order = list(range(len(rollouts)))
    random.Random(f"ppo-pool:{s.seed}").shuffle(order)
    first = it * s.episodes_per_iteration
    items = [order[(first + k) % len(order)] for k in range(s.episodes_per_iteration)]
    mine = items[acc.process_index :: acc.num_processes]
    policy = TransformersPolicy(
        model, tokenizer, s.max_new_tokens, s.temperature, seed=_seed(s, it, acc.process_index)
    )
    return rollouts.rollout(policy, mine, s.max_turns)


@torch.no_grad()
def score_rollouts(
    policy: Any, critic: Any, reference: Any, batch: Rollout, s: PpoSettings
) -> dict[str, Any]:
    """Old logprobs, reference logprobs, values, then per-token rewards (KL folded in),
    advantages (whitened if asked) and returns, each ``[B, T]``."""
    old, ref, values = [], [], []
    for rows in torch.arange(len(batch.scores), device=batch.mask.device).split(s.minibatch_size):
        old.append(response_logprobs(policy, batch, rows, s.temperature))
        with nullcontext() if reference is not None else policy.disable_adapter():
            ref.append(response_logprobs(reference or policy, batch, rows, s.temperature))
        values.append(response_values(critic, batch, rows))
    old, ref, values = torch.cat(old), torch.cat(ref), torch.cat(values)
    # the environment's per-turn judgements (0 unless it keeps step_rewards) are dense rewards
    rewards = ppo.token_rewards(batch.scores, old, ref, batch.mask, s.kl_coef) + batch.steps
    adv, returns = ppo.gae(rewards, values, batch.mask, s.gamma, s.lam)
    if s.whiten_advantages and int(batch.mask.sum()) >= 2:
        adv = ppo.whiten(adv, batch.mask)
    return {"old": old, "ref": ref, "values": values, "adv": adv, "returns": returns}


def minibatch_loss(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    batch: Rollout,
    data: dict[str, Any],
    rows: torch.Tensor,
    s: PpoSettings,
) -> tuple[torch.Tensor, ppo.PolicyLoss, ppo.ValueLoss]:
    """PPO's loss on ``rows``: clipped surrogate + vf_coef · clipped value loss, token-mean
    over the generated tokens only."""
    mask = batch.mask[rows]
    pl = ppo.policy_loss(logprobs, data["old"][rows], data["adv"][rows], mask, s.clip_range)
    vl = ppo.value_loss(
        values, data["values"][rows], data["returns"][rows], mask, s.value_clip_range
    )
    return pl.loss + s.vf_coef * vl.loss, pl, vl


def _update(
    acc: Any,
    policy: Any,
    critic: Any,
    opts: list[Any],
    batch: Rollout,
    data: dict[str, Any],
    s: PpoSettings,
    seed: int,
) -> dict[str, list[float]]:
    """``ppo_epochs`` shuffled passes; each minibatch is one step of both models. The clip is
    per model: the value loss's scale must not shrink the policy's step, nor the reverse."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {
        k: [] for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "value_clipfrac")
    }
    for _ in range(s.ppo_epochs):
        order = torch.randperm(len(batch.scores), generator=gen).to(acc.device)
        for rows in order.split(s.minibatch_size):
            logprobs = response_logprobs(policy, batch, rows, s.temperature)
            values = response_values(critic, batch, rows)
            loss, pl, vl = minibatch_loss(logprobs, values, batch, data, rows, s)
            acc.backward(loss)
            acc.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
            acc.clip_grad_norm_(critic.parameters(), s.max_grad_norm)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            out["policy_loss"].append(pl.loss.item())
            out["value_loss"].append(vl.loss.item())
            out["clipfrac"].append(pl.clip_fraction.item())
            out["approx_kl"].append(pl.approx_kl.item())
            out["value_clipfrac"].append(vl.clip_fraction.item())
    return out


def _metrics(
    acc: Any, batch: Rollout, data: dict[str, Any], losses: dict[str, list[float]], it: int
) -> dict[str, float]:
    """The iteration's numbers, averaged over ranks."""
    m = batch.mask
    kl = torch.where(m, data["old"] - data["ref"], 0.0).sum(1)
    returns, values = data["returns"][m], data["values"][m]
    var = returns.var() if returns.numel() > 1 else torch.tensor(0.0)
    explained = 1 - (returns - values).var() / var if var > 0 else torch.tensor(0.0)
    local = {
        "reward": batch.scores.mean(),
        "kl": kl.mean(),
        "explained_variance": explained,
        "logprob_drift": ppo.masked_mean((batch.sampled - data["old"]).abs(), m),
        "generated_tokens": m.sum(1).float().mean(),
        "sequence_tokens": batch.attention.sum(1).float().mean(),
        **{k: torch.tensor(sum(v) / max(len(v), 1)) for k, v in losses.items()},
    }
    stacked = torch.stack([v.float().to(acc.device) for v in local.values()])
    mean = acc.reduce(stacked, "mean") if acc.num_processes > 1 else stacked
    return {"iteration": it + 1, **dict(zip(local, mean.tolist(), strict=True))}


def summarize(history: list[dict[str, float]], s: PpoSettings) -> dict[str, Any]:
    """The run's metrics: the last iteration's, the reward curve, every iteration's."""
    last = {k: v for k, v in (history[-1] if history else {}).items() if k != "iteration"}
    curve = loss_curve([(int(h["iteration"]), h["reward"]) for h in history], 50)
    done = {"iterations": s.iterations, "rollouts": s.iterations * s.episodes_per_iteration}
    return {**last, **done, "reward_curve": curve, "history": history}


def _brief(metrics: dict[str, float]) -> str:
    keys = ("reward", "kl", "policy_loss", "value_loss", "clipfrac", "approx_kl")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in (*keys, "explained_variance"))


# -- the command line --------------------------------------------------------------------
def _pairs(items: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` items, each value read as YAML (``3``, ``0.5``, ``true``, ``abc``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=Path, required=True, help="checkpoint to start from")
    parser.add_argument("--out", type=Path, required=True, help="where the final policy goes")
    parser.add_argument("--work", type=Path, help="resumable states (default: OUT.work)")
    parser.add_argument("--env", help="environment class, package.module:Class")
    parser.add_argument("--env-set", action="append", default=[], help="environment setting")
    parser.add_argument("--episodes", type=Path, help="JSON Lines episodes for --env")
    parser.add_argument("--pool", type=int, default=256, help="train_episodes drawn for --env")
    parser.add_argument("--prompts", type=Path, help="JSON Lines single-turn prompts")
    parser.add_argument("--reward", default="numeric", help="for --prompts: module:fn or kind")
    parser.add_argument("--set", action="append", default=[], help="PpoSettings key=value")
    args = parser.parse_args(argv)
    if (args.env is None) == (args.prompts is None):
        parser.error("give exactly one of --env and --prompts")
    settings = PpoSettings.model_validate(_pairs(args.set, "--set"))
    if args.env:
        env_settings = _pairs(args.env_set, "--env-set")
        source = env_rollouts(args.env, env_settings, args.episodes, args.pool, settings.seed)
    else:
        source = prompt_rollouts(args.prompts, args.reward)
    work = args.work or args.out.with_name(args.out.name + ".work")
    acc = _accelerator()
    with Reporter(acc.is_main_process) as report:
        result = train_ppo(args.parent, args.out, work, source, settings, report, acc)
        metadata = {k: v for k, v in result.items() if k != "history"}
        report.materialization(metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
