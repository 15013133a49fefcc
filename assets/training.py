"""The training plane: deduplicated shards -> tokenizer -> tokenized dataset -> pre-trained
checkpoint -> SFT checkpoint -> eval scores.

Tokenizer training and packing run in process (CPU, seconds), handed the inputs
``flywheel.core.products`` declares. Training and evaluation run out of process: each asset
writes the resolved spec, launches the same command that ``flywheel train STAGE`` runs
(``accelerate launch -m flywheel.train.pretrain --input tokenized_dataset=v-... ...``) through
Dagster Pipes, and returns what rank 0 reported. They share the ``gpu`` concurrency pool, so
two runs never fight over one accelerator. Every asset's ``deps`` are its declared inputs.
"""

import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext, PipesSubprocessClient

from assets.pipes import LineMessageReader, reported_result
from assets.resources import FlywheelResource
from flywheel.core import products as P
from flywheel.core.spec import Spec
from flywheel.train import launch

TRAIN, EVALUATE = "train", "evaluate"
# Dagster 1.13's own Pipes reader calls a preview API of itself; the warning is not ours to fix.
warnings.filterwarnings("ignore", message=".*PipesMessageReader.expected_writer_count.*")
GPU_POOL = "gpu"
# Every stage process carries its run's id, so that a run whose worker died can have what it
# left running found and stopped (jobs.launcher) before its retry starts the stage again.
RUN_ENV = "FLYWHEEL_DAGSTER_RUN_ID"


def launch_stage(
    stage: str,
    context: AssetExecutionContext,
    flywheel: FlywheelResource,
    pipes: PipesSubprocessClient,
    extra: list[str] | None = None,
    pinned: Mapping[str, str] | None = None,
) -> dg.MaterializeResult:
    """Run ``stage`` out of process through Pipes, its input versions pinned: ``pinned``
    (a cycle's, ``flywheel.loop.cycles.cycle_inputs``), else ``launch.pinned_inputs``; what
    rank 0 reported, with clickable paths."""
    spec = flywheel.spec()
    spec_file = launch.write_run_spec(spec, stage)
    pins = launch.pinned_inputs(stage, spec) if pinned is None else P.input_arguments(pinned)
    args = [*pins, *(extra or [])]
    command = launch.command(stage, spec, spec_file, args)
    context.log.info("launching: " + " ".join(command))
    env = {RUN_ENV: context.run_id}
    if stage in launch.TRAINED and launch.train_settings(stage, spec).launcher == "ray":
        pipes = _cluster_pipes(pipes, spec.product_dir(launch.PRODUCTS[stage]), context.run_id)
    result = reported_result(stage, pipes.run(context=context, command=command, env=env))
    metadata = dict(result.metadata or {})
    metadata["spec_file"] = dg.MetadataValue.path(str(spec_file))
    for key in ("checkpoint", "report"):
        value = str(_raw(metadata.get(key, "")))
        if value.startswith("/"):  # a directory (not a version): clickable in the UI
            metadata[key] = dg.MetadataValue.path(value)
    return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)


def _cluster_pipes(
    pipes: PipesSubprocessClient, product_dir: Path, run_id: str
) -> PipesSubprocessClient:
    """Pipes for a stage on Ray Train, whose rank 0 may run on another node: the context in
    the environment (forwarded to the workers), the messages in the data dir, which every node
    must see anyway (the resumable checkpoints are there), not in this machine's temp dir."""
    messages = product_dir / "ray" / f"pipes-{run_id}-{uuid.uuid4().hex[:6]}.jsonl"
    messages.parent.mkdir(parents=True, exist_ok=True)
    return PipesSubprocessClient(
        env=pipes.env,
        cwd=pipes.cwd,
        context_injector=dg.PipesEnvContextInjector(),
        message_reader=LineMessageReader(str(messages)),
    )


def _raw(value: object) -> object:
    return getattr(value, "value", value)


def _launched_asset(
    stage: str, spec: Spec, group: str, kinds: set[str], description: str
) -> dg.AssetsDefinition:
    """An asset whose materialization is the stage's out-of-process run, in the gpu pool."""
    product = launch.PRODUCTS[stage]

    @dg.asset(
        name=product,
        deps=P.deps(product, spec),
        group_name=group,
        kinds=kinds,
        owners=spec.owners,
        pool=GPU_POOL,
        description=description,
    )
    def _asset(
        context: AssetExecutionContext,
        flywheel: FlywheelResource,
        pipes: PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        return launch_stage(stage, context, flywheel, pipes)

    return _asset


def build_training_assets(spec: Spec) -> list[dg.AssetsDefinition]:
    owners = spec.owners

    @dg.asset(
        name=P.TOKENIZER,
        deps=P.deps(P.TOKENIZER, spec),
        group_name=TRAIN,
        kinds={"huggingface"},
        owners=owners,
    )
    def tokenizer(flywheel: FlywheelResource) -> dg.MaterializeResult:
        """A byte-level BPE tokenizer trained on the deduplicated shards (or a local one)."""
        from flywheel.train.tokenizer import build_tokenizer

        live = flywheel.spec()
        artifact = build_tokenizer(live, P.resolve_inputs(live, P.TOKENIZER))
        metadata = {k: v for k, v in artifact.meta.items() if isinstance(v, int | float | str)}
        metadata["path"] = dg.MetadataValue.path(str(artifact.path))
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(artifact.version)
        )

    @dg.asset(
        name=P.TOKENIZED,
        deps=P.deps(P.TOKENIZED, spec),
        group_name=TRAIN,
        kinds={"parquet", "pytorch"},
        owners=owners,
    )
    def tokenized_dataset(flywheel: FlywheelResource) -> dg.MaterializeResult:
        """Documents tokenized and packed into fixed-length sequences, plus a held-out split."""
        from flywheel.train.packing import build_tokenized_dataset

        live = flywheel.spec()
        shards = build_tokenized_dataset(live, P.resolve_inputs(live, P.TOKENIZED))
        m = shards.manifest
        metadata = {k: m[k] for k in _PACK_KEYS if isinstance(m.get(k), int | float | str)}
        metadata["num_rows"] = shards.num_rows
        metadata["path"] = dg.MetadataValue.path(str(shards.path))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(shards.version))

    pretrained_checkpoint = _launched_asset(
        "pretrain",
        spec,
        TRAIN,
        {"pytorch", "accelerate"},
        "A causal LM pre-trained on the packed dataset (next-token prediction, resumable).",
    )
    sft_checkpoint = _launched_asset(
        "sft",
        spec,
        TRAIN,
        {"pytorch", "trl"},
        "The pre-trained model fine-tuned on instruction-response pairs (TRL SFTTrainer).",
    )
    eval_scores = _launched_asset(
        "eval",
        spec,
        EVALUATE,
        {"pytorch"},
        "Held-out perplexity and task accuracy of the SFT checkpoint (and its parent's).",
    )
    made = [tokenizer, tokenized_dataset, pretrained_checkpoint, sft_checkpoint, eval_scores]
    products = set(P.products(spec))  # a vision loop has no packed dataset or pre-training
    return [a for a in made if a.key.to_user_string() in products]


_PACK_KEYS = [
    "seq_len",
    "vocab_size",
    "tokenizer_version",
    "input_version",
    "tail_tokens_dropped",
    "train_rows",
    "heldout_rows",
    "train_tokens",
    "heldout_tokens",
    "train_docs",
    "heldout_docs",
]
