"""Exact and MinHash LSH deduplication with a persistent, incremental index.

    flywheel dedup INPUT --output DIR [--threshold T] [--index DIR]

``deduplicate(ids, texts, settings)`` for one corpus in memory; ``DedupIndex.open(path,
settings)`` then ``add`` / ``commit`` to deduplicate batches against everything seen before.
``flywheel.data.dedup.ray_engine.deduplicate_ray`` makes the same decisions on a Ray cluster
(``engine: ray``; imported only then, so the local engine never loads Ray).

Why our own engine and not datasketch's (``bench/dedup.py``, both on the same 167,529-document
corpus in one run, one thread): end to end from raw text we are 3.2-4x faster (two runs) than
``MinHash.bulk`` + ``MinHashLSH`` even when it is handed our shingle hashes for free, signatures
alone 1.5-1.8x faster, and verifying candidates by exact Jaccard on a sketch lifts
precision/recall to 0.9995/0.9977 against datasketch's 0.9640/0.9835. Add to that what
datasketch has no notion of: an incremental, persistent index with versioned commits.
"""

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup.index import DedupIndex, deduplicate
from flywheel.data.dedup.minhash import MinHasher, jaccard, normalize, shingles
from flywheel.data.dedup.results import DUPLICATES_SCHEMA, DedupResult

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
