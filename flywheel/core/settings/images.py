"""Settings of the image-text data plane: sources, decoding limits, filters and image dedup.

``ImageSettings`` is the spec's ``images`` section (``extra="forbid"``, a default and a reason
for every field); the library's image stages take its parts as plain arguments:

    python -c "from flywheel.core.settings.images import *; print(ImageSettings())"
"""

from __future__ import annotations

from math import comb
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from flywheel.core.settings.filters import C4Settings, FilterSettings
from flywheel.core.settings.filters import GopherQualitySettings as _GopherQuality
from flywheel.core.settings.filters import GopherRepetitionSettings as _GopherRepetition
from flywheel.core.settings.sources import _Source

PHASH_BITS = 64  # imagehash's pHash: the sign of 8x8 DCT coefficients against their median
MAX_PROBES = 100_000  # bucket keys probed per image and search; beyond this, use more bands


class ImageDecodeSettings(BaseModel):
    """Limits checked before and while decoding; what fails them is quarantined."""

    model_config = ConfigDict(extra="forbid")

    # 40 MP is 7,300 x 5,500: above any camera a caption corpus holds, far below what makes a
    # decompression bomb dangerous (an RGB 40 MP frame is 120 MB decoded). Checked on the
    # header's size, BEFORE any pixel is decoded.
    max_pixels: int = Field(
        40_000_000, ge=1, description="Most pixels (width x height) an image may declare."
    )
    max_bytes: int = Field(
        50_000_000, ge=1, description="Most encoded bytes per image (read into memory whole)."
    )


def _no_text_filters() -> FilterSettings:
    # the document filters assume documents (Gopher: >= 20 words, C4: >= 5 sentences), which
    # no caption is; they are available on captions, off unless a spec turns them on
    return FilterSettings(
        gopher_quality=_GopherQuality(enabled=False),
        gopher_repetition=_GopherRepetition(enabled=False),
        c4=C4Settings(enabled=False),
    )


class ImageFilterSettings(BaseModel):
    """Resolution, aspect ratio and caption rules; each drop is written with its reason."""

    model_config = ConfigDict(extra="forbid")

    # vision encoders resize to ~224-448 px; below 32 px an image carries next to nothing
    min_side: int = Field(32, ge=1, description="Fewest pixels on the shorter side.")
    max_side: int = Field(16_384, ge=1, description="Most pixels on the longer side.")
    # banners, strips and panoramas past 4:1 are mostly cropped away by square encoders
    max_aspect_ratio: float = Field(
        4.0, ge=1.0, description="Most longer side / shorter side (1.0: square only)."
    )
    min_caption_chars: int = Field(3, ge=0, description="Fewest caption characters (stripped).")
    max_caption_chars: int = Field(
        2000, ge=1, description="Most caption characters (long dense captions included)."
    )
    min_caption_words: int = Field(1, ge=0, description="Fewest whitespace-separated words.")
    caption_filters: FilterSettings = Field(
        default_factory=_no_text_filters,
        description="The document filters (gopher_quality, gopher_repetition, c4) on captions; "
        "all off by default (captions are not documents).",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        if self.min_caption_chars > self.max_caption_chars:
            raise ValueError(
                f"min_caption_chars ({self.min_caption_chars}) must be <= "
                f"max_caption_chars ({self.max_caption_chars})"
            )
        return self


class ImageDedupSettings(BaseModel):
    """Exact (decoded pixels) and pHash near-duplicate removal.

    Candidates: the 64 pHash bits are cut into ``bands`` pieces; two hashes within Hamming
    distance t differ, by pigeonhole, in at most floor(t / bands) bits of some band, so probing
    every key within that radius of each band finds every pair within t (no LSH misses), and
    the full Hamming distance then verifies it (see ``flywheel.data.images.phash``).
    """

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Remove images whose decoded pixels were seen before.")
    phash: bool = Field(True, description="Remove images whose pHash is within the threshold.")
    # measured on bench/image_dedup.py's corpus (600 originals, 200 copies per kind): resized,
    # JPEG q40-90 and brightness x0.85-1.15 copies lie at Hamming <= 6, copies cropped 2-5%
    # at a median 5, 90th percentile 10, max 14; the closest of 180k unrelated pairs at 14.
    # 10 keeps a margin from unrelated images at 16-bit bands probed at radius 2 (548 keys)
    threshold: int = Field(
        10, ge=0, le=PHASH_BITS // 2, description="Largest pHash Hamming distance of duplicates."
    )
    bands: int = Field(
        4, ge=1, le=PHASH_BITS, description="Pieces the 64 pHash bits are cut into for search."
    )

    @model_validator(mode="after")
    def _check_probes(self) -> Self:
        probes = self.probes_per_image()
        if probes > MAX_PROBES:
            raise ValueError(
                f"threshold={self.threshold} with bands={self.bands} probes {probes} keys per "
                f"image (> {MAX_PROBES}): raise bands or lower the threshold"
            )
        return self

    @property
    def radius(self) -> int:
        """Bits a band may differ by and still be probed: floor(threshold / bands)."""
        return self.threshold // self.bands

    def probes_per_image(self) -> int:
        """Bucket keys one image probes: per band, every key within ``radius`` of its own."""
        widest = -(-PHASH_BITS // self.bands)
        return self.bands * sum(comb(widest, i) for i in range(self.radius + 1))


class ImageParquetSource(_Source):
    """Parquet files of image-text pairs: image bytes or a path, plus the caption."""

    kind: Literal["image_parquet"] = Field(
        default="image_parquet", description="Discriminator: Parquet image-text pairs."
    )
    path: str = Field(min_length=1, description="File or glob; relative to base_dir.")
    image_field: str = Field(
        default="image",
        min_length=1,
        description="Column with the image: bytes, a path, or a {bytes, path} struct "
        "(Hugging Face's Image feature).",
    )
    text_field: str = Field(default="text", min_length=1, description="Column with the caption.")
    id_field: str | None = Field(default="id", description="Column with the record's own id.")
    require_id: bool = Field(default=False, description="Quarantine records without an id.")
    image_root: str | None = Field(
        default=None,
        description="Directory relative image paths resolve against (default: the Parquet "
        "file's own directory).",
    )


class WebDatasetSource(_Source):
    """WebDataset tar shards: members grouped into samples by key (the name up to its first
    dot), one image member and one caption member per sample."""

    kind: Literal["webdataset"] = Field(
        default="webdataset", description="Discriminator: WebDataset tar shards."
    )
    path: str = Field(min_length=1, description="Tar file or glob (.tar, .tar.gz).")
    image_extensions: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"],
        min_length=1,
        description="Member extensions holding the image, first match wins.",
    )
    text_extensions: list[str] = Field(
        default_factory=lambda: ["txt", "caption"],
        min_length=1,
        description="Member extensions holding the caption (UTF-8), first match wins.",
    )


class VisualCountingSource(_Source):
    """Built in: rendered images of the visual counting task (``flywheel.data.visual``), the
    shape count as caption. Needs no files: a demo or a test has an image corpus offline."""

    kind: Literal["visual_counting"] = Field(
        default="visual_counting", description="Discriminator: rendered counting images."
    )
    count: int = Field(2000, ge=1, description="Images to render (the same seed, the same ones).")
    min_objects: int = Field(1, ge=1, description="Fewest shapes in an image.")
    max_objects: int = Field(3, ge=1, description="Most shapes (at most (size / 8) ** 2).")
    size: int = Field(32, ge=8, description="Image side in px, a multiple of 8.")
    seed: int = Field(7, description="Rendering seed (far from the held-out eval seed).")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})"
            )
        return self


AnyImageSource = ImageParquetSource | WebDatasetSource | VisualCountingSource
ImageSourceSpec = Annotated[AnyImageSource, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ImageSourceSpec)


def parse_image_source(data: dict[str, Any]) -> AnyImageSource:
    """Validate a plain mapping (e.g. from YAML) into the matching image source spec."""
    return _ADAPTER.validate_python(data)


class ImageSettings(BaseModel):
    """The spec's ``images`` section: image-text sources and how they are curated. Empty by
    default: without sources the graph has no image assets."""

    model_config = ConfigDict(extra="forbid")

    sources: list[ImageSourceSpec] = Field(
        default_factory=list,
        description="Image-text sources (kind image_parquet, webdataset or visual_counting); one "
        "raw_images_<name> asset each, all curated into curated_images.",
    )
    # an encoded image is up to decode.max_bytes; a batch of them is held at once while
    # decoding (256 camera JPEGs of ~3 MB: under 1 GB; thumbnails-sized corpora: a few MB)
    batch_rows: int = Field(256, ge=1, description="Encoded images read and decoded per batch.")
    decode: ImageDecodeSettings = Field(
        default_factory=ImageDecodeSettings, description="Pixel and byte caps."
    )
    filters: ImageFilterSettings = Field(
        default_factory=ImageFilterSettings, description="Resolution, aspect, caption rules."
    )
    dedup: ImageDedupSettings = Field(
        default_factory=ImageDedupSettings, description="Exact and pHash dedup."
    )

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Any]) -> list[Any]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"image source names must be unique; repeated: {', '.join(dupes)}")
        return sources

    def source(self, name: str) -> AnyImageSource:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none"
        raise KeyError(f"no image source named {name!r} (images.sources: {known})")
