"""What a ``flywheel lineage KEY`` names, and the lineage of the keys a user brings along.

    flywheel lineage KEY [--json]

A key may be an internal name (a cycle number or ``cycle:N``, a checkpoint or any artifact
version, a generation id, a document id) or the user's own: a source record's id as the
source file had it (``id_field``; ``SOURCE:ID`` picks one source), a source file's path
(relative to the working directory or to the spec's folder, or absolute; a folder: every file
under it), or a published artifact's directory (or a file in it). ``candidates`` tries every
kind and returns each match with an unambiguous key for it and the list of what it tried;
``flywheel.loop.report.lineage`` dispatches on it. A source file's lineage is its documents,
what became of them (quarantine, filters, dedup) and the tokenized datasets and checkpoints
they fed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.spec import Spec
from flywheel.loop import cycles

SAMPLE = 20  # documents of a source file listed by name


@dataclass(frozen=True)
class Candidate:
    kind: str  # cycle | checkpoint | generation | document | artifact | source_file
    key: str  # what to look up for this kind: unambiguous
    what: str  # one line naming it, for a list of candidates


class AmbiguousKey(KeyError):
    """A key that names more than one thing; the message lists each with its own key."""

    def __init__(self, key: str, found: list[Candidate]):
        lines = [f"{key!r} names {len(found)} things; ask for one by its own key:"]
        lines += [f"  {c.key}  ({c.what})" for c in found]
        super().__init__("\n".join(lines))
        self.candidates = found


def _one(catalog: Catalog, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return catalog.query(sql, params).to_dicts()


def candidates(spec: Spec, key: str) -> tuple[list[Candidate], list[str]]:
    """Every thing ``key`` names, and the kinds tried (for an unknown key's message)."""
    catalog = Catalog.open(spec.catalog)
    found: list[Candidate] = []
    tried = ["a cycle number", "a checkpoint", "a generation id", "a document id"]
    cycle = key.removeprefix("cycle:")
    if cycle.isdigit() and (
        key.startswith("cycle:") or cycles.cycle_dir(spec, int(cycle)).is_dir()
    ):
        found.append(Candidate("cycle", cycle, f"flywheel cycle {cycle}"))
    if _one(catalog, "SELECT 1 FROM checkpoints WHERE checkpoint = ?", [key]):
        found.append(Candidate("checkpoint", key, "a checkpoint"))
    if _one(catalog, "SELECT 1 FROM generations WHERE generation_id = ?", [key]):
        found.append(Candidate("generation", key, "a generated completion"))
    if _one(catalog, "SELECT 1 FROM documents WHERE doc_id = ?", [key]):
        found.append(Candidate("document", key, "a document"))
    tried.append("a source record id (or SOURCE:ID)")
    found += _source_records(spec, catalog, key, {c.key for c in found})
    tried.append("an artifact version or directory")
    artifact = _artifact_dir(spec, key)
    if artifact is not None and not any(c.key == artifact.name for c in found):
        found.append(Candidate("artifact", str(artifact), f"artifact version {artifact.name}"))
    tried.append("a source file or folder")
    files = source_paths(spec, catalog, key)
    if files and artifact is None:
        what = f"{len(files)} source file(s) under it" if len(files) > 1 else "a source file"
        found.append(Candidate("source_file", key, what))
    return found, tried


def _source_records(spec: Spec, catalog: Catalog, key: str, known: set[str]) -> list[Candidate]:
    """Documents whose source record had id ``key`` (ingest keeps it as ``source_id``, a
    string as ``id_string`` made it), or ``SOURCE:ID`` for one named source."""
    sql = "SELECT doc_id, source, source_id, path FROM documents WHERE source_id = ?"
    rows = _one(catalog, sql, [key])
    name, sep, rest = key.partition(":")
    if sep and name in {s.name for s in spec.sources}:
        rows += _one(catalog, sql + " AND source = ?", [rest, name])
    out, seen = [], set(known)
    for r in rows:
        if r["doc_id"] not in seen:
            seen.add(r["doc_id"])
            what = f"record {r['source_id']!r} of source {r['source']} in {r['path']}"
            out.append(Candidate("document", r["doc_id"], what))
    return out


def _path_options(spec: Spec, key: str) -> list[Path]:
    """``key`` as a path: absolute, or relative to the working directory or the spec's
    folder; each also with its symlinks resolved."""
    p = Path(key).expanduser()
    bases = [p] if p.is_absolute() else [Path.cwd() / p, spec.base_dir / p]
    out: list[Path] = []
    for b in bases:
        for option in (b.absolute(), b.resolve()):
            if option not in out:
                out.append(option)
    return out


def _artifact_dir(spec: Spec, key: str) -> Path | None:
    """The published version ``key`` names: a version under the data folder, a version's
    directory or a file in it, or a product's folder (its CURRENT version)."""
    if key.startswith("v-") and os.sep not in key:
        data = spec.data_dir
        found = [*data.glob(f"*/{key}"), *data.glob(f"{cycles.CYCLES}/*/*/{key}")]
        return next((d for d in found if (d / artifacts.MANIFEST).is_file()), None)
    data = spec.data_dir.resolve()
    for option in _path_options(spec, key):
        if not option.exists():
            continue
        current = artifacts.current_version(option) if option.is_dir() else None
        if current and (option / current / artifacts.MANIFEST).is_file():
            return option / current
        for d in [option, *option.parents]:
            if d.resolve() == data or data not in d.resolve().parents:
                break  # only inside the data folder
            if (d / artifacts.MANIFEST).is_file():
                return d
    return None


def source_paths(spec: Spec, catalog: Catalog, key: str) -> list[str]:
    """The source file paths (as ingest recorded them: absolute) that ``key`` names: the
    file itself, or every file under a folder. A key that has no path separator and names
    nothing on disk is not a path: no lookup."""
    options = _path_options(spec, key)
    if os.sep not in key and not any(o.exists() for o in options):
        return []
    wanted = sorted({str(o) for o in options})
    folders = sorted({w.rstrip(os.sep) + os.sep for w in wanted if Path(w).is_dir()})
    where = " OR ".join(
        [f"path IN ({', '.join('?' * len(wanted))})", *["starts_with(path, ?)"] * len(folders)]
    )
    rows = _one(
        catalog,
        f"SELECT DISTINCT path FROM (SELECT path FROM documents UNION ALL "
        f"SELECT path FROM quarantine) WHERE {where} ORDER BY path",
        [*wanted, *folders],
    )
    return [r["path"] for r in rows]


def source_file_lineage(spec: Spec, key: str) -> dict[str, Any]:
    """The documents of the source file(s) ``key`` names and what they fed: how many were
    quarantined, dropped by a filter, removed as duplicates or kept; the tokenized datasets
    holding them; the checkpoints trained on those and every checkpoint descended from one."""
    catalog = Catalog.open(spec.catalog)
    paths = source_paths(spec, catalog, key)
    if not paths:
        raise KeyError(f"{key!r} is not a source file the catalog knows")
    marks = ", ".join("?" * len(paths))
    docs = f"SELECT doc_id FROM documents WHERE path IN ({marks})"
    q = _one(
        catalog,
        f"SELECT reason, count(*) AS n FROM quarantine WHERE path IN ({marks}) GROUP BY 1",
        paths,
    )
    status = _one(
        catalog,
        f"""
        SELECT CASE WHEN f.kept IS NULL THEN 'not filtered yet'
                    WHEN NOT f.kept THEN 'dropped by filter ' || f.filter
                    WHEN x.duplicate_of IS NOT NULL THEN 'removed as ' || x.method || ' duplicate'
                    WHEN k.doc_id IS NOT NULL THEN 'kept' ELSE 'passed filters' END AS status,
               count(*) AS n
        FROM ({docs}) d LEFT JOIN filter_decisions f USING (doc_id)
        LEFT JOIN duplicates x USING (doc_id) LEFT JOIN deduplicated k USING (doc_id)
        GROUP BY 1 ORDER BY 2 DESC
        """,
        paths,
    )
    tokenized = _one(
        catalog,
        f"SELECT version, split, count(DISTINCT doc_id) AS documents FROM tokenized_documents "
        f"WHERE doc_id IN ({docs}) GROUP BY ALL ORDER BY version, split",
        paths,
    )
    sample = _one(
        catalog,
        f'SELECT doc_id, source, source_id, "offset" FROM documents WHERE path IN ({marks}) '
        f'ORDER BY path, "offset" LIMIT {SAMPLE}',
        paths,
    )
    trained = {t["version"] for t in tokenized if t["split"] == "train"}
    return {
        "kind": "source_file",
        "paths": paths,
        "documents": sum(s["n"] for s in status),
        "quarantined": {r["reason"]: r["n"] for r in q},
        "status": {s["status"]: s["n"] for s in status},
        "tokenized": tokenized,
        "checkpoints": _fed_checkpoints(catalog, trained),
        "sample": sample,
    }


def _fed_checkpoints(catalog: Catalog, datasets: set[str]) -> list[dict[str, Any]]:
    """Checkpoints trained on one of ``datasets`` (tokenized versions) and their descendants."""
    rows = _one(
        catalog, "SELECT checkpoint, stage, parent, inputs FROM checkpoints ORDER BY created_at", []
    )
    fed = {
        r["checkpoint"]
        for r in rows
        if json.loads(r["inputs"] or "{}").get("tokenized_dataset") in datasets
    }
    grew = True
    while grew:  # add children of fed checkpoints until nothing new
        more = {r["checkpoint"] for r in rows if r["parent"] in fed} - fed
        fed |= more
        grew = bool(more)
    return [
        {"checkpoint": r["checkpoint"], "stage": r["stage"]} for r in rows if r["checkpoint"] in fed
    ]


def artifact_lineage(spec: Spec, directory: str) -> dict[str, Any]:
    """A published version: its product, manifest facts, inputs, and the checkpoints whose
    recorded inputs name it."""
    path = Path(directory)
    manifest = json.loads((path / artifacts.MANIFEST).read_text())
    version = manifest["version"]
    try:
        product = str(path.parent.resolve().relative_to(spec.data_dir.resolve()))
    except ValueError:
        product = path.parent.name
    catalog = Catalog.open(spec.catalog)
    used = _one(
        catalog,
        "SELECT checkpoint, stage FROM checkpoints WHERE contains(CAST(inputs AS VARCHAR), ?)",
        [json.dumps(version)],
    )
    meta = manifest.get("meta", {})
    return {
        "kind": "artifact",
        "product": product,
        "version": version,
        "path": str(path),
        "current": artifacts.current_version(path.parent) == version,
        "created_at": manifest.get("created_at"),
        "rows": meta.get("num_rows", meta.get("rows")),
        "inputs": manifest.get("inputs", {}),
        "used_by": used,
    }


def key_lines(facts: dict[str, Any]) -> list[str]:
    """A readable rendering of a source file's or an artifact's lineage."""
    if facts["kind"] == "artifact":
        lines = [f"{k:>10}: {facts[k]}" for k in ("product", "version", "path", "current")]
        lines += [f"{'rows':>10}: {facts['rows']}"] if facts["rows"] is not None else []
        lines += [f"{'input':>10}: {k}={v}" for k, v in facts["inputs"].items()]
        lines += [f"{'used by':>10}: {u['stage']} {u['checkpoint']}" for u in facts["used_by"]]
        return lines
    lines = [f"{'source file':>12}: {p}" for p in facts["paths"]]
    lines.append(f"{'documents':>12}: {facts['documents']}")
    lines += [f"{'quarantined':>12}: {n} {r}" for r, n in facts["quarantined"].items()]
    lines += [f"{'':>12}  {n} {s}" for s, n in facts["status"].items()]
    lines += [
        f"{'tokenized':>12}: {t['documents']} in {t['version']} ({t['split']})"
        for t in facts["tokenized"]
    ]
    lines += [f"{'fed':>12}: {c['stage']} {c['checkpoint']}" for c in facts["checkpoints"]]
    for d in facts["sample"]:
        lines.append(f"{'document':>12}: {d['doc_id']} (id {d['source_id']}, offset {d['offset']})")
    if facts["documents"] > len(facts["sample"]):
        lines.append(f"{'':>12}  ... and {facts['documents'] - len(facts['sample'])} more")
    return lines
