"""The spec's ``vision`` section: the loop's model is a VLM learning the visual counting task.

    python -c "from flywheel.core.settings.vision import VisionSettings; print(VisionSettings())"

With this section (``flywheel.loop.vision``) the same graph, sensor, gate and report turn a
vision-language model instead of a text one: the seed SFT trains a VLM (built fresh with the
project's tokenizer, no text pre-training) on the curated image shards as conversations
(question -> caption); each cycle's eval scores held-out accuracy at the easy and the hard end
of the task's axis (object count); the champion answers new task images (sampled), the numeric
verifier accepts, and retraining fine-tunes on the accumulated accepted answers.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

CELL = 8  # px per cell of the task's grid (flywheel.data.visual.CELL): one shape per cell


class ObjectRange(BaseModel):
    """An inclusive range of object counts: one end of the task's easy-to-hard axis."""

    model_config = ConfigDict(extra="forbid")

    min_objects: int = Field(1, ge=1, description="Fewest shapes in an image.")
    max_objects: int = Field(3, ge=1, description="Most shapes in an image.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})"
            )
        return self


class TowerSettings(BaseModel):
    """The vision tower's shape (``flywheel.train.vlm.model.VisionTower``); tiny by default."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["clip", "siglip"] = Field("clip", description="CLIP or SigLIP vision encoder.")
    patch_size: int = Field(8, ge=1, description="8 px: one task cell per patch.")
    hidden_size: int = Field(64, ge=8, description="Width of the tower.")
    intermediate_size: int = Field(128, ge=8, description="MLP width of the tower.")
    num_hidden_layers: int = Field(2, ge=1, description="Layers of the tower.")
    num_attention_heads: int = Field(2, ge=1, description="Heads of the tower.")


class VisionSettings(BaseModel):
    """The ``vision`` section: the task, the tower, and how each cycle generates."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(32, ge=CELL, description="Task image side in px (a multiple of 8).")
    easy: ObjectRange = Field(
        default_factory=lambda: ObjectRange(min_objects=1, max_objects=3),
        description="The easy end: what the seed images mostly show (eval metric easy).",
    )
    hard: ObjectRange = Field(
        default_factory=lambda: ObjectRange(min_objects=4, max_objects=6),
        description="The hard end: the gate metric (vision/hard/accuracy).",
    )
    prompts: ObjectRange = Field(
        default_factory=lambda: ObjectRange(min_objects=1, max_objects=6),
        description="Object counts of each cycle's generation images (spanning both ends).",
    )
    eval_examples: int = Field(
        100, ge=1, description="Held-out images per end (100: standard error <= 0.05)."
    )
    eval_seed: int = Field(1_000_003, description="Seed of the held-out images (far from seed).")
    images_per_cycle: int = Field(200, ge=1, description="New images the champion answers.")
    samples_per_image: int = Field(4, ge=1, description="Sampled answers per new image.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of generation.")
    max_new_tokens: int = Field(4, ge=1, description="Tokens per answer (a count: a few).")
    max_per_image: int = Field(1, ge=1, description="Accepted answers kept per image.")
    seed: int = Field(0, description="Seed of generation images: seed + cycle each cycle.")
    # one torch thread: measured 10x faster than two on a shared 2-core machine (tiny kernels
    # lose more to thread contention than they gain); 0 keeps torch's default
    torch_threads: int = Field(1, ge=0, description="torch threads in VLM stages (0: default).")
    tower: TowerSettings = Field(default_factory=TowerSettings, description="Vision tower.")

    @model_validator(mode="after")
    def _fits_image(self) -> Self:
        if self.image_size % CELL:
            raise ValueError(
                f"vision.image_size must be a multiple of {CELL}, got {self.image_size}"
            )
        most = (self.image_size // CELL) ** 2
        for name in ("easy", "hard", "prompts"):
            r = getattr(self, name)
            if r.max_objects > most:
                raise ValueError(
                    f"vision.{name}.max_objects {r.max_objects} > {most}, the cells of a "
                    f"{self.image_size}-px image"
                )
        if self.image_size % self.tower.patch_size:
            raise ValueError(
                f"vision.image_size {self.image_size} is not a multiple of "
                f"vision.tower.patch_size {self.tower.patch_size}"
            )
        return self
