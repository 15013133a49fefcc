"""What the flywheel did, cycle by cycle, and what fed each checkpoint.

    flywheel report [--json] [--history]           the per-cycle table, why the loop is stuck
    flywheel lineage KEY [--json]                  a checkpoint, cycle, id, version or path

``report_rows`` reads each cycle's data products from their manifests (the artifacts
themselves) and the loop's record from the catalog: promotion decisions, the champion and the
failed runs not yet resolved by a later success; ``report_footer`` adds why the loop is
stuck (``flywheel.loop.status``). ``lineage`` answers "what made this checkpoint":
its chain of parents down to the pre-training documents (by source), the seed and generated
examples of every cycle's training set (and which checkpoint generated them), its eval scores
and the promotion decision; for a cycle, the same for the cycle's candidate. A key may also
be the user's own (a source record's id, a source file's path, an artifact's directory):
``flywheel.loop.lineage_keys``.
"""

from __future__ import annotations

from typing import Any

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import has_current, read_current
from flywheel.core.spec import Spec
from flywheel.loop import cycle_keys, cycles, lineage_keys, promotion, status

REPORT_COLUMNS = [
    "cycle", "checkpoint", "method", "train_rows", "new_rows", "generations", "accepted"
]  # fmt: skip


def _cycles_on_disk(spec: Spec) -> list[int]:
    root = spec.data_dir / cycles.CYCLES
    if not root.is_dir():  # no cycle has run yet
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _manifest(root: Any) -> dict[str, Any]:
    return read_current(root).manifest if has_current(root) else {}


def _candidate(spec: Spec, cycle: int) -> str | None:
    try:
        return promotion.candidate(spec, cycle).version
    except (artifacts.ArtifactError, FileNotFoundError):
        return None


def report_rows(spec: Spec) -> list[dict[str, Any]]:
    """One row per cycle: its checkpoint, data, eval metrics and promotion decision."""
    decided = {d.cycle: d for d in promotion.decisions(spec)}
    rows = []
    for c in _cycles_on_disk(spec):
        ts = _manifest(cycles.training_set_root(spec, c))
        row: dict[str, Any] = {
            "cycle": c,
            "checkpoint": _candidate(spec, c),
            "train_rows": ts.get("rows"),
            "new_rows": ts.get("new_rows"),
            "method": _method(spec, c),
            **(_played(spec, c) if spec.agent is not None else _generated(spec, c)),
        }
        try:
            scores = promotion.eval_scores(spec, c)
        except (artifacts.ArtifactError, FileNotFoundError):
            scores = {}
        for key, value in scores.items():
            if key.startswith(("accuracy/", "perplexity", "env/", "vision/")) and isinstance(
                value, int | float
            ):
                row[key] = value
        d = decided.get(c)
        row["promoted"] = None if d is None else d.promoted
        row["decision"] = None if d is None else d.reason
        rows.append(row)
    return rows


def _generated(spec: Spec, cycle: int) -> dict[str, Any]:
    gen = _manifest(cycles.generations_root(spec, cycle))
    acc = _manifest(cycles.accepted_root(spec, cycle))
    return {
        "generations": gen.get("num_rows"),
        "accepted": acc.get("num_rows"),
        "accept_rate": acc.get("accept_rate"),
        "label_precision": acc.get("label_precision"),
    }


def _played(spec: Spec, cycle: int) -> dict[str, Any]:
    """An agent cycle's episodes (the champion's, after the cycle) and the accepted ones."""
    played = _manifest(cycles.trajectories_root(spec, cycle)).get("counts", {})
    acc = _manifest(cycles.accepted_trajectories_root(spec, cycle))
    return {
        "generations": played.get("rows"),
        "accepted": acc.get("counts", {}).get("accepted"),
        "accept_rate": acc.get("accept_rate"),
        "played_reward": played.get("mean_reward"),
    }


def _method(spec: Spec, cycle: int) -> str | None:
    """How the cycle's candidate was trained, as its checkpoint records it."""
    try:
        meta = promotion.candidate(spec, cycle).meta
    except (artifacts.ArtifactError, FileNotFoundError):
        return None
    if cycle == 0:
        return "seed sft"
    # The run records it in its lineage (a cycle's metrics also name an agent's RL method)
    method = meta.get("lineage", {}).get("method") or meta.get("metrics", {}).get("method")
    return str(method or "sft")


def report_footer(spec: Spec, history: bool = False) -> list[str]:
    """The champion, whether the loop runs on, why it is stuck (``status.stuck_reason``) and
    the failed cycle runs no later run of the same cycle has made good; with ``history``,
    every failure ever recorded and the run that resolved it."""
    champ = promotion.champion(spec)
    state = promotion.loop_state(spec)
    lines = []
    if champ:
        lines.append(
            f"champion: cycle {champ.cycle} {champ.candidate} ({champ.metric} {champ.value:.4f})"
        )
    lines.append(f"loop: {state.reason}; next cycle {state.next_cycle}")
    stuck = status.stuck_reason(spec)
    if stuck:
        lines.append(f"stuck: {stuck}")
    lines += [f"failed: {f.line()}" for f in status.failure_summary(spec)]
    for f in status.failure_history(spec) if history else []:
        by = f"resolved by run {f.resolved_by}" if f.resolved_by else "unresolved"
        lines.append(f"history: {f.line()} ({by})")
    return lines


def report_json(spec: Spec, history: bool = False) -> dict[str, Any]:
    """``flywheel report --json``: the rows, the champion, the loop's state, why it is stuck,
    the unresolved failures and (``history``) every failure."""
    champ = promotion.champion(spec)
    state = promotion.loop_state(spec)
    out: dict[str, Any] = {
        "cycles": report_rows(spec),
        "champion": champ.as_dict() if champ else None,
        "loop": {"stopped": state.stopped, "reason": state.reason, "next_cycle": state.next_cycle},
        "stuck": status.stuck_reason(spec),
        "failures": [f.as_dict() for f in status.failure_summary(spec)],
    }
    if history:
        out["history"] = [f.as_dict() for f in status.failure_history(spec)]
    return out


def _rows(catalog: Catalog, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return catalog.query(sql, params).to_dicts()


def _fed_by(catalog: Catalog, training_set: str) -> list[dict[str, Any]]:
    """The examples of a training set by origin, cycle and generating checkpoint."""
    return _rows(
        catalog,
        """
        SELECT e.origin, e.cycle_added AS cycle, g.checkpoint AS generated_by, count(*) AS rows
        FROM training_examples e LEFT JOIN generations g USING (generation_id)
        WHERE e.version = ? GROUP BY ALL ORDER BY cycle, generated_by
        """,
        [training_set],
    )


def _sources(catalog: Catalog, dataset: str) -> list[dict[str, Any]]:
    return _rows(
        catalog,
        """
        SELECT d.source, count(DISTINCT t.doc_id) AS documents
        FROM tokenized_documents t JOIN documents d USING (doc_id)
        WHERE t.version = ? AND t.split = 'train' GROUP BY ALL ORDER BY d.source
        """,
        [dataset],
    )


def checkpoint_lineage(spec: Spec, version: str) -> dict[str, Any]:
    """A checkpoint's chain down to documents and generations, its scores and promotion."""
    catalog = Catalog.open(spec.catalog)
    facts = catalog.checkpoint_lineage(version)
    for row in facts["chain"]:
        inputs = row["inputs"]
        if inputs.get(P.TRAINING_SET):
            row["fed_by"] = _fed_by(catalog, inputs[P.TRAINING_SET])
        if inputs.get(P.TOKENIZED):
            row["sources"] = _sources(catalog, inputs[P.TOKENIZED])
    scores = _rows(catalog, "SELECT metric, value FROM eval_scores WHERE checkpoint = ?", [version])
    facts["eval_scores"] = {r["metric"]: r["value"] for r in scores}
    decided = promotion.decisions(spec)
    facts["decisions"] = [d.as_dict() for d in decided if d.candidate == version]
    return facts


def cycle_lineage(spec: Spec, cycle: int) -> dict[str, Any]:
    """The lineage of cycle ``cycle``'s candidate, plus the cycle's own data products."""
    version = _candidate(spec, cycle)
    if version is None:
        raise KeyError(f"cycle {cycle} has no checkpoint yet")
    facts = checkpoint_lineage(spec, version)
    facts["cycle"] = cycle
    facts["training_set"] = _manifest(cycles.training_set_root(spec, cycle)).get("version")
    accepted = cycles.product_root(spec, P.accepted_product(spec), cycle)
    facts["accepted"] = _manifest(accepted).get("version")
    return facts | cycle_build_facts(spec, cycle)  # what each product was built from


def cycle_build_facts(spec: Spec, cycle: int) -> dict[str, Any]:
    """For ``flywheel lineage``: each of cycle ``cycle``'s published products with what its
    key says it was built from (its ``data:`` parts) and what changed when it was, and
    ``stale``: what changed since that a rerun of the cycle would have to take in."""
    built: dict[str, Any] = {}
    made = P.AGENT_PRODUCTS if spec.agent is not None else P.GENERATION_PRODUCTS
    for product in (P.TRAINING_SET, P.CYCLE_EVAL, *made):
        artifact, key = keys.current_key(cycles.product_root(spec, product, cycle))
        if artifact is not None:
            data = {k.removeprefix("data:"): v for k, v in (key or {}).items() if "data:" in k}
            changes = artifact.meta.get(keys.CHANGES, [])
            built[product] = {"version": artifact.version, "from": data, "changes": changes}
    return {"built": built, "stale": _stale_seed(spec, cycle)}


def _stale_seed(spec: Spec, cycle: int) -> list[str]:
    """Whether the cycle's training set holds other seed rows than ``sft.data`` now."""
    seed_set, seed_key = keys.current_key(cycles.training_set_root(spec, 0))
    if seed_set is None:
        return []
    now = {cycle_keys.SEED_PART: cycle_keys.seed_fingerprint(spec)}
    out = keys.changes(seed_key, {**(seed_key or {}), **now})
    out = [f"cycle 0's training set {seed_set.version}: {c}" for c in out]
    own, key = keys.current_key(cycles.training_set_root(spec, cycle))
    replayed = (key or {}).get(f"input:{P.of_cycle(P.TRAINING_SET, 0)}")
    if cycle > 0 and own is not None and replayed not in (None, seed_set.version):
        out.append(f"replays cycle 0's training set {replayed}, now {seed_set.version}")
    return out


def generation_lineage(spec: Spec, generation_id: str) -> dict[str, Any]:
    """Which checkpoint generated a completion, its verdict, and the training sets using it."""
    catalog = Catalog.open(spec.catalog)
    found = _rows(catalog, "SELECT * FROM generations WHERE generation_id = ?", [generation_id])
    if not found:
        raise KeyError(f"{generation_id!r} is not a generation in the catalog")
    used = _rows(
        catalog,
        "SELECT s.cycle, s.version FROM training_examples e JOIN training_sets s USING (version)"
        " WHERE e.generation_id = ? ORDER BY s.cycle",
        [generation_id],
    )
    return {"generation": found[0], "in_training_sets": used}


def lineage(spec: Spec, key: str) -> dict[str, Any]:
    """Dispatch on what ``key`` names (``lineage_keys.candidates``): a cycle, a checkpoint, a
    generation, a document (by its id or its source record's id), an artifact version or
    directory, or a source file. Unknown: KeyError naming what was tried; more than one
    thing: ``AmbiguousKey`` (a KeyError) listing each with its own key."""
    found, tried = lineage_keys.candidates(spec, key)
    if not found:
        raise KeyError(f"{key!r} is not in the catalog: tried {', '.join(tried)}")
    if len(found) > 1:
        raise lineage_keys.AmbiguousKey(key, found)
    kind, name = found[0].kind, found[0].key
    if kind == "cycle":
        return cycle_lineage(spec, int(name))
    if kind == "checkpoint":
        return checkpoint_lineage(spec, name)
    if kind == "generation":
        return generation_lineage(spec, name)
    if kind == "document":
        return Catalog.open(spec.catalog).document_lineage(name)
    if kind == "source_file":
        return lineage_keys.source_file_lineage(spec, name)
    facts = lineage_keys.artifact_lineage(spec, name)
    catalog = Catalog.open(spec.catalog)
    version = facts["version"]
    if _rows(catalog, "SELECT 1 FROM checkpoints WHERE checkpoint = ?", [version]):
        return {**checkpoint_lineage(spec, version), "path": facts["path"]}
    if _rows(catalog, "SELECT 1 FROM training_sets WHERE version = ?", [version]):
        facts["fed_by"] = _fed_by(catalog, version)
    return facts


def lineage_lines(facts: dict[str, Any]) -> list[str]:
    """A readable rendering of ``lineage``'s facts."""
    if facts.get("kind") in ("artifact", "source_file"):
        lines = lineage_keys.key_lines(facts)
        for fed in facts.get("fed_by", []):  # a training set's examples
            by = f" generated by {fed['generated_by']}" if fed["generated_by"] else ""
            lines.append(
                f"{'':>12}{fed['rows']} {fed['origin']} examples of cycle {fed['cycle']}{by}"
            )
        return lines
    if "doc_id" in facts:  # a document
        return [f"{k:>20}: {v}" for k, v in facts.items()]
    if "generation" in facts:
        lines = [f"{k:>16}: {v}" for k, v in facts["generation"].items()]
        used = ", ".join(f"cycle {u['cycle']} ({u['version']})" for u in facts["in_training_sets"])
        return [*lines, f"{'training sets':>16}: {used or 'none yet'}"]
    lines = [] if "cycle" not in facts else [f"cycle {facts['cycle']}"]
    for row in facts["chain"]:
        inputs = ", ".join(
            f"{k}={v}" for k, v in row["inputs"].items() if isinstance(v, str | int | float)
        )
        lines.append(f"{row['stage']:>8} {row['checkpoint']}  <- {inputs}")
        for fed in row.get("fed_by", []):
            by = f" generated by {fed['generated_by']}" if fed["generated_by"] else ""
            lines.append(
                f"{'':>10}{fed['rows']} {fed['origin']} examples of cycle {fed['cycle']}{by}"
            )
        for src in row.get("sources", []):
            lines.append(f"{'':>10}{src['documents']} documents from source {src['source']}")
    if facts["eval_scores"]:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(facts["eval_scores"].items()))
        lines.append(f"{'eval':>8} {shown}")
    for d in facts["decisions"]:
        lines.append(
            f"{'promoted' if d['promoted'] else 'kept':>8} cycle {d['cycle']}: {d['reason']}"
        )
    for product, b in facts.get("built", {}).items():
        made = ", ".join(f"{k} {keys.shown(v)}" for k, v in b["from"].items())
        lines.append(f"{'built':>8} {product} {b['version']}" + (f" from {made}" if made else ""))
        lines += [f"{'':>10}{c}" for c in b["changes"]]
    lines += [f"{'STALE':>8} {s}" for s in facts.get("stale", [])]
    return lines


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The accuracy, held-out episode and image columns of the printed table (perplexity in
    --json)."""
    return sorted({k for r in rows for k in r if k.startswith(("accuracy/", "env/", "vision/"))})
