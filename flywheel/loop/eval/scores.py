"""Score a checkpoint and publish the scores as the ``eval_scores`` data product.

    python -m flywheel.loop.eval --spec flywheel.yaml [--stage sft|pretrain]   # its entry
    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.eval.scores \
import evaluate, eval_inputs; s = load_spec('flywheel.yaml'); \
print(evaluate(s, eval_inputs(s))['version'])"

``evaluate`` reads the inputs it is handed (``eval_inputs``, as ``flywheel.core.products``
declares them): the ``sft_checkpoint`` (default) or ``pretrained_checkpoint``, whose held-out
perplexity it measures on the ``tokenized_dataset`` (for SFT also that of its pre-trained
parent, the version the SFT checkpoint records; skipped, with a warning, when the held-out
split is empty), and the accuracy of every ``eval.tasks`` entry; then it publishes a verified
report directory (``scores.json``, ``samples.jsonl`` with every scored answer and the
verifier's reason for a wrong one, ``quarantine.jsonl`` when a task file had bad records) that
records the versions read as its ``inputs``, records the metrics in the catalog, and reports
a materialization whose data version is the report's version. With ``cycle=N`` it scores cycle
N's candidate (``flywheel.loop.cycles.cycle_inputs``) and publishes under ``cycles/N/eval``
instead. The spec's ``plugins`` are imported before any task is scored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.report import Reporter
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec
from flywheel.loop.cycles import check_cycle_inputs, cycle_inputs, eval_root
from flywheel.loop.eval.perplexity import heldout_perplexity
from flywheel.loop.eval.tasks import TaskScore, evaluate_task
from flywheel.loop.plugins import importable_from, load_plugins
from flywheel.train.loader import heldout_files

PRODUCT = P.EVAL
CHECKPOINTS = {"sft": P.SFT, "pretrain": P.PRETRAINED}
TOKENIZED = P.TOKENIZED
PRETRAIN_READS = [P.PRETRAINED, TOKENIZED]  # a pre-training eval, by hand: not in the graph


def load_for_eval(path: Path, attn_implementation: str) -> tuple[Any, Any]:
    """The checkpoint's model (on the GPU in bf16/fp16 when there is one) and tokenizer."""
    import transformers

    from flywheel.train.model import load_model
    from flywheel.train.tokenizer import load_tokenizer

    transformers.utils.logging.disable_progress_bar()  # a log stream, not a terminal
    model = load_model(path, attn_implementation)
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = model.to("cuda", dtype=dtype)
    return model, load_tokenizer(path)


def eval_inputs(
    spec: Spec,
    stage: str = "sft",
    cycle: int | None = None,
    pinned: Mapping[str, str] | None = None,
    deep: bool | None = None,
) -> dict[str, Any]:
    """What an evaluation reads (``pinned`` versions, else CURRENT): the SFT checkpoint, the
    tokenized dataset and the checkpoint's pre-trained parent (``eval_scores``'s inputs); with
    ``cycle``, the cycle's candidate and the dataset (``flywheel.loop.cycles.cycle_inputs``);
    for ``stage="pretrain"`` (by hand), the pre-trained checkpoint and the dataset."""
    if cycle is not None:
        return cycle_inputs(spec, P.CYCLE_EVAL, cycle, pinned, deep)
    if stage == "sft":
        return P.resolve_inputs(spec, PRODUCT, pinned, deep)
    pinned = dict(pinned or {})
    unknown = sorted(set(pinned) - set(PRETRAIN_READS))
    if unknown:
        raise P.InputError(f"a pre-training eval does not read {', '.join(unknown)}")
    return {n: P.read_product(spec, n, pinned.get(n), deep) for n in PRETRAIN_READS}


def check_eval_inputs(spec: Spec, stage: str, cycle: int | None, handed: Mapping[str, Any]) -> str:
    """Raise ``products.InputError`` unless ``handed`` is what ``eval_inputs`` gives for this
    evaluation; the name of the checkpoint to score."""
    if cycle is not None:
        check_cycle_inputs(spec, P.CYCLE_EVAL, cycle, handed)
        return P.CYCLE_CHECKPOINT
    if stage == "sft":
        P.check_inputs(PRODUCT, spec, handed)
    else:
        P.check_inputs(PRODUCT, spec, handed, PRETRAIN_READS, hint="eval_inputs(spec, stage)")
    return CHECKPOINTS[stage]


def perplexity_metrics(
    spec: Spec, model: Any, dataset: ShardSet, reporter: Reporter
) -> dict[str, Any]:
    """``perplexity``, ``heldout_loss`` and ``heldout_tokens`` on ``dataset``'s held-out split,
    or {} when it is empty."""
    files = heldout_files(dataset)
    if sum(pq.read_metadata(f).num_rows for f in files) == 0:
        reporter.warning(f"no perplexity: the held-out split of {dataset.version} is empty")
        return {}
    device = next(model.parameters()).device
    result = heldout_perplexity(
        model, files, spec.eval.micro_batch, spec.eval.perplexity_batches, device
    )
    return {
        "perplexity": result["perplexity"],
        "heldout_loss": result["loss"],
        "heldout_tokens": result["tokens"],
        TOKENIZED: dataset.version,
    }


def parent_perplexity(
    spec: Spec, parent: artifacts.Artifact, dataset: ShardSet, reporter: Reporter
) -> dict[str, Any]:
    """Held-out perplexity of the SFT checkpoint's pre-trained ``parent``, beside the SFT
    one: how much general language modelling fine-tuning gave up."""
    model, _ = load_for_eval(parent.path, spec.model.attn_implementation)
    result = perplexity_metrics(spec, model, dataset, reporter)
    return {"pretrained_perplexity": result["perplexity"], P.PRETRAINED: parent.version}


def score_tasks(
    spec: Spec, model: Any, tokenizer: Any, metrics: dict[str, Any], reporter: Reporter
) -> list[TaskScore]:
    """Score every ``eval.tasks`` entry, adding ``accuracy/``, ``n/`` and ``quarantined/``
    entries to ``metrics``."""
    scores = []
    load_plugins(spec)  # kinds they register score eval tasks as they judge acceptance
    for task in spec.eval.tasks:
        with importable_from(spec.base_dir):  # a kind: python module next to the spec
            score = evaluate_task(model, tokenizer, task, spec.eval.micro_batch)
        scores.append(score)
        metrics[f"accuracy/{score.name}"] = score.accuracy
        metrics[f"n/{score.name}"] = score.n
        # Always reported, 0 too: how many were scored and how many refused, side by side.
        metrics[f"quarantined/{score.name}"] = len(score.quarantine)
        if score.quarantine:
            reporter.warning(f"task {score.name}: {len(score.quarantine)} record(s) quarantined")
        reporter.info(f"task {score.name}: accuracy {score.accuracy:.3f} on {score.n}")
    return scores


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", "⏎")


def samples_table(scores: list[TaskScore], per_task: int = 5) -> dict[str, str]:
    """A markdown table of the first answers of every task, for the Dagster UI."""
    lines = [
        "| task | prompt | completion | answer | correct | reason |",
        "|---|---|---|---|---|---|",
    ]
    for score in scores:
        for r in score.samples(per_task):
            cells = [
                r["task"],
                r["prompt"],
                r["completion"],
                r["answer"],
                "✓" if r["correct"] else "✗",
                r.get("reason") or "",
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return {"raw_value": "\n".join(lines), "type": "md"}


def write_report(directory: Path, metrics: dict[str, Any], scores: list[TaskScore]) -> None:
    (directory / "scores.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    with open(directory / "samples.jsonl", "w") as f:
        for score in scores:
            f.writelines(json.dumps(r) + "\n" for r in score.rows)
    quarantine = [q for s in scores for q in s.quarantine]
    if quarantine:
        with open(directory / "quarantine.jsonl", "w") as f:
            f.writelines(json.dumps(q) + "\n" for q in quarantine)


def evaluate(
    spec: Spec,
    handed: Mapping[str, Any],
    stage: str = "sft",
    cycle: int | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Evaluate the stage's checkpoint (or cycle ``cycle``'s candidate) among the ``handed``
    inputs (``eval_inputs``) and publish the report, which records their versions as its
    ``inputs``; returns ``{"version", "metadata", "reused"}``. A rerun whose ``eval_key``
    equals the current report's reports that report again, scoring nothing.

    ``reporter`` receives the logs and the materialization (default: plain logging).
    """
    reporter = reporter or Reporter()
    evaluated = handed[check_eval_inputs(spec, stage, cycle, handed)]
    stage = stage if cycle is None else "cycle"
    root = spec.product_dir(PRODUCT) if cycle is None else eval_root(spec, cycle)
    key = eval_key(spec, handed, stage, cycle)
    found = keys.reusable(root, key)
    if found is not None:  # the same checkpoint, dataset, settings and task files
        reporter.info(f"eval {found.version} scored {evaluated.version} with this key: reused")
        scores = json.loads((found.path / "scores.json").read_text())
        metrics = {k: v for k, v in scores.items() if k not in ("stage", "cycle")}
        return _reported(reporter, found, metrics, stage, cycle, reused=True)
    reporter.info(f"evaluating {stage} checkpoint {evaluated.version}")
    if spec.vision is not None:  # a VLM: held-out accuracy at both ends of the visual task
        from flywheel.loop.vision.evaluate import vision_metrics

        metrics: dict[str, Any] = vision_metrics(spec, evaluated.path)
        scores: list[TaskScore] = []
        reporter.info(", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    else:
        metrics, scores = _text_scores(spec, handed, evaluated, stage, reporter)
    if spec.agent is not None:  # the agent's held-out episodes, played greedily
        from flywheel.loop.agents.cycle import evaluate_held_out

        metrics.update(evaluate_held_out(spec, evaluated.path, cycle=cycle or 0))
        reporter.info(", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("env/")))
    staging = artifacts.staging_dir(root)
    head = {"checkpoint": evaluated.version, "stage": stage, "cycle": cycle}
    write_report(staging, {**head, **metrics}, scores)
    built = keys.key_meta(root, key)
    report = artifacts.publish(
        root,
        staging,
        inputs=P.versions(handed),
        checkpoint=evaluated.version,
        stage=stage,
        cycle=cycle,
        spec=spec.resolved(),
        **built,
    )
    if built[keys.CHANGES]:
        reporter.info(f"eval rebuilt: {'; '.join(built[keys.CHANGES])}")
    numeric = {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    Catalog.open(spec.catalog).record_eval(evaluated.version, report.version, numeric)
    metrics = {**metrics, "checkpoint": evaluated.version, "samples": samples_table(scores)}
    return _reported(reporter, report, metrics, stage, cycle, reused=False)


def _text_scores(
    spec: Spec, handed: Mapping[str, Any], evaluated: Any, stage: str, reporter: Reporter
) -> tuple[dict[str, Any], list[TaskScore]]:
    """Held-out perplexity (and the parent's, for SFT) and the eval tasks of a text model."""
    dataset = handed[TOKENIZED]
    model, tokenizer = load_for_eval(evaluated.path, spec.model.attn_implementation)
    metrics: dict[str, Any] = perplexity_metrics(spec, model, dataset, reporter)
    if stage == "sft" and "perplexity" in metrics:
        metrics.update(parent_perplexity(spec, handed[P.PRETRAINED], dataset, reporter))
    return metrics, score_tasks(spec, model, tokenizer, metrics, reporter)


def eval_key(
    spec: Spec, handed: Mapping[str, Any], stage: str, cycle: int | None
) -> dict[str, str]:
    """What decides an eval report (``flywheel.core.keys``): the versions read, the ``eval``
    section (task files by content, not path) and the task files' contents."""
    section = spec.eval.model_dump(mode="json", exclude={"tasks": {"__all__": {"path"}}})
    files = {f"eval task {t.name}": keys.file_digest(t.path) for t in spec.eval.tasks if t.path}
    sections: dict[str, Any] = {"eval": section}
    code = {}
    if spec.agent is not None:  # held-out episodes: how the agent plays, and the environment
        from flywheel.loop.agents.cycle import agent_environment

        entry = agent_environment(spec).entry
        sections |= {"agent": spec.agent.model_dump(mode="json", exclude={"accept"})}
        sections |= {"environment": entry.model_dump(mode="json")}
        code = {"environment": keys.module_digest(entry.class_path)}
    if spec.vision is not None:  # the held-out images: the task's settings and renderer
        sections |= {"vision": spec.vision.model_dump(mode="json")}
        code = {"renderer": keys.module_digest("flywheel.data.visual:render_shapes")}
    return keys.make_key(P.versions(handed), sections, files, code=code, stage=stage, cycle=cycle)


def _reported(
    reporter: Reporter,
    report: artifacts.Artifact,
    metrics: dict[str, Any],
    stage: str,
    cycle: int | None,
    reused: bool,
) -> dict[str, Any]:
    """Report the materialization of ``report``; ``{"version", "metadata", "reused"}``."""
    metadata = {
        **metrics,
        "stage": stage,
        **({"cycle": cycle} if cycle is not None else {}),
        "report": str(report.path),
        "reused": reused,
        "build_changes": "; ".join(report.meta.get(keys.CHANGES, [])),
    }
    reporter.materialization(metadata, data_version=report.version)
    return {"version": report.version, "metadata": metadata, "reused": reused}
