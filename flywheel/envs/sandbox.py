"""Run untrusted Python in a limited subprocess and return what it printed, never raising.

    python -c "from flywheel.envs.sandbox import run_python; print(run_python('print(6*7)'))"

What is limited (enough for a model's arithmetic scratch code, NOT a security boundary):

- a fresh interpreter, ``sys.executable -I`` (isolated mode: no ``PYTHON*`` variables, no user
  site-packages, no script directory on ``sys.path``), an empty environment, a throwaway
  working directory;
- wall-clock timeout: the whole process group is killed (children included);
- rlimits, set by the child before the code runs: address space (``memory_mb``), CPU
  seconds, file size written (which also bounds the captured output), open files;
- network: the preamble sets ``sys.modules["socket"] = sys.modules["_socket"] = None``, so
  ``import socket`` (and so urllib, http.client, asyncio's sockets) fails.

What is NOT isolated: the code runs as this user with its file-system permissions (it can read
and write wherever the user can, up to the file-size limit). The network block stops code
that uses the network by accident, not code that tries: deleting those ``sys.modules``
entries, ``ctypes``, or ``os.system``/``subprocess`` running another executable all get
around it; running as root, the code may raise its own rlimits, and ``RLIMIT_NPROC`` is not
set (it does not bind root and counts every process of the user). The wall-clock timeout is
enforced from outside and always ends the run itself, though a child that calls ``setsid``
escapes the group kill. For adversarial code put a container or a network namespace (nsjail,
bubblewrap) around this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

# Runs in the child before the user's code (read from stdin): the rlimits, no socket module,
# then the code as __main__. Limits are set here rather than in a preexec_fn, which is unsafe
# when the parent has threads (a Dagster run, a trainer).
PREAMBLE = """\
import resource, sys
for name, value in ({limits}):
    resource.setrlimit(getattr(resource, name), (value, value))
sys.modules['socket'] = None
sys.modules['_socket'] = None
exec(compile(sys.stdin.read(), '<tool>', 'exec'), {{'__name__': '__main__'}})
"""
FILE_BYTES = 1 << 20  # largest file (or captured output) the code may write
OPEN_FILES = 64


def preamble(memory_mb: int, cpu_s: int) -> str:
    limits = {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": cpu_s}
    limits |= {"RLIMIT_FSIZE": FILE_BYTES, "RLIMIT_NOFILE": OPEN_FILES}
    return PREAMBLE.format(limits=", ".join(f"({k!r}, {v})" for k, v in limits.items()))


def run_python(
    code: str, timeout_s: float = 2.0, memory_mb: int = 256, max_chars: int = 2000
) -> str:
    """What ``code`` printed (stdout, then stderr), at most ``max_chars``; a timeout, a crash or
    a non-zero exit is said in the text. Only a failure to start the interpreter raises."""
    cpu_s = max(1, int(timeout_s) + 1)
    # Output goes to files, not pipes, so RLIMIT_FSIZE bounds it (a print loop is killed by
    # SIGXFSZ at 1 MiB instead of filling this process's memory).
    with (
        tempfile.TemporaryDirectory(prefix="flywheel-tool-") as cwd,
        open(f"{cwd}/out", "wb+") as out,
        open(f"{cwd}/err", "wb+") as err,
    ):
        code_status = _run(code, cwd, out, err, timeout_s, memory_mb, cpu_s)
        text = _read(out, max_chars)
        stderr = _read(err, max_chars)
    if code_status is None:
        return f"error: timed out after {timeout_s:g} s (killed)" + (f"\n{text}" if text else "")
    if stderr:
        text += ("\n" if text else "") + "stderr:\n" + stderr
    if code_status != 0:
        why = _signal_name(-code_status) if code_status < 0 else code_status
        text += f"\n(exit status {why})"
    if len(text) > max_chars:
        text = text[:max_chars] + "\n... (output cut)"
    return text if text.strip() else "(no output: print the value you need)"


def _run(code, cwd, out, err, timeout_s, memory_mb, cpu_s) -> int | None:  # noqa: ANN001
    """The exit status, or None when it was killed for running past ``timeout_s``."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", preamble(memory_mb, cpu_s)],
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=err,
        cwd=cwd,
        env={},
        start_new_session=True,  # its own process group, so a timeout kills its children
    )
    try:
        proc.communicate(code.encode("utf-8", "replace"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    return proc.returncode


def _read(file, max_chars: int) -> str:  # noqa: ANN001
    file.seek(0)
    return file.read(max_chars * 4).decode("utf-8", "replace")[:max_chars]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
