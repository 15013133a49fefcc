"""The build keys of the document plane's stages, and what a reused version reports.

    python -c "from flywheel.core.spec import load_spec; from flywheel.data.stage_keys import \
ingest_key; print(ingest_key(load_spec('flywheel.yaml'), 'corpus'))"

Each stage of ``flywheel.data.stages`` keys its output (``flywheel.core.keys``) and reuses the
current version when the key is unchanged, so re-materializing an unchanged corpus publishes
nothing new and nothing after it (tokenizer, packing, training) sees a new input version:

- ``raw_<source>``: the source's and ``ingest``'s settings and the content of its files (for
  ``python_env``, the Python version and the installed distributions);
- ``filtered_documents`` (and ``dropped_documents``): the raw sets' versions and ``filters``;
- ``deduplicated_shards``: the filtered set's version and ``dedup``. A reused version leaves
  the persistent dedup index untouched.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flywheel.core import keys
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec
from flywheel.data.ingest import source_files
from flywheel.data.ingest.python_env import environment_digest

DEDUP_STATS = ("rows_in", "rows", "removed", "removed_exact", "removed_minhash", "dedup_rate",
               "clusters", "new_docs", "signature_seconds")  # fmt: skip


def ingest_key(spec: Spec, source_name: str) -> dict[str, str]:
    """What decides a raw set (``flywheel.core.keys``): the source's and ``ingest``'s settings
    and the content of what it reads (``source_digest``)."""
    sections = {"source": spec.source(source_name), "ingest": spec.ingest}
    return keys.make_key(spec=sections, data={"source files": source_digest(spec, source_name)})


def source_digest(spec: Spec, source_name: str) -> str:
    """``sha256:...`` of a source's input: its files' names and bytes, or for the built-in
    ``python_env`` source the Python version and installed distributions."""
    source = spec.source(source_name)
    if source.kind == "python_env":
        return environment_digest(source)
    h = hashlib.sha256()
    for path in source_files(source, spec.base_dir):
        h.update(f"{path}\0{keys.file_digest(path)}\n".encode())
    return "sha256:" + h.hexdigest()


def reuse_meta(shards: ShardSet, reused: bool) -> dict[str, Any]:
    """``reused`` and what changed since the version before (empty when reused)."""
    changed = [] if reused else shards.manifest.get(keys.CHANGES, [])
    return {"reused": reused, "build_changes": "; ".join(changed)}


def is_filter_stat(name: str) -> bool:
    """A flat stat of the filter stage, as ``_filter_stats`` names them."""
    return name in ("rows_in", "rows", "dropped", "keep_rate") or name.startswith(
        ("dropped_", "keep_rate_")
    )
