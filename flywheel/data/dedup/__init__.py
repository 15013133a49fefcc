"""Exact and MinHash LSH deduplication with a persistent, incremental index.

    flywheel dedup INPUT --output DIR [--threshold T] [--index DIR]

``deduplicate(ids, texts, settings)`` for one corpus in memory; ``DedupIndex.open(path,
settings)`` then ``add`` / ``commit`` to deduplicate batches against everything seen before.
"""

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup.index import DUPLICATES_SCHEMA, DedupIndex, DedupResult, deduplicate
from flywheel.data.dedup.minhash import MinHasher, jaccard, normalize, shingles

__all__ = [
    "DUPLICATES_SCHEMA",
    "DedupIndex",
    "DedupResult",
    "DedupSettings",
    "MinHasher",
    "deduplicate",
    "jaccard",
    "normalize",
    "shingles",
]
