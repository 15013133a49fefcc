"""The image-text data plane: sources -> decoded, stored images -> filters -> dedup.

    ingest_images(source, root, ImageStore(dir), base_dir=...)    records + quarantine
    filter_image_set([records], root, dropped_root, settings)     resolution, aspect, captions
    dedup_image_set(filtered, root, ImageDedupIndex.open(dir))    exact + pHash near-duplicates

Sources are Parquet (image bytes, paths or {bytes, path}) and WebDataset tar shards
(``sources``); every image is decoded once by one policy (``decode``: pixel cap checked before
decoding, truncated/undecodable/unsupported-mode images quarantined with a reason), stored
once by the hash of its pixels (``store``), and referenced by ``image_id`` from the shards.
Dedup (``dedup``, ``phash``) mirrors the text plane's outputs and incremental index; its
speed and precision/recall are measured by ``bench/image_dedup.py``. ``pipeline`` runs the
stages from the spec's ``images`` section (what the Dagster assets call); ``thumbnails``
renders a few images as an inline markdown gallery (the assets' previews).
"""

from flywheel.core.settings.images import (
    ImageDecodeSettings,
    ImageDedupSettings,
    ImageFilterSettings,
    ImageParquetSource,
    ImageSettings,
    WebDatasetSource,
    parse_image_source,
)
from flywheel.data.images.decode import DecodedImage, ImageProblem, decode_image, pixel_hash
from flywheel.data.images.dedup import ImageDedupIndex, deduplicate_images
from flywheel.data.images.filters import build_image_filters, filter_images
from flywheel.data.images.ingest import (
    IMAGE_RECORD_SCHEMA,
    QUARANTINE_REASONS,
    ImageIngestResult,
    ingest_images,
)
from flywheel.data.images.phash import phashes
from flywheel.data.images.stage import dedup_image_set, filter_image_set
from flywheel.data.images.store import ImageStore
from flywheel.data.images.thumbnails import GalleryItem, data_uri, gallery_markdown, thumbnail

__all__ = [
    "IMAGE_RECORD_SCHEMA",
    "QUARANTINE_REASONS",
    "DecodedImage",
    "GalleryItem",
    "ImageDecodeSettings",
    "ImageDedupIndex",
    "ImageDedupSettings",
    "ImageFilterSettings",
    "ImageIngestResult",
    "ImageParquetSource",
    "ImageProblem",
    "ImageSettings",
    "ImageStore",
    "WebDatasetSource",
    "build_image_filters",
    "data_uri",
    "decode_image",
    "dedup_image_set",
    "deduplicate_images",
    "filter_image_set",
    "filter_images",
    "gallery_markdown",
    "ingest_images",
    "parse_image_source",
    "phashes",
    "pixel_hash",
    "thumbnail",
]
