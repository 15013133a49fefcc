"""The training plane: deduplicated shards -> tokenizer -> tokenized dataset -> pre-trained
checkpoint -> SFT checkpoint -> eval scores.

Tokenizer training and packing run in process (CPU, seconds). Training and evaluation run out
of process: each asset writes the resolved spec, launches the same command that
``flywheel train STAGE`` runs (``accelerate launch -m flywheel.train.pretrain ...``) through
Dagster Pipes, and returns what rank 0 reported. They share the ``gpu`` concurrency pool, so
two runs never fight over one accelerator.
"""

import warnings

import dagster as dg
from dagster import AssetExecutionContext, PipesSubprocessClient

from assets.resources import FlywheelResource
from flywheel.core.spec import Spec
from flywheel.train import launch

TRAIN, EVALUATE = "train", "evaluate"
# Dagster 1.13's own Pipes reader calls a preview API of itself; the warning is not ours to fix.
warnings.filterwarnings("ignore", message=".*PipesMessageReader.expected_writer_count.*")
GPU_POOL = "gpu"


def launch_stage(
    stage: str,
    context: AssetExecutionContext,
    flywheel: FlywheelResource,
    pipes: PipesSubprocessClient,
    extra: list[str] | None = None,
) -> dg.MaterializeResult:
    """Run ``stage`` out of process through Pipes; what rank 0 reported, with clickable paths."""
    spec = flywheel.spec()
    spec_file = launch.write_run_spec(spec, stage)
    command = launch.command(stage, spec, spec_file, extra or [])
    context.log.info("launching: " + " ".join(command))
    result = pipes.run(context=context, command=command).get_materialize_result()
    metadata = dict(result.metadata or {})
    metadata["spec_file"] = dg.MetadataValue.path(str(spec_file))
    for key in ("checkpoint", "report"):
        value = str(_raw(metadata.get(key, "")))
        if value.startswith("/"):  # a directory (not a version): clickable in the UI
            metadata[key] = dg.MetadataValue.path(value)
    return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)


def _raw(value: object) -> object:
    return getattr(value, "value", value)


def _launched_asset(
    stage: str,
    deps: list[dg.AssetsDefinition],
    group: str,
    kinds: set[str],
    owners: list[str],
    description: str,
) -> dg.AssetsDefinition:
    """An asset whose materialization is the stage's out-of-process run, in the gpu pool."""

    @dg.asset(
        name=launch.PRODUCTS[stage],
        deps=deps,
        group_name=group,
        kinds=kinds,
        owners=owners,
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

    @dg.asset(deps=["deduplicated_shards"], group_name=TRAIN, kinds={"huggingface"}, owners=owners)
    def tokenizer(flywheel: FlywheelResource) -> dg.MaterializeResult:
        """A byte-level BPE tokenizer trained on the deduplicated shards (or a local one)."""
        from flywheel.train.tokenizer import build_tokenizer

        artifact = build_tokenizer(flywheel.spec())
        metadata = {k: v for k, v in artifact.meta.items() if isinstance(v, int | float | str)}
        metadata["path"] = dg.MetadataValue.path(str(artifact.path))
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(artifact.version)
        )

    @dg.asset(
        deps=[tokenizer, "deduplicated_shards"],
        group_name=TRAIN,
        kinds={"parquet", "pytorch"},
        owners=owners,
    )
    def tokenized_dataset(flywheel: FlywheelResource) -> dg.MaterializeResult:
        """Documents tokenized and packed into fixed-length sequences, plus a held-out split."""
        from flywheel.train.packing import build_tokenized_dataset

        shards = build_tokenized_dataset(flywheel.spec())
        m = shards.manifest
        metadata = {k: m[k] for k in _PACK_KEYS if isinstance(m.get(k), int | float | str)}
        metadata["num_rows"] = shards.num_rows
        metadata["path"] = dg.MetadataValue.path(str(shards.path))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(shards.version))

    pretrained_checkpoint = _launched_asset(
        "pretrain",
        [tokenized_dataset, tokenizer],
        TRAIN,
        {"pytorch", "accelerate"},
        owners,
        "A causal LM pre-trained on the packed dataset (next-token prediction, resumable).",
    )
    sft_checkpoint = _launched_asset(
        "sft",
        [pretrained_checkpoint],
        TRAIN,
        {"pytorch", "trl"},
        owners,
        "The pre-trained model fine-tuned on instruction-response pairs (TRL SFTTrainer).",
    )
    eval_scores = _launched_asset(
        "eval",
        [sft_checkpoint, tokenized_dataset],
        EVALUATE,
        {"pytorch"},
        owners,
        "Held-out perplexity and task accuracy of the SFT checkpoint.",
    )
    return [tokenizer, tokenized_dataset, pretrained_checkpoint, sft_checkpoint, eval_scores]


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
