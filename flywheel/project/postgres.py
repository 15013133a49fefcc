"""A PostgreSQL server for Dagster's storage, in a directory of the project, on loopback.

    flywheel postgres start [--dir DIR] [--port P]    (make postgres: DIR = .flywheel/postgres)
    flywheel postgres status|url|stop [--dir DIR]

``start`` finds the server binaries (``initdb`` on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin``: Debian's ``postgresql`` package), runs ``initdb`` once into
``DIR/data`` (trust authentication: the server listens on 127.0.0.1 only, and its unix socket
lives in ``DIR/run``), starts it with ``pg_ctl start -w`` on a free port (or ``--port``) and
creates the database ``dagster``. It prints the URL Dagster's ``storage: postgres:`` block
reads from ``$FLYWHEEL_POSTGRES_URL``:
``postgresql+psycopg2://<user>@127.0.0.1:<port>/dagster`` (``url --libpq``: without the
driver, for ``psql``).
Starting a running server only prints its URL. The port and user are kept in
``DIR/server.json``, so ``url``, ``status`` and ``stop`` find the server again.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user
(``runuser``), which then owns ``DIR``; otherwise it runs as the current user.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DATABASE = "dagster"
DRIVER = "postgresql+psycopg2"
HOST = "127.0.0.1"
SYSTEM_USER = "postgres"  # Debian's package creates it; the server's owner when we are root
STATE = "server.json"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SOCKET_PATH_MAX = 107  # sun_path's 108 bytes, the last a NUL
START_TIMEOUT_S = 60


class PostgresError(RuntimeError):
    """The server cannot be set up, started or reached; the message says why."""


@dataclass(frozen=True)
class Server:
    directory: Path
    port: int
    user: str

    @property
    def url(self) -> str:
        """For Dagster (SQLAlchemy): the driver is named, as SQLAlchemy 2.1's default for
        ``postgresql://`` is psycopg 3, which is not installed; psycopg2 is."""
        return f"{DRIVER}://{self.user}@{HOST}:{self.port}/{DATABASE}"

    @property
    def libpq_url(self) -> str:
        """The same database for libpq clients: ``psql``, ``psycopg2.connect``."""
        return self.url.replace(DRIVER, "postgresql", 1)


def binaries(debian: Path = DEBIAN_ROOT) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: that of ``initdb`` on
    ``PATH``, else the newest version's under ``debian`` (Debian keeps them off ``PATH``)."""
    on_path = shutil.which("initdb")
    found = [Path(on_path).resolve().parent] if on_path else []
    versions = debian.glob("*/bin")
    found += sorted(versions, key=lambda p: _version(p.parent.name), reverse=True)
    for bin_dir in found:
        if all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin: install Debian's postgresql package"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (0,)


def _server_user() -> str:
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        import pwd

        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} system user: "
            "install Debian's postgresql package, or run as another user"
        ) from None
    return SYSTEM_USER


def _as_server_user(user: str, argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user, "--", *argv]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in argv)]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _run(user: str, argv: list[str], timeout: float = START_TIMEOUT_S * 2):
    return subprocess.run(
        _as_server_user(user, argv), capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _prepare(directory: Path, user: str) -> None:
    """``directory`` exists and the server's user can write it (as root: owns it, and can
    reach it through every parent)."""
    if directory.exists() and not directory.is_dir():
        raise PostgresError(f"{directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PostgresError(f"cannot create {directory}: {exc.strerror}") from None
    if os.geteuid() != 0:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PostgresError(f"{directory} is not writable by {user}")
        return
    shutil.chown(directory, user, user)
    if _run(user, ["test", "-w", str(directory)]).returncode != 0:
        _open_parents(directory)
    if _run(user, ["test", "-w", str(directory)]).returncode != 0:
        raise PostgresError(f"{directory} is not writable by the {user!r} user")


def _open_parents(directory: Path) -> None:
    """Give "others" the search bit (not read) on the parents that lack it, so the server's
    user can reach its data directory under root's own (e.g. /root/..., /tmp/pytest-of-root)."""
    opened = []
    for parent in directory.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            opened.append(str(parent))
    if opened:
        print(
            f"flywheel postgres: made traversable (o+x) for the server: {', '.join(opened)}",
            file=sys.stderr,
        )


def _initdb(bin_dir: Path, data: Path, user: str) -> None:
    if (data / "PG_VERSION").is_file():
        return
    if data.exists() and any(data.iterdir()):
        raise PostgresError(f"{data} is not empty and holds no PostgreSQL cluster")
    # Trust: no password to hand around. Only this machine reaches the server (loopback, and
    # a socket only its owner may open); a shared machine wants a server with passwords.
    argv = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-E", "UTF8"]
    argv += ["--auth-local=trust", "--auth-host=trust", "--no-instructions"]
    done = _run(user, argv)
    if done.returncode != 0:
        raise PostgresError(f"initdb into {data} failed: {_last_line(done.stderr)}")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\ninclude_if_exists = 'flywheel.conf'  # written by flywheel postgres\n")


def _configure(data: Path, directory: Path, port: int) -> None:
    """Where the server listens, rewritten at every start (the port may change)."""
    sockets = directory / "run"
    sockets.mkdir(exist_ok=True)
    shutil.chown(sockets, *(2 * [data.owner()]))
    # A socket path past sun_path's limit stops the server: then TCP on loopback only.
    fits = len(f"{sockets}/.s.PGSQL.{port}") <= SOCKET_PATH_MAX
    socket_dir = str(sockets) if fits else ""
    lines = [
        f"listen_addresses = '{HOST}'",
        f"port = {port}",
        "unix_socket_directories = '{}'".format(socket_dir.replace("'", "''")),
        "unix_socket_permissions = 0700",
    ]
    conf = data / "flywheel.conf"
    conf.write_text("\n".join(lines) + "\n")
    shutil.chown(conf, *(2 * [data.owner()]))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _saved(directory: Path) -> Server | None:
    path = directory / STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return Server(directory, int(state["port"]), str(state["user"]))


def status(directory: Path) -> Server | None:
    """The server running from ``directory``, or None."""
    directory = directory.resolve()
    saved = _saved(directory)
    if saved is None or not (directory / "data" / "PG_VERSION").is_file():
        return None
    argv = [str(binaries() / "pg_ctl"), "status", "-D", str(directory / "data")]
    return saved if _run(saved.user, argv).returncode == 0 else None


def start(directory: Path, port: int | None = None) -> Server:
    """Initialize (once) and start the server in ``directory``; its database ``dagster``
    exists when this returns. A server already running there is returned as it is."""
    directory = directory.resolve()
    running = status(directory)
    if running is not None:
        return running
    bin_dir, user = binaries(), _server_user()
    _prepare(directory, user)
    data = directory / "data"
    _initdb(bin_dir, data, user)
    saved = _saved(directory)
    port = port or (saved.port if saved else None) or _free_port()
    _configure(data, directory, port)
    log = directory / "server.log"
    argv = [str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S)]
    argv += ["-D", str(data), "-l", str(log)]
    done = _run(user, argv)
    if done.returncode != 0:
        lines = log.read_text().splitlines() if log.is_file() else []
        fatal = [line for line in lines if "FATAL:" in line or "ERROR:" in line]
        why = (fatal or lines or [_last_line(done.stderr or done.stdout)])[-1]
        raise PostgresError(f"the server in {data} did not start on port {port}: {why}")
    server = Server(directory, port, user)
    (directory / STATE).write_text(json.dumps({"port": port, "user": user}) + "\n")
    _create_database(server)
    return server


def _create_database(server: Server) -> None:
    import psycopg2

    admin = server.libpq_url.rsplit("/", 1)[0] + "/postgres"
    try:
        conn = psycopg2.connect(admin, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise PostgresError(f"cannot connect to {admin}: {_last_line(str(exc))}") from None
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()


def stop(directory: Path) -> bool:
    """Stop the server running from ``directory``; False if none was running."""
    directory = directory.resolve()
    running = status(directory)
    if running is None:
        return False
    argv = [str(binaries() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(directory / "data")]
    done = _run(running.user, argv)
    if done.returncode != 0:
        raise PostgresError(f"pg_ctl stop failed: {_last_line(done.stderr)}")
    return True
