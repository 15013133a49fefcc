"""A small real OpenAI-compatible completions server over a transformers checkpoint (tests).

    python tests/loop/generate/openai_server.py serve CHECKPOINT --host 127.0.0.1 --port 8000

It answers ``GET /v1/models`` and ``POST /v1/completions`` (prompt text, n, temperature,
top_p, top_k, max_tokens, seed) with ``TransformersBackend.complete``, the way vLLM's server
answers them, and records every request body. It exists to test the client
(``flywheel.loop.generate.endpoint``) without vLLM: in a thread (``CompletionsServer``), or as a
started ``serve`` executable (the command line above, which ``ServeProcess`` runs).
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
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CompletionsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

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
            data = json.dumps(obj).encode()
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
                self._send(200, server.complete(body))

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
