"""The OpenAI-compatible client and the server process it starts, without vLLM.

The server is ``tests/loop/generate/openai_server.py``: a real HTTP server that answers
``/v1/completions`` with the transformers backend, in a thread or started as a ``serve``
executable, and fails on request (HTTP 5xx, stalls, malformed replies) to test retries,
timeouts and errors. The client (``flywheel.loop.generate.endpoint``) is the thing under test.

    .venv/bin/python -m pytest -q tests/loop/generate/test_endpoint.py
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from flywheel.core.settings.loop import EndpointSettings, GenerationSettings, ServeSettings
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.generate.backends import TransformersBackend, open_backend
from flywheel.loop.generate.base import SamplingParams
from flywheel.loop.generate.endpoint import EndpointBackend, EndpointError, ServeError, free_port
from tests.loop.generate.openai_server import CompletionsServer

PROMPTS = [e["prompt"] for e in arithmetic_examples(5, 20, seed=8)]
SERVER = Path(__file__).with_name("openai_server.py")
KEY_ENV = "FLYWHEEL_TEST_KEY"


def params(**kw: object) -> SamplingParams:
    base = dict(
        n=3, temperature=1.0, top_p=0.9, top_k=5, max_new_tokens=6, seed=4, greedy_first=True
    )
    return SamplingParams(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(chat_checkpoint: Path):
    with CompletionsServer(chat_checkpoint, api_key="sk-test") as s:
        yield s


@pytest.fixture
def faulty(server: CompletionsServer, api_key: str):
    """The module's server, with no faults and no recorded attempts before and after; the
    key it asks for is in the environment variable ``KEY_ENV``."""
    server.reset()
    yield server
    server.reset()  # also ends requests still stalled


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return KEY_ENV


def test_endpoint_matches_in_process_greedy(
    server: CompletionsServer, chat_checkpoint: Path, api_key: str
) -> None:
    settings = EndpointSettings(url=server.url, api_key_env=api_key, concurrency=3)
    expected = TransformersBackend(chat_checkpoint, 4).generate(PROMPTS, params(temperature=0.0))
    with EndpointBackend(settings, chat_checkpoint) as backend:
        assert backend.model == "tiny-chat"  # the server's first /v1/models entry
        out = backend.generate(PROMPTS, params())
    assert len(out) == len(PROMPTS) and all(len(row) == 3 for row in out)
    assert [row[0] for row in out] == [row[0] for row in expected]  # text, reason, tokens
    assert all(c.finish_reason == "stop" and c.text.isdigit() for row in out for c in row)
    assert (backend.requests, backend.retries) == (2 * len(PROMPTS), 0)


def test_concurrency_is_bounded(faulty: CompletionsServer, chat_checkpoint: Path) -> None:
    settings = EndpointSettings(url=faulty.url, api_key_env=KEY_ENV, concurrency=2)
    with EndpointBackend(settings, chat_checkpoint) as backend:
        backend.generate(PROMPTS, params())
    assert len(faulty.attempts) == 2 * len(PROMPTS)
    assert 1 <= faulty.peak_in_flight <= 2


def test_request_bodies(server: CompletionsServer, chat_checkpoint: Path, api_key: str) -> None:
    settings = EndpointSettings(url=server.url, api_key_env=api_key, model="tiny-chat")
    server.requests.clear()
    with EndpointBackend(settings, chat_checkpoint) as backend:
        backend.generate(PROMPTS[:1], params())
        backend.generate(PROMPTS[:1], params(temperature=0.0, n=2))
    # The greedy and the sampled request of one call are sent at once: order by content.
    first, only_greedy = server.requests[:2], server.requests[2]
    greedy, sampled = sorted(first, key=lambda r: r["n"])
    assert greedy["prompt"] == f"<|im_start|>user\n{PROMPTS[0]}<|im_end|>\n<|im_start|>assistant\n"
    assert (greedy["n"], greedy["temperature"], greedy["stop"]) == (1, 0.0, ["<|im_end|>"])
    assert "top_k" not in greedy
    assert (sampled["n"], sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (
        2, 1.0, 0.9, 5,
    )  # fmt: skip
    assert sampled["max_tokens"] == 6 and sampled["seed"] == greedy["seed"]
    assert only_greedy["n"] == 1  # temperature 0: one greedy request, copied n times
    assert "stop_token_ids" not in greedy  # vLLM extensions only for a server we started


def test_same_seed_same_samples(
    server: CompletionsServer, chat_checkpoint: Path, api_key: str
) -> None:
    settings = EndpointSettings(url=server.url, api_key_env=api_key, concurrency=2)
    with EndpointBackend(settings, chat_checkpoint) as backend:
        first = backend.generate(PROMPTS, params(n=4))
        assert backend.generate(PROMPTS, params(n=4)) == first


def test_http_errors_name_status_and_body(
    server: CompletionsServer, chat_checkpoint: Path, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = EndpointSettings(url=server.url, api_key_env=api_key, model="no-such-model")
    backend = EndpointBackend(settings, chat_checkpoint)
    with pytest.raises(EndpointError, match=r"HTTP 404.*no-such-model.*not found"):
        backend.generate(PROMPTS[:1], params())
    monkeypatch.setenv(api_key, "sk-wrong")
    with pytest.raises(EndpointError, match=r"/v1/models: HTTP 401.*invalid api key"):
        EndpointBackend(EndpointSettings(url=server.url, api_key_env=api_key), chat_checkpoint)
    monkeypatch.delenv(api_key)
    with pytest.raises(EndpointError, match=f"api_key_env names {api_key}, which is unset"):
        EndpointBackend(EndpointSettings(url=server.url, api_key_env=api_key), chat_checkpoint)


def _executable(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_missing_serve_executable(chat_checkpoint: Path, tmp_path: Path) -> None:
    settings = GenerationSettings(
        backend="openai",
        endpoint=EndpointSettings(serve=ServeSettings(executable=tmp_path / "no" / "vllm")),
    )
    with pytest.raises(ServeError, match=r"no/vllm not found.*make vllm-env"):
        open_backend(settings, chat_checkpoint, tmp_path)


def test_server_that_exits_early(chat_checkpoint: Path, tmp_path: Path) -> None:
    exe = _executable(
        tmp_path / "vllm", 'echo "loading $2"; echo "RuntimeError: no GPU" >&2; exit 3'
    )
    settings = EndpointSettings(serve=ServeSettings(executable=exe, startup_timeout_s=60))
    with pytest.raises(ServeError, match=r"exited with code 3(?s:.*)RuntimeError: no GPU") as info:
        EndpointBackend(settings, chat_checkpoint, tmp_path / "logs")
    assert f"loading {chat_checkpoint}" in str(info.value)  # argv: serve <checkpoint>
    assert list((tmp_path / "logs").glob("serve-*.log"))


def test_server_that_never_answers_is_killed(
    chat_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "pid"
    # Ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    exe = _executable(tmp_path / "vllm", f"trap '' TERM; echo $$ > {pidfile}; exec sleep 60")
    settings = EndpointSettings(serve=ServeSettings(executable=exe, startup_timeout_s=1))
    monkeypatch.setattr("flywheel.loop.generate.endpoint.STOP_GRACE_S", 0.5)
    started = time.monotonic()
    with pytest.raises(ServeError, match=r"did not answer .*/models within 1s"):
        EndpointBackend(settings, chat_checkpoint, tmp_path)
    assert time.monotonic() - started < 15
    assert _gone(int(pidfile.read_text()))


def test_started_server_serves_and_is_stopped_on_errors(
    chat_checkpoint: Path, tmp_path: Path
) -> None:
    exe = _executable(tmp_path / "serve", f'exec {sys.executable} {SERVER} "$@"')
    serve = ServeSettings(executable=exe, args=["--model", "started"], startup_timeout_s=120)
    settings = GenerationSettings(backend="openai", endpoint=EndpointSettings(serve=serve))
    started = time.monotonic()
    with (
        pytest.raises(KeyError, match="stop here"),
        open_backend(settings, chat_checkpoint, tmp_path) as backend,
    ):
        assert backend.model == "started"
        out = backend.generate(PROMPTS[:2], params(n=2))
        assert [len(row) for row in out] == [2, 2]
        assert all(c.finish_reason == "stop" for row in out for c in row)
        pid = backend.server.proc.pid
        raise KeyError("stop here")
    assert backend.server is None and _gone(pid)
    assert time.monotonic() - started < 120


def _backend(server: CompletionsServer, checkpoint: Path, **kw: object) -> EndpointBackend:
    settings = EndpointSettings(
        url=server.url, api_key_env=KEY_ENV, model="tiny-chat", concurrency=1, **kw
    )
    return EndpointBackend(settings, checkpoint)


GREEDY = params(temperature=0.0, n=2)  # one request (n=1) per prompt


def test_server_errors_are_retried_with_backoff(
    faulty: CompletionsServer, chat_checkpoint: Path
) -> None:
    with _backend(faulty, chat_checkpoint, max_retries=2) as backend:
        expected = backend.generate(PROMPTS[:1], GREEDY)
        faulty.reset()
        faulty.inject("500", "503")
        started = time.monotonic()
        assert backend.generate(PROMPTS[:1], GREEDY) == expected
        elapsed = time.monotonic() - started
    # The client numbers its attempts: the server saw the retries, and so did the backend.
    assert faulty.attempts == [("500", 0), ("503", 1), ("ok", 2)]
    assert (backend.requests, backend.retries) == (2, 2)
    # Backoff 0.5 s then 1 s, each shortened by at most 25% jitter: at least 1.125 s.
    assert 1.1 < elapsed < 10


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_server_that_always_fails(
    faulty: CompletionsServer, chat_checkpoint: Path, max_retries: int
) -> None:
    faulty.inject(always="503")
    started = time.monotonic()
    with (
        _backend(faulty, chat_checkpoint, max_retries=max_retries) as backend,
        pytest.raises(EndpointError) as info,
    ):
        backend.generate(PROMPTS[:1], GREEDY)
    message = str(info.value)
    assert message.startswith(f"POST {faulty.url}/completions: HTTP 503 Service Unavailable")
    assert "injected overload" in message
    assert ("after 2 retries" in message) == (max_retries == 2)
    assert len(faulty.attempts) == max_retries + 1
    assert time.monotonic() - started < 10


def test_a_stalled_request_times_out_and_is_retried(
    faulty: CompletionsServer, chat_checkpoint: Path
) -> None:
    faulty.inject("stall")
    started = time.monotonic()
    with _backend(faulty, chat_checkpoint, timeout_s=1.0, max_retries=1) as backend:
        out = backend.generate(PROMPTS[:1], GREEDY)
    assert [len(row) for row in out] == [2] and out[0][0].text.isdigit()
    assert faulty.attempts == [("stall", 0), ("ok", 1)]
    assert backend.retries == 1
    assert time.monotonic() - started < 8  # the 1 s timeout, not the 10 s stall


def test_a_server_that_always_stalls(faulty: CompletionsServer, chat_checkpoint: Path) -> None:
    faulty.inject(always="stall")
    started = time.monotonic()
    with (
        _backend(faulty, chat_checkpoint, timeout_s=0.5, max_retries=1) as backend,
        pytest.raises(EndpointError, match=r"/completions: no answer within 0.5s .*after 1 retr"),
    ):
        backend.generate(PROMPTS[:1], GREEDY)
    assert len(faulty.attempts) == 2
    assert time.monotonic() - started < 8


def test_no_server_listening(chat_checkpoint: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = EndpointSettings(url=url, model="tiny-chat", max_retries=1)
    with (
        EndpointBackend(settings, chat_checkpoint) as backend,
        pytest.raises(EndpointError, match=rf"POST {url}/completions: no answer \(.+after 1 retr"),
    ):
        backend.generate(PROMPTS[:1], GREEDY)


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("not_json", r"the reply is not JSON \(.*\): \{\"choices\": \[\{\"text\": \"12$"),
        ("no_choices", r"the reply has no `choices` list: \{\"object\": \"text_completion\""),
        ("no_text", r"choice 0 has no `text`: \{\"choices\""),
    ],
    ids=["not_json", "no_choices", "no_text"],
)
def test_malformed_replies_are_errors(
    faulty: CompletionsServer, chat_checkpoint: Path, fault: str, problem: str
) -> None:
    faulty.inject(fault)
    with (
        _backend(faulty, chat_checkpoint, max_retries=2) as backend,
        pytest.raises(EndpointError, match=rf"^POST {faulty.url}/completions: {problem}"),
    ):
        backend.generate(PROMPTS[:1], GREEDY)
    assert faulty.attempts == [(fault, 0)]  # a 200 is not retried: the server answered
