"""The data plane: raw sources -> quality-filtered documents -> deduplicated shards.

Owns ingest (readers and quarantine), the Gopher/C4 filters, MinHash deduplication, Great
Expectations validation, the built-in synthetic problems (``arithmetic``) and the stage
runners (``stages``) that the Dagster assets and the CLI call.

May import: ``flywheel.core``; never ``flywheel.train``, ``flywheel.loop`` or ``flywheel.cli``.
"""
