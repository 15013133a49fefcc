"""The catalog's storage: immutable Parquet fragments that any number of processes, on any
number of nodes, write at once without a lock, and that DuckDB reads as ordinary tables.

    Catalog.open(path).compact()    fold the fragments into one per table (writers call it)

Why not one DuckDB file: DuckDB lets one process write a file at a time, so every writer of
the catalog (Dagster's process, each training entry, each node of a distributed ingest) queued
on one file lock, and file locks on shared filesystems (NFS, Lustre) are unreliable besides.
Why not PostgreSQL: it would work, but it makes a server a dependency of every library call
(a notebook, ``accelerate launch`` on a GPU node) and moves every lineage query off DuckDB.
Fragments need no server and no lock, work on any shared filesystem, and move to object
storage unchanged (each step below is a whole-file write, and visibility is decided by a
listing, never by a rename of a directory). docs/catalog.md has the longer comparison.

Layout under ``root`` (``<catalog>.d`` next to the marker file ``Catalog.open`` was given):

    <table>/<write id>.parquet     the rows one write added to ``table`` (plus ``_write``)
    _tombstones/<write id>.parquet (table, key) pairs a write replaced: older rows are dead
    _commits/<write id>            empty: the write is complete and visible
    _commits/<id>.compact          a compaction: JSON list of the write ids it merged

A write is staged in this process's in-memory DuckDB, inside a transaction that is always
rolled back: the tables there only type and check the rows (types, primary keys within the
write), so every fragment of a table has one schema. It then writes each touched table's
fragment under a temporary name, renames it into place, and finally creates its commit marker;
so a reader sees all of a write (several tables, e.g. documents and their quarantine) or
none of it. Write ids start with the time in nanoseconds, so they
sort in write order (across nodes as well as their clocks agree); for a replaced key the
newest write wins, whichever process committed last.

A reader lists the commits, then the fragments of the tables its SQL names, and defines a
temporary view per table: the visible fragments over a typed empty table (columns added later
read as NULL in old fragments) minus rows a newer tombstone of their key kills. Existing SQL
runs unchanged. ``compact`` folds the visible writes into one fragment per table, commits a
marker naming those it merged, and only then deletes them; a reader that raced it lists again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flywheel.core.artifacts import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    import duckdb

WHOLE_TABLE = "*"  # the key of a table that each write replaces whole
TOMBSTONES, COMMITS, COMPACTED = "_tombstones", "_commits", ".compact"
TOMBSTONE_SCHEMA = f"CREATE TABLE {TOMBSTONES} (tbl VARCHAR, key VARCHAR);"
MIGRATED = "0" * 20 + "-migrated"  # older than every write: a migrated catalog's rows
COMPACT_AFTER = 64  # visible writes before a writer compacts: bounds a reader's files
STALE_LOCK_S = 900.0  # a compaction lock this old belongs to a process that died
ORPHAN_S = 3600.0  # a fragment with no commit this old is from a writer that died
READ_TRIES = 30

T = TypeVar("T")
_LOG = logging.getLogger(__name__)
_CLOCK = threading.Lock()
_last_ns = 0
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def new_write_id() -> str:
    """Time (ns, strictly increasing in this process), host, process id, and a random tail."""
    global _last_ns
    with _CLOCK:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        now = _last_ns
    return f"{now:020d}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Staged:
    """One write being staged: ``con`` is a cursor inside a transaction on the typed tables;
    ``replace`` records that rows of ``table`` with this key value are replaced."""

    con: duckdb.DuckDBPyConnection
    keys: dict[str, str]
    replaced: list[tuple[str, str]] = field(default_factory=list)

    def replace(self, table: str, value: Any = WHOLE_TABLE) -> None:
        key = self.keys.get(table)
        if key is None:
            raise ValueError(f"table {table!r} is append-only: it has no key to replace by")
        if (key == WHOLE_TABLE) != (value == WHOLE_TABLE):
            raise ValueError(f"table {table!r} is replaced by {key!r}, not by {value!r}")
        self.replaced.append((table, value))


class FragmentStore:
    """The fragments under ``root`` of tables declared by ``schema`` (DuckDB DDL). ``keys``:
    the column each table's writes replace by (``WHOLE_TABLE``: the whole table); a table not
    in it is append-only."""

    def __init__(self, root: Path, schema: str, keys: dict[str, str]):
        self.root = root
        self.keys = keys
        import duckdb  # here, not at import: processes that never open a catalog skip it

        self._db = duckdb.connect(":memory:")
        self._db.execute(schema + TOMBSTONE_SCHEMA)
        self._name = self._db.execute("SELECT current_database()").fetchone()[0]
        found = self._db.execute(
            "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
            "WHERE database_name = current_database() GROUP BY ALL"
        ).fetchall()
        self.columns: dict[str, list[str]] = dict(found)
        self.tables = sorted(t for t in self.columns if t != TOMBSTONES)
        # the in-memory tables are shared; a write holds this while its transaction is open
        self._write_lock = threading.Lock()

    # -- writes ---------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Staged]:
        """Stage rows with SQL on ``Staged.con``; on a clean exit they become one write."""
        with self._write_lock:
            con = self._db.cursor()
            con.execute("BEGIN TRANSACTION")
            try:
                staged = Staged(con, self.keys)
                yield staged
                wrote = self._commit(staged)
            finally:
                con.execute("ROLLBACK")  # the fragments are the record, never these tables
                con.close()
        if wrote and self._visible_writes() > COMPACT_AFTER:
            try:
                self.compact()
            except Exception:  # the write is committed; a later writer compacts instead
                _LOG.warning("compacting the catalog at %s failed", self.root, exc_info=True)

    def _commit(self, staged: Staged) -> bool:
        con, wid = staged.con, new_write_id()
        for table, value in staged.replaced:
            con.execute(f"INSERT INTO {TOMBSTONES} VALUES (?, CAST(? AS VARCHAR))", [table, value])
        counts = con.execute(
            " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in self.columns)
        ).fetchall()
        touched = [t for t, n in counts if n]
        written: list[Path] = []
        try:
            for table in touched:
                path = self.root / table / f"{wid}.parquet"
                copy_parquet(con, f"SELECT *, '{wid}' AS _write FROM {table}", path)
                written.append(path)
            for table in touched:
                fsync_dir(self.root / table)  # the data is durable before the commit is
            if touched:
                atomic_write_bytes(self.root / COMMITS / wid, b"")
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return bool(touched)

    # -- reads ----------------------------------------------------------------------------
    def read(self, sql: str, params: list[Any] | None, fetch: Callable[[Any], T]) -> T:
        """Run ``sql`` on views of the committed tables; ``fetch`` turns its relation into the
        result. Retries when compaction deleted a fragment between listing and reading."""
        tables = [t for t in self.tables if re.search(rf"\b{t}\b", sql)]

        def run() -> T:
            con = self._db.cursor()
            try:
                self._define_views(con, self._snapshot(tables))
                return fetch(con.sql(sql, params=params or None))
            finally:
                con.close()

        return _retrying(run)

    def _visible(self) -> tuple[set[str], set[str]]:
        """The committed write ids a reader uses, and those merged into a compaction."""
        committed, merged = set(), set()
        for name in _names(self.root / COMMITS):
            if name.endswith(COMPACTED):
                name = name.removesuffix(COMPACTED)
                merged |= set(json.loads((self.root / COMMITS / (name + COMPACTED)).read_text()))
            committed.add(name)
        return committed - merged, merged

    def _snapshot(self, tables: list[str]) -> dict[str, list[str]]:
        """The fragment files of ``tables`` (and tombstones) of one consistent set of writes."""
        visible = self._visible()[0]
        files = self._listing(visible, tables)
        # A compaction deletes commits before files: if every commit is still there, the
        # files were too when listed (a file deleted since fails the read, which retries).
        if not visible <= {n.removesuffix(COMPACTED) for n in _names(self.root / COMMITS)}:
            raise FileNotFoundError(f"{self.root} was compacted while it was listed")
        return files

    def _visible_writes(self) -> int:
        # Counting names reads no marker, so a compaction deleting them cannot fail a write.
        return sum(not n.endswith(COMPACTED) for n in _names(self.root / COMMITS))

    def _listing(self, visible: set[str], tables: list[str]) -> dict[str, list[str]]:
        out = {}
        for table in [*tables, TOMBSTONES]:
            names = _names(self.root / table)
            out[table] = sorted(
                str(self.root / table / n) for n in names if n.removesuffix(".parquet") in visible
            )
        return out

    def _define_views(self, con: Any, files: dict[str, list[str]], keep_write: bool = False):
        con.execute(
            f"CREATE TEMP VIEW _dead AS SELECT tbl, key, max(_write) AS _write "
            f"FROM {self._source(TOMBSTONES, files[TOMBSTONES])} GROUP BY tbl, key"
        )
        for table, paths in files.items():
            if table != TOMBSTONES:
                con.execute(f"CREATE TEMP VIEW {table} AS {self._live(table, paths, keep_write)}")

    def _source(self, table: str, paths: list[str]) -> str:
        # The typed empty table first: its columns and types win, and a column no fragment
        # has yet still exists (NULL).
        typed = f"SELECT *, NULL::VARCHAR AS _write FROM {self._name}.main.{table}"
        if not paths:
            return f"({typed})"
        listed = ", ".join(_literal(p) for p in paths)
        read = f"read_parquet([{listed}], union_by_name = true)"
        return f"({typed} UNION ALL BY NAME SELECT * FROM {read})"

    def _live(self, table: str, paths: list[str], keep_write: bool) -> str:
        cols = ", ".join(f'r."{c}"' for c in self.columns[table]) + (", r._write" * keep_write)
        select = f"SELECT {cols} FROM {self._source(table, paths)} r"
        key = self.keys.get(table)
        if key is None:
            return select
        match = "'*'" if key == WHOLE_TABLE else f'CAST(r."{key}" AS VARCHAR)'
        return (
            f"{select} LEFT JOIN _dead d ON d.tbl = '{table}' AND d.key = {match} "
            "WHERE d._write IS NULL OR r._write >= d._write"
        )

    # -- compaction -----------------------------------------------------------------------
    def compact(self) -> bool:
        """Fold every visible write into one fragment per table; False if another process
        is compacting. Readers see the same rows before, during and after."""
        lock = self.root / "_compact.lock"
        token = new_write_id()
        if not _take_lock(lock, token):
            return False
        try:
            return _retrying(lambda: self._compact_once(lock, token))
        finally:
            if _read(lock) == token:
                lock.unlink(missing_ok=True)

    def _compact_once(self, lock: Path, token: str) -> bool:
        visible, merged = self._visible()
        if len(visible) < 2:  # one fragment per table already
            return False
        cid, written = new_write_id(), []
        files = self._listing(visible, self.tables)
        con = self._db.cursor()
        try:
            self._define_views(con, files, keep_write=True)
            for table, paths in files.items():
                if paths:
                    path = self.root / table / f"{cid}.parquet"
                    live = (
                        "tbl, key, _write FROM _dead" if table == TOMBSTONES else f"* FROM {table}"
                    )
                    copy_parquet(con, f"SELECT {live}", path)
                    written.append(path)
            for path in written:
                fsync_dir(path.parent)
            if _read(lock) != token:  # broken as stale: another compactor may be running
                raise TimeoutError(f"lost {lock} while compacting; nothing was changed")
            atomic_write_bytes(
                self.root / COMMITS / (cid + COMPACTED), json.dumps(sorted(visible)).encode()
            )
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        finally:
            con.close()
        self._delete(visible | merged)
        return True

    def _delete(self, gone: set[str]) -> None:
        """Delete merged writes and fragments of writers that died. Commits go first, plain
        ones before compactions (removing a compaction's commit un-hides what it merged), so
        no reader ever sees a merged write beside the compaction holding its rows; a reader
        that listed a commit before it went notices (``_snapshot``) and lists again."""
        commits = self.root / COMMITS
        for name in sorted(gone, key=lambda wid: (commits / (wid + COMPACTED)).exists()):
            (commits / name).unlink(missing_ok=True)
            (commits / (name + COMPACTED)).unlink(missing_ok=True)
        now = time.time()
        for table in [*self.tables, TOMBSTONES]:
            for name in _names(self.root / table):
                path, wid = self.root / table / name, name.removesuffix(".parquet")
                if wid in gone or (_age(path, now) > ORPHAN_S and not self._committed(wid)):
                    path.unlink(missing_ok=True)

    def _committed(self, wid: str) -> bool:
        commits = self.root / COMMITS
        return (commits / wid).exists() or (commits / (wid + COMPACTED)).exists()


def _retrying(action: Callable[[], T]) -> T:
    """``action``, run again while it fails because a compaction deleted a file under it."""
    import duckdb

    for attempt in range(READ_TRIES - 1):
        try:
            return action()
        except (duckdb.IOException, FileNotFoundError):
            time.sleep(0.01 * (attempt + 1))
    return action()


def copy_parquet(con: Any, select: str, path: Path) -> None:
    """Write ``select``'s rows as one Parquet file that appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        con.execute(f"COPY ({select}) TO {_literal(str(tmp))} (FORMAT parquet)")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _names(directory: Path) -> list[str]:
    """Entries of ``directory`` but temporary files (a missing directory has none)."""
    try:
        return [n for n in os.listdir(directory) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _take_lock(lock: Path, token: str) -> bool:
    """Create ``lock`` holding ``token`` unless a live process holds it (O_EXCL is atomic,
    NFS v3+ included); a lock older than ``STALE_LOCK_S`` is broken once."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _age(lock, time.time()) <= STALE_LOCK_S:
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return True
    return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
