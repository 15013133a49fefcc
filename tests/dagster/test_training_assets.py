"""The training plane through Dagster: the graph, the gpu pool, and a full materialization
where pre-training, SFT and evaluation run out of process through Pipes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM

from definitions import build_definitions
from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.spec import load_spec

TRAINING = ["tokenizer", "tokenized_dataset", "pretrained_checkpoint", "sft_checkpoint"]


def test_training_graph_shape(small_spec: Path) -> None:
    graph = build_definitions(str(small_spec)).resolve_asset_graph()

    def node(name: str):
        return graph.get(dg.AssetKey(name))

    assert node("tokenizer").parent_keys == {dg.AssetKey("deduplicated_shards")}
    assert node("pretrained_checkpoint").parent_keys == {
        dg.AssetKey("tokenized_dataset"),
        dg.AssetKey("tokenizer"),
    }
    assert node("sft_checkpoint").parent_keys == {dg.AssetKey("pretrained_checkpoint")}
    assert dg.AssetKey("sft_checkpoint") in node("eval_scores").parent_keys
    for name in ("pretrained_checkpoint", "sft_checkpoint", "eval_scores"):
        assert node(name).pools == {"gpu"}, name
    assert node("tokenized_dataset").pools == set()
    assert {node(n).group_name for n in TRAINING} == {"train"}
    assert all(node(n).description for n in [*TRAINING, "eval_scores"])


@pytest.mark.integration
def test_whole_graph_materializes_with_two_rank_pretraining(small_spec: Path) -> None:
    # Two gloo ranks inherit the Pipes environment; only rank 0 may report, or the step fails.
    defs = build_definitions(str(small_spec), ["pretrain.num_processes=2", "sft.num_processes=2"])
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("flywheel_job").execute_in_process(instance=instance)
    assert result.success
    events = result.get_asset_materialization_events()
    keys = [e.asset_key.to_user_string() for e in events]
    assert sorted(keys) == sorted(
        ["raw_corpus", "filtered_documents", "deduplicated_shards", *TRAINING, "eval_scores"]
    )
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in events}

    pre = meta["pretrained_checkpoint"]
    assert pre["steps"].value == 12 and pre["num_processes"].value == 2
    assert pre["final_loss"].value < pre["first_loss"].value
    assert pre["tokens"].value == 12 * 4 * 2 * 64  # steps x micro_batch x ranks x seq_len
    # Throughput is over the reported training time (train_seconds is rounded to 1 ms).
    seconds = pre["tokens"].value / pre["tokens_per_s"].value
    assert seconds == pytest.approx(pre["train_seconds"].value, abs=1e-3)
    sft = meta["sft_checkpoint"]
    # 6 steps barely move the loss here; tests/train/test_sft.py checks that SFT learns.
    assert sft["steps"].value == 6 and math.isfinite(sft["final_loss"].value)
    assert sft["num_processes"].value == 2
    scores = meta["eval_scores"]
    assert scores["perplexity"].value > 1
    assert scores["pretrained_perplexity"].value > 1  # the parent's, for comparison

    spec = load_spec(small_spec)
    pre_art = artifacts.read_current(spec.product_dir("pretrained_checkpoint"))
    sft_art = artifacts.read_current(spec.product_dir("sft_checkpoint"))
    assert scores["checkpoint"].value == sft_art.version  # the evaluated version
    # The reported accuracy is the share of the written samples that were judged correct.
    report = artifacts.read_current(spec.product_dir("eval_scores"))
    samples = [json.loads(line) for line in (report.path / "samples.jsonl").open()]
    judged = [s["correct"] for s in samples if s["task"] == "arithmetic"]
    assert len(judged) == 6
    assert scores["accuracy/arithmetic"].value == pytest.approx(sum(judged) / len(judged))
    versions = {
        e.asset_key.to_user_string(): e.materialization.tags.get("dagster/data_version")
        for e in events
    }
    assert versions["pretrained_checkpoint"] == pre_art.version
    assert versions["sft_checkpoint"] == sft_art.version
    assert not list(sft_art.path.glob("*.bin")) and (sft_art.path / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(sft_art.path, local_files_only=True)

    facts = Catalog.open(spec.catalog).checkpoint_lineage(sft_art.version)
    assert [r["stage"] for r in facts["chain"]] == ["sft", "pretrain"]
    assert facts["chain"][1]["checkpoint"] == pre_art.version
    [(dataset, n_docs)] = facts["training_documents"].items()
    assert dataset == versions["tokenized_dataset"] and n_docs > 0

    # Materializing again with unchanged inputs reports the same checkpoint, untrained.
    again = defs.resolve_job_def("train_job").execute_in_process(instance=instance)
    assert again.success
    [pre_again] = [
        e
        for e in again.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "pretrained_checkpoint"
    ]
    assert pre_again.materialization.tags.get("dagster/data_version") == pre_art.version


def _pretrains(proc) -> bool:  # noqa: ANN001 - a psutil.Process
    """Whether ``proc`` runs the pre-training; a child of an earlier test of this worker that
    nothing reaped (a zombie) or one gone meanwhile has no command line: not it."""
    import psutil

    try:
        return "flywheel.train.pretrain" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


@pytest.mark.integration
def test_kill_9_during_the_asset_then_rematerialize_resumes(small_spec: Path) -> None:
    import threading
    import time

    import psutil

    overrides = ["pretrain.steps=400", "pretrain.save_every=10", "pretrain.log_every=50"]
    defs = build_definitions(str(small_spec), overrides)
    instance = dg.DagsterInstance.ephemeral()
    prep = dg.AssetSelection.assets("tokenized_dataset").upstream()
    assert (
        defs.resolve_implicit_global_asset_job_def()
        .execute_in_process(
            instance=instance, asset_selection=list(prep.resolve(defs.resolve_asset_graph()))
        )
        .success
    )
    job = defs.resolve_implicit_global_asset_job_def()
    target = [dg.AssetKey("pretrained_checkpoint")]
    outcome: dict[str, object] = {}

    def materialize() -> None:
        result = job.execute_in_process(
            instance=instance, asset_selection=target, raise_on_error=False
        )
        outcome["success"] = result.success

    thread = threading.Thread(target=materialize)
    thread.start()
    work = load_spec(small_spec).product_dir("pretrained_checkpoint") / "work"
    deadline = time.monotonic() + 180
    while not list(work.glob("*/step-0000010/manifest.json")):
        assert thread.is_alive() and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.01)
    trainers = [p for p in psutil.Process().children(recursive=True) if _pretrains(p)]
    assert trainers, "the training process was not found"
    for proc in trainers:  # the accelerate launcher and the trainer it started
        proc.kill()
    thread.join(timeout=120)
    assert outcome == {"success": False}  # the asset failed with its training process
    [run_dir] = work.iterdir()
    assert not (run_dir / "done.json").exists(), "training finished before the kill"
    last = max(int(p.name.split("-")[1]) for p in run_dir.glob("step-*"))

    result = job.execute_in_process(instance=instance, asset_selection=target)
    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["resumed_from_step"].value == last and meta["steps"].value == 400


@pytest.mark.integration
def test_the_job_reuses_what_flywheel_train_published(small_spec: Path) -> None:
    """Reuse holds across entry points: stages run by hand (the data stages' functions and
    ``flywheel train STAGE``) and then ``flywheel_job`` on the unchanged corpus compute the
    same keys, so the job reports every published version again and trains nothing."""
    from flywheel import cli
    from flywheel.core import products as P
    from flywheel.data import stages

    spec = load_spec(small_spec)
    stages.run_ingest(spec, "corpus")
    stages.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    stages.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    for stage in ("tokenizer", "pack", "pretrain", "sft", "eval"):
        assert cli.main(["train", stage, "--spec", str(small_spec)]) == 0, stage
    products = ["raw_corpus", "filtered_documents", "deduplicated_shards", *TRAINING]
    published = {p: artifacts.current_version(spec.product_dir(p)) for p in products}
    published["eval_scores"] = artifacts.current_version(spec.product_dir("eval_scores"))

    defs = build_definitions(str(small_spec))
    result = defs.resolve_job_def("flywheel_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    events = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    reported = {k: e.materialization.tags.get("dagster/data_version") for k, e in events.items()}
    assert reported == published  # no asset published a new version
    for name in ("raw_corpus", "pretrained_checkpoint", "sft_checkpoint", "eval_scores"):
        assert events[name].materialization.metadata["reused"].value is True, name
    for product in [*products, "eval_scores"]:  # and nothing was written beside them
        assert len(list(spec.product_dir(product).glob("v-*"))) == 1, product
