"""Every data product's name, defined once, and the product graph: what each product reads.

    python -m flywheel.core.products [--spec SPEC]       # prints the graph, one edge a line

A product is one Dagster asset and one directory of versions under ``<data_dir>``
(``flywheel.core.artifacts``). ``inputs(product, spec)`` is the one declaration of what a
product's stage reads. A stage is handed exactly those inputs (``resolve_inputs``) and refuses
any other set (``check_inputs``); the Dagster assets take their ``deps=`` from the same
declaration (``deps``), so the graph Dagster draws and the graph the builders read cannot drift
apart (``tests/dagster/test_product_graph.py`` checks it for every asset).

Three kinds of edge are not plain "the input's CURRENT version":

- ``RECORDED_BY``: an input read at the version another input was built from (pre-training
  reads the tokenizer its dataset was packed with, whatever tokenizer is current now);
- ``EARLIER_CYCLES``: a flywheel cycle's products (one Dagster partition per cycle) also read
  products of cycles before it. A dynamic partition cannot depend on itself, so these edges
  are not Dagster deps: the cycle sensor starts cycle c only after cycle c-1 is decided;
- ``AFTER``: Dagster deps that order but do not feed (no version of them is read).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec

# -- names -------------------------------------------------------------------------------
RAW_PREFIX = "raw_"  # one raw product per source: raw_<source>
FILTERED = "filtered_documents"
DROPPED = "dropped_documents"  # written beside FILTERED by the same stage; no asset of its own
DEDUPLICATED = "deduplicated_shards"
TOKENIZER = "tokenizer"
TOKENIZED = "tokenized_dataset"
PRETRAINED = "pretrained_checkpoint"
SFT = "sft_checkpoint"
EVAL = "eval_scores"
# Per flywheel cycle (one dynamic partition each): files under <data_dir>/cycles/<c>/, the
# promotion decisions in the catalog (flywheel.loop.cycles, flywheel.loop.promotion).
TRAINING_SET = "training_set"
CYCLE_CHECKPOINT = "cycle_checkpoint"  # cycle 0's is the seed SFT checkpoint, adopted
CYCLE_EVAL = "cycle_eval_scores"
PROMOTED = "promoted_model"
GENERATIONS = "synthetic_generations"
ACCEPTED = "accepted_generations"
# Only when the spec has an ``agent`` section: the champion's episodes in an environment.
TRAJECTORIES = "trajectories"
ACCEPTED_TRAJECTORIES = "accepted_trajectories"  # aux table: rejected, with reasons
AGENT_PRODUCTS = (TRAJECTORIES, ACCEPTED_TRAJECTORIES)
# An agent's loop trains on what it played: with an ``agent`` section these are not made.
GENERATION_PRODUCTS = (GENERATIONS, ACCEPTED)
# Only when the spec has ``images.sources``: one raw_images_<source> each (a raw product:
# its stage reads the source's files), curated by one stage (flywheel.data.images.pipeline)
# that filters (FILTERED_IMAGES, DROPPED_IMAGES: no assets of their own) and deduplicates.
RAW_IMAGES_PREFIX = f"{RAW_PREFIX}images_"
FILTERED_IMAGES = "filtered_images"
DROPPED_IMAGES = "dropped_images"
CURATED_IMAGES = "curated_images"
IMAGE_PRODUCTS = (CURATED_IMAGES,)

RAW = "raw_<source>"  # in READS: every source's raw product
RAW_IMAGES = "raw_images_<source>"  # in READS: every image source's raw product
CYCLE_PRODUCTS = (
    TRAINING_SET, CYCLE_CHECKPOINT, CYCLE_EVAL, PROMOTED, GENERATIONS, ACCEPTED, *AGENT_PRODUCTS
)  # fmt: skip
SHARD_SETS = {
    FILTERED, DROPPED, DEDUPLICATED, TOKENIZED, TRAINING_SET, GENERATIONS, ACCEPTED,
    *AGENT_PRODUCTS, FILTERED_IMAGES, DROPPED_IMAGES, CURATED_IMAGES,
}  # fmt: skip

# -- the graph ---------------------------------------------------------------------------
# What each product's stage reads of products that are not per cycle, or of its own cycle:
# its inputs, and (with AFTER) its asset's Dagster deps. Raw products read their source's
# files only.
READS: dict[str, tuple[str, ...]] = {
    FILTERED: (RAW,),
    DEDUPLICATED: (FILTERED,),
    TOKENIZER: (DEDUPLICATED,),  # unless tokenizer.path names a local one
    TOKENIZED: (DEDUPLICATED, TOKENIZER),
    PRETRAINED: (TOKENIZED, TOKENIZER),
    SFT: (PRETRAINED,),  # and sft.data, a file the spec names
    EVAL: (SFT, TOKENIZED, PRETRAINED),  # the parent's perplexity beside the SFT model's
    TRAINING_SET: (),  # cycle 0: sft.data (see AFTER); later cycles: EARLIER_CYCLES only
    CYCLE_CHECKPOINT: (TRAINING_SET, SFT),  # cycle 0 adopts SFT instead of training
    CYCLE_EVAL: (CYCLE_CHECKPOINT, TOKENIZED),  # held-out perplexity on the packed split
    PROMOTED: (CYCLE_EVAL, CYCLE_CHECKPOINT),
    GENERATIONS: (PROMOTED,),
    ACCEPTED: (GENERATIONS, TRAINING_SET),  # never accept what the cycle already trains on
    TRAJECTORIES: (PROMOTED,),  # the champion plays; the environment is the spec's
    ACCEPTED_TRAJECTORIES: (TRAJECTORIES,),  # held-out episodes: the environment's own
    CURATED_IMAGES: (RAW_IMAGES,),  # filtered, then deduplicated against the image index
}
# With a ``vision`` section (flywheel.loop.vision) the loop's model is a VLM: the seed SFT
# builds it with the tokenizer and trains it on the curated images (no text pre-training, so
# no tokenized dataset or pre-trained checkpoint), and evals score held-out images.
VISION_READS: dict[str, tuple[str, ...]] = {
    SFT: (TOKENIZER, CURATED_IMAGES),
    EVAL: (SFT,),
    CYCLE_EVAL: (CYCLE_CHECKPOINT,),
}
VISION_SKIPS = (TOKENIZED, PRETRAINED)
# Edges that order, not feed: cycle 0's training set is the seed data, ``sft.data``, taken
# once the seed model fine-tuned on it exists; no version of that model is read. Dagster
# deps (so the lineage runs from raw documents to the loop), never stage inputs.
AFTER: dict[str, tuple[str, ...]] = {TRAINING_SET: (SFT,)}
# Inputs read at the version that another input of the same product recorded it was built
# from (its manifest's ``inputs``), rather than at CURRENT; CURRENT if it recorded none.
RECORDED_BY: dict[str, dict[str, str]] = {
    PRETRAINED: {TOKENIZER: TOKENIZED},  # the token ids in the rows are that tokenizer's
    EVAL: {PRETRAINED: SFT},  # the SFT checkpoint's own parent
}
# What a cycle's products read of earlier cycles (run-time edges, never Dagster deps).
EARLIER_CYCLES: dict[str, tuple[str, ...]] = {
    # c-1's set (and 0's seed rows) + new accepted (accepted_product: with an agent section,
    # ACCEPTED_TRAJECTORIES instead of ACCEPTED)
    TRAINING_SET: (TRAINING_SET, ACCEPTED),
    CYCLE_CHECKPOINT: (PROMOTED, ACCEPTED, GENERATIONS),  # champion; DPO pairs; RL prompts
    PROMOTED: (PROMOTED,),  # the champion the candidate must beat
    ACCEPTED: (ACCEPTED,),  # never accept what an earlier cycle accepted
}


class InputError(ValueError):
    """A stage was handed a set of inputs that is not the one the graph declares."""


def raw(source_name: str) -> str:
    return f"{RAW_PREFIX}{source_name}"


def raw_images(source_name: str) -> str:
    """The raw product of the image source ``source_name`` (``images.sources``)."""
    return f"{RAW_IMAGES_PREFIX}{source_name}"


def is_raw(product: str) -> bool:
    return product.startswith(RAW_PREFIX)


def products(spec: Spec) -> list[str]:
    """Every product that is an asset, in graph order (the raw ones first): with an ``agent``
    section the agent's products replace generation and acceptance; the image products only
    with ``images.sources``; with ``vision``, no tokenized dataset or pre-training."""
    skip = GENERATION_PRODUCTS if spec.agent is not None else AGENT_PRODUCTS
    if not spec.images.sources:
        skip = (*skip, *IMAGE_PRODUCTS)
    if spec.vision is not None:
        skip = (*skip, *VISION_SKIPS)
    made = [p for p in READS if p not in skip]
    images = [raw_images(s.name) for s in spec.images.sources]
    return [*(raw(s.name) for s in spec.sources), *images, *made]


def accepted_product(spec: Spec) -> str:
    """What the loop's training sets grow by: accepted trajectories with an ``agent``
    section (the champion's successful episodes), else accepted generations."""
    return ACCEPTED_TRAJECTORIES if spec.agent is not None else ACCEPTED


def inputs(product: str, spec: Spec) -> list[str]:
    """The products ``product`` reads (not per cycle, or of its own cycle): what its stage is
    handed."""
    if is_raw(product):
        return []
    if product not in READS:
        raise KeyError(f"unknown product {product!r}; the products are {', '.join(READS)}")
    reads = READS[product]
    if spec.vision is not None:
        reads = VISION_READS.get(product, reads)
    out: list[str] = []
    for name in reads:
        if name == RAW:
            out += [raw(s.name) for s in spec.sources]
        elif name == RAW_IMAGES:
            out += [raw_images(s.name) for s in spec.images.sources]
        else:
            out.append(name)
    return out


def deps(product: str, spec: Spec) -> list[str]:
    """The Dagster deps of ``product``'s asset: its inputs, then its ordering edges (AFTER)."""
    return [*inputs(product, spec), *AFTER.get(product, ())]


def is_shard_set(product: str) -> bool:
    product = product.partition("/")[0]  # an earlier cycle's product reads as its product
    return is_raw(product) or product in SHARD_SETS


def of_cycle(product: str, cycle: int) -> str:
    """The input name of an earlier cycle's product (``EARLIER_CYCLES``):
    ``accepted_generations/0``. A cycle's own products are named plainly."""
    return f"{product}/{cycle}"


# -- handing a stage its inputs ----------------------------------------------------------
def check_inputs(
    product: str,
    spec: Spec,
    handed: Mapping[str, Any],
    declared: Iterable[str] | None = None,
    optional: Iterable[str] = (),
    hint: str | None = None,
) -> None:
    """Raise ``InputError`` unless ``handed`` holds exactly ``product``'s declared inputs
    (``declared``, default ``inputs(product, spec)``; ``optional`` ones may be left out), each
    a ``ShardSet`` or an ``Artifact`` as the product is one or the other."""
    declared = inputs(product, spec) if declared is None else list(declared)
    allowed = [*declared, *optional]
    problems = []
    missing = [p for p in declared if p not in handed]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    unexpected = sorted(set(handed) - set(allowed))
    if unexpected:
        problems.append(f"handed {', '.join(unexpected)}, which it does not read")
    for name in (p for p in allowed if p in handed):
        want = ShardSet if is_shard_set(name) else artifacts.Artifact
        if not isinstance(handed[name], want):
            problems.append(f"{name} must be a {want.__name__}, not {type(handed[name]).__name__}")
    if problems:
        raise InputError(
            f"{product} reads {', '.join(declared) or 'no product'} "
            f"(flywheel.core.products): {'; '.join(problems)}. Hand it "
            f"{hint or f'resolve_inputs(spec, {product!r})'}"
        )


def resolve_inputs(
    spec: Spec, product: str, pinned: Mapping[str, str] | None = None, deep: bool | None = None
) -> dict[str, ShardSet | artifacts.Artifact]:
    """The versions of ``product``'s inputs a run reads: ``pinned[name]`` where given, else
    the version another input recorded (``RECORDED_BY``), else CURRENT (falling back to the
    newest good version if CURRENT is damaged). ``deep``: re-hash every file (default: yes
    for artifacts, sizes only for shard sets)."""
    if product in CYCLE_PRODUCTS:
        raise ValueError(
            f"{product} is per cycle: its inputs are the cycle's (flywheel.loop.cycles)"
        )
    declared = inputs(product, spec)
    pinned = dict(pinned or {})
    unknown = sorted(set(pinned) - set(declared))
    if unknown:
        raise InputError(f"{product} does not read {', '.join(unknown)}; it reads {declared}")
    recorded = RECORDED_BY.get(product, {})
    handed: dict[str, Any] = {}
    for name in sorted(declared, key=lambda n: n in recorded):  # recorders first
        version, by = pinned.get(name), handed.get(recorded.get(name, ""))
        if version is None and by is not None:
            version = by.inputs.get(name)
        try:
            handed[name] = read_product(spec, name, version, deep)
        except artifacts.ArtifactError as exc:
            if name in pinned or by is None or version is None:
                raise
            raise artifacts.ArtifactError(
                f"{exc}; {recorded[name]} {by.version} was built from {name} {version}: "
                f"re-materialize {recorded[name]}"
            ) from None
    return {name: handed[name] for name in declared}


def read_product(
    spec: Spec, name: str, version: str | None = None, deep: bool | None = None
) -> Any:
    """Version ``version`` (default CURRENT) of product ``name``, verified."""
    return read_at(spec.product_dir(name), name, version, deep)


def read_at(root: Path, name: str, version: str | None = None, deep: bool | None = None) -> Any:
    """Version ``version`` (default CURRENT) of product ``name`` published under ``root``: a
    ``ShardSet`` or an ``Artifact``. ``deep``: re-hash every file (default: artifacts only)."""
    deep = (not is_shard_set(name)) if deep is None else deep
    if version is None:
        artifact = artifacts.read_current(root, deep=deep)
    else:
        artifact = artifacts.verify(root / version, deep=deep)
    return ShardSet(artifact) if is_shard_set(name) else artifact


def versions(handed: Mapping[str, ShardSet | artifacts.Artifact]) -> dict[str, str]:
    """``{product: version}`` of handed inputs: what an artifact records as its ``inputs``."""
    return {name: value.version for name, value in handed.items()}


# -- the command line of out-of-process stages -------------------------------------------
def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PRODUCT=VERSION",
        help="read this version of an input product instead of its CURRENT one (repeatable)",
    )


def parse_pins(values: Iterable[str]) -> dict[str, str]:
    """``["tokenized_dataset=v-..."]`` -> ``{"tokenized_dataset": "v-..."}``."""
    out = {}
    for value in values:
        name, sep, version = value.partition("=")
        if not sep or not name or not version:
            raise InputError(f"--input {value!r}: expected PRODUCT=VERSION")
        out[name] = version
    return out


def input_arguments(pins: Mapping[str, str]) -> list[str]:
    """``--input PRODUCT=VERSION`` for each pin, as ``add_input_arguments`` parses them."""
    return [a for name, version in pins.items() for a in ("--input", f"{name}={version}")]


def main(argv: list[str] | None = None) -> None:
    from flywheel.core.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="spec file (default $FLYWHEEL_SPEC or flywheel.yaml)")
    spec = load_spec(parser.parse_args(argv).spec)
    for product in products(spec):
        recorded = RECORDED_BY.get(product, {})
        for name in inputs(product, spec):
            note = f"  (the version {recorded[name]} records)" if name in recorded else ""
            print(f"{name} -> {product}{note}")
        for name in EARLIER_CYCLES.get(product, ()):
            print(f"{name} (earlier cycles) -> {product}")
        for name in AFTER.get(product, ()):
            print(f"{name} (ordering only) -> {product}")


if __name__ == "__main__":
    main()
