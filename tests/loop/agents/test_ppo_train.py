"""The PPO stage on a tiny random-init Llama: it learns a toy task, only generated tokens get
gradient, a run killed mid-way resumes to the same weights, and multi-turn episodes train.

    python -m pytest -q -s tests/loop/agents/test_ppo_train.py    (-s prints the reward curve)

The toy task: reward 1.0 when the completion starts with a digit. The tokenizer has 10 digit
tokens among ~350, so a random-init policy samples one about 3% of the time; a policy that
always does scores 1.0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from flywheel.core.report import Reporter
from flywheel.core.settings.rl import PpoSettings
from flywheel.envs.guess import NumberGuess, Settings, train_episodes
from flywheel.loop.agents.hf_policy import TransformersPolicy
from flywheel.loop.agents.ppo_rollouts import (
    EnvRollouts,
    PromptRollouts,
    response_logprobs,
    response_values,
    to_batch,
)
from flywheel.loop.agents.ppo_train import main, minibatch_loss, score_rollouts, train_ppo
from flywheel.train import ppo
from flywheel.train.model import load_model
from tests.loop.eval.conftest import TINY_LLAMA

ROOT = Path(__file__).resolve().parents[3]
WORDS = ["please", "now", "quick", "friend", "again", "today", "here", "once"]
TRAIN_PROMPTS = [{"prompt": f"Say a number, {w}."} for w in WORDS]
EVAL_PROMPTS = [{"prompt": f"Write one number {w}."} for w in WORDS]
KILL_ENV = "PPO_TEST_KILL_AFTER"  # "<work dir>:<iteration>" makes the reward SIGKILL the run

pytestmark = pytest.mark.usefixtures("one_thread")


def starts_with_digit(record: dict[str, Any], completion: str) -> float:
    """The toy reward; with ``KILL_ENV`` set it kills its own process once the state of that
    iteration is on disk (it is called during the next iteration's rollouts)."""
    if kill := os.environ.get(KILL_ENV):
        work, it = kill.rsplit(":", 1)
        if (Path(work) / f"step-{int(it):07d}").is_dir():
            os.kill(os.getpid(), signal.SIGKILL)
    return 1.0 if completion.strip()[:1].isdigit() else 0.0


@pytest.fixture(scope="module")
def parent(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny Llama with its tokenizer: the checkpoint PPO starts from."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    model = build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 2048, special, seed=1)
    out = tmp_path_factory.mktemp("ppo-parent")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fixed_eval(model: Any, tokenizer: Any) -> float:
    """Mean toy reward over the eval prompts, 4 seeded samples each (the same for every model)."""
    source, total = PromptRollouts(EVAL_PROMPTS, starts_with_digit), []
    for seed in range(4):
        policy = TransformersPolicy(model, tokenizer, max_new_tokens=1, seed=1000 + seed)
        total += [r["reward"] for r in source.rollout(policy, list(range(len(EVAL_PROMPTS))))]
    return sum(total) / len(total)


TOY = {"episodes_per_iteration": 32, "minibatch_size": 16, "max_new_tokens": 2, "max_turns": 1}
TOY |= {"lr": 0.01, "value_lr": 0.01}


def test_ppo_learns_to_start_with_a_digit(parent: Path, tokenizer: Any, tmp_path: Path) -> None:
    before = fixed_eval(load_model(parent), tokenizer)
    settings = PpoSettings(iterations=20, save_every=10, **TOY)
    source = PromptRollouts(TRAIN_PROMPTS, starts_with_digit)
    out = tmp_path / "out"
    result = train_ppo(parent, out, tmp_path / "work", source, settings)
    after = fixed_eval(load_model(out), tokenizer)
    curve = [round(r, 3) for _, r in result["reward_curve"]]
    print(f"\nreward curve (train, per iteration): {curve}")
    print(f"fixed eval: {before:.3f} -> {after:.3f}; final kl {result['kl']:.3f}")
    assert after - before >= 0.3 and after >= 0.5
    assert len(result["history"]) == 20 and result["kl"] > 0  # it moved away from the reference
    for key in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "explained_variance"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in result["history"]), key
    # recomputed logprobs are the sampling ones: the ratio starts at 1
    assert max(h["logprob_drift"] for h in result["history"]) < 1e-3
    record = json.loads((out / "ppo.json").read_text())
    assert record["settings"]["iterations"] == 20 and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()


def holey_rows() -> list[dict[str, Any]]:
    """Two multi-turn-shaped rows: holes (mask 0) between model turns, and unequal lengths."""
    return [
        {
            "prompt_ids": [5, 6, 7],
            "completion_ids": [20, 21, 22, 30, 31, 23, 24],
            "completion_mask": [1, 1, 1, 0, 0, 1, 1],
            "logprobs": None,
            "reward": 1.0,
        },
        {
            "prompt_ids": [8, 9],
            "completion_ids": [25, 32, 26],
            "completion_mask": [1, 0, 1],
            "logprobs": None,
            "reward": 0.0,
        },
    ]


def test_only_generated_tokens_get_gradient(parent: Path, tokenizer: Any) -> None:
    policy = load_model(parent).eval()
    critic = ppo.ValueHead.from_pretrained(parent).eval()
    torch.nn.init.normal_(critic.head.weight, std=0.5)  # nonzero values: value loss has a slope
    settings = PpoSettings(kl_coef=0.1)
    batch = to_batch(holey_rows(), tokenizer.pad_token_id)
    data = score_rollouts(policy, critic, load_model(parent).eval(), batch, settings)
    rows = torch.arange(2)
    mask = batch.mask

    # per token: d loss / d logprob and d loss / d value vanish exactly where mask is 0
    logprobs = response_logprobs(policy, batch, rows, 1.0).detach().requires_grad_()
    values = response_values(critic, batch, rows).detach().requires_grad_()
    # at the rollout's own logprobs and values nothing is clipped: every generated token counts
    minibatch_loss(logprobs, values, batch, data, rows, settings)[0].backward()
    for grad in (logprobs.grad, values.grad):
        assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] != 0), grad

    def param_grads(d: dict[str, Any]) -> list[torch.Tensor]:
        policy.zero_grad()
        critic.zero_grad()
        lp = response_logprobs(policy, batch, rows, 1.0)
        v = response_values(critic, batch, rows)
        minibatch_loss(lp, v, batch, d, rows, settings)[0].backward()
        return [p.grad.clone() for p in [*policy.parameters(), *critic.parameters()]]

    reference = param_grads(data)
    # garbage in one masked position at a time (holes and padding) changes no gradient...
    for b, t in torch.nonzero(~mask).tolist():
        spoiled = {k: v.clone() for k, v in data.items()}
        for key in ("old", "adv", "returns", "values"):
            spoiled[key][b, t] = float("nan") if key != "values" else 1e6
        grads = param_grads(spoiled)
        assert all(torch.equal(g, r) for g, r in zip(grads, reference, strict=True)), (b, t)
    # ...while the same change at a generated token does (the check can fail)
    b, t = torch.nonzero(mask)[0].tolist()
    moved = {k: v.clone() for k, v in data.items()}
    moved["adv"][b, t] += 5.0
    assert not all(torch.equal(g, r) for g, r in zip(param_grads(moved), reference, strict=True))


def ppo_command(parent: Path, out: Path, work: Path, prompts: Path) -> list[str]:
    sets = {"iterations": 6, "save_every": 2, "keep_states": 5, **TOY}
    return [
        sys.executable, "-m", "flywheel.loop.agents.ppo_train",
        "--parent", str(parent), "--out", str(out), "--work", str(work),
        "--prompts", str(prompts), "--reward", f"{__name__}:starts_with_digit",
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    ]  # fmt: skip


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != KILL_ENV and not k.startswith("DAGSTER")}
    full |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_a_killed_run_resumes_to_the_same_weights(parent: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in TRAIN_PROMPTS))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = run(ppo_command(parent, whole / "out", whole / "work", prompts))
    assert done.returncode == 0, done.stderr[-4000:]

    cmd = ppo_command(parent, cut / "out", cut / "work", prompts)
    killed = run(cmd, **{KILL_ENV: f"{cut / 'work'}:4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not (cut / "out").exists()
    assert sorted(p.name for p in (cut / "work").glob("step-*")) == [
        "step-0000002",
        "step-0000004",
    ]
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming PPO from" in resumed.stderr and "(iteration 4)" in resumed.stderr

    a, b = weights(whole / "out"), weights(cut / "out")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    value_a, value_b = (weights(d / "work" / "step-0000006" / "value") for d in (whole, cut))
    assert all(torch.equal(value_a[k], value_b[k]) for k in value_a)
    history = [json.loads((d / "out" / "ppo.json").read_text())["metrics"] for d in (whole, cut)]
    history = [h["history"] for h in history]
    assert history[0] == history[1] and len(history[0]) == 6
    start = weights(parent)
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it trained


def test_resuming_with_other_settings_is_refused(parent: Path, tmp_path: Path) -> None:
    source = PromptRollouts(TRAIN_PROMPTS, starts_with_digit)
    small = {**TOY, "episodes_per_iteration": 4, "minibatch_size": 4}
    train_ppo(
        parent, tmp_path / "out", tmp_path / "work", source, PpoSettings(iterations=1, **small)
    )
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.01 -> 0.02\)"):
        more = PpoSettings(iterations=2, **{**small, "lr": 0.02})
        train_ppo(parent, tmp_path / "out", tmp_path / "work", source, more)


def test_muon_resumes_to_the_same_weights(parent: Path, tmp_path: Path) -> None:
    # Muon (hidden matrices) + AdamW (embeddings, norms, the value head) for both models:
    # one iteration, then a rerun with two resumes from the saved state; it ends where a
    # straight two-iteration run does only if both parts of both optimizers were restored.
    source = PromptRollouts(TRAIN_PROMPTS, starts_with_digit)
    small = {**TOY, "episodes_per_iteration": 4, "minibatch_size": 2, "optimizer": "muon"}
    for n in (1, 2):
        train_ppo(
            parent, tmp_path / "cut", tmp_path / "cw", source, PpoSettings(iterations=n, **small)
        )
    train_ppo(
        parent, tmp_path / "whole", tmp_path / "ww", source, PpoSettings(iterations=2, **small)
    )
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(
        torch.equal(a[k], v) for k, v in weights(parent).items()
    )
    saved = torch.load(tmp_path / "cw/step-0000001/policy_optimizer.pt", weights_only=True)
    assert "momentum_buffer" in saved["state"][0] and len(saved["param_groups"]) == 3


EASY = Settings(min_n=4, max_n=16, held_out=2)


def test_each_turns_judgement_is_a_reward_at_that_turns_last_token() -> None:
    """Two model turns (mask runs [0, 2) and [4, 6)); the environment judged the first -1 and
    the episode's reward 1.0 sits on the last entry: steps hold -1 at token 1 and the second
    turn's own 0.5 at token 5, and token_rewards + steps sum to the episode's return."""
    row = {"prompt_ids": [7, 8], "completion_ids": [1, 2, 3, 4, 5, 6], "logprobs": None}
    row |= {"completion_mask": [1, 1, 0, 0, 1, 1], "reward": 1.0, "step_rewards": [-1.0, 1.5]}
    single = {"prompt_ids": [7], "completion_ids": [1, 2], "completion_mask": [1, 1]}
    single |= {"logprobs": None, "reward": 0.25}  # a prompt rollout: no step_rewards
    batch = to_batch([row, single], pad_id=0)
    assert batch.steps.tolist() == [[0, -1.0, 0, 0, 0, 0.5], [0] * 6]
    zero = torch.zeros_like(batch.sampled)
    dense = ppo.token_rewards(batch.scores, zero, zero, batch.mask, 0.1) + batch.steps
    assert dense.sum(1).tolist() == [0.5, 0.25]


def test_multi_turn_episodes_through_the_collector(
    parent: Path, tokenizer: Any, tmp_path: Path
) -> None:
    source = EnvRollouts(lambda: NumberGuess(EASY), train_episodes(8, EASY, seed=1), "guess")
    policy = TransformersPolicy(load_model(parent), tokenizer, max_new_tokens=8, seed=3)
    rows = source.rollout(policy, [0, 1, 2, 3], max_turns=3)
    assert len(rows) == 4 and any(0 in r["completion_mask"] for r in rows)  # holes exist
    batch = to_batch(rows, tokenizer.pad_token_id)
    for b, row in enumerate(rows):
        n = len(row["completion_ids"])
        assert batch.mask[b, :n].tolist() == [bool(m) for m in row["completion_mask"]]
        assert (
            not batch.mask[b, n:].any() and batch.response[b, :n].tolist() == row["completion_ids"]
        )
        # response token t is predicted at prompt length - 1 + t of the full sequence
        full = batch.input_ids[b, batch.index[b, :n] + 1].tolist()
        assert full == row["completion_ids"]

    out = tmp_path / "out"
    sets = ["iterations=2", "episodes_per_iteration=4", "minibatch_size=2", "max_turns=3"]
    sets += ["max_new_tokens=8", "save_every=1"]
    argv = ["--parent", str(parent), "--out", str(out), "--work", str(tmp_path / "work")]
    argv += ["--env", "flywheel.envs.guess:NumberGuess", "--env-set", "max_n=16", "--pool", "8"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    record = json.loads((out / "ppo.json").read_text())["metrics"]
    assert len(record["history"]) == 2 and record["generated_tokens"] > 8  # more than one turn
    assert all(torch.isfinite(torch.tensor(v)) for v in record["history"][-1].values())
    assert sorted(p.name for p in (tmp_path / "work").glob("step-*")) == [
        "step-0000001",
        "step-0000002",
    ]


def test_an_agent_cycles_ppo_stage_plays_the_agents_environment(
    parent: Path, tmp_path: Path
) -> None:
    """cycles.method ppo: ``rl_stage`` runs PPO on the spec's environment with the agent's
    turn budget and with the cycle's own seed."""
    from flywheel.core.spec import load_spec
    from flywheel.loop.agents.cycle_rl import rl_kind, rl_stage
    from tests.conftest import write_spec

    body = """
environments: [{name: guess, class_path: "flywheel.envs.guess:NumberGuess",
                settings: {min_n: 2, max_n: 16, held_out: 4}}]
agent: {environment: guess, max_turns: 3, max_new_tokens: 8, system_prompt: "Guess."}
cycles:
  method: ppo
  ppo: {iterations: 1, episodes_per_iteration: 4, minibatch_size: 2, save_every: 1}
"""
    spec = load_spec(write_spec(tmp_path, body))
    assert rl_kind(spec) == "ppo"
    out, work = tmp_path / "out", tmp_path / "work"
    metrics = rl_stage(spec, 2, parent, out, work, Reporter())
    assert len(metrics["ppo/history"]) == 1 and metrics["ppo/generated_tokens"] > 0
    record = json.loads((out / "ppo.json").read_text())
    assert record["settings"]["seed"] == 2 and record["settings"]["max_turns"] == 3


def test_a_lora_policy_trains_its_adapter_against_the_disabled_adapter(
    parent: Path, tmp_path: Path
) -> None:
    from flywheel.core.settings.lora import LoraSettings

    # A reward that differs between an untrained policy's samples: advantages from the start.
    source = PromptRollouts(TRAIN_PROMPTS, lambda record, completion: len(completion) % 2)
    small = {**TOY, "episodes_per_iteration": 8, "minibatch_size": 8}
    adapted = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0)
    settings = PpoSettings(iterations=3, save_every=1, lora=adapted, **small)
    out, adapter = tmp_path / "out", tmp_path / "adapter"
    result = train_ppo(parent, out, tmp_path / "work", source, settings, adapter_dir=adapter)
    # The reference is the policy with its adapter off: the KL is 0 until the adapter moves,
    # then not. The logged KL is the sampled estimate mean(logp - ref_logp) over 8 rollouts,
    # which can fall below 0 by chance, so its size is what shows the adapter moved.
    assert result["history"][0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert abs(result["kl"]) > 1e-4
    assert 0 < result["lora/trainable_params"] < result["lora/total_params"]
    assert (adapter / "adapter_model.safetensors").stat().st_size == result["lora/adapter_bytes"]
    # A resumable state holds the adapter, not a model.
    assert (tmp_path / "work" / "step-0000003" / "policy" / "adapter_config.json").exists()
    merged, start = weights(out), weights(parent)
    assert merged.keys() == start.keys()  # a plain model: no peft weights left
    changed = {k for k in start if not torch.equal(merged[k], start[k])}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed and all(k.split(".")[-2] in projections for k in changed)
