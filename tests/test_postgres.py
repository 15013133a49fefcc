"""``flywheel postgres``: a real PostgreSQL server started, reached, restarted and stopped in
a temporary directory (as root, as the ``postgres`` system user).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_postgres.py
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psycopg2
import pytest

from flywheel.cli import main
from flywheel.project import postgres


def _query(server: postgres.Server, sql: str) -> list[tuple]:
    conn = psycopg2.connect(server.libpq_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _pid(server: postgres.Server) -> str:
    return (server.directory / "data" / "postmaster.pid").read_text().split()[0]


def test_start_is_idempotent_and_a_restart_keeps_port_and_data(postgres_dir: Path) -> None:
    directory = postgres_dir / "project" / ".flywheel" / "postgres"
    server = postgres.start(directory)
    try:
        if os.geteuid() == 0:  # the server runs as postgres, who can now reach its directory
            assert server.user == "postgres" and directory.owner() == "postgres"
            assert postgres_dir.parent.stat().st_mode & stat.S_IXOTH
        assert server.url == f"postgresql+psycopg2://{server.user}@127.0.0.1:{server.port}/dagster"
        assert _query(server, "SELECT current_database(), current_user") == [
            ("dagster", server.user)
        ]
        _query(server, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        # Only loopback: the server was told so, and a unix socket in the directory.
        assert _query(server, "SHOW listen_addresses") == [("127.0.0.1",)]
        assert (directory / "run" / f".s.PGSQL.{server.port}").exists()

        pid = _pid(server)
        assert postgres.start(directory) == server and _pid(server) == pid  # no second server
        assert postgres.status(directory) == server
        assert postgres.stop(directory) is True
        assert postgres.status(directory) is None
        assert postgres.stop(directory) is False

        again = postgres.start(directory)  # no second initdb; the port kept in server.json
        assert again == server and _pid(again) != pid
        assert _query(again, "SELECT n FROM kept") == [(7,)]
    finally:
        postgres.stop(directory)


def test_the_cli_prints_the_url_alone_and_says_when_nothing_runs(
    postgres_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = str(postgres_dir)
    port = postgres._free_port()
    try:
        assert main(["postgres", "start", "--dir", directory, "--port", str(port)]) == 0
        url = capsys.readouterr().out.strip()
        assert url == f"postgresql+psycopg2://{postgres._server_user()}@127.0.0.1:{port}/dagster"
        assert main(["postgres", "url", "--libpq", "--dir", directory]) == 0
        assert capsys.readouterr().out.strip() == url.replace("+psycopg2", "")
        assert main(["postgres", "status", "--dir", directory]) == 0
        assert url in capsys.readouterr().out
    finally:
        assert main(["postgres", "stop", "--dir", directory]) == 0
    assert "stopped" in capsys.readouterr().err
    assert main(["postgres", "url", "--dir", directory]) == 1
    assert "no server running" in capsys.readouterr().err


def test_a_directory_that_cannot_hold_a_server_is_named(
    tmp_path: Path, postgres_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["postgres", "start", "--dir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    data = postgres_dir / "data"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("not a cluster")
    with pytest.raises(postgres.PostgresError, match="holds no PostgreSQL cluster"):
        postgres.start(postgres_dir)


def test_the_newest_debian_server_is_found_else_the_package_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(postgres.PostgresError, match="install Debian's postgresql package"):
        postgres.binaries(tmp_path / "lib")
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / "lib" / version / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl", "postgres"):
            (bin_dir / name).write_text("")
    (tmp_path / "lib" / "15" / "bin" / "postgres").unlink()  # incomplete: not a server
    assert postgres.binaries(tmp_path / "lib") == tmp_path / "lib" / "13" / "bin"
