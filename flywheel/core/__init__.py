"""The shared core: the spec and its settings, versioned artifacts, the catalog, records, Pipes.

Owns what every plane needs and no plane owns: ``spec`` (YAML -> validated settings, one
``settings`` module per plane), ``artifacts`` (versioned directories published atomically with
a manifest and a ``CURRENT`` pointer), ``products`` (every product's name and what it reads:
the graph Dagster and the stages share), ``catalog`` (the record of provenance and of the loop:
Parquet fragments any process appends, read with DuckDB; ``catalog_store``), ``chat`` (the
one record schema: conversations with an optional answer), ``records`` (reading examples with
quarantine) and ``report`` (Dagster Pipes, the one place ``dagster_pipes`` is imported).

May import: the standard library and third-party packages only; never ``flywheel.data``,
``flywheel.train``, ``flywheel.loop`` or ``flywheel.cli``.
"""
