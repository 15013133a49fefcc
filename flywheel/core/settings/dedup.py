"""Settings of the deduplication engine: the ``dedup:`` section of the project's YAML spec.

Validated by pydantic; ``resolve_bands`` turns them into the (bands, rows) LSH layout:

    python -c "from flywheel.core.settings.dedup import *; print(DedupSettings().resolve_bands())"
"""

from __future__ import annotations

import functools
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DedupSettings(BaseModel):
    """Exact (normalized-text hash) and MinHash LSH near-duplicate removal."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Remove exact normalized-text duplicates first.")
    minhash: bool = Field(True, description="Remove near-duplicates found by MinHash LSH.")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Jaccard similarity at or above which docs are dupes."
    )
    num_perm: int = Field(
        128, ge=8, le=1024, description="MinHash permutations: signature length per document."
    )
    ngram: int = Field(5, ge=1, le=32, description="Words per shingle (word n-grams).")
    lowercase: bool = Field(True, description="Lower-case text before shingling and hashing.")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")
    bands: int | None = Field(
        None, ge=1, description="LSH bands b; None (with rows None) lets the optimizer choose."
    )
    rows: int | None = Field(
        None, ge=1, description="Signature rows per LSH band r; None: chosen with bands."
    )
    # LSH false positives cost one verification each, false negatives are missed duplicates:
    # at 0.05 / 0.95 the optimizer picks b=16, r=8 for t=0.8 (P(candidate | J=0.8) = 0.947)
    # where 0.5 / 0.5 picks b=9, r=13 (0.40); see flywheel.data.dedup.lsh for the S-curves
    false_positive_weight: float = Field(
        0.05, ge=0.0, description="Optimizer weight of LSH false positives when choosing b, r."
    )
    false_negative_weight: float = Field(
        0.95, ge=0.0, description="Optimizer weight of LSH false negatives when choosing b, r."
    )
    # sketch: exact Jaccard for docs under sketch_size shingles (see flywheel.data.dedup.verify)
    verify: Literal["sketch", "signature", "none"] = Field(
        "sketch", description="Candidate check: bottom-m sketch Jaccard, signature agreement, none."
    )
    sketch_size: int = Field(
        512, ge=0, le=65536, description="Shingle hashes kept per doc for verification (bottom m)."
    )
    bucket_window: int = Field(
        8, ge=1, description="Earlier bucket members (besides the first) each doc is compared to."
    )

    # the persistent index's lookup files (band keys, exact hashes, ids) are hash-partitioned
    # this many ways, so a batch reads only the partitions it touches; a band partition holds
    # ~16 x 17 B x docs / P (about 260 MB per partition at 10^9 docs and P = 1,024)
    index_partitions: int = Field(
        32, ge=1, le=65536, description="Hash partitions of the on-disk index; fixed when made."
    )
    # every index commit adds a file to each partition it touches; reads open them all, so
    # once a partition has this many files the commit merges them into one
    compact_files: int = Field(
        16, ge=2, description="Files an index partition may hold before a commit merges them."
    )

    @model_validator(mode="after")
    def _check_bands(self) -> Self:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (the optimizer then picks both)")
        if (
            self.bands is not None
            and self.rows is not None
            and self.bands * self.rows > self.num_perm
        ):
            raise ValueError(
                f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}"
            )
        if self.verify == "sketch" and self.sketch_size == 0:
            raise ValueError('verify="sketch" needs sketch_size > 0')
        if self.false_positive_weight + self.false_negative_weight <= 0:
            raise ValueError("false_positive_weight + false_negative_weight must be positive")
        return self

    def resolve_bands(self) -> tuple[int, int]:
        """(bands, rows): the ones set, or datasketch's optimum for threshold and num_perm.

        The optimizer minimizes fp_weight * FP + fn_weight * FN, where FP (FN) is the area under
        (above) the LSH S-curve P(s) = 1 - (1 - s^r)^b below (above) the threshold; see
        ``flywheel.data.dedup.lsh`` for what the chosen layout implies.
        """
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return _optimal(
            self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight
        )


@functools.lru_cache(maxsize=64)
def _optimal(threshold: float, num_perm: int, fp: float, fn: float) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param  # imports scipy: only when needed, once

    b, r = _optimal_param(threshold, num_perm, fp, fn)
    return int(b), int(r)
