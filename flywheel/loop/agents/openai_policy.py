"""A collector policy on an OpenAI-compatible endpoint (``vllm serve``, or any server).

    python -m pytest -q tests/loop/agents/test_openai_policy.py

``OpenAIPolicy(settings, checkpoint_dir, mode=...)`` opens the endpoint exactly as generation's
``openai`` backend does (``flywheel.loop.generate.endpoint.EndpointBackend``): a given
``endpoint.url``, or ``vllm serve <checkpoint>`` started for the policy and stopped on
``close``; the same client, API key, timeout, retries with backoff and ``concurrency``. Every
live episode's turn is one request, all sent at once through ``concurrency`` threads, so a
turn of N episodes keeps ``min(N, concurrency)`` requests in flight. A request that still
fails after its retries (or whose reply is unusable) becomes a ``Step`` with ``error``: that
episode ends with the error, the others carry on.

Two modes:

- ``completions`` (default, exact tokens): ``POST /v1/completions`` with the context's token
  ids as the prompt (a list of ints, which the OpenAI API and vLLM accept), so the server
  continues exactly the tokens the trajectory holds. It asks for ``logprobs=0`` (the sampled
  token's only) and vLLM's ``return_token_ids`` / ``return_tokens_as_token_ids``, and stops on
  ``stop_token_ids`` (the checkpoint's ``<|im_end|>`` and EOS; vLLM keeps the stop token in
  ``token_ids``). The step's ids are the server's ids; its text is their decoding. A server
  that returns no token ids cannot serve this mode (the step says so): use ``chat``.
- ``chat``: ``POST /v1/chat/completions`` with the conversation (assistant tool calls as
  structured ``tool_calls``, tool results as ``tool`` turns with their ``tool_call_id``) and
  ``tools`` (the environment's JSON schemas, ``Context.tools``). The reply's ``tool_calls`` are
  written back as our ``<tool_call>`` text after its content, so the collector runs them. The
  server renders the conversation with its own chat template, which must render ``tool_calls``
  (Qwen/Hermes-style, as flywheel's ChatML template does; with vLLM: ``--enable-auto-tool-choice
  --tool-call-parser hermes``). The step's ids are the checkpoint tokenizer's encoding of that
  text plus ``<|im_end|>`` when it stopped: RE-TOKENIZED, not the server's tokens (mask 1 all
  the same), and its logprobs are the reply's only when it gives one per re-tokenized token,
  else None.

Logprobs are what the server reports: vLLM's default (``--logprobs-mode raw_logprobs``) is
the model's distribution before temperature; ``processed_logprobs`` matches what
``TransformersPolicy`` records (after temperature). Each request carries its own seed, from
``seed``, the call number and the context's position in it, so samples of one episode differ
and a collection on the same server and hardware is reproducible.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from flywheel.core.settings.loop import EndpointSettings
from flywheel.loop.agents.collect import Context, Step
from flywheel.loop.agents.toolcalls import format_tool_call
from flywheel.loop.generate.base import Closing, prompt_seed
from flywheel.loop.generate.endpoint import BODY_EXCERPT, EndpointBackend, EndpointError

log = logging.getLogger(__name__)

Mode = Literal["completions", "chat"]
TOKEN_ID = "token_id:"  # how vLLM's return_tokens_as_token_ids spells a token
_CALL_BLOCK = re.compile(r"\s*<tool_call>.*?</tool_call>\s*", re.DOTALL)


class OpenAIPolicy(Closing):
    """One request per live episode and turn; ``close`` (or ``with``) stops a started server."""

    backend = "openai"

    def __init__(
        self,
        settings: EndpointSettings,
        checkpoint_dir: Path,
        mode: Mode = "completions",
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        log_dir: Path | None = None,
    ) -> None:
        if mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', not {mode!r}")
        if temperature < 0 or max_new_tokens < 1:
            raise ValueError("temperature must be >= 0 and max_new_tokens >= 1")
        # The endpoint, its tokenizer and stop ids, a started server: generation's backend.
        self.endpoint = EndpointBackend(settings, Path(checkpoint_dir), log_dir)
        self.tokenizer, self.stops = self.endpoint.tokenizer, self.endpoint.stops
        self.mode: Mode = mode
        self.sampling = {"mode": mode, "max_new_tokens": max_new_tokens}
        self.sampling |= {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
        self.calls = self.requests = self.failures = 0

    def __call__(self, contexts: list[Context]) -> list[Step]:
        if not contexts:
            return []
        seeds = [
            prompt_seed(self.sampling["seed"], f"{self.calls}:{i}") for i in range(len(contexts))
        ]
        self.calls += 1
        started = time.monotonic()
        workers = min(self.endpoint.settings.concurrency, len(contexts))
        with ThreadPoolExecutor(workers) as pool:
            steps = list(pool.map(self._one, contexts, seeds))
        failed = sum(s.error is not None for s in steps)
        self.requests += len(steps)
        self.failures += failed
        log.info(
            "turn %d: %d %s requests (%d failed) in %.1fs, %d at a time",
            self.calls, len(steps), self.mode, failed, time.monotonic() - started, workers,
        )  # fmt: skip
        return steps

    def _one(self, context: Context, seed: int) -> Step:
        """One context's step; a request that failed after its retries is an error step."""
        try:
            if self.mode == "completions":
                return self._completion(context, seed)
            return self._chat(context, seed)
        except EndpointError as exc:
            return Step("", [], None, error=str(exc))

    def _sampling(self, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The standard request fields, and the vLLM extensions (``extra_body``)."""
        s = self.sampling
        sampled = s["temperature"] > 0
        body = {
            "model": self.endpoint.model,
            "max_tokens": s["max_new_tokens"],
            "temperature": s["temperature"],
            "top_p": s["top_p"] if sampled else 1.0,
            "seed": seed,
        }
        extra: dict[str, Any] = {"stop_token_ids": self.stops}
        if sampled and s["top_k"] > 0:
            extra["top_k"] = s["top_k"]
        return body, extra

    def _completion(self, context: Context, seed: int) -> Step:
        body, extra = self._sampling(seed)
        extra |= {"return_token_ids": True, "return_tokens_as_token_ids": True}
        client = self.endpoint.client
        (choice,), _ = client.complete(  # type: ignore[union-attr]
            1, prompt=list(context.token_ids), logprobs=0, extra_body=extra, **body
        )
        ids = _token_ids(choice)
        if ids is None:
            raise EndpointError(
                f"POST {client.base_url}/completions: the reply has no token ids "  # type: ignore[union-attr]
                "(completions mode needs vLLM's return_token_ids or "
                f"return_tokens_as_token_ids; use mode 'chat'): {str(choice)[:BODY_EXCERPT]}"
            )
        token_logprobs = getattr(choice.logprobs, "token_logprobs", None)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        reason = "length" if choice.finish_reason == "length" else "stop"
        return Step(text, ids, _aligned(token_logprobs, len(ids)), reason)

    def _chat(self, context: Context, seed: int) -> Step:
        body, extra = self._sampling(seed)
        client = self.endpoint.client
        request: dict[str, Any] = {"messages": wire_messages(context.messages), "logprobs": True}
        if context.tools:
            request["tools"] = context.tools  # get_json_schema's {"type": "function", ...}
        with client.errors("POST", "chat/completions"):  # type: ignore[union-attr]
            raw = client.openai.chat.completions.with_raw_response.create(  # type: ignore[union-attr]
                n=1, extra_body=extra, **request, **body
            )
            reply = raw.parse()
        choices = getattr(reply, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            raise EndpointError(
                f"POST {client.base_url}/chat/completions: the reply has no choice with a "  # type: ignore[union-attr]
                f"message: {raw.http_response.text[:BODY_EXCERPT]}"
            )
        text = reply_text(message.content, message.tool_calls or [])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        reason = "length" if choices[0].finish_reason == "length" else "stop"
        if reason == "stop":
            ids.append(self.stops[0])  # <|im_end|>: the turn closed, as in completions mode
        content = getattr(choices[0].logprobs, "content", None) or []
        return Step(text, ids, _aligned([c.logprob for c in content], len(ids)), reason)

    def close(self) -> None:
        self.endpoint.close()


def _token_ids(choice: Any) -> list[int] | None:
    """The generated ids: vLLM's ``token_ids`` (return_token_ids), else the ``token_id:N``
    tokens of the logprobs (return_tokens_as_token_ids); None when the reply has neither."""
    ids = (choice.model_extra or {}).get("token_ids")
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        return ids
    tokens = getattr(choice.logprobs, "tokens", None)
    if tokens and all(isinstance(t, str) and t.startswith(TOKEN_ID) for t in tokens):
        return [int(t.removeprefix(TOKEN_ID)) for t in tokens]
    return None


def _aligned(logprobs: list[float | None] | None, n: int) -> list[float] | None:
    """The logprobs when there is a number for each of the ``n`` tokens, else None."""
    if not logprobs or len(logprobs) != n or any(lp is None for lp in logprobs):
        return None
    return [float(lp) for lp in logprobs]  # type: ignore[arg-type]


def reply_text(content: str | None, tool_calls: list[Any]) -> str:
    """A chat reply as our turn text: its content, then each call as a ``<tool_call>`` block.
    Arguments that are not a JSON object stay as the string the server gave, so the
    collector answers the call with an error the model hears."""
    parts = [content.strip()] if content and content.strip() else []
    for call in tool_calls:
        raw = call.function.arguments
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            arguments = raw
        parts.append(format_tool_call(call.function.name, arguments))
    return "\n".join(parts)


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The collector's conversation in the chat API's shape: an assistant turn's
    ``<tool_call>`` blocks leave its content for ``tool_calls`` entries (JSON-string
    arguments, ids taken from the tool turns that answer them, in order), and tool turns keep
    only ``content`` and ``tool_call_id`` (a turn answering no call has none)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            turn = {"role": "tool", "content": m["content"]}
            if m.get("tool_call_id"):
                turn["tool_call_id"] = m["tool_call_id"]
            out.append(turn)
        elif m["role"] == "assistant" and m.get("tool_calls"):
            turn = {"role": "assistant", "content": _CALL_BLOCK.sub("\n", m["content"]).strip()}
            calls = _wire_calls(m["tool_calls"], _answer_ids(messages[i + 1 :]), i)
            if calls:  # the API refuses an empty list
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def _answer_ids(after: list[dict[str, Any]]) -> list[str | None]:
    """The ``tool_call_id`` of each tool turn that follows an assistant turn, in order."""
    ids = []
    for m in after:
        if m["role"] != "tool":
            break
        ids.append(m.get("tool_call_id"))
    return ids


def _wire_calls(calls: list[dict[str, Any]], ids: list[str | None], turn: int) -> list[dict]:
    wire = []
    for j, call in enumerate(calls):
        name = call["function"]["name"]
        if not name:  # a block that did not parse: no call the API could name
            continue
        arguments = json.dumps(call["function"]["arguments"])
        call_id = ids[j] if j < len(ids) and ids[j] else f"call_{turn}_{j}"
        wire.append({"id": call_id, "type": "function",
                     "function": {"name": name, "arguments": arguments}})  # fmt: skip
    return wire
