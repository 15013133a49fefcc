"""Retrain the champion for one flywheel cycle: SFT on the cycle's training set, then
optionally DPO, GRPO or RLOO (TRL), published as the cycle's checkpoint.

    accelerate launch -m flywheel.loop.retrain --spec flywheel.yaml --cycle 3 \
        --input training_set=v-... --input promoted_model/2=v-...   # as the asset pins it
    python -m flywheel.loop.retrain --spec flywheel.yaml --cycle 3 [--parent DIR]   # by hand

A run reads what ``flywheel.loop.cycles.cycle_inputs`` resolves for ``cycle_checkpoint``: the
cycle's training set, the champion cycle ``N-1``'s decision left (``promoted_model/<N-1>``; by
hand ``--parent DIR`` names any published checkpoint instead), and what the preference stage
reads; ``--input PRODUCT=VERSION`` pins one, and the published checkpoint records the versions
read as its ``inputs``. Cycle ``N >= 1`` fine-tunes the champion on the cycle's training set
with ``sft``'s settings overridden by ``cycles.train`` (``CycleSettings.train_settings``),
then, per ``cycles.preference`` (with ``cycles.preference_train`` over those settings):

- ``dpo``: on the preference pairs of the accepted sets of cycles ``< N``
  (``accepted_generations/<k>``), newest cycles first, at most ``preference_train.max_prompts``
  pairs;
- ``grpo`` / ``rloo``: on the prompts with a reference answer among cycle ``N-1``'s
  generations (``synthetic_generations/<N-1>``, at most ``max_prompts``), rewarded by the
  acceptance verifier.

With no pairs (or prompts) yet, preference training is skipped with a warning and the
metrics say so. The final model is published once under ``cycles/<N>/checkpoint`` with its
lineage (parent, training set, cycle, origins of its rows) and recorded in the catalog as stage
``cycle``. The run's fingerprint (``flywheel.train.finetune.FineTune``) covers the cycle's
SFT and preference settings, the parent, the training set's version and content and the
preference data; a rerun of a finished cycle trains nothing and reports the published checkpoint. A
crash during preference training keeps the finished SFT model, and both stages resume from
their newest complete ``checkpoint-N``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core import artifacts, chat, keys, shards
from flywheel.core import products as P
from flywheel.core.records import Loaded, quarantined
from flywheel.core.report import Reporter
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.loop import preference
from flywheel.loop.agents.cycle_rl import check_rl_settings, rl_kind, rl_stage, trains_sft
from flywheel.loop.cycles import check_cycle_inputs, checkpoint_root, cycle_inputs
from flywheel.train import lora
from flywheel.train.finetune import INTERMEDIATE, FineTune, run_finetune, shaping
from flywheel.train.sft import train_and_save
from flywheel.train.sft_data import data_fingerprint

STAGE = "cycle"  # the catalog's name for these checkpoints
PAIRS = "preference_pairs"  # the aux table of an accepted set that DPO trains on
COLUMNS = ("prompt", "response", "origin")


@dataclass(frozen=True)
class PreferenceData:
    """What the preference stage trains on, and where it came from."""

    kind: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def fingerprint(self) -> str:
        blob = "\n".join(json.dumps(e, sort_keys=True) for e in self.examples)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_training_set(training_set: shards.ShardSet, cycle: int) -> Loaded:
    """The rows of cycle ``cycle``'s training set as conversations (bad rows quarantined):
    each row's ``messages`` read by ``flywheel.core.chat.sft_record``, exactly as the seed
    SFT read its data, so a cycle trains on the format the seed model was trained on."""
    missing = [c for c in COLUMNS if c not in training_set.manifest.get("schema", {})]
    if missing:
        raise ValueError(f"training set {training_set.path} lacks the column(s) {missing}")
    if training_set.manifest.get("cycle", cycle) != cycle:
        raise ValueError(
            f"training set {training_set.path} is cycle {training_set.manifest['cycle']}'s, "
            f"not cycle {cycle}'s"
        )
    source = f"training_set(cycle={cycle}, {training_set.version})"
    examples, bad = [], []
    columns = ["prompt", "response"] + (["messages"] if "messages" in training_set.schema else [])
    for i, row in enumerate(training_set.read(columns).iter_rows(named=True), start=1):
        example, reason = _sft_row(row)
        if example is None:
            bad.append(quarantined(source, i, reason, row))
        else:
            examples.append(example)
    if not examples:
        raise ValueError(f"training set {training_set.path} has no usable rows ({len(bad)} bad)")
    return Loaded(examples, bad, source)


def _sft_row(row: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """One training row as an SFT example: its whole conversation (``messages``, as the seed
    SFT data was read) or, in a set written before that column existed, prompt/response."""
    if not row.get("messages"):
        return chat.sft_record({"prompt": row["prompt"], "response": row["response"]})
    try:
        return chat.sft_record({"messages": chat.loads(row["messages"])})
    except json.JSONDecodeError:
        return None, "messages_not_json"


def origin_counts(training_set: shards.ShardSet) -> dict[str, int]:
    """Rows per origin: ``origin/seed`` (the seed SFT data) and ``origin/generation``."""
    counts = training_set.read(["origin"]).group_by("origin").len()
    found = {str(o): int(n) for o, n in counts.iter_rows()}
    return {f"origin/{o}": found.get(o, 0) for o in sorted({"seed", "generation", *found})}


def pair_rows(
    handed: Mapping[str, Any], cycle: int, limit: int, extra: tuple[str, ...] = ()
) -> tuple[pl.DataFrame | None, str]:
    """The preference pairs of the accepted sets of cycles before ``cycle`` among ``handed``
    (``accepted_generations/<k>``), newest cycles first (their completions come from the model
    closest to the one being trained), at most ``limit``, with the ``extra`` columns (the
    vision loop's ``image_id``); and where they came from. None: no set has pairs."""
    frames, sources = [], []
    for k in range(cycle):
        accepted = handed.get(P.of_cycle(P.ACCEPTED, k))
        if accepted is None:
            continue
        if PAIRS in accepted.manifest.get("aux", []):
            pairs = _with_messages(accepted.aux(PAIRS))
            pairs = pairs.select("prompt_id", "prompt", "messages", "chosen", "rejected", *extra)
            frames.append(pairs.with_columns(pl.lit(k).alias("from_cycle")))
            sources.append(f"{k}:{accepted.version}")
    if not frames:
        return None, ""
    usable = pl.col("chosen").str.strip_chars() != pl.col("rejected").str.strip_chars()
    pairs = (
        pl.concat(frames)
        .drop_nulls(["prompt", "chosen", "rejected", *extra])
        .filter(usable)
        .sort(
            ["from_cycle", "prompt_id", "chosen", "rejected"],
            descending=[True, False, False, False],
        )
        .head(limit)
    )
    return pairs, "accepted pairs of cycles " + ", ".join(sources)


def load_pairs(handed: Mapping[str, Any], cycle: int, limit: int) -> PreferenceData:
    """DPO examples from the pairs of the accepted sets before ``cycle`` (``pair_rows``)."""
    pairs, source = pair_rows(handed, cycle, limit)
    if pairs is None:
        return PreferenceData("dpo")
    examples = [
        preference.dpo_example(_conversation(r), r["chosen"], r["rejected"])
        for r in pairs.iter_rows(named=True)
    ]
    return PreferenceData("dpo", examples, source)


def load_prompts(handed: Mapping[str, Any], cycle: int, kind: str, limit: int) -> PreferenceData:
    """GRPO/RLOO prompts: those with a reference answer among cycle ``cycle - 1``'s
    generations (``synthetic_generations/<cycle-1>`` in ``handed``), once each (a prompt was
    sampled several times), in prompt_id order."""
    generations = handed.get(P.of_cycle(P.GENERATIONS, cycle - 1))
    if generations is None:
        return PreferenceData(kind)
    answered = pl.col("answer").is_not_null() & (pl.col("answer").str.strip_chars() != "")
    columns = ["prompt_id", "prompt", "answer", "messages"]
    prompts = (
        _with_messages(generations.read([c for c in columns if c in generations.schema]))
        .filter(answered & pl.col("prompt").is_not_null())
        .unique("prompt_id", keep="first", maintain_order=True)
        .sort("prompt_id")
        .head(limit)
    )
    examples = [
        preference.rl_example(_conversation(r), r["answer"]) for r in prompts.iter_rows(named=True)
    ]
    return PreferenceData(kind, examples, f"generations(cycle={cycle - 1}, {generations.version})")


def _with_messages(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with a ``messages`` column (null where a set written before it has none)."""
    if "messages" in df.columns:
        return df
    return df.with_columns(pl.lit(None, dtype=pl.String).alias("messages"))


def _conversation(row: dict[str, Any]) -> chat.Messages:
    """The conversation a preference example continues: the generation's, system and earlier
    turns included, as SFT and generation rendered it (null: the prompt as one user turn)."""
    return chat.loads(row["messages"]) if row["messages"] else [chat.turn("user", row["prompt"])]


def preference_data(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> PreferenceData | None:
    """The preference stage's data per ``cycles.preference``; None when it is ``none``."""
    kind, settings = spec.cycles.preference, spec.cycles.preference_settings(spec.sft)
    if kind == "none":
        return None
    preference.check_settings(kind, settings, settings.num_processes)
    if kind == "dpo":
        return load_pairs(handed, cycle, settings.max_prompts)
    preference.verifier_reward(spec.acceptance.verifier)  # an unusable verifier fails now
    return load_prompts(handed, cycle, kind, settings.max_prompts)


def _keyed_by(spec: Spec, cycle: int, version: str, data: PreferenceData | None) -> dict[str, Any]:
    """What shapes the cycle's weights beyond the SFT settings, the parent and the rows."""
    key: dict[str, Any] = {"cycle": cycle, P.TRAINING_SET: version, "preference": "none"}
    if data is not None:
        settings = spec.cycles.preference_settings(spec.sft)
        key |= {"preference": data.kind, "preference_train": shaping(settings)}
        key["preference_data"] = data.fingerprint() if data.examples else "none"
        if data.kind != "dpo":  # the verifier is the reward: its settings and its code
            verifier = spec.acceptance.verifier
            key["verifier"] = verifier.model_dump(mode="json")
            if verifier.kind == "python" and verifier.function:
                key["verifier_source"] = keys.module_digest(verifier.function)
    if spec.agent is not None and spec.cycles.method != "sft":  # RL in the environment
        key["method"] = spec.cycles.method
        # An unset lora (the cycle's, already keyed) is left out: older keys stay the same.
        if spec.cycles.method.endswith("ppo"):
            exclude = {"save_every", "keep_states"} | _unset_lora(spec.cycles.ppo)
            key["rl"] = spec.cycles.ppo.model_dump(mode="json", exclude=exclude)
        else:  # grpo: TRL's, on the preference stage's settings
            rl = spec.cycles.preference_train
            key["rl"] = rl.model_dump(mode="json", exclude=_unset_lora(rl))
        key["agent"] = spec.agent.model_dump(mode="json", exclude={"accept"})
        key["environment"] = next(
            e.model_dump(mode="json") for e in spec.environments if e.name == spec.agent.environment
        )
    return key


def _unset_lora(settings: Any) -> set[str]:
    return {"lora"} if settings.lora is None else set()


def retrain_inputs(
    spec: Spec, cycle: int, pinned: Mapping[str, str] | None = None, parent: Path | None = None
) -> dict[str, Any]:
    """What cycle ``cycle``'s retraining reads (``cycle_inputs``), ``pinned`` where given;
    ``parent``: by hand, this checkpoint directory as the champion."""
    if cycle < 1:
        raise ValueError(f"--cycle must be >= 1, got {cycle} (cycle 0 is flywheel.train.sft)")
    given = {}
    if parent is not None:
        try:
            given[P.of_cycle(P.PROMOTED, cycle - 1)] = artifacts.verify(Path(parent))
        except artifacts.ArtifactError as exc:
            raise artifacts.ArtifactError(f"the parent (champion) {exc}") from None
    return cycle_inputs(spec, P.CYCLE_CHECKPOINT, cycle, pinned, given=given)


def cycle_run(
    spec: Spec, cycle: int, handed: Mapping[str, Any]
) -> tuple[FineTune, PreferenceData | None]:
    """The cycle's fine-tuning run and its preference data, from ``handed``: the inputs
    ``retrain_inputs`` gives, checked and recorded as the checkpoint's ``inputs``."""
    if cycle < 1:
        raise ValueError(f"--cycle must be >= 1, got {cycle} (cycle 0 is flywheel.train.sft)")
    check_cycle_inputs(spec, P.CYCLE_CHECKPOINT, cycle, handed)
    parent = handed[P.of_cycle(P.PROMOTED, cycle - 1)]
    training_set = handed[P.TRAINING_SET]
    data = load_training_set(training_set, cycle)
    pref = preference_data(spec, cycle, handed)
    check_rl_settings(spec)  # before SFT spends time
    origins = origin_counts(training_set)
    about = {
        P.TRAINING_SET: training_set.version,
        "cycle": cycle,
        "parent_cycle": training_set.manifest.get("parent_cycle"),
        **origins,
        "preference": pref.kind if pref else "none",
        "method": f"sft+{pref.kind}" if pref else spec.cycles.method,
        **({"preference_data": pref.source} if pref and pref.examples else {}),
    }
    lineage = {"parent_checkpoint": parent.version, **about}
    lineage |= {"data_fingerprint": data_fingerprint(data), **data.counts}
    metadata = {**about, "rows": training_set.num_rows}
    keyed_by = _keyed_by(spec, cycle, training_set.version, pref)
    root = checkpoint_root(spec, cycle)
    settings = spec.cycles.train_settings(spec.sft)
    run = FineTune(
        settings, parent, data, root, STAGE, lineage, metadata, keyed_by, P.versions(handed)
    )
    return run, pref


def finished_sft(path: Path) -> dict[str, Any] | None:
    """The metrics of this run's SFT model if it was saved completely, else None."""
    try:
        return artifacts.verify(path, deep=False).meta["metrics"]
    except artifacts.ArtifactError:
        return None


def train_cycle(
    spec: Spec, reporter: Reporter, run: FineTune, pref: PreferenceData | None
) -> tuple[dict[str, Any], Path]:
    """SFT, then the preference stage if it has data; on every rank. Metrics and model dir."""
    from accelerate import PartialState

    attn = spec.model.attn_implementation
    if rl_kind(spec) is not None:
        return _train_agent_cycle(spec, reporter, run)
    if pref is None or not pref.examples:
        metrics, staging = train_and_save(run, reporter, attn)
        if pref is not None:
            what = "preference pairs" if pref.kind == "dpo" else "prompts with answers"
            reason = f"no {what} from earlier cycles yet"
            reporter.warning(f"cycles.preference is {pref.kind} but there are {reason}: skipped")
            metrics |= {"preference": pref.kind, "preference/skipped": reason}
        return metrics, staging
    sft_model = run.work / INTERMEDIATE
    metrics = finished_sft(sft_model)
    if metrics is None:
        metrics, _ = train_and_save(run, reporter, attn, sft_model)
        if reporter.is_main:  # marks the SFT stage complete: a rerun goes on from here
            artifacts.write_manifest(sft_model, metrics=metrics)
        PartialState().wait_for_everyone()
    else:
        reporter.info(f"SFT of this run is done ({sft_model}); going on with {pref.kind}")
    reward = None if pref.kind == "dpo" else preference.verifier_reward(spec.acceptance.verifier)
    settings = spec.cycles.preference_settings(spec.sft)
    work = run.work / "preference"
    adapter = lora.adapter_dir(run.work, pref.kind)
    metrics |= preference.train_preference(
        pref.kind, settings, sft_model, pref.examples, work, run.staging, reporter, attn, reward,
        adapter,
    )  # fmt: skip
    return metrics, run.staging


def _train_agent_cycle(spec: Spec, reporter: Reporter, run: FineTune) -> tuple[dict, Path]:
    """``cycles.method`` sft+ppo / ppo (and grpo): the RL stage in the agent's environment,
    from the cycle's SFT model (trained, or finished by an earlier run) or from the champion."""
    from accelerate import PartialState

    start, metrics = run.parent.path, {}
    if trains_sft(spec):
        start = run.work / INTERMEDIATE
        metrics = finished_sft(start)
        if metrics is None:
            metrics, _ = train_and_save(run, reporter, spec.model.attn_implementation, start)
            if reporter.is_main:  # marks the SFT stage complete: a rerun goes on from here
                artifacts.write_manifest(start, metrics=metrics)
            PartialState().wait_for_everyone()
    cycle = int(run.lineage["cycle"])
    adapter = lora.adapter_dir(run.work, rl_kind(spec) or "rl")
    metrics |= rl_stage(spec, cycle, start, run.staging, run.work / "rl", reporter, adapter)
    return {**metrics, "method": spec.cycles.method}, run.staging


def run_retrain(
    spec: Spec, reporter: Reporter, cycle: int, handed: Mapping[str, Any]
) -> dict[str, Any]:
    """Train cycle ``cycle`` on ``handed`` (``retrain_inputs``; or reuse it) and publish it;
    rank 0 returns ``{"version", "metadata"}``."""
    run, pref = cycle_run(spec, cycle, handed)
    return run_finetune(spec, reporter, run, lambda: train_cycle(spec, reporter, run, pref))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.loop.retrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_spec_arguments(parser)
    parser.add_argument("--cycle", type=int, required=True, help="the cycle to train (>= 1)")
    parser.add_argument(
        "--parent", type=Path, help="by hand: train from this checkpoint, not the champion"
    )
    P.add_input_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # accelerate launch sets RANK on every process; only rank 0 talks to Dagster Pipes.
    spec = load_spec(args.spec, args.overrides)
    handed = retrain_inputs(spec, args.cycle, P.parse_pins(args.input), args.parent)
    with Reporter(is_main=os.environ.get("RANK", "0") == "0") as reporter:
        run_retrain(spec, reporter, args.cycle, handed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
