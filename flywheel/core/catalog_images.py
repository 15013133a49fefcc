"""The image-text plane's rows in the catalog: quarantine, filter decisions, dedup clusters.

    python -c "from flywheel.core.catalog import Catalog; help(Catalog.image_cluster)"

``Catalog`` mixes ``ImageRecord`` in. The tables mirror the document plane's (``documents``'
quarantine rows go to the shared ``quarantine`` table, keyed by source) but are their own, so
that the image stages and the text stages each replace only their own rows.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from flywheel.core.catalog_store import WHOLE_TABLE

IMAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_records (
    record_id VARCHAR PRIMARY KEY, image_id VARCHAR, source VARCHAR, source_id VARCHAR,
    path VARCHAR, "offset" BIGINT, width BIGINT, height BIGINT, version VARCHAR
);
CREATE TABLE IF NOT EXISTS image_filter_decisions (
    record_id VARCHAR PRIMARY KEY, kept BOOLEAN, filter VARCHAR, reason VARCHAR, version VARCHAR
);
CREATE TABLE IF NOT EXISTS image_duplicates (
    record_id VARCHAR PRIMARY KEY, duplicate_of VARCHAR, method VARCHAR, similarity DOUBLE,
    version VARCHAR
);
CREATE TABLE IF NOT EXISTS image_deduplicated (
    record_id VARCHAR PRIMARY KEY, shard VARCHAR, version VARCHAR
);
"""
IMAGE_KEYS: dict[str, Any] = {
    "image_records": "source",
    "image_filter_decisions": WHOLE_TABLE,
    "image_duplicates": WHOLE_TABLE,
    "image_deduplicated": WHOLE_TABLE,
}


class ImageRecord:
    """The image plane's writes and reads; ``Catalog`` provides ``write`` and ``query``."""

    def record_image_source(
        self, source: str, records: pl.DataFrame, quarantine: pl.DataFrame, version: str
    ) -> None:
        """Replace ``source``'s image records and quarantine rows with a new version's."""
        cols = ["id", "image_id", "source", "source_id", "path", "offset", "width", "height"]
        with self.write() as w:  # type: ignore[attr-defined]
            w.con.register("recs", records.select(cols).with_columns(pl.lit(version).alias("v")))
            w.con.register("quar", quarantine.with_columns(pl.lit(version).alias("version")))
            w.replace("image_records", source)
            w.replace("quarantine", source)
            w.con.execute("INSERT INTO image_records SELECT * FROM recs")
            w.con.execute(
                'INSERT INTO quarantine SELECT source, path, "offset", reason, detail, raw, '
                "version FROM quar"
            )

    def record_image_filter_decisions(self, decisions: pl.DataFrame, version: str) -> None:
        frame = decisions.select("id", "kept", "filter", "reason")
        with self.write() as w:  # type: ignore[attr-defined]
            w.con.register("frame", frame.with_columns(pl.lit(version).alias("version")))
            w.replace("image_filter_decisions")
            w.con.execute("INSERT INTO image_filter_decisions SELECT * FROM frame")

    def record_image_dedup(
        self, kept: pl.DataFrame, duplicates: pl.DataFrame, version: str
    ) -> None:
        """``kept``: id, shard of every kept record; ``duplicates``: the removed ones."""
        v = pl.lit(version).alias("version")
        with self.write() as w:  # type: ignore[attr-defined]
            w.con.register("kept_f", kept.select("id", "shard").with_columns(v))
            dup = duplicates.select("id", "duplicate_of", "method", "similarity")
            w.con.register("dup_f", dup.with_columns(v))
            w.replace("image_deduplicated")
            w.replace("image_duplicates")
            w.con.execute("INSERT INTO image_deduplicated SELECT * FROM kept_f")
            w.con.execute("INSERT INTO image_duplicates SELECT * FROM dup_f")

    def image_cluster(self, root: str) -> list[str]:
        """The kept record ``root`` and every record removed as its duplicate ([] if none)."""
        ids = self.query(  # type: ignore[attr-defined]
            "SELECT record_id FROM image_duplicates WHERE duplicate_of = ? ORDER BY record_id",
            [root],
        )["record_id"].to_list()
        return [root, *ids] if ids else []
