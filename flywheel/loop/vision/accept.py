"""Cycle ``c``'s accepted answers of the VLM: ``accepted_generations`` with a ``vision`` section.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop import cycles; \
from flywheel.loop.vision.accept import accept_answers as a; s = load_spec(); \
print(a(s, 1, cycles.cycle_inputs(s, 'accepted_generations', 1)).metadata)"

Each sampled answer is judged by the task's numeric verifier (``visual_task.score``: the first
number must be the count), in (image, sample) order; then the held-out guard (an image whose
pixels are a held-out eval image: ``eval_image``), dedup of (image, answer) against this cycle
and every earlier accepted set (``duplicate``), and at most ``vision.max_per_image`` accepted
answers per image (``over_max_per_image``). Text dedup on (prompt, response) would not do:
every row asks the same question and many answers are the same number; the image is the
prompt. Accepted rows keep ``image_id``, so training sets read the pixels back, and the
metadata carries a thumbnail gallery of accepted answers for the UI. Rejected rows are the
aux table ``rejected`` with their reason; aux ``preference_pairs`` pairs each accepted answer
with each distinct answer the verifier refused for the same image and question (the text
loop's pairs plus ``image_id``: ``cycles.preference: dpo`` trains on them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import polars as pl

from flywheel.core import keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import Built, ShardSet, ShardWriter, has_current, read_current
from flywheel.core.spec import Spec
from flywheel.data.images.pipeline import gallery
from flywheel.data.images.store import ImageStore
from flywheel.data.visual import image_id
from flywheel.loop.accept import PAIR_SCHEMA, UNJUDGED, CheckOutcome
from flywheel.loop.cycles import accepted_root, check_cycle_inputs
from flywheel.loop.vision.data import heldout, vision_settings
from flywheel.loop.visual_task import score

COLUMNS = ["generation_id", "prompt_id", "prompt", "response", "messages", "image_id"]
GATES = ("eval_image", "duplicate", "over_max_per_image")  # refusals that judge no answer
VISION_PAIRS = {**PAIR_SCHEMA, "image_id": pl.String}


def _judge(
    df: pl.DataFrame, held: set[str], store: ImageStore, seen: set[tuple[str, str]], per_image: int
) -> list[str | None]:
    """The reason each row is rejected, or None: accepted."""
    problems = [{"prompt": p, "answer": a} for p, a in zip(df["prompt"], df["answer"], strict=True)]
    verdicts = score(problems, df["completion"].to_list())
    is_held = {i: image_id(store.load(i).image) in held for i in df["image_id"].unique()}
    kept: Counter[str] = Counter()
    reasons: list[str | None] = []
    for row, (ok, why) in zip(df.iter_rows(named=True), verdicts, strict=True):
        pair = (row["image_id"], row["completion"].strip())
        if not ok:
            reason = why or "wrong_answer"
        elif is_held[row["image_id"]]:
            reason = "eval_image"
        elif pair in seen:
            reason = "duplicate"
        elif kept[row["image_id"]] >= per_image:
            reason = "over_max_per_image"
        else:
            reason = None
            seen.add(pair)
            kept[row["image_id"]] += 1
        reasons.append(reason)
    return reasons


def accept_answers(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> Built:
    """Split the handed generations into accepted (the shards) and rejected (aux table)."""
    check_cycle_inputs(spec, P.ACCEPTED, cycle, handed)
    s, generations = vision_settings(spec), handed[P.GENERATIONS]
    root = accepted_root(spec, cycle)
    key = keys.make_key(P.versions(handed), {"vision": s})
    store = ImageStore(spec.image_store_dir)
    found = keys.reusable(root, key)
    if found is not None:
        shards = ShardSet(found)
        return Built(shards, _metadata(shards, store), reused=True)
    seen: set[tuple[str, str]] = set()
    for k in range(cycle):  # never accept what an earlier cycle accepted
        if (name := P.of_cycle(P.ACCEPTED, k)) in handed:
            earlier = handed[name].read(["image_id", "response"])
            seen |= {(i, r.strip()) for i, r in earlier.iter_rows()}
    df = generations.read().sort("prompt_id", "sample_index")
    df = df.with_columns(pl.Series("reason", _judge(df, heldout(s), store, seen, s.max_per_image)))
    accepted = df.filter(pl.col("reason").is_null()).rename({"completion": "response"})
    rejected = df.filter(pl.col("reason").is_not_null())
    reasons = dict(sorted(Counter(rejected["reason"].to_list()).items()))
    pairs = preference_pairs(df, cycle)
    n = df.height
    with ShardWriter(root) as writer:
        writer.write(accepted.select(COLUMNS))
        writer.write_aux("rejected", rejected)
        writer.write_aux("preference_pairs", pairs)
        shards = writer.commit(
            inputs=P.versions(handed),
            cycle=cycle,
            accepted=accepted.height,
            rejected=rejected.height,
            preference_pairs=pairs.height,
            reasons=reasons,
            accept_rate=accepted.height / n if n else None,
            **keys.key_meta(root, key),
            spec_fingerprint=spec.fingerprint(),
        )
    _record(spec, cycle, df, shards)
    return Built(shards, _metadata(shards, store))


def preference_pairs(judged: pl.DataFrame, cycle: int) -> pl.DataFrame:
    """(accepted answer, verifier-refused answer) pairs of one image and question, distinct
    texts. As in the text loop only the verifier's verdict makes a rejected side: a duplicate
    or an answer over the per-image cap is not a worse answer."""
    chosen: dict[str, list[dict[str, Any]]] = {}
    losers: dict[str, dict[str, str]] = {}  # per prompt: stripped text -> generation_id
    for row in judged.iter_rows(named=True):
        reason, text = row["reason"], row["completion"].strip()
        if reason is None:
            chosen.setdefault(row["prompt_id"], []).append(row)
        elif reason not in GATES and not reason.startswith(UNJUDGED):
            losers.setdefault(row["prompt_id"], {}).setdefault(text, row["generation_id"])
    pairs = [
        {
            "prompt_id": win["prompt_id"],
            "prompt": win["prompt"],
            "messages": win["messages"],
            "chosen": win["completion"],
            "rejected": text,
            "chosen_generation_id": win["generation_id"],
            "rejected_generation_id": gid,
            "cycle": cycle,
            "image_id": win["image_id"],
        }
        for pid, winners in chosen.items()
        for win in winners
        for text, gid in losers.get(pid, {}).items()
        if text != win["completion"].strip()
    ]
    return pl.DataFrame(pairs, schema=VISION_PAIRS)


def _record(spec: Spec, cycle: int, judged: pl.DataFrame, shards: ShardSet) -> None:
    """Each answer's verdict in the catalog, as text acceptance records them:
    ``flywheel lineage <generation_id>`` says who answered, why it was kept or not."""
    accepted = pl.col("reason").is_null()
    status = pl.when(accepted).then(pl.lit("accepted")).otherwise(pl.lit("rejected"))
    decisions = judged.select(
        "generation_id", "prompt_id", "checkpoint", status.alias("status"), "reason"
    )
    catalog = Catalog.open(spec.catalog)
    catalog.record_generations(cycle, decisions, shards.version)
    catalog.record_materialization(
        P.ACCEPTED, shards.version, spec.fingerprint(), _metadata(shards, None)
    )


def _metadata(shards: ShardSet, store: ImageStore | None) -> dict[str, Any]:
    """The counts, and (with ``store``) a ``preview`` of accepted answers as thumbnails."""
    m = shards.manifest
    meta: dict[str, Any] = {
        "cycle": m["cycle"],
        "accepted": m["accepted"],
        "rejected": m["rejected"],
    }
    meta |= {f"rejected/{r}": c for r, c in m["reasons"].items()}
    if "preference_pairs" in m:  # sets written before pairs were have none
        meta["preference_pairs"] = m["preference_pairs"]
    if m.get("accept_rate") is not None:
        meta["accept_rate"] = m["accept_rate"]
    if store is not None:  # markdown thumbnails, as the image assets' previews
        rows = shards.read(["image_id", "response", "generation_id"])
        rows = rows.rename({"response": "text", "generation_id": "id"})
        meta["preview"] = gallery(rows, store, title="accepted answers")
    return meta


def answer_checks(spec: Spec, cycle: int) -> list[CheckOutcome]:
    """not_empty, no_eval_prompts (no held-out image), no_duplicates ((image, answer) once)."""
    root = accepted_root(spec, cycle)
    if not has_current(root):
        return []
    df = read_current(root).read(["image_id", "response"])
    store, held = ImageStore(spec.image_store_dir), heldout(vision_settings(spec))
    leaked = sum(image_id(store.load(i).image) in held for i in df["image_id"].unique())
    dupes = df.height - df.unique(["image_id", "response"]).height
    return [
        CheckOutcome("not_empty", df.height > 0, f"{df.height} accepted answer(s)"),
        CheckOutcome("no_eval_prompts", leaked == 0, f"{leaked} accepted held-out image(s)"),
        CheckOutcome("no_duplicates", dupes == 0, f"{dupes} repeated (image, answer) pair(s)"),
    ]
