"""The gates a cycle's verified generations pass after the verifier, and what they compare to.

    python -c "from flywheel.loop.accept_gates import text_hash; print(text_hash('2+2?', ' 4 '))"

``flywheel.loop.accept`` runs them in this order; the first that refuses a row gives its reason:
the leak guard (``eval_prompt``), quality filters (``filter:<name>: <why>``), exact dedup of
(prompt, response) against the pools and within the cycle, optional MinHash near-dedup of
responses, and the per-prompt cap. The pools are what a cycle must not repeat: every earlier
cycle's accepted set and the cycle's training set. ``accepted_checks`` uses
the same hashes and pools, so the checks and the gates agree on what a duplicate is.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from flywheel.core import products as P
from flywheel.core.settings.loop import GenerationFilters
from flywheel.core.spec import Spec
from flywheel.data.dedup.minhash import jaccard, normalize, shingles
from flywheel.data.filters import Filter, build_filters
from flywheel.data.filters.gopher import non_blank_lines


def text_hash(prompt: str, response: str) -> str:
    """Hash of the normalized (lower-cased, whitespace-collapsed) prompt and response."""
    blob = normalize(prompt or "") + "\x1f" + normalize(response or "")
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class Pools:
    """What a cycle's accepted rows must not repeat: earlier accepted sets, the training set."""

    accepted: pl.DataFrame  # prompt, response of cycles k < c
    training: pl.DataFrame  # prompt, response of the newest training set k <= c
    versions: dict[str, str | None]


def load_pools(handed: Mapping[str, Any], cycle: int, own_ids: set[str]) -> Pools:
    """The pools for ``cycle`` from its inputs (``cycle_inputs(spec, "accepted_generations",
    cycle)``): every earlier accepted set handed, and the cycle's training set. Training rows
    made from this cycle's own generations (``own_ids``) are left out: they are this set's
    rows, not earlier data."""
    frames, versions = [], {}
    for k in range(cycle):
        shards = handed.get(P.of_cycle(P.ACCEPTED, k))
        if shards is not None:
            frames.append(shards.read(["prompt", "response"]))
            versions[f"accepted/{k}"] = shards.version
    empty = pl.DataFrame(schema={"prompt": pl.String, "response": pl.String})
    training, versions[P.TRAINING_SET] = empty, None
    if P.TRAINING_SET in handed:  # the stage is always handed one; a check may find none
        shards = handed[P.TRAINING_SET]
        df = shards.read()
        if "generation_id" in df.columns and own_ids:
            df = df.filter(~pl.col("generation_id").is_in(list(own_ids)).fill_null(False))
        training = df.select("prompt", "response")
        versions[P.TRAINING_SET] = f"{cycle}/{shards.version}"
    accepted = pl.concat(frames) if frames else empty
    return Pools(accepted, training, versions)


def hashes(df: pl.DataFrame) -> list[str]:
    return [text_hash(p, r) for p, r in zip(df["prompt"], df["response"], strict=True)]


def run_gates(
    spec: Spec, judged: pl.DataFrame, reasons: list[str | None], pools: Pools, leaks: set[str]
) -> list[str | None]:
    """Each row's reason after the gates (None: accepted), given the verifier's ``reasons``;
    ``judged`` is in acceptance order (prompt_id, sample_index) with its ``response``."""
    settings = spec.acceptance
    prompts = judged["prompt"].to_list()
    responses = judged["response"].to_list()
    reasons = list(reasons)
    doc_filters = build_filters(spec.filters) if settings.filters.use_document_filters else []
    for i, prompt in enumerate(prompts):
        if reasons[i] is None and prompt.strip() in leaks:
            reasons[i] = "eval_prompt"
        if reasons[i] is None:
            reasons[i] = quality_reason(responses[i], settings.filters, doc_filters)
    exact_dedup(hashes(judged), reasons, pools)
    if settings.near_dedup:
        near_dedup(spec, responses, reasons, pools)
    per_prompt: Counter[Any] = Counter()
    for i, pid in enumerate(judged["prompt_id"].to_list()):
        if reasons[i] is None:
            per_prompt[pid] += 1
            if per_prompt[pid] > settings.max_per_prompt:
                reasons[i] = "over_max_per_prompt"
    return reasons


def repeated_line_fraction(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line (0 for no lines)."""
    lines = non_blank_lines(text)
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def quality_reason(text: str, s: GenerationFilters, doc_filters: list[Filter]) -> str | None:
    """Why ``text`` fails the generation filters, or None if it passes them all."""
    n = len(text)
    if n < s.min_chars:
        return f"filter:min_chars: {n} < {s.min_chars}"
    if n > s.max_chars:
        return f"filter:max_chars: {n} > {s.max_chars}"
    repeated = repeated_line_fraction(text)
    if repeated > s.max_repeated_line_fraction:
        return f"filter:repeated_lines: {repeated:.3g} > {s.max_repeated_line_fraction}"
    for f in doc_filters:
        kept, why = f.keep(text)
        if not kept:
            return f"filter:{f.name}: {why or 'rejected'}"
    return None


def exact_dedup(rows: list[str], reasons: list[str | None], pools: Pools) -> None:
    """Mark rows whose (prompt, response) hash is in a pool or on an earlier row (in place)."""
    earlier, training = set(hashes(pools.accepted)), set(hashes(pools.training))
    seen: set[str] = set()
    for i, h in enumerate(rows):
        if reasons[i] is not None:
            continue
        if h in earlier:
            reasons[i] = "duplicate_of_accepted"
        elif h in training:
            reasons[i] = "duplicate_of_training_set"
        elif h in seen:
            reasons[i] = "duplicate_in_cycle"
        seen.add(h)


def near_dedup(spec: Spec, responses: list[str], reasons: list[str | None], pools: Pools) -> None:
    """MinHash LSH over word-shingle sets of responses; an LSH candidate counts only if its
    exact shingle Jaccard is >= ``dedup.threshold`` (the index is small: exact is cheap).
    The (bands, rows) layout and its recall at the threshold: see ``flywheel.data.dedup.lsh``."""
    from datasketch import MinHash, MinHashLSH

    d = spec.dedup
    lsh = MinHashLSH(threshold=d.threshold, num_perm=d.num_perm, params=d.resolve_bands())
    sets: dict[str, set[tuple[str, ...]]] = {}

    def minhash(sh: set[tuple[str, ...]]) -> MinHash:
        m = MinHash(num_perm=d.num_perm, seed=d.seed)
        m.update_batch([" ".join(s).encode("utf-8", "surrogatepass") for s in sorted(sh)])
        return m

    pool = [*pools.accepted["response"].to_list(), *pools.training["response"].to_list()]
    for j, text in enumerate(pool):
        sh = shingles(text or "", d.ngram, d.lowercase)
        if sh:  # an empty text has no shingles and is never anyone's near-duplicate
            sets[f"pool{j}"] = sh
            lsh.insert(f"pool{j}", minhash(sh))
    for i, text in enumerate(responses):
        if reasons[i] is not None:
            continue
        sh = shingles(text, d.ngram, d.lowercase)
        if not sh:
            continue
        m = minhash(sh)
        if any(jaccard(sh, sets[c]) >= d.threshold for c in lsh.query(m)):
            reasons[i] = "near_duplicate"
        else:
            sets[f"row{i}"] = sh
            lsh.insert(f"row{i}", m)
