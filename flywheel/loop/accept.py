"""Acceptance of one cycle's generations: the ``accepted_generations`` data product.

    python -c "from flywheel.loop import accept as a, cycles as c; from flywheel.core import \
spec; s = spec.load_spec(); a.accept_generations(s, 1, c.cycle_inputs(s, a.PRODUCT, 1))"

``accept_generations`` reads the inputs it is handed (``flywheel.loop.cycles.cycle_inputs``:
cycle ``c``'s generations and training set, earlier cycles' accepted sets) and commits a shard
set at ``accepted_root(spec, c)`` that records their versions as its ``inputs``. Every
generation passes the gates below in order; the first that refuses it gives its ``reason``, and
later gates never see it:

1. the verifier (``acceptance.verifier``, ``flywheel.loop.verifiers.judge``, the scoring eval
   uses too; the spec's ``plugins`` are imported first);
2. the leak guard: a prompt equal (stripped) to an eval prompt -> ``eval_prompt``;
3. quality filters on the response -> ``filter:<name>: <why>``;
4. exact dedup on a normalized hash of (prompt, response): against every earlier cycle's
   accepted set -> ``duplicate_of_accepted``, the cycle's training set ->
   ``duplicate_of_training_set``, earlier rows of this cycle -> ``duplicate_in_cycle``;
5. near-dedup of responses (``acceptance.near_dedup``) against the same pools ->
   ``near_duplicate``;
6. at most ``max_per_prompt`` accepted responses per prompt -> ``over_max_per_prompt``. This
   cap runs last so that a duplicate never uses up a prompt's place.

Rows are taken in (prompt_id, sample_index) order, so "first" means the greedy sample first.
The set's shards hold the accepted rows (generation columns, the conversation ``messages``
included, + response, verifier, score, text_hash); aux ``rejected`` holds every other
generation with its reason (accepted + rejected = generations), and aux ``preference_pairs``
pairs an accepted response with each distinct completion the verifier rejected for the same
prompt (DPO data, with the conversation both continue). Decisions go to the catalog's
``generations`` table. ``accepted_checks`` are the guards the Dagster layer runs as blocking
asset checks.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from flywheel.core import keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import Built, ShardSet, ShardWriter, has_current, read_current
from flywheel.core.spec import Spec
from flywheel.data.dedup.minhash import normalize
from flywheel.loop.accept_gates import Pools, hashes, load_pools, run_gates
from flywheel.loop.cycles import accepted_root, check_cycle_inputs, training_set_root
from flywheel.loop.plugins import importable_from, load_plugins
from flywheel.loop.prompts import eval_prompts
from flywheel.loop.verifiers import judge

PRODUCT = P.ACCEPTED
REQUIRED = ("generation_id", "prompt_id", "prompt", "completion", "checkpoint")
SAMPLE = 5  # offending examples shown in a failing check's metadata


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


# -- the product -------------------------------------------------------------------------
def accept_generations(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> Built:
    """Judge, guard, filter and deduplicate cycle ``cycle``'s generations; commit the set.
    ``handed``: the inputs ``cycle_inputs(spec, "accepted_generations", cycle)`` gives (the
    cycle's generations and training set, earlier cycles' accepted sets), recorded as the
    set's ``inputs``."""
    check_cycle_inputs(spec, PRODUCT, cycle, handed)
    generations = handed[P.GENERATIONS]
    df = _load(generations)
    pools = load_pools(handed, cycle, set(df["generation_id"].to_list()))
    leaks = eval_prompts(spec)
    key = _key(spec, generations, pools, leaks)
    root = accepted_root(spec, cycle)
    found = keys.reusable(root, key)
    if found is not None:  # the same generations, pools, settings and verifier code
        current = ShardSet(found)
        return Built(current, _flat(current.manifest), reused=True)

    load_plugins(spec)  # a kind they register judges here as it scores eval
    with importable_from(spec.base_dir):  # a kind: python module next to the spec
        judged = judge(spec.acceptance.verifier, df.with_columns(pl.col("prompt").fill_null("")))
    reasons = [
        "missing_prompt" if not (p or "").strip() else r
        for p, r in zip(df["prompt"], judged["reason"], strict=True)
    ]
    reasons = run_gates(spec, judged, reasons, pools, leaks)
    judged = judged.with_columns(
        pl.Series("reason", reasons, dtype=pl.String),
        pl.lit(spec.acceptance.verifier.kind).alias("verifier"),
        pl.Series("text_hash", hashes(judged), dtype=pl.String),
    )
    ok = pl.col("reason").is_null()
    accepted = judged.filter(ok).select(*df.columns, "response", "verifier", "score", "text_hash")
    rejected = judged.filter(~ok).select(*df.columns, "verifier", "score", "reason")
    pairs = preference_pairs(judged, cycle)
    meta = _manifest(spec, cycle, generations, judged, accepted, pairs, pools, key)
    with ShardWriter(root) as writer:
        writer.write(accepted)
        writer.write_aux("rejected", rejected)
        writer.write_aux("preference_pairs", pairs)
        shards = writer.commit(inputs=P.versions(handed), **meta)
    _record(spec, cycle, judged, shards)
    return Built(shards, _flat(shards.manifest))


def _load(generations: ShardSet) -> pl.DataFrame:
    df = generations.read()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"generations {generations.path} lack columns {missing}")
    # Sets written before a column existed: no reference answer; the conversation is the
    # prompt alone (a null ``messages`` reads as one user turn: ``chat.answered``).
    for column in ("answer", "messages"):
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    repeated = df["generation_id"].filter(df["generation_id"].is_duplicated()).unique()
    if repeated.len():
        raise ValueError(
            f"generations {generations.path} repeat generation_id(s) "
            f"{repeated.head(SAMPLE).to_list()}; each generation needs its own id"
        )
    order = [c for c in ("prompt_id", "sample_index") if c in df.columns]
    return df.sort(order, maintain_order=True, nulls_last=True)


def _key(spec: Spec, generations: ShardSet, pools: Pools, leaks: set[str]) -> dict[str, str]:
    """What decides the accepted set (``flywheel.core.keys``): equal keys mean re-accepting
    would change nothing. A python verifier's module source counts: a fixed verifier
    re-judges."""
    settings = spec.acceptance
    sections: dict[str, Any] = {"acceptance": settings}
    if settings.filters.use_document_filters:
        sections["filters"] = spec.filters
    if settings.near_dedup:
        sections["dedup"] = spec.dedup
    data = {"eval prompts": keys.digest_bytes("\n".join(sorted(leaks)).encode())}
    verifier = settings.verifier
    if verifier.kind == "python" and verifier.function:
        data["verifier source"] = keys.module_digest(verifier.function)
    model = verifier.reward_model
    if verifier.kind == "reward_model" and model is not None and model.is_dir():
        # Name, size and mtime of every file: a retrained model in the same directory counts
        # (hashing the weights of a large model on every run would cost more than judging).
        files = sorted(
            (str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in model.rglob("*")
            if p.is_file()
        )
        data["reward model"] = keys.digest_bytes(json.dumps(files).encode())
    inputs = {P.GENERATIONS: generations.version, **pools.versions}
    return keys.make_key(inputs, sections, data)


# -- preference pairs, metadata, catalog -------------------------------------------------
PAIR_SCHEMA = {
    "prompt_id": pl.String,
    "prompt": pl.String,
    "messages": pl.String,  # the conversation both sides continue (JSON; null: the prompt)
    "chosen": pl.String,
    "rejected": pl.String,
    "chosen_generation_id": pl.String,
    "rejected_generation_id": pl.String,
    "cycle": pl.Int64,
}


# Rejections that are not a verdict on the text: no pair may use them as the rejected side.
UNJUDGED = ("verifier_error", "no_reference", "missing_prompt")


def preference_pairs(judged: pl.DataFrame, cycle: int) -> pl.DataFrame:
    """(accepted response, verifier-rejected completion) pairs of one prompt, distinct texts.

    Only a verifier's judgement makes a rejected side: a completion refused by a later gate
    (a duplicate, a filter) or by a verifier error says nothing about which answer is better.
    """
    chosen: dict[Any, list[dict[str, Any]]] = {}
    losers: dict[Any, dict[str, str]] = {}  # per prompt: normalized text -> generation_id
    texts: dict[str, str] = {}
    for row in judged.iter_rows(named=True):
        pid, reason = row["prompt_id"], row["reason"]
        if reason is None:
            chosen.setdefault(pid, []).append(row)
        elif not row["verified"] and not reason.startswith(UNJUDGED):
            text = (row["completion"] or "").strip()
            losers.setdefault(pid, {}).setdefault(normalize(text), row["generation_id"])
            texts[row["generation_id"]] = text
    pairs = []
    for pid, winners in chosen.items():
        for win in winners:
            for norm, gid in losers.get(pid, {}).items():
                if norm != normalize(win["response"]):
                    pairs.append(
                        {
                            "prompt_id": str(pid),
                            "prompt": win["prompt"],
                            "messages": win["messages"],
                            "chosen": win["response"],
                            "rejected": texts[gid],
                            "chosen_generation_id": str(win["generation_id"]),
                            "rejected_generation_id": str(gid),
                            "cycle": cycle,
                        }
                    )
    return pl.DataFrame(pairs, schema=PAIR_SCHEMA)


def _manifest(
    spec: Spec,
    cycle: int,
    generations: ShardSet,
    judged: pl.DataFrame,
    accepted: pl.DataFrame,
    pairs: pl.DataFrame,
    pools: Pools,
    key: dict[str, Any],
) -> dict[str, Any]:
    reasons = Counter(r.split(": ", 1)[0] for r in judged["reason"].drop_nulls())
    n = judged.height
    with_ref = accepted.filter(pl.col("answer").is_not_null())
    precision = None
    if with_ref.height:
        hits = sum(
            r.strip() == a.strip()
            for r, a in zip(with_ref["response"], with_ref["answer"].cast(pl.String), strict=True)
        )
        precision = hits / with_ref.height
    return {
        "cycle": cycle,
        "generations_version": generations.version,
        "generations": n,
        "accepted": accepted.height,
        "rejected": n - accepted.height,
        "reasons": dict(sorted(reasons.items())),  # rejected rows by reason (before ": ")
        "preference_pairs": pairs.height,
        "prompts": judged["prompt_id"].n_unique(),
        "prompts_with_accepted": accepted["prompt_id"].n_unique(),
        "accept_rate": accepted.height / n if n else None,
        # Share of accepted rows (with a reference) whose response is the reference: how
        # often a reference-free verifier's labels are right, where references exist.
        "label_precision": precision,
        "acceptance": spec.acceptance.model_dump(mode="json"),
        **keys.key_meta(accepted_root(spec, cycle), key),
        "spec": spec.resolved(),
    }


COUNTS = ("generations", "accepted", "rejected", "preference_pairs", "prompts")


def _flat(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's numbers as flat metadata: counts, ``rejected/<reason>``, rates."""
    flat = {k: manifest[k] for k in ("cycle", "version", "generations_version", *COUNTS)}
    flat["prompts_with_accepted"] = manifest["prompts_with_accepted"]
    flat |= {f"rejected/{r}": k for r, k in manifest["reasons"].items()}
    flat["verifier"] = manifest["acceptance"]["verifier"]["kind"]
    flat["build_changes"] = "; ".join(manifest.get(keys.CHANGES, []))
    for rate in ("accept_rate", "label_precision"):
        if manifest.get(rate) is not None:
            flat[rate] = manifest[rate]
    return flat


def _record(spec: Spec, cycle: int, judged: pl.DataFrame, shards: ShardSet) -> None:
    decisions = judged.select(
        pl.col("generation_id").cast(pl.String),
        pl.col("prompt_id").cast(pl.String),
        pl.col("checkpoint").cast(pl.String),
        pl.when(pl.col("reason").is_null())
        .then(pl.lit("accepted"))
        .otherwise(pl.lit("rejected"))
        .alias("status"),
        "reason",
    )
    catalog = Catalog.open(spec.catalog)
    catalog.record_generations(cycle, decisions, shards.version)
    catalog.record_materialization(
        PRODUCT, shards.version, spec.fingerprint(), _flat(shards.manifest)
    )


# -- guard checks ------------------------------------------------------------------------
def _current_pools(spec: Spec, cycle: int, own_ids: set[str]) -> Pools:
    """The pools as they are now (a check looks at the data, not at what acceptance was
    handed): earlier cycles' accepted sets and the cycle's training set, where published."""
    roots = {P.of_cycle(P.ACCEPTED, k): accepted_root(spec, k) for k in range(cycle)}
    roots[P.TRAINING_SET] = training_set_root(spec, cycle)
    return load_pools(
        {n: read_current(r) for n, r in roots.items() if has_current(r)}, cycle, own_ids
    )


def accepted_checks(spec: Spec, cycle: int) -> list[CheckOutcome]:
    """not_empty, no_eval_prompts, no_duplicates on cycle ``cycle``'s current accepted set,
    recomputed from its rows (not from what acceptance claims about them)."""
    shards = read_current(accepted_root(spec, cycle))
    df = shards.read()
    meta = {"version": shards.version, "rows": df.height}
    outcomes = [
        CheckOutcome(
            "not_empty",
            df.height > 0,
            f"{df.height} accepted row(s)" if df.height else "no generation was accepted",
            meta,
        )
    ]
    leaks = eval_prompts(spec)
    leaked = df.filter(pl.col("prompt").str.strip_chars().is_in(list(leaks)))
    outcomes.append(
        CheckOutcome(
            "no_eval_prompts",
            leaked.height == 0,
            f"{leaked.height} accepted row(s) on an eval prompt",
            {**meta, "leaked": leaked.height, "examples": leaked["prompt"].head(SAMPLE).to_list()},
        )
    )
    rows = hashes(df)
    pools = _current_pools(spec, cycle, set(df["generation_id"].cast(pl.String).to_list()))
    earlier, training = set(hashes(pools.accepted)), set(hashes(pools.training))
    within = len(rows) - len(set(rows))
    n_earlier = sum(h in earlier for h in rows)
    n_training = sum(h in training for h in rows)
    seen = Counter(rows)
    bad = [
        p
        for p, h in zip(df["prompt"], rows, strict=True)
        if h in earlier or h in training or seen[h] > 1
    ]
    outcomes.append(
        CheckOutcome(
            "no_duplicates",
            within + n_earlier + n_training == 0,
            f"{within} repeated within the set, {n_earlier} of earlier accepted sets, "
            f"{n_training} of the training set",
            {
                **meta,
                "within_set": within,
                "of_earlier_accepted": n_earlier,
                "of_training_set": n_training,
                "examples": bad[:SAMPLE],
                **pools.versions,
            },
        )
    )
    return outcomes
