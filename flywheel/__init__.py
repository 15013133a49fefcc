"""flywheel: a declarative data flywheel for training language models.

This package is the engine (ingest, filters, dedup, catalog, spec, and later training,
generation and evaluation). It never imports dagster: the Dagster layer in ``assets/``,
``jobs/`` and ``sensors/`` calls into it, and so can a CLI, a notebook or a GPU node.
"""

__version__ = "0.1.0"
