"""The graph Dagster draws is the graph the builders read: ``flywheel.core.products``.

For every asset of the loaded Definitions, its upstream keys are exactly the inputs the
product graph declares (plus its declared ordering-only edges, ``AFTER``); every in-process
stage refuses a set of inputs that lacks one of them (or holds another); and a stage handed
inputs from another data directory reads those, not whatever is current under its own spec:
it goes looking for nothing by name.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import Spec, load_spec
from flywheel.data import stages
from flywheel.loop import accept, cycles, promotion, retrain
from flywheel.loop.agents import cycle as agent_cycle
from flywheel.loop.eval.scores import evaluate
from flywheel.loop.generate.generations import generate_cycle
from flywheel.train.packing import build_tokenized_dataset
from flywheel.train.pretrain import pretrain
from flywheel.train.sft import run_sft
from flywheel.train.tokenizer import build_tokenizer
from tests.conftest import write_spec

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "flywheel.yaml"
SMALL = ["tokenizer.vocab_size=400", "packing.seq_len=32"]


@pytest.fixture
def two_sources(tmp_path: Path, corpus_jsonl: Path) -> Path:
    return write_spec(
        tmp_path,
        f"""
        sources:
          - {{name: alpha, kind: jsonl, path: {corpus_jsonl.name}}}
          - {{name: beta, kind: python_env, include: [pydoc_topics]}}
        """,
    )


@pytest.fixture
def with_agent(tmp_path: Path) -> Path:
    return write_spec(
        tmp_path,
        """
        environments:
          - {name: guess, class_path: "flywheel.envs.guess:NumberGuess"}
        agent: {environment: guess}
        """,
    )


@pytest.fixture
def with_images(tmp_path: Path) -> Path:
    return write_spec(
        tmp_path,
        """
        images:
          sources:
            - {name: pairs, kind: image_parquet, path: pairs.parquet}
            - {name: web, kind: webdataset, path: "web-*.tar"}
        """,
    )


@pytest.mark.parametrize("which", ["default", "two_sources", "with_agent", "with_images"])
def test_every_asset_depends_on_exactly_its_declared_inputs(which: str, request) -> None:
    path = DEFAULT_SPEC if which == "default" else request.getfixturevalue(which)
    spec = load_spec(path)
    agent_products = set(P.AGENT_PRODUCTS) & set(P.products(spec))
    assert agent_products == (set(P.AGENT_PRODUCTS) if which == "with_agent" else set())
    assert (P.CURATED_IMAGES in P.products(spec)) == (which == "with_images")
    graph = build_definitions(str(path)).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(P.products(spec))  # one asset per product, and no other
    wrong = {}
    for product in P.products(spec):
        declared = set(P.inputs(product, spec)) | set(P.AFTER.get(product, ()))
        actual = {k.to_user_string() for k in graph.get(dg.AssetKey(product)).parent_keys}
        if actual != declared:
            wrong[product] = {"deps": sorted(actual), "declared": sorted(declared)}
    assert wrong == {}, f"asset deps differ from flywheel.core.products: {wrong}"
    checked = {c.asset_key.to_user_string() for c in graph.asset_check_keys}
    assert checked <= keys


def test_the_graph_declares_its_special_edges_consistently(two_sources: Path) -> None:
    spec = load_spec(two_sources)
    assert P.inputs(P.FILTERED, spec) == ["raw_alpha", "raw_beta"]
    for product, recorded in P.RECORDED_BY.items():
        for name, by in recorded.items():
            # read at the version ``by`` records: so both are inputs, and ``by`` reads ``name``
            assert {name, by} <= set(P.inputs(product, spec)), product
            assert name in P.inputs(by, spec), (product, by, name)
    for product, earlier in P.EARLIER_CYCLES.items():
        assert {product, *earlier} <= set(P.CYCLE_PRODUCTS), product
    for product, after in P.AFTER.items():  # ordering only: never handed to the stage
        assert not set(after) & set(P.inputs(product, spec)), product
    with pytest.raises(KeyError, match="unknown product 'nope'"):
        P.inputs("nope", spec)


# -- the stages read what they are handed, nothing else ------------------------------------
def _materialize(spec: Spec) -> dict[str, object]:
    """Every product up to the tokenized dataset, by the stages themselves; by product."""
    stages.run_ingest(spec, "corpus")
    made: dict[str, object] = {"raw_corpus": P.resolve_inputs(spec, P.FILTERED)["raw_corpus"]}
    made[P.FILTERED] = stages.run_filters(spec, P.resolve_inputs(spec, P.FILTERED)).shardset
    made[P.DEDUPLICATED] = stages.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED)).shardset
    made[P.TOKENIZER] = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    made[P.TOKENIZED] = build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
    return made


def _meta(made: object) -> dict:
    return getattr(made, "artifact", made).meta  # a ShardSet is a view over its artifact


def _runners(spec: Spec) -> dict[str, object]:
    """Each converted stage, as ``run(inputs)``; pre-training and SFT check before training."""
    return {
        P.FILTERED: lambda i: stages.run_filters(spec, i),
        P.DEDUPLICATED: lambda i: stages.run_dedup(spec, i),
        P.TOKENIZER: lambda i: build_tokenizer(spec, i),
        P.TOKENIZED: lambda i: build_tokenized_dataset(spec, i),
        P.PRETRAINED: lambda i: pretrain(spec, i),
        P.SFT: lambda i: run_sft(spec, Reporter(), i),
        P.EVAL: lambda i: evaluate(spec, i),
    }


def test_each_stage_refuses_inputs_that_lack_a_declared_product(small_spec: Path) -> None:
    spec = load_spec(small_spec, SMALL)
    made = _materialize(spec)
    fake_parent = made[P.TOKENIZER]  # any artifact: the check comes before it is read
    available = {**made, P.PRETRAINED: fake_parent, P.SFT: fake_parent}
    for product, run in _runners(spec).items():
        declared = P.inputs(product, spec)
        assert declared, product
        for missing in declared:
            handed = {n: available[n] for n in declared if n != missing}
            with pytest.raises(P.InputError, match=f"{product} reads .*missing {missing}"):
                run(handed)
        extra = next(n for n in available if n not in declared)
        handed = {n: available[n] for n in [*declared, extra]}
        with pytest.raises(P.InputError, match=f"handed {extra}, which it does not read"):
            run(handed)
    wrong_kind = {P.DEDUPLICATED: made[P.TOKENIZER]}
    with pytest.raises(P.InputError, match="deduplicated_shards must be a ShardSet"):
        build_tokenizer(spec, wrong_kind)


def test_each_cycle_stage_refuses_inputs_that_lack_a_declared_product(small_spec: Path) -> None:
    spec = load_spec(small_spec, SMALL)
    made = _materialize(spec)
    shards, artifact = made[P.TOKENIZED], made[P.TOKENIZER]  # the checks come before a read
    runners = {  # each cycle stage converted so far, as run(inputs) at cycle 2
        P.TRAINING_SET: lambda i: cycles.build_training_set(spec, 2, i),
        P.ACCEPTED: lambda i: accept.accept_generations(spec, 2, i),
        P.CYCLE_EVAL: lambda i: evaluate(spec, i, cycle=2),
        P.GENERATIONS: lambda i: generate_cycle(spec, 2, i),
        P.CYCLE_CHECKPOINT: lambda i: retrain.cycle_run(spec, 2, i),
        P.PROMOTED: lambda i: promotion.promote(spec, 2, i),
        P.TRAJECTORIES: lambda i: agent_cycle.build_trajectories(spec, 2, i),
        P.ACCEPTED_TRAJECTORIES: lambda i: agent_cycle.build_accepted_trajectories(spec, 2, i),
    }
    for product, run in runners.items():
        required, optional = cycles.cycle_reads(spec, product, 2)
        assert required, product
        full = {n: shards if P.is_shard_set(n) else artifact for n in [*required, *optional]}
        for missing in required:
            handed = {n: v for n, v in full.items() if n != missing}
            with pytest.raises(P.InputError, match=f"{product} reads .*missing {missing}"):
                run(handed)
        with pytest.raises(P.InputError, match="handed accepted_generations/2, which it does"):
            run({**full, P.of_cycle(P.ACCEPTED, 2): shards})  # its own cycle's, not earlier
    assert cycles.cycle_reads(spec, P.TRAINING_SET, 2) == (
        ["training_set/0", "training_set/1"],
        ["accepted_generations/0", "accepted_generations/1"],
    )
    with pytest.raises(P.InputError, match="does not read synthetic_generations/1"):
        cycles.cycle_inputs(spec, P.ACCEPTED, 2, {"synthetic_generations/1": "v-1"})


def test_stages_read_the_inputs_handed_not_their_own_data_dir(
    small_spec: Path, tmp_path: Path
) -> None:
    source = load_spec(small_spec, SMALL)
    made = _materialize(source)
    for product in (P.FILTERED, P.DEDUPLICATED, P.TOKENIZER, P.TOKENIZED):
        # A data dir that holds none of the stage's inputs: only the handed ones exist.
        elsewhere = load_spec(small_spec, [*SMALL, f"data_dir={tmp_path / product}"])
        handed = {n: made[n] for n in P.inputs(product, elsewhere)}
        result = _runners(elsewhere)[product](handed)
        out = getattr(result, "shardset", result)
        assert out.path.parent == elsewhere.product_dir(product)
        assert out.inputs == P.versions(handed), product  # what it read, as recorded
        fact = "docs" if product == P.TOKENIZER else "num_rows"  # the same work, elsewhere
        assert _meta(out)[fact] == _meta(made[product])[fact] > 0, product
    with pytest.raises(artifacts.NotPublishedError, match="filtered_documents"):
        empty = load_spec(small_spec, [f"data_dir={tmp_path / 'empty'}"])
        P.resolve_inputs(empty, P.DEDUPLICATED)
