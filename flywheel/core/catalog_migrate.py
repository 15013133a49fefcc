"""The catalog's marker file, and the migration of a one-file DuckDB catalog into fragments.

    python -c "from flywheel.core.catalog import Catalog; Catalog.open('.flywheel/catalog.duckdb')"

``spec.catalog`` names a small JSON marker file; the data lives in ``<marker>.d``
(``flywheel.core.catalog_store``). A DuckDB catalog found at that path (from before fragments)
is copied in as one write older than any other and kept as ``<marker>.migrated``; any other
file there is refused with a message naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flywheel.core.artifacts import atomic_write_bytes
from flywheel.core.catalog_store import COMMITS, MIGRATED, FragmentStore, copy_parquet


def adopt(store: FragmentStore, marker: Path, facts: dict[str, Any]) -> None:
    """Make ``marker`` the catalog's marker file holding ``facts``: a DuckDB catalog from
    before fragments found there is copied in first and kept as ``<marker>.migrated``."""
    store.root.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        if _is_duckdb(marker):
            _import_duckdb(store, marker)
            # kept aside; unless a process opening it at the same time already did so
            for old in (marker, marker.with_name(marker.name + ".wal")):
                if old.exists() and (old != marker or _is_duckdb(old)):
                    os.replace(old, old.with_name(old.name + ".migrated"))
        elif marker.read_bytes()[:1] != b"{":
            raise ValueError(
                f"{marker} is not a flywheel catalog: neither its marker file nor a DuckDB "
                "catalog to migrate (point spec.catalog at another path)"
            )
    if not marker.exists():
        atomic_write_bytes(marker, json.dumps({**facts, "fragments": store.root.name}).encode())


def _import_duckdb(store: FragmentStore, old: Path) -> None:
    """Copy the tables of a one-file DuckDB catalog into one write older than any other."""
    import duckdb

    con = duckdb.connect(str(old), read_only=True)
    try:
        found = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        for table in sorted(found & set(store.tables)):
            path = store.root / table / f"{MIGRATED}.parquet"
            copy_parquet(con, f"SELECT *, '{MIGRATED}' AS _write FROM {table}", path)
    finally:
        con.close()
    atomic_write_bytes(store.root / COMMITS / MIGRATED, b"")


def _is_duckdb(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(12)[8:] == b"DUCK"  # DuckDB's magic bytes
