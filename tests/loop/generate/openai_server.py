"""A small real OpenAI-compatible server over a transformers checkpoint (tests).

    python tests/loop/generate/openai_server.py serve CHECKPOINT --host 127.0.0.1 --port 8000

It answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` the
way vLLM's server answers them, and records every request body. Completions of prompt text
(n, temperature, top_p, top_k, max_tokens, seed) come from ``TransformersBackend.complete``.
A prompt of token ids is continued as it is by ``TransformersPolicy`` (the request's sampling,
``stop_token_ids``), with vLLM's extensions: ``logprobs`` (the sampled tokens'),
``return_token_ids`` (each choice's ``token_ids``, the stop token included) and
``return_tokens_as_token_ids`` (logprob tokens spelled ``token_id:N``); ``extensions=False``
makes it ignore the last two, as a server without them would. Chat requests are rendered with
the checkpoint's template after writing each assistant ``tool_calls`` entry back as a
``<tool_call>`` block (as tool-aware templates such as Qwen's do), generated the same way, and
when ``tools`` are given the reply's ``<tool_call>`` blocks are parsed into ``tool_calls`` as
vLLM's ``hermes`` tool parser does (the content is the text before the first block).

It exists to test the clients (``flywheel.loop.generate.endpoint``,
``flywheel.loop.agents.openai_policy``) without vLLM: in a thread (``CompletionsServer``), or
as a started ``serve`` executable (the command line above, which ``ServeProcess`` runs).

``CompletionsServer.inject`` makes the next completions or chat requests (or all of them) fail
the ways real servers do: HTTP 500/503, a stall longer than the client's timeout, a body that is
not JSON, a reply without ``choices`` or without a choice's ``text``. ``attempts`` records
what each request got and the retry number the client sent with it.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flywheel.loop.agents.collect import Context, Step
from flywheel.loop.agents.hf_policy import TransformersPolicy
from flywheel.loop.generate.backends import TransformersBackend
from flywheel.loop.generate.base import SamplingParams

RETRY_HEADER = "x-stainless-retry-count"  # the openai client numbers its attempts in it
STALL_S = 10.0  # a stalled request hangs until reset or exit, and never longer than this
# Each fault's status and raw body; "stall" sends nothing (a hung server).
FAULTS: dict[str, tuple[int, bytes]] = {
    "500": (500, b'{"error": {"message": "injected internal error"}}'),
    "503": (503, b'{"error": {"message": "injected overload"}}'),
    "not_json": (200, b'{"choices": [{"text": "12'),
    "no_choices": (200, b'{"object": "text_completion", "model": "tiny-chat"}'),
    "no_text": (200, b'{"choices": [{"index": 0, "finish_reason": "stop"}]}'),
    "stall": (0, b""),
}
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)  # hermes' pattern


class CompletionsServer:
    """Serve ``checkpoint_dir`` on ``host:port`` (0: a free port) until ``stop``."""

    def __init__(
        self,
        checkpoint_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model: str = "tiny-chat",
    ):
        self.backend = TransformersBackend(Path(checkpoint_dir), batch_size=16)
        self.api_key, self.model = api_key, model
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # one generate at a time: the model and RNG are shared
        self.faults: list[str] = []  # what the next completions requests get, in order
        self.always: str | None = None  # what every later one gets (None: an answer)
        self.attempts: list[tuple[str, int]] = []  # (fault or "ok", the client's retry number)
        self.in_flight = self.peak_in_flight = 0  # completions requests being handled
        self.release = threading.Event()  # ends the stalls
        self.state = threading.Lock()
        self.extensions = True  # honour return_token_ids and return_tokens_as_token_ids
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CompletionsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, *faults: str, always: str | None = None) -> None:
        """The next completions requests get ``faults`` in order, then all get ``always``."""
        unknown = [f for f in (*faults, always) if f is not None and f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        with self.state:
            self.faults, self.always = list(faults), always

    def reset(self) -> None:
        """No faults, no recorded attempts; stalled requests end now."""
        self.release.set()
        with self.state:
            self.faults, self.always = [], None
            self.attempts.clear()
            self.peak_in_flight = self.in_flight
            self.release = threading.Event()

    def attempt(self, retry: int) -> str | None:
        """Record one completions request; the fault it gets, if any."""
        with self.state:
            fault = self.faults.pop(0) if self.faults else self.always
            self.attempts.append((fault or "ok", retry))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return fault

    def done(self) -> None:
        with self.state:
            self.in_flight -= 1

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return self.complete_ids(body)
        params = SamplingParams(
            n=int(body.get("n", 1)),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
            max_new_tokens=int(body.get("max_tokens", 16)),
            seed=int(body.get("seed", 0)),
            greedy_first=False,
        )
        with self.lock:
            self.requests.append(body)
            (samples,) = self.backend.complete([body["prompt"]], params)
        choices = [
            {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(samples)
        ]
        tokens = sum(c.tokens for c in samples)
        return {"object": "text_completion", "model": self.model, "choices": choices,
                "usage": {"completion_tokens": tokens}}  # fmt: skip

    def generate(self, ids: list[int], body: dict[str, Any]) -> list[Step]:
        """``n`` continuations of the token ids ``ids`` with the request's sampling."""
        policy = TransformersPolicy(
            self.backend.model,
            self.backend.tokenizer,
            max_new_tokens=int(body.get("max_tokens", 16)),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
            seed=int(body.get("seed", 0)),
        )
        if body.get("stop_token_ids"):
            policy.stops = [int(t) for t in body["stop_token_ids"]]
        with self.lock:
            self.requests.append(body)
            return policy([Context([], ids)] * int(body.get("n", 1)))

    def complete_ids(self, body: dict[str, Any]) -> dict[str, Any]:
        steps = self.generate(body["prompt"], body)
        as_ids = self.extensions and bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for i, step in enumerate(steps):
            choice: dict[str, Any] = {"index": i, "text": step.text, "logprobs": None,
                                      "finish_reason": step.finish_reason}  # fmt: skip
            if self.extensions and body.get("return_token_ids"):
                choice["token_ids"] = step.token_ids
            if body.get("logprobs") is not None:
                tokens = [self._token(t, as_ids) for t in step.token_ids]
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": step.logprobs,
                                      "top_logprobs": None, "text_offset": None}  # fmt: skip
            choices.append(choice)
        tokens = sum(len(s.token_ids) for s in steps)
        return {"object": "text_completion", "model": self.model, "choices": choices,
                "usage": {"completion_tokens": tokens}}  # fmt: skip

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        tok = self.backend.tokenizer
        messages = [_rendered(m) for m in body["messages"]]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        steps = self.generate(tok(text, add_special_tokens=False)["input_ids"], body)
        choices = [self._chat_choice(i, s, body) for i, s in enumerate(steps)]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                "model": self.model, "choices": choices}  # fmt: skip

    def _chat_choice(self, index: int, step: Step, body: dict[str, Any]) -> dict[str, Any]:
        content, calls = step.text, []
        if body.get("tools"):
            blocks = [_call(b) for b in TOOL_CALL.findall(step.text)]
            if blocks and all(b is not None for b in blocks):  # hermes: all or none
                content = step.text[: step.text.index("<tool_call>")].strip() or None
                calls = [{"id": f"chatcmpl-tool-{index}-{j}", "type": "function", "function": b}
                         for j, b in enumerate(blocks)]  # fmt: skip
        reason = "tool_calls" if calls and step.finish_reason == "stop" else step.finish_reason
        message = {"role": "assistant", "content": content, "tool_calls": calls or None}
        logprobs = None
        if body.get("logprobs"):
            logprobs = {"content": [
                {"token": self._token(t, False), "logprob": lp, "bytes": None, "top_logprobs": []}
                for t, lp in zip(step.token_ids, step.logprobs or [], strict=True)
            ]}  # fmt: skip
        return {"index": index, "message": message, "finish_reason": reason, "logprobs": logprobs}

    def _token(self, token_id: int, as_id: bool) -> str:
        return f"token_id:{token_id}" if as_id else self.backend.tokenizer.decode([token_id])


def _rendered(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as the template sees it: tool calls written back as text blocks."""
    blocks = [
        "<tool_call>\n"
        + json.dumps(
            {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
        )  # fmt: skip
        + "\n</tool_call>"
        for c in message.get("tool_calls") or []
    ]
    content = "\n".join([p for p in [message.get("content") or ""] if p] + blocks)
    return {"role": message["role"], "content": content}


def _call(block: str) -> dict[str, str] | None:
    """One block as a ``tool_calls`` function entry (arguments as a JSON string), or None."""
    try:
        obj = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    return {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}


def _handler(server: CompletionsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: pytest shows failures
            pass

        def _send(self, code: int, obj: Any) -> None:
            self._send_bytes(code, json.dumps(obj).encode())

        def _send_bytes(self, code: int, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(401, {"error": {"message": "invalid api key"}})
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/models":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            routes = {"/v1/completions": server.complete, "/v1/chat/completions": server.chat}
            if self.path not in routes:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif body.get("model") != server.model:
                self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
            else:
                fault = server.attempt(int(self.headers.get(RETRY_HEADER, 0)))
                if fault is None:
                    try:
                        reply = routes[self.path](body)
                    finally:
                        # done before the reply is sent: a client that has it may send its
                        # next request at once, which must not count as one more in flight
                        server.done()
                    self._send(200, reply)
                    return
                try:
                    self._fail(fault)
                finally:
                    server.done()

        def _fail(self, fault: str) -> None:
            if fault == "stall":
                # Hang without answering; the connection closes when the wait ends.
                server.release.wait(STALL_S)
            else:
                self._send_bytes(*FAULTS[fault])

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="tiny-chat")
    args = parser.parse_args()
    server = CompletionsServer(args.checkpoint, args.host, args.port, model=args.model)
    print(f"serving {args.checkpoint} at {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
