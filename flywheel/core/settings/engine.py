"""Where the document plane runs: the spec's ``engine:`` and ``ray:`` sections.

    python -c "from flywheel.core.settings.engine import *; print(RaySettings(address='auto'))"

``engine: local`` (the default) runs every stage in the calling process and never imports Ray.
``engine: ray`` runs deduplication as Ray tasks (``flywheel.data.dedup.ray_engine``) on
the cluster ``ray.address`` names, or on one it starts on this machine when the address is
null. Results are the same on both engines; only where the work happens changes.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Engine = Literal["local", "ray"]

# "auto" (the cluster `ray start` left on this machine), Ray Client's ray://host:port, or the
# GCS address host:port of a head node
_ADDRESS = re.compile(r"auto|ray://[^\s:/]+(:\d+)?|[^\s:/]+:\d+")


class RaySettings(BaseModel):
    """How to reach (or start) the Ray cluster of ``engine: ray``."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description='Cluster to join: "auto", "ray://host:port" or head "host:port"; null '
        "starts a local one.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local cluster started when address is null."
    )
    # each shuffle (ids, exact hashes, band keys, pair joins, roots) hash-partitions its rows
    # into this many groups, and one task holds one group: corpus / partitions bounds a task
    partitions: int = Field(
        32, ge=1, le=65536, description="Hash partitions of every dedup shuffle."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, address: str | None) -> str | None:
        if address is not None and not _ADDRESS.fullmatch(address):
            raise ValueError(
                f'ray.address must be "auto", "ray://host:port" or "host:port"; got {address!r}'
            )
        return address

    @model_validator(mode="after")
    def _cpus_only_when_starting(self) -> Self:
        if self.address is not None and self.num_cpus is not None:
            raise ValueError(
                "ray.num_cpus sizes a cluster started here; with ray.address set the cluster "
                "exists already (set num_cpus when you `ray start` it)"
            )
        return self
