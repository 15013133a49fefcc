"""The declarative flywheel spec: one YAML file, validated into typed models.

    flywheel check [SPEC] [key.path=value ...]

The spec lives in ``flywheel.yaml`` at the project root unless ``FLYWHEEL_SPEC`` names another
file. Every field has a default and a one-line description (``flywheel check --explain``
prints them, ``flywheel.core.explain``); unknown keys and bad values raise one ``SpecError``
that names the file, the key path and what was expected. Relative paths are resolved against
the spec file's directory, so a spec means the same thing from any working directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flywheel.core.settings.agents import AgentSettings, EnvironmentSpec
from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import Engine, RaySettings
from flywheel.core.settings.filters import FilterSettings
from flywheel.core.settings.images import ImageSettings
from flywheel.core.settings.loop import AcceptanceSettings, CycleSettings, GenerationSettings
from flywheel.core.settings.sources import PythonEnvSource, SourceSpec
from flywheel.core.settings.train import (
    EvalSettings,
    ModelSettings,
    PackingSettings,
    PretrainSettings,
    SftSettings,
    TokenizerSettings,
)
from flywheel.core.settings.vision import VisionSettings
from flywheel.core.spec_input import SpecError, apply_override, format_errors, kind_of

DEFAULT_SPEC = "flywheel.yaml"
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # an importable module name
SPEC_ENV = "FLYWHEEL_SPEC"
# the kinds of source lists: pydantic adds them to an error's location, a user never writes them
# `flywheel run --set k=v` hands its overrides to the Dagster processes it starts (code server,
# daemon, run workers) through this variable: a JSON list of "key.path=value" strings.
OVERRIDES_ENV = "FLYWHEEL_SET"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class IngestSettings(_Model):
    batch_rows: int = Field(2_000, gt=0, description="Records read per batch; bounds memory.")
    shard_rows: int = Field(50_000, gt=0, description="Rows per Parquet shard written.")
    max_doc_bytes: int = Field(
        1_000_000, gt=0, description="Records with more UTF-8 bytes of text are quarantined."
    )


class ValidationSettings(_Model):
    enabled: bool = Field(True, description="Run the Great Expectations suites as asset checks.")
    blocking: bool = Field(True, description="A failing check stops downstream assets.")
    min_chars: int = Field(1, ge=0, description="Shortest text a shard may hold.")
    max_chars: int = Field(1_000_000, gt=0, description="Longest text a shard may hold.")
    min_rows: int = Field(1, ge=0, description="Fewest rows a shard set may hold.")


class Spec(_Model):
    name: str = Field(
        "flywheel", description="Name of this flywheel; flywheel check and spec errors show it."
    )
    owners: list[str] = Field(
        default_factory=lambda: ["team:data"], description="Dagster owners of every asset."
    )
    data_dir: Path = Field(
        Path(".flywheel/data"), description="Where shards, indexes and checkpoints are written."
    )
    catalog: Path = Field(
        Path(".flywheel/catalog.duckdb"),
        description="Catalog of documents and lineage: a marker file; its Parquet fragments, "
        "queried with DuckDB, are in the directory <catalog>.d.",
    )
    sources: list[SourceSpec] = Field(
        default_factory=lambda: [PythonEnvSource(name="python_docs")],
        description="Raw corpora; one raw asset each. Default: text on this Python install.",
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Ingest I/O.")
    filters: FilterSettings = Field(
        default_factory=FilterSettings, description="Heuristic quality filters."
    )
    dedup: DedupSettings = Field(
        default_factory=DedupSettings, description="Exact and MinHash LSH deduplication."
    )
    engine: Engine = Field(
        "local", description="Where dedup runs: this process (local) or a Ray cluster (ray)."
    )
    ray: RaySettings = Field(
        default_factory=RaySettings, description="The Ray cluster of engine: ray."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="Great Expectations asset checks."
    )
    tokenizer: TokenizerSettings = Field(
        default_factory=TokenizerSettings, description="Byte-level BPE trained on the shards."
    )
    packing: PackingSettings = Field(
        default_factory=PackingSettings, description="Packed fixed-length training sequences."
    )
    model: ModelSettings = Field(
        default_factory=ModelSettings, description="The model trained (config or local path)."
    )
    pretrain: PretrainSettings = Field(
        default_factory=PretrainSettings, description="Next-token pre-training."
    )
    sft: SftSettings = Field(
        default_factory=SftSettings, description="Supervised fine-tuning with TRL."
    )
    eval: EvalSettings = Field(
        default_factory=EvalSettings, description="Held-out perplexity and task accuracy."
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Synthetic generation by the champion."
    )
    acceptance: AcceptanceSettings = Field(
        default_factory=AcceptanceSettings, description="Verification, filters and dedup."
    )
    cycles: CycleSettings = Field(
        default_factory=CycleSettings, description="Triggers, retraining and promotion."
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported (the spec's directory first on sys.path) before "
        "any verifier is used, e.g. ones that call register_verifier to add verifier kinds.",
    )
    environments: list[EnvironmentSpec] = Field(
        default_factory=list,
        description="Agent environments (tools + reward) by import path, for offline "
        "collection and online RL (TRL GRPOTrainer environment_factory).",
    )
    images: ImageSettings = Field(
        default_factory=ImageSettings,
        description="Image-text data: sources, decode caps, filters, dedup (no sources: no "
        "image assets).",
    )
    agent: AgentSettings | None = Field(
        None,
        description="Agent trajectories as cycle products: the champion plays an environment "
        "each cycle (null: no agent products).",
    )
    vision: VisionSettings | None = Field(
        None,
        description="The loop's model is a VLM on the visual counting task: seed SFT on the "
        "curated images, held-out accuracy, sampled answers to new images (null: text).",
    )
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, plugins: list[str]) -> list[str]:
        bad = [p for p in plugins if not _MODULE.fullmatch(p)]
        if bad:
            raise ValueError(f"plugins are dotted module names (my_checks, pkg.mod); got {bad}")
        return plugins

    @field_validator("environments", "sources")
    @classmethod
    def _unique_names(cls, items: list[Any], info: ValidationInfo) -> list[Any]:
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        what = info.field_name.removesuffix("s")  # source, environment
        if dupes:
            raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        if info.field_name == "sources" and not items:
            raise ValueError("at least one source is required")
        return items

    @model_validator(mode="after")
    def _distinct_raw_products(self) -> Spec:
        # raw_<text source> and raw_images_<image source> share one namespace of products
        texts = {s.name for s in self.sources}
        clash = sorted(i.name for i in self.images.sources if f"images_{i.name}" in texts)
        if clash:
            raise ValueError(
                f"images.sources: raw_images_{clash[0]} would be both the text source "
                f"images_{clash[0]}'s raw product and the image source {clash[0]}'s; "
                "rename one of them"
            )
        return self

    @model_validator(mode="after")
    def _agent_environment(self) -> Spec:
        names = [e.name for e in self.environments]
        if self.agent is not None and self.agent.environment not in names:
            known = ", ".join(names) or "none"
            raise ValueError(
                f"agent.environment: {self.agent.environment!r} names no entry of "
                f"environments (defined: {known})"
            )
        if self.agent is not None and self.cycles.preference != "none":
            raise ValueError(
                f"cycles.preference: {self.cycles.preference!r} trains on generations, which "
                "a spec with an `agent` section does not make; use cycles.method for an "
                "agent's RL (ppo, grpo)"
            )
        if self.agent is None and self.cycles.method != "sft":
            raise ValueError(
                f"cycles.method: {self.cycles.method!r} trains in the agent's environment; "
                "add an `agent` section, or use cycles.preference for single-turn RL"
            )
        return self

    @model_validator(mode="after")
    def _vision_loop(self) -> Spec:
        if self.vision is None:
            return self
        if self.agent is not None:
            raise ValueError("a spec has either a `vision` or an `agent` section, not both")
        if not self.images.sources:
            raise ValueError(
                "vision: the seed VLM trains on curated images; add images.sources (e.g. "
                "{name: shapes, kind: visual_counting})"
            )
        if self.cycles.preference not in ("none", "dpo"):
            raise ValueError(
                f"cycles.preference: {self.cycles.preference!r} is not wired for the vision "
                "loop (it retrains by SFT on accepted answers, then optionally DPO on "
                "accepted/rejected answers to the same image); use none or dpo"
            )
        if self.sft.batching == "balanced":
            raise ValueError(
                "sft.batching: balanced needs each conversation's token count before batching, "
                "and a VLM's examples are tokenized with their images in each batch; use random"
            )
        return self

    # -- derived locations: one place decides where each data product lives ---------------
    def product_dir(self, product: str) -> Path:
        return self.data_dir / product

    @property
    def dedup_index_dir(self) -> Path:
        return self.data_dir / "dedup_index"

    @property
    def image_store_dir(self) -> Path:
        """The content-addressed image store: every image once, by id; shards hold ids."""
        return self.data_dir / "image_store"

    @property
    def image_dedup_index_dir(self) -> Path:
        return self.data_dir / "image_dedup_index"

    def source(self, name: str) -> Any:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r} in spec {self.name!r}")

    @property
    def base_dir(self) -> Path:
        """The spec file's directory: relative paths inside the spec are resolved against it."""
        return self._base_dir

    def resolved(self) -> dict[str, Any]:
        """The fully resolved spec (defaults filled in), as stored with every artifact."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def spec_path(path: str | Path | None = None) -> Path:
    """The spec file to use: an explicit path, else ``$FLYWHEEL_SPEC``, else ``flywheel.yaml``."""
    return Path(path or os.environ.get(SPEC_ENV) or DEFAULT_SPEC).resolve()


def env_overrides() -> list[str]:
    """The overrides ``$FLYWHEEL_SET`` holds (a JSON list of ``key.path=value``), or none."""
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise SpecError(f"${OVERRIDES_ENV} must be a JSON list of key=value strings, got {raw!r}")
    return items


def add_spec_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--spec FILE`` and repeatable typed ``--set key.path=value`` (into ``overrides``),
    as every entry point that takes a spec spells them."""
    parser.add_argument(
        "--spec", required=required, help="spec file (default $FLYWHEEL_SPEC or flywheel.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a typed spec override, e.g. --set pretrain.steps=50 (repeatable)",
    )


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec; raise ``SpecError`` with a readable message."""
    path = spec_path(path)
    if not path.exists():
        raise SpecError(
            f"{path}: spec file not found (pass its path, set {SPEC_ENV}, or write a project "
            "with `flywheel init DIR`)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of keys, got {kind_of(raw)}")
    for item in overrides or []:
        apply_override(raw, item, path)
    return parse_spec(raw, path)


def parse_spec(raw: dict[str, Any], path: Path) -> Spec:
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, path, Spec)) from None
    base = path.parent
    spec.data_dir = (base / spec.data_dir).resolve()
    spec.catalog = (base / spec.catalog).resolve()
    _resolve_paths(spec, base)
    spec._base_dir = base
    return spec


def _resolve_paths(spec: Spec, base: Path) -> None:
    """Resolve the training plane's optional local paths against the spec's directory."""
    owners = [spec.tokenizer, spec.model, spec.sft.data, *spec.sft.data.extra]
    owners += [*spec.eval.tasks, spec.generation.prompts]
    for owner in owners:
        if getattr(owner, "path", None) is not None:
            owner.path = (base / owner.path).resolve()
    for train in (spec.pretrain, spec.sft):  # cycles inherit sft's (resolved) config
        if train.accelerate_config is not None:
            train.accelerate_config = (base / train.accelerate_config).resolve()
    serve = spec.generation.endpoint.serve
    serve.executable = (base / serve.executable).absolute()
    for verifier in (spec.acceptance.verifier, *(task.verifier for task in spec.eval.tasks)):
        if verifier.reward_model is not None:
            verifier.reward_model = (base / verifier.reward_model).resolve()
