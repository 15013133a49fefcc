"""Flywheel cycles: where each cycle's data products live, and who the champion is.

    flywheel report [--json]          the per-cycle table

Cycle 0 is the seed: its training set is ``sft.data`` and its checkpoint is the current
``sft_checkpoint``. Cycle ``c >= 1`` fine-tunes the champion on cycle ``c-1``'s training set
plus the generations accepted since; the candidate is evaluated and promoted only if it beats
the champion on ``cycles.gate``; then the champion generates cycle ``c``'s data. Every cycle's
products live under ``<data_dir>/cycles/<c>/``:

    training_set/   shard set: prompt_id, prompt, response, messages (the whole conversation
                    SFT trains on), origin, cycle_added, generation_id
    checkpoint/     published model (flywheel.core.artifacts), the cycle's candidate
    eval/           published eval report (eval.json)
    generations/    shard set: every sampled completion and how it was made
    accepted/       shard set: accepted generations; aux tables rejected, preference_pairs
    trajectories/   shard set (only with an ``agent`` section): the champion's episodes
    accepted_trajectories/  shard set: accepted trajectories; aux table rejected

The loop's record is in the catalog alone (``flywheel.core.loop_record``): the promotion
decisions (the champion is the newest promoted candidate, ``flywheel.loop.promotion``) and
every finished cycle run (``flywheel.loop.runs``).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core import artifacts, chat, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import ShardSet, ShardWriter, has_current, read_current
from flywheel.core.spec import Spec

CYCLES = "cycles"
log = logging.getLogger(__name__)
PROMOTED, SFT = P.PROMOTED, P.SFT


def cycle_dir(spec: Spec, cycle: int) -> Path:
    if cycle < 0:
        raise ValueError(f"cycle must be >= 0, got {cycle}")
    return spec.data_dir / CYCLES / str(cycle)


def training_set_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "training_set"


def checkpoint_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "checkpoint"


def eval_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "eval"


def generations_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "generations"


def accepted_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "accepted"


def trajectories_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "trajectories"


def accepted_trajectories_root(spec: Spec, cycle: int) -> Path:
    return cycle_dir(spec, cycle) / "accepted_trajectories"


def promoted_dir(spec: Spec) -> Path:
    """Holds only the lock that serializes promotion decisions (they are in the catalog)."""
    return spec.data_dir / PROMOTED


# -- a cycle's inputs ----------------------------------------------------------------------
def product_root(spec: Spec, name: str, cycle: int) -> Path:
    """Where product ``name`` of cycle ``cycle`` is published; a product that is not per
    cycle, at its own place. Cycle 0's checkpoint is the seed SFT checkpoint, adopted."""
    roots = {
        P.TRAINING_SET: training_set_root,
        P.CYCLE_CHECKPOINT: checkpoint_root,
        P.CYCLE_EVAL: eval_root,
        P.GENERATIONS: generations_root,
        P.ACCEPTED: accepted_root,
        P.TRAJECTORIES: trajectories_root,
        P.ACCEPTED_TRAJECTORIES: accepted_trajectories_root,
    }
    if name == P.CYCLE_CHECKPOINT and cycle == 0:
        return spec.product_dir(SFT)
    return roots[name](spec, cycle) if name in roots else spec.product_dir(name)


def cycle_reads(spec: Spec, product: str, cycle: int) -> tuple[list[str], list[str]]:
    """The inputs ``product`` reads at ``cycle``: (required, optional). Its own cycle's
    products are named plainly (``flywheel.core.products.inputs``), earlier cycles' as
    ``products.of_cycle`` names them (``EARLIER_CYCLES``); an optional one is read where an
    earlier cycle published it (a cycle that accepted nothing has no accepted set)."""
    if product not in P.CYCLE_PRODUCTS:
        raise ValueError(f"{product} is not per cycle: resolve it with products.resolve_inputs")
    cycle_dir(spec, cycle)  # a negative cycle is an error
    if product == P.TRAINING_SET:  # cycle 0: the seed data, no product
        parents = sorted({cycle - 1, 0}) if cycle > 0 else []  # the parent, and seed replay
        optional = [P.of_cycle(P.accepted_product(spec), k) for k in range(cycle)]
        return [P.of_cycle(P.TRAINING_SET, k) for k in parents], optional
    if product == P.ACCEPTED:
        return P.inputs(product, spec), [P.of_cycle(P.ACCEPTED, k) for k in range(cycle)]
    if product in (P.CYCLE_EVAL, P.GENERATIONS, *P.AGENT_PRODUCTS):  # the champion after c
        return P.inputs(product, spec), []
    if product == P.PROMOTED:  # the eval, the candidate, and the champion it must beat
        before = [P.of_cycle(P.PROMOTED, cycle - 1)] if cycle > 0 else []
        return [*P.inputs(product, spec), *before], []
    if cycle == 0:  # the cycle's checkpoint: cycle 0 adopts the seed SFT checkpoint
        return [SFT], []
    return [P.TRAINING_SET, P.of_cycle(P.PROMOTED, cycle - 1)], _preference_reads(spec, cycle)


def _preference_reads(spec: Spec, cycle: int) -> list[str]:
    """What retraining's preference stage reads (``cycles.preference``): DPO, the pairs of
    every earlier accepted set; GRPO/RLOO, the prompts of cycle c-1's generations."""
    kind = spec.cycles.preference
    if kind == "none":
        return []
    if kind == "dpo":
        return [P.of_cycle(P.ACCEPTED, k) for k in range(cycle)]
    return [P.of_cycle(P.GENERATIONS, cycle - 1)]


def read_champion(
    spec: Spec, cycle: int, version: str | None = None, deep: bool = True
) -> artifacts.Artifact:
    """The champion cycle ``cycle``'s decision left: the newest candidate promoted at or
    before it (``promoted_model`` of that cycle); with ``version``, that decided candidate."""
    done = Catalog.open(spec.catalog).decisions()
    if version is None:
        found = [d for d in done if d.promoted and d.cycle <= cycle]
        missing = f"no model was promoted up to cycle {cycle}: materialize cycle 0 first"
    else:
        found = [d for d in done if d.candidate == version]
        missing = f"no cycle decided on candidate {version}: it was never a champion"
    if not found:
        raise FileNotFoundError(missing)
    return artifacts.verify(Path(found[-1].candidate_path), deep=deep)


def cycle_inputs(
    spec: Spec,
    product: str,
    cycle: int,
    pinned: Mapping[str, str] | None = None,
    deep: bool | None = None,
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The versions of ``product``'s inputs at ``cycle`` (``cycle_reads``): ``pinned[name]``
    where given, else CURRENT (``promoted_model``: the champion the cycle's decision left,
    ``read_champion``). ``given``: inputs already read, taken as they are (by hand: a
    checkpoint directory). A required one that was never published is an error that says
    which cycle to run first."""
    required, optional = cycle_reads(spec, product, cycle)
    pinned, given = dict(pinned or {}), dict(given or {})
    unknown = sorted({*pinned, *given} - {*required, *optional})
    if unknown:
        raise P.InputError(
            f"cycle {cycle}'s {product} does not read {', '.join(unknown)}; "
            f"it reads {[*required, *optional]}"
        )
    handed: dict[str, Any] = {}
    for name in [*required, *optional]:
        base, _, earlier = name.partition("/")
        k = int(earlier) if earlier else cycle
        if name in given or base == P.PROMOTED:  # the champion is a decision, not a folder
            found = given.get(name)
            handed[name] = found or read_champion(spec, k, pinned.get(name), deep is not False)
            continue
        root = product_root(spec, base, k)
        if name not in pinned and not has_current(root):
            if name in optional:
                continue
            raise FileNotFoundError(
                f"cycle {cycle}'s {product} reads {base} of cycle {k}: nothing published under "
                f"{root}; materialize cycle {k}'s {base} first"
            )
        handed[name] = P.read_at(root, base, pinned.get(name), deep)
    return handed


def check_cycle_inputs(spec: Spec, product: str, cycle: int, handed: Mapping[str, Any]) -> None:
    """Raise ``products.InputError`` unless ``handed`` is a set ``cycle_inputs`` could give."""
    required, optional = cycle_reads(spec, product, cycle)
    hint = f"cycle_inputs(spec, {product!r}, {cycle}) (flywheel.loop.cycles)"
    P.check_inputs(product, spec, handed, required, optional, hint)


# -- training sets -------------------------------------------------------------------------
TRAINING_COLUMNS = {
    "prompt_id": pl.String,  # chat.conversation_id of the conversation before the response
    "prompt": pl.String,  # its last user turn: for tables, filters and dedup
    "response": pl.String,  # the last assistant turn: what acceptance judged
    "messages": pl.String,  # the whole conversation, response included (JSON): what SFT trains
    "origin": pl.String,
    "cycle_added": pl.Int64,
    "generation_id": pl.String,
}


class NothingToTrain(RuntimeError):
    """A cycle was asked for, but no accepted generation is new since its parent cycle."""


def _seed_rows(spec: Spec) -> tuple[pl.DataFrame, str]:
    from flywheel.train.sft_data import load_sft_data

    if spec.vision is not None:  # conversations about the curated images
        from flywheel.loop.vision.data import seed_data, seed_prompt_id, seed_question

        data, ids, last_user = seed_data(spec), seed_prompt_id, seed_question
    else:
        data = load_sft_data(spec.sft.data)
        ids, last_user = chat.conversation_id, chat.last_user
    rows = []
    for example in data.examples:
        messages = example["messages"]  # every turn, the system turn too: trained as is
        rows.append(
            {
                "prompt_id": ids(messages[:-1]),
                "prompt": last_user(messages),
                "response": messages[-1]["content"],
                "messages": chat.dumps(messages),
                "origin": "seed",
                "cycle_added": 0,
                "generation_id": None,
            }
        )
    return pl.DataFrame(rows, schema=TRAINING_COLUMNS), data.source


def _accepted_since(
    accepted: Mapping[int, ShardSet], seen: set[str]
) -> tuple[pl.DataFrame, dict[str, str]]:
    """The rows of the accepted sets (``{cycle: set}``) not yet in the parent training set."""
    frames, versions = [], {}
    for k, shards in sorted(accepted.items()):
        versions[str(k)] = shards.version
        if "completion_mask" in shards.schema:  # accepted trajectories: whole episodes
            from flywheel.loop.agents.trajectories import training_rows

            df, origin = training_rows(shards.read()), "trajectory"
        else:
            columns = ["prompt_id", "prompt", "response", "generation_id", "messages"]
            df = shards.read([c for c in columns if c in shards.schema])
            df, origin = df.with_columns(_trained_messages(df)), "generation"
        df = df.filter(~pl.col("generation_id").is_in(list(seen)))
        frames.append(
            df.with_columns(
                pl.lit(origin).alias("origin"), pl.lit(k, pl.Int64).alias("cycle_added")
            )
        )
    new = pl.concat(frames) if frames else pl.DataFrame(schema=TRAINING_COLUMNS)
    return new.select(list(TRAINING_COLUMNS)).cast(TRAINING_COLUMNS), versions


def _trained_messages(accepted: pl.DataFrame) -> pl.Series:
    """The ``messages`` of accepted rows as training rows: the conversation the generation
    continued plus the accepted response (a set without conversations: the prompt alone)."""
    has = "messages" in accepted.columns
    conversations = accepted["messages"] if has else [None] * accepted.height
    rows = zip(conversations, accepted["prompt"], accepted["response"], strict=True)
    return pl.Series("messages", [chat.answered(*row) for row in rows], dtype=pl.String)


def _read_rows(training_set: ShardSet) -> pl.DataFrame:
    """A training set's rows as ``TRAINING_COLUMNS`` (a set written before ``messages``
    existed holds one user turn and its response per row)."""
    if "messages" in training_set.schema:
        return training_set.read(list(TRAINING_COLUMNS))
    df = training_set.read([c for c in TRAINING_COLUMNS if c != "messages"])
    return df.with_columns(_trained_messages(df)).select(list(TRAINING_COLUMNS))


def _accepted_of(handed: Mapping[str, Any], cycle: int) -> dict[int, ShardSet]:
    """The earlier cycles' accepted sets among ``handed``, by cycle."""
    found = {}
    for k in range(cycle):
        for product in (P.ACCEPTED, P.ACCEPTED_TRAJECTORIES):  # one of them, per the spec
            if (name := P.of_cycle(product, k)) in handed:
                found[k] = handed[name]
    return found


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Exclusive use of ``folder`` across processes (waits for the holder; freed on exit,
    also on kill -9): two runs of one cycle build or decide one after the other."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_training_set(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> ShardSet:
    """Cycle 0: the seed SFT data. Cycle c: cycle c-1's training set plus every accepted
    generation not in it yet; an error if there is none (never retrain on the same data).
    ``handed``: the inputs ``cycle_inputs(spec, "training_set", cycle)`` gives, recorded as the
    set's ``inputs``. It is keyed by its seed data's content (cycle 0) or input versions
    (``flywheel.loop.cycle_keys.training_set_key``): the same key reuses the current set, a
    new one builds a new version that records what changed. Two runs of the same cycle at
    once build it once: the second waits and reuses it."""
    check_cycle_inputs(spec, P.TRAINING_SET, cycle, handed)
    with locked(training_set_root(spec, cycle)):
        return _build_training_set(spec, cycle, handed)


def _build_training_set(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> ShardSet:
    from flywheel.loop.cycle_keys import training_set_key

    root = training_set_root(spec, cycle)
    key = training_set_key(spec, cycle, handed)  # a stale seed set is an error here
    found = keys.reusable(root, key)
    if found is not None:  # the same seed data, parents, accepted sets and settings
        return ShardSet(found)
    if cycle == 0:
        df, source = _seed_rows(spec)
        about = {"cycle": 0, "parent_cycle": None, "parent_version": None, "seed": source}
        new_rows = df.height
    else:
        parent = handed[P.of_cycle(P.TRAINING_SET, cycle - 1)]
        parent_df = _read_rows(parent)
        seen = set(parent_df["generation_id"].drop_nulls().to_list())
        new, versions = _accepted_since(_accepted_of(handed, cycle), seen)
        about = {
            "cycle": cycle,
            "parent_cycle": cycle - 1,
            "parent_version": parent.version,
            "accepted_versions": versions,
            "seed_replay": spec.cycles.seed_replay,
        }
        if new.height == 0:
            raise NothingToTrain(
                f"cycle {cycle}: no accepted generation is new since cycle {cycle - 1}'s "
                f"training set {parent.version}; nothing to retrain on"
            )
        generated = parent_df.filter(pl.col("origin") != "seed")
        seed = replayed_seed(spec, cycle, handed[P.of_cycle(P.TRAINING_SET, 0)])
        df, new_rows = pl.concat([seed, generated, new]), new.height
    counts = df["origin"].value_counts()
    by_origin = dict(zip(counts["origin"].to_list(), counts["count"].to_list(), strict=True))
    built = keys.key_meta(root, key)
    with ShardWriter(root) as writer:
        writer.write(df)
        shards = writer.commit(
            inputs=P.versions(handed),
            **about,
            **built,
            rows=df.height,
            new_rows=new_rows,
            seed_rows=int(by_origin.get("seed", 0)),
            generation_rows=df.height - int(by_origin.get("seed", 0)),  # or trajectories
            spec_fingerprint=spec.fingerprint(),
        )
    if built[keys.CHANGES]:
        log.warning("cycle %d's training set rebuilt: %s", cycle, "; ".join(built[keys.CHANGES]))
    Catalog.open(spec.catalog).record_training_set(shards.version, shards.manifest, df)
    return shards


def replayed_seed(spec: Spec, cycle: int, seed_set: ShardSet) -> pl.DataFrame:
    """Cycle 0's seed rows (of ``seed_set``, its training set), or a sample of
    ``cycles.seed_replay`` of them drawn with seed ``cycle`` (a different sample each cycle,
    the same one on every rerun)."""
    seed = _read_rows(seed_set)
    seed = seed.filter(pl.col("origin") == "seed")
    n = spec.cycles.seed_replay
    if n is None or n >= seed.height:
        return seed
    return seed.sample(n, seed=cycle, shuffle=False)


def new_accepted_rows(spec: Spec, cycle: int) -> int:
    """Accepted generations that cycle ``cycle``'s training set would add to cycle-1's."""
    parent_root = training_set_root(spec, cycle - 1)
    if cycle < 1 or not has_current(parent_root):
        return 0
    parent = read_current(parent_root).read(["generation_id"])
    seen = set(parent["generation_id"].drop_nulls().to_list())
    root_of = accepted_trajectories_root if spec.agent is not None else accepted_root
    roots = {k: root_of(spec, k) for k in range(cycle)}
    accepted = {k: read_current(root) for k, root in roots.items() if has_current(root)}
    return _accepted_since(accepted, seen)[0].height
