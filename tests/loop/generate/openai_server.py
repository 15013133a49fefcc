"""A small real OpenAI-compatible completions server over a transformers checkpoint (tests).

    python tests/loop/generate/openai_server.py serve CHECKPOINT --host 127.0.0.1 --port 8000

It answers ``GET /v1/models`` and ``POST /v1/completions`` (prompt text, n, temperature,
top_p, top_k, max_tokens, seed) with ``TransformersBackend.complete``, the way vLLM's server
answers them, and records every request body. It exists to test the client
(``flywheel.loop.generate.endpoint``) without vLLM: in a thread (``CompletionsServer``), or as a
started ``serve`` executable (the command line above, which ``ServeProcess`` runs).

``CompletionsServer.inject`` makes the next completions requests (or all of them) fail the
ways real servers do: HTTP 500/503, a stall longer than the client's timeout, a body that is
not JSON, a reply without ``choices`` or without a choice's ``text``. ``attempts`` records
what each request got and the retry number the client sent with it.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
            if self.path != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif body.get("model") != server.model:
                self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
            else:
                fault = server.attempt(int(self.headers.get(RETRY_HEADER, 0)))
                try:
                    self._answer(fault, body)
                finally:
                    server.done()

        def _answer(self, fault: str | None, body: dict[str, Any]) -> None:
            if fault is None:
                self._send(200, server.complete(body))
            elif fault == "stall":
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
