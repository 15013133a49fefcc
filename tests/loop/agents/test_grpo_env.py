"""TRL's environment loop on our tokenizer and a tiny Llama: it calls the environment's tools,
masks their results out of the loss, and GRPO on it raises the reward of a toy environment.

The model is first taught, on scripted conversations, to call the tool at all (pressing buttons
at random); GRPO then has to find the one button that opens the lock on the first press.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.envs.protocol import ToolEnvironment, tool, tool_methods
from flywheel.loop.agents.collect import CollectSettings, collect
from flywheel.loop.agents.grpo_env import (
    EnvRLSettings,
    build_grpo_env_trainer,
    grpo_env_config,
    train_grpo_env,
)
from flywheel.loop.agents.hf_policy import TransformersPolicy
from tests.loop.eval.conftest import TINY_LLAMA

CODE = 7  # the button that opens the lock
PRESSES = 3  # the lock's budget
PROMPT = [{"role": "user", "content": "Open the lock: press buttons until it opens."}]

pytestmark = pytest.mark.usefixtures("one_thread")


class Lock(ToolEnvironment):
    """Press buttons 0-9 until the lock opens; reward 1 / presses if it opened, else 0."""

    def __init__(self, log: list[list[int]] | None = None) -> None:
        self.log, self.code, self.pressed, self.opened = log, 0, [], False

    def reset(self, code: int, **_row: Any) -> None:
        self.code, self.opened = int(code), False
        self.pressed: list[int] = []
        if self.log is not None:
            self.log.append(self.pressed)  # one entry per episode, filled as it is played
        self._start(PRESSES)

    @tool
    def press(self, button: int) -> str:
        """Press one button of the lock.

        Args:
            button: The button, an integer from 0 to 9.
        """
        self.pressed.append(int(button))
        if int(button) == self.code:
            self.opened = self.done = True
            return "open"
        return "locked"

    def get_reward(self) -> float:
        return 1.0 / len(self.pressed) if self.opened else 0.0


class RecordedLock(Lock):
    """A Lock that also keeps every reply its tool gave (the turn-budget note included)."""

    def reset(self, code: int, **row: Any) -> None:
        super().reset(code, **row)
        self.replies: list[str] = []

    @functools.wraps(Lock.press)  # the same name, docstring and signature: the same tool
    def press(self, *args: Any, **kwargs: Any) -> str:
        reply = Lock.press(self, *args, **kwargs)
        self.replies.append(reply)
        return reply


def episodes(count: int) -> list[dict[str, Any]]:
    return [{"prompt": PROMPT, "code": CODE} for _ in range(count)]


def scripted(rng: random.Random) -> list[dict[str, Any]]:
    """One conversation of a player pressing distinct random buttons, then saying it is done."""
    env, messages = Lock(), [dict(m) for m in PROMPT]
    env.reset(code=CODE)
    for button in rng.sample(range(10), 10):
        call = {"type": "function", "function": {"name": "press", "arguments": {"button": button}}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "name": "press", "content": env.press(button)})
        if env.over:
            break
    return [*messages, {"role": "assistant", "content": "Done."}]


def warm_up(tokenizer: Any, seed: int = 0, steps: int = 150) -> Any:
    """A tiny Llama taught on scripted play to call ``press`` (assistant tokens only)."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    special = {k: getattr(tokenizer, k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    model = build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 512, special, seed=seed)
    rng, tools = random.Random(seed), tool_methods(Lock())
    rows = [
        tokenizer.apply_chat_template(
            scripted(rng), tools=tools, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )
        for _ in range(256)
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    draw = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (16,), generator=draw).tolist()]
        width = max(len(r["input_ids"]) for r in batch)
        padded = [(r, width - len(r["input_ids"])) for r in batch]  # right padding
        ids = torch.tensor([r["input_ids"] + [0] * n for r, n in padded])
        attend = torch.tensor([[1] * (width - n) + [0] * n for _, n in padded])
        learn = torch.tensor([r["assistant_masks"] + [0] * n for r, n in padded])
        loss = model(ids, attention_mask=attend, labels=ids.masked_fill(learn == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def parent(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory (model + tokenizer) that calls ``press`` at random. Its tokenizer
    is trained on the scripted conversations, so the tool schema TRL puts in every prompt is
    ~140 tokens rather than ~370 (what keeps the test fast)."""
    from flywheel.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("lock-parent")
    rng, tools = random.Random(1), tool_methods(Lock())
    texts = [
        tokenizer.apply_chat_template(scripted(rng), tools=tools, tokenize=False)
        for _ in range(200)
    ]
    lock_tokenizer = train_tokenizer(texts, vocab_size=800, min_frequency=2, out_dir=out)
    warm_up(lock_tokenizer).save_pretrained(out)
    return out


def sampled_reward(model_dir: Path, samples: int = 48, seed: int = 11) -> float:
    """Mean reward of ``samples`` episodes sampled at temperature 1 by the collector (a fixed
    evaluation: same episodes, same seed)."""
    from flywheel.train.tokenizer import load_tokenizer

    policy = TransformersPolicy.from_checkpoint(
        model_dir, max_new_tokens=40, temperature=1.0, seed=seed
    )
    frame = collect(
        policy,
        load_tokenizer(model_dir),
        Lock,
        episodes(1),
        "lock",
        settings=CollectSettings(max_turns=PRESSES, samples_per_episode=samples),
    )
    return float(frame["reward"].mean())


SETTINGS = dict(
    micro_batch=16,
    grad_accum=1,
    num_generations=8,
    max_new_tokens=160,
    temperature=1.0,
    max_tool_calling_iterations=PRESSES,
    warmup_steps=5,
    save_every=50,
    log_every=1,
    gradient_checkpointing=False,
)  # fmt: skip  (16 completions a step: two groups of 8; 160 tokens hold 3 presses + replies)


def test_trl_calls_our_tools_and_masks_their_results(parent: Path, tmp_path: Path) -> None:
    settings = EnvRLSettings(steps=1, lr=1e-5, beta=0.04, **SETTINGS)  # beta: a reference too
    trainer, tokenizer = build_grpo_env_trainer(
        grpo_env_config(settings, tmp_path / "work"), parent, RecordedLock, episodes(16)
    )
    batches: list[tuple[dict[str, Any], list[Any]]] = []
    generate = trainer._generate_and_score_completions

    def observed(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = generate(inputs)
        batches.append((out, list(trainer.environments)))  # the batch's env, row by row
        return out

    trainer._generate_and_score_completions = observed
    trainer.train()

    out, envs = batches[0]
    assert len(envs) == 16 and all(isinstance(e, RecordedLock) for e in envs)
    assert sum(len(e.replies) for e in envs) > 0, "TRL never called the environment's tool"
    for row, env in enumerate(envs):
        ids = out["completion_ids"][row][out["completion_mask"][row].bool()].tolist()
        runs = _runs(ids, out["tool_mask"][row][: len(ids)].tolist())
        # every tool result TRL appended is masked out (tool_mask 0), and each masked run is
        # exactly the template's tool turns and the next assistant header, the "\n" after
        # the model's <|im_end|> included
        heard = [reply for m, r in runs if m == 0 for reply in _tool_turns(tokenizer.decode(r))]
        assert heard == env.replies[: len(heard)]
        model_text = "".join(tokenizer.decode(r) for m, r in runs if m == 1)
        assert model_text.count("<tool_call>") >= len(heard)
        if len(heard) < len(env.replies):  # TRL drops results that would overrun the completion
            lost = "".join(f"<|im_start|>tool\n{r}<|im_end|>\n" for r in env.replies[len(heard) :])
            suffix = tokenizer(f"\n{lost}<|im_start|>assistant\n")["input_ids"]
            assert len(ids) + len(suffix) > SETTINGS["max_new_tokens"]
    # the tokenizer saved with the model keeps its own eos (TRL's copy ends turns instead)
    assert tokenizer.eos_token == "<|endoftext|>"


TOOL_TURN = r"<\|im_start\|>tool\n(.*?)<\|im_end\|>\n"


def _tool_turns(text: str) -> list[str]:
    """The contents of the tool turns in ``text``, which must be nothing but tool turns
    between the model's <|im_end|> and the next assistant header."""
    match = re.fullmatch(
        r"\n((?:<\|im_start\|>tool\n.*?<\|im_end\|>\n)+)<\|im_start\|>assistant\n", text, re.S
    )
    assert match, f"not a rendering of tool turns: {text!r}"
    return re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>\n", match.group(1), re.S)


def _runs(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    runs: list[tuple[int, list[int]]] = []
    for token, m in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(token)
        else:
            runs.append((m, [token]))
    return runs


def test_a_rerun_resumes_from_the_last_checkpoint(parent: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    first = EnvRLSettings(steps=2, lr=1e-5, **SETTINGS | {"save_every": 2})
    metrics = train_grpo_env(parent, out, Lock, episodes(32), first, work=work)
    assert metrics["grpo_env/resumed_from_step"] == 0 and (work / "checkpoint-2").is_dir()
    longer = EnvRLSettings(steps=3, lr=1e-5, **SETTINGS | {"save_every": 2})
    metrics = train_grpo_env(parent, out, Lock, episodes(32), longer, work=work)
    assert metrics["grpo_env/resumed_from_step"] == 2 and metrics["grpo_env/steps"] == 3
    assert (out / "model.safetensors").exists()
    from flywheel.train.tokenizer import CHAT_TEMPLATE, load_tokenizer

    saved = load_tokenizer(out)  # the original eos, and the template that renders tools
    assert saved.eos_token == "<|endoftext|>" and saved.chat_template == CHAT_TEMPLATE


@pytest.mark.integration  # ~55 s on a shared 2-core machine: warm-up 19 s, 60 steps 36 s
def test_grpo_on_the_environment_raises_its_reward(parent: Path, tmp_path: Path) -> None:
    before = sampled_reward(parent)
    settings = EnvRLSettings(steps=60, lr=1e-3, beta=0.0, **SETTINGS)
    metrics = train_grpo_env(parent, tmp_path / "out", Lock, episodes(120), settings)
    after = sampled_reward(tmp_path / "out")
    curve = [reward for _, reward in metrics["grpo_env/reward_curve"]]
    early, late = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    print(f"sampled reward {before:.3f} -> {after:.3f}; TRL's reward {early:.3f} -> {late:.3f}")
    # a random first press opens the lock 1 time in 10 (expected reward ~0.2 over 3 presses);
    # the optimum, pressing 7 first, earns 1.0
    assert after >= before + 0.25, (before, after, curve)
    assert late >= early + 0.25, curve
    assert metrics["grpo_env/steps"] == 60
