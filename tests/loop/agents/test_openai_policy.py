"""The endpoint policy end to end: NumberGuess episodes collected through a real HTTP server.

    python -m pytest -q tests/loop/agents/test_openai_policy.py

The server is ``tests/loop/generate/openai_server.py`` (a test double of ``vllm serve``: real
HTTP, a real tiny model, vLLM's request and reply fields), serving a tiny Llama trained for a
few seconds on NumberGuess conversations, so that it writes ``<tool_call>`` blocks and closes
its turns. The policy (``flywheel.loop.agents.openai_policy``) is the thing under test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.core.settings.loop import EndpointSettings
from flywheel.envs.guess import PROMPT, NumberGuess, Settings, train_episodes
from flywheel.envs.protocol import tool_methods
from flywheel.loop.agents.collect import CollectSettings, collect
from flywheel.loop.agents.hf_policy import TransformersPolicy
from flywheel.loop.agents.openai_policy import OpenAIPolicy, wire_messages
from flywheel.loop.agents.toolcalls import format_tool_call, system_prompt, tool_schemas
from flywheel.loop.agents.trajectories import SCHEMA
from tests.loop.generate.conftest import build_chat_checkpoint
from tests.loop.generate.openai_server import CompletionsServer

SMALL = Settings(min_n=4, max_n=16, held_out=2)
# ~25 s on one core: the 64-wide model then opens an episode with a well-formed call and
# closes its turns (later turns are often malformed, which the collector answers as errors)
TRAIN_STEPS = 100
VOCAB = 1000  # the system turn's JSON schema is ~150 tokens at this size
ENDS = {"done", "env_truncated", "max_turns"}


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def guess_texts(count: int = 150, seed: int = 0) -> list[str]:
    """NumberGuess conversations as the collector renders them; the guesses are random
    numbers in the range the replies leave open, so the model learns the call format."""
    rng, env = random.Random(seed), NumberGuess(SMALL)
    system = system_prompt(tool_schemas(tool_methods(env)))
    texts = []
    for _ in range(count):
        n = rng.randint(SMALL.min_n, SMALL.max_n)
        low, high = 1, n
        text = turn("system", system) + turn("user", PROMPT + env.reset(n, rng.randint(1, n)))
        while not (env.done or env.truncated):
            number = rng.randint(low, high)
            reply = env.guess(number)
            low, high = (number + 1, high) if reply.startswith("higher") else (low, high)
            low, high = (low, number - 1) if reply.startswith("lower") else (low, high)
            text += turn("assistant", format_tool_call("guess", {"number": number}))
            text += turn("tool", reply)
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guess-chat") / "sft_checkpoint"
    return build_chat_checkpoint(root, TRAIN_STEPS, texts=guess_texts(), vocab_size=VOCAB).path


@pytest.fixture(scope="module")
def served(checkpoint: Path):
    with CompletionsServer(checkpoint) as server:
        yield server


@pytest.fixture
def server(served: CompletionsServer):
    """The module's server with no faults, no recorded requests, vLLM's extensions on."""
    served.reset()
    served.requests.clear()
    served.extensions = True
    yield served
    served.reset()


def settings(server: CompletionsServer, **kw: Any) -> EndpointSettings:
    return EndpointSettings(url=server.url, **{"concurrency": 4, **kw})


def play(policy: Any, count: int = 4, **kw: Any) -> Any:
    episodes = train_episodes(count, SMALL, seed=7)
    return collect(
        policy,
        policy.tokenizer,
        lambda: NumberGuess(SMALL),
        episodes,
        "guess",
        SMALL.model_dump(),
        CollectSettings(**{"max_turns": 3, **kw}),  # within the model's 512 positions
    )


def test_completions_mode_continues_the_exact_tokens(
    server: CompletionsServer, checkpoint: Path
) -> None:
    """Greedy episodes through the endpoint are token for token the in-process policy's run
    on each context alone (unpadded, as the server runs it), and the endpoint's logprobs
    are the model's at the tokens it generated."""
    with OpenAIPolicy(settings(server), checkpoint, max_new_tokens=32, temperature=0.0) as policy:
        frame = play(policy)
    local = TransformersPolicy.from_checkpoint(checkpoint, max_new_tokens=32, temperature=0.0)
    expected = play(OneByOne(local))
    assert frame.schema == SCHEMA and frame.height == 4
    assert frame["error"].null_count() == 4 and set(frame["end_reason"]) <= ENDS
    assert set(frame["backend"]) == {"openai"}
    assert json.loads(frame["sampling"][0])["mode"] == "completions"
    assert frame["completion_ids"].to_list() == expected["completion_ids"].to_list()
    assert frame["turns"].to_list() == expected["turns"].to_list()
    assert frame["num_turns"].max() >= 2  # the model called the tool and went on
    turns = json.loads(frame["turns"][0])
    replies = [t["content"] for t in turns if t["role"] == "tool"]
    assert replies and all(r.startswith(("higher", "lower", "correct", "error")) for r in replies)
    first_turn = server.requests[:4]  # the prompts are the contexts' exact token ids
    assert sorted(r["prompt"] for r in first_turn) == sorted(frame["prompt_ids"].to_list())
    for request in first_turn:
        assert request["logprobs"] == 0 and request["return_token_ids"]
        assert request["stop_token_ids"] == policy.stops
    model = local.model
    for row in frame.iter_rows(named=True):
        ids, mask, logprobs = row["completion_ids"], row["completion_mask"], row["logprobs"]
        assert len(ids) == len(mask) == len(logprobs) and mask[-1] == 1
        with torch.no_grad():
            logits = model(torch.tensor([row["prompt_ids"] + ids])).logits[0].float()
        fresh = torch.log_softmax(logits[len(row["prompt_ids"]) - 1 : -1], -1)
        fresh = fresh.gather(-1, torch.tensor(ids)[:, None])[:, 0]
        made = torch.tensor(mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(logprobs)[made], fresh[made], atol=2e-3, rtol=0)


class OneByOne:
    """The in-process policy called on one context at a time (a driver, not under test)."""

    def __init__(self, policy: TransformersPolicy) -> None:
        self.policy, self.tokenizer = policy, policy.tokenizer
        self.backend, self.sampling = policy.backend, policy.sampling

    def __call__(self, contexts: list[Any]) -> list[Any]:
        return [self.policy([c])[0] for c in contexts]


def test_every_live_episode_is_a_request_in_flight_at_once(
    server: CompletionsServer, checkpoint: Path
) -> None:
    with OpenAIPolicy(
        settings(server, concurrency=3), checkpoint, max_new_tokens=32, temperature=1.0, seed=3
    ) as policy:
        frame = play(policy, count=6, samples_per_episode=2)
    assert frame.height == 12 and frame["error"].null_count() == 12
    assert policy.calls == frame["num_turns"].max()  # one round of requests per turn
    assert policy.requests == frame["num_turns"].sum() == len(server.requests)
    assert 2 <= server.peak_in_flight <= 3  # concurrent, bounded by endpoint.concurrency
    # two samples of one episode are drawn with different seeds
    seeds = [r["seed"] for r in server.requests[:12]]
    assert len(set(seeds)) == 12


def test_chat_mode_turns_tool_calls_into_our_calls(
    server: CompletionsServer, checkpoint: Path
) -> None:
    with OpenAIPolicy(
        settings(server), checkpoint, mode="chat", max_new_tokens=32, temperature=0.0
    ) as policy:
        frame = play(policy)
    assert frame.schema == SCHEMA and frame["error"].null_count() == 4
    assert set(frame["end_reason"]) <= ENDS and frame["num_turns"].max() >= 2
    schemas = tool_schemas(tool_methods(NumberGuess(SMALL)))
    assert all(r["tools"] == schemas for r in server.requests)
    answered = [r for r in server.requests if any(m["role"] == "tool" for m in r["messages"])]
    assert answered, "no episode got past its first turn"
    for request in answered:  # every wire call is answered by the tool turn with its id
        for i, m in enumerate(request["messages"]):
            for j, call in enumerate(m.get("tool_calls") or []):
                assert request["messages"][i + 1 + j]["tool_call_id"] == call["id"]
                assert set(json.loads(call["function"]["arguments"])) == {"number"}
            if m.get("tool_calls"):  # the calls travel as tool_calls, not in the content
                assert "<tool_call>" not in m["content"]
    tok = policy.tokenizer
    for row in frame.iter_rows(named=True):
        turns = json.loads(row["turns"])
        said = [t for t in turns if t["role"] == "assistant"]
        assert said[0].get("tool_calls")  # the server's tool_calls came back as our calls
        # re-tokenized: the masked-in ids are each turn's text and <|im_end|>
        made = [t for t, m in zip(row["completion_ids"], row["completion_mask"], strict=True) if m]
        # (plus <|im_end|> after each turn that stopped; one cut at max_new_tokens has none)
        generated = tok.decode(made)
        assert generated.startswith(said[0]["content"] + "<|im_end|>")
        assert generated.replace("<|im_end|>", "") == "".join(t["content"] for t in said)


def test_a_failed_request_ends_only_its_episode(
    server: CompletionsServer, checkpoint: Path
) -> None:
    server.inject("500")  # the first request of the first turn; no retries allowed
    with OpenAIPolicy(
        settings(server, max_retries=0), checkpoint, max_new_tokens=32, temperature=0.0
    ) as policy:
        frame = play(policy)
    failed = frame.filter(frame["error"].is_not_null())
    assert failed.height == 1 and policy.failures == 1
    assert failed["end_reason"].to_list() == ["error"] and failed["num_turns"].to_list() == [0]
    assert "HTTP 500" in failed["error"][0] and "the policy failed" in failed["error"][0]
    assert failed["reward"].to_list() == [0.0] and failed["completion_ids"].to_list() == [[]]
    assert set(frame.filter(frame["error"].is_null())["end_reason"]) <= ENDS


def test_completions_mode_needs_token_ids_back(server: CompletionsServer, checkpoint: Path) -> None:
    server.extensions = False  # a server without return_token_ids / token_id:N tokens
    with OpenAIPolicy(settings(server), checkpoint, max_new_tokens=8, temperature=0.0) as policy:
        frame = play(policy, count=2)
    assert frame["end_reason"].to_list() == ["error", "error"]
    assert all("no token ids" in e and "mode 'chat'" in e for e in frame["error"])


def test_wire_messages_use_the_chat_apis_shape() -> None:
    call = format_tool_call("guess", {"number": 3})
    messages = [
        {"role": "system", "content": "tools"},
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": f"Trying three.\n{call}",
            "tool_calls": [
                {"type": "function", "function": {"name": "guess", "arguments": {"number": 3}}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1_0", "name": "guess", "content": "higher"},
        {"role": "assistant", "content": "no call"},
        {"role": "tool", "content": "error: no tool call in this turn"},
    ]
    wire = wire_messages(messages)
    assert wire[2] == {
        "role": "assistant",
        "content": "Trying three.",
        "tool_calls": [
            {
                "id": "call_1_0",
                "type": "function",
                "function": {"name": "guess", "arguments": '{"number": 3}'},
            }
        ],
    }
    assert wire[3] == {"role": "tool", "content": "higher", "tool_call_id": "call_1_0"}
    assert wire[4] == {"role": "assistant", "content": "no call"}
    assert wire[5] == {"role": "tool", "content": "error: no tool call in this turn"}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        OpenAIPolicy(EndpointSettings(url="http://127.0.0.1:9/v1"), Path("."), mode="text")  # type: ignore[arg-type]
