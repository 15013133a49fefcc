"""Sample completions from a checkpoint: the ``synthetic_generations`` data product of a cycle.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1   # its entry
    python -c "from flywheel.core.spec import load_spec; from flywheel.loop import cycles; \
from flywheel.loop.generate.generations import generate_cycle; s = load_spec('flywheel.yaml'); \
print(generate_cycle(s, 1, cycles.cycle_inputs(s, 'synthetic_generations', 1))['version'])"

``generate_cycle`` is handed the champion cycle ``N``'s decision left (``promoted_model``,
``flywheel.loop.cycles.cycle_inputs``), loads cycle ``N``'s prompts
(``generation.prompts``, eval prompts quarantined so they never reach training data), draws
``samples_per_prompt`` completions of each with ``generation.backend`` and commits a shard set
at ``<data_dir>/cycles/<N>/generations``: one row per completion (columns in ``SCHEMA``: the
conversation continued as ``messages`` JSON, its last user turn as ``prompt``), aux
table ``quarantine`` with the refused prompts, and a manifest that records the checkpoint (as
its ``inputs`` too), sampling, prompt source, counts and speed.

A rerun with the same checkpoint version, generation settings, cycle and prompts finds the
current set's build key (``generation_key``) equal, generates nothing and reports that set
again; any other key generates a new version whose manifest says what changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import polars as pl

from flywheel.core import artifacts, chat, keys
from flywheel.core import products as P
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.core.spec import Spec
from flywheel.loop.cycles import check_cycle_inputs, cycle_dir, generations_root
from flywheel.loop.generate.backends import open_backend
from flywheel.loop.generate.base import Completion, SamplingParams, sampling_params
from flywheel.loop.prompts import eval_prompts, load_prompts

PRODUCT = P.GENERATIONS
CHUNK_PROMPTS = 1024  # prompts per backend call: bounds memory and paces the progress log
SAMPLE_ROWS = 8  # rows shown in the materialization's markdown table
# Settings that change how fast or where requests go, not what is generated: editing them
# must not throw away a finished set.
BOOKKEEPING = {
    "endpoint": {"api_key_env": True, "timeout_s": True, "concurrency": True,
                 "serve": {"startup_timeout_s": True}},
}  # fmt: skip
SCHEMA: dict[str, Any] = {
    "generation_id": pl.String,
    "cycle": pl.Int64,
    "prompt_id": pl.String,
    "prompt": pl.String,  # the last user turn, for tables and filters
    "messages": pl.String,  # the whole conversation continued, as JSON (flywheel.core.chat)
    "answer": pl.String,
    "sample_index": pl.Int64,
    "greedy": pl.Boolean,
    "completion": pl.String,
    "finish_reason": pl.String,
    "checkpoint": pl.String,
    "backend": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "top_k": pl.Int64,
    "max_new_tokens": pl.Int64,
    "seed": pl.Int64,
}
QUARANTINE_SCHEMA = {"source": pl.String, "line": pl.Int64, "reason": pl.String, "raw": pl.String}


def generation_id(cycle: int, prompt_id: str, sample_index: int, checkpoint_version: str) -> str:
    return hashlib.sha1(
        f"{cycle}|{prompt_id}|{sample_index}|{checkpoint_version}".encode()
    ).hexdigest()[:16]


def generation_key(
    spec: Spec, cycle: int, handed: Mapping[str, Any], prompts: Loaded
) -> dict[str, str]:
    """What decides the generations (``flywheel.core.keys``): equal keys, equal shard sets (up
    to sampling noise across hardware). The champion's version, ``generation`` (less how
    requests are sent), the cycle, and the prompts' content: an edited prompt file or eval
    set counts, a moved one does not."""
    settings = spec.generation.model_dump(mode="json", exclude=BOOKKEEPING)
    settings["prompts"].pop("path", None)  # its content is the data:prompts part
    texts = [(e["prompt_id"], e["messages"], e["answer"]) for e in prompts.examples]
    data = {"prompts": keys.digest_bytes(json.dumps(texts).encode())}
    return keys.make_key(P.versions(handed), {"generation": settings}, data, cycle=cycle)


def fingerprint(key: Mapping[str, str]) -> str:
    """The key as one short hash, shown in the metadata."""
    return keys.fingerprint(key)


def generation_rows(
    examples: list[dict[str, Any]],
    completions: list[list[Completion]],
    cycle: int,
    version: str,
    backend: str,
    params: SamplingParams,
) -> pl.DataFrame:
    """One row per completion, in (prompt, sample_index) order, typed as ``SCHEMA``."""
    greedy = params.greedy
    rows = [
        {
            "generation_id": generation_id(cycle, ex["prompt_id"], j, version),
            "cycle": cycle,
            "prompt_id": ex["prompt_id"],
            "prompt": ex["prompt"],
            "messages": chat.dumps(ex["messages"]),
            "answer": ex["answer"],
            "sample_index": j,
            "greedy": greedy[j],
            "completion": c.text,
            "finish_reason": c.finish_reason,
            "checkpoint": version,
            "backend": backend,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "max_new_tokens": params.max_new_tokens,
            "seed": params.seed,
        }
        for ex, samples in zip(examples, completions, strict=True)
        for j, c in enumerate(samples)
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", "⏎")


def samples_table(df: pl.DataFrame, k: int = SAMPLE_ROWS) -> dict[str, str]:
    """A markdown table of the first rows, for the Dagster UI."""
    cols = ["prompt", "sample_index", "greedy", "completion", "finish_reason", "answer"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.head(k).select(cols).iter_rows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return {"raw_value": "\n".join(lines), "type": "md"}


def _metadata(shards: ShardSet, reused: bool) -> dict[str, Any]:
    m = shards.manifest
    return {
        "rows": shards.num_rows,
        "prompts": m["counts"]["prompts"],
        "samples_per_prompt": m["sampling"]["n"],
        "checkpoint": m["checkpoint"],
        "backend": m["backend"],
        "seconds": m["seconds"],
        "completions_per_s": m["completions_per_s"],
        "new_tokens": m["new_tokens"],
        "quarantined": m["counts"]["quarantined"],
        **{k: v for k, v in m["counts"].items() if k.startswith("quarantined/")},
        "fingerprint": m["fingerprint"],
        "reused": reused,
        "build_changes": "; ".join(m.get(keys.CHANGES, [])),
        "path": str(shards.path),
        "samples": samples_table(shards.scan().head(SAMPLE_ROWS).collect()),
    }


def _generate(
    spec: Spec, cycle: int, ckpt: artifacts.Artifact, prompts: Loaded, writer: ShardWriter,
    reporter: Reporter,
) -> dict[str, Any]:  # fmt: skip
    """Generate every prompt's completions into ``writer``; counts and timings."""
    examples, params = prompts.examples, sampling_params(spec.generation, cycle)
    logs = cycle_dir(spec, cycle) / "logs"  # a started server's log, beside the outputs
    started = time.monotonic()
    new_tokens = completions = 0
    with open_backend(spec.generation, ckpt.path, logs, spec.model.attn_implementation) as backend:
        ready = time.monotonic() - started
        reporter.info(f"backend {backend.name} ready in {ready:.1f}s")
        t0 = time.monotonic()
        for lo in range(0, len(examples), CHUNK_PROMPTS):
            chunk = examples[lo : lo + CHUNK_PROMPTS]
            out = backend.generate([e["messages"] for e in chunk], params)
            writer.write(generation_rows(chunk, out, cycle, ckpt.version, backend.name, params))
            completions += sum(len(samples) for samples in out)
            new_tokens += sum(c.tokens for samples in out for c in samples)
            reporter.info(f"generated {lo + len(chunk)}/{len(examples)} prompts")
        seconds = time.monotonic() - t0
    return {
        "seconds": round(seconds, 3),
        "backend_start_s": round(ready, 3),
        "completions_per_s": round(completions / seconds, 3) if seconds > 0 else 0.0,
        "new_tokens": new_tokens,
        "completions": completions,
        "sampling": asdict(params),
    }


def generate_cycle(
    spec: Spec, cycle: int, handed: Mapping[str, Any], reporter: Reporter | None = None
) -> dict[str, Any]:
    """Generate cycle ``cycle``'s completions from the champion; commit and report them.

    ``handed``: the inputs ``cycle_inputs(spec, "synthetic_generations", cycle)`` gives (the
    champion after cycle ``cycle``, ``promoted_model``), recorded as the set's ``inputs``.
    Returns ``{"version", "metadata", "reused"}``. ``reporter`` receives the logs and the
    materialization (default: plain logging).
    """
    check_cycle_inputs(spec, PRODUCT, cycle, handed)
    reporter = reporter or Reporter()
    ckpt: artifacts.Artifact = handed[P.PROMOTED]
    system = spec.generation.system_prompt
    prompts = load_prompts(spec.generation.prompts, cycle, eval_prompts(spec), system)
    for key, n in prompts.counts.items():
        if key.startswith("quarantined/"):
            reporter.warning(f"{n} prompt(s) quarantined as {key.split('/', 1)[1]}")
    root = generations_root(spec, cycle)
    key = generation_key(spec, cycle, handed, prompts)
    fp, found = fingerprint(key), keys.reusable(root, key)
    reused = found is not None
    if found is not None:
        shards = ShardSet(found)
        reporter.info(f"generations {shards.version} have this build key: reused, none made")
    else:
        built = keys.key_meta(root, key)
        if built[keys.CHANGES]:
            reporter.info(f"generating again: {'; '.join(built[keys.CHANGES])}")
        reporter.info(
            f"cycle {cycle}: {len(prompts.examples)} prompts x "
            f"{spec.generation.samples_per_prompt} samples from {ckpt.version} "
            f"({spec.generation.backend})"
        )
        with ShardWriter(root) as writer:
            stats = _generate(spec, cycle, ckpt, prompts, writer, reporter)
            writer.write(pl.DataFrame(schema=SCHEMA))  # an empty set keeps the schema too
            quarantine = pl.DataFrame(prompts.quarantine, schema=QUARANTINE_SCHEMA)
            writer.write_aux("quarantine", quarantine)
            shards = writer.commit(
                inputs=P.versions(handed),
                cycle=cycle,
                checkpoint=ckpt.version,
                checkpoint_path=str(ckpt.path),
                backend=spec.generation.backend,
                prompt_source=spec.generation.prompts.model_dump(mode="json"),
                prompt_source_name=prompts.source,
                fingerprint=fp,
                **built,
                counts={"prompts": len(prompts.examples), **prompts.counts},
                spec_fingerprint=spec.fingerprint(),
                spec=spec.resolved(),
                **stats,
            )
        reporter.info(
            f"committed {shards.num_rows} generations as {shards.version} in "
            f"{stats['seconds']:.1f}s ({stats['completions_per_s']:.1f} completions/s)"
        )
    metadata = _metadata(shards, reused)
    reporter.materialization(metadata, data_version=shards.version)
    return {"version": shards.version, "metadata": metadata, "reused": reused}
