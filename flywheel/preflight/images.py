"""The ``images`` section's sources, checked before a run: files, columns, a decoded sample.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.images \
import check_images; print(*check_images(load_spec()), sep='\\n')"

For each entry of ``images.sources``: its path or glob must match files (resolved as the
image ingest resolves it), a Parquet source's ``image_root`` must be a directory (a relative
one against each Parquet file's directory, as the reader resolves it), and the head of each
file (its first ``SAMPLE`` records, at most ``FILES`` files of a glob) goes through the
ingest's own reader and record checker, images decoded by ``images.decode``'s policy into a
throwaway store: records that would be quarantined are a warning with their reasons
counted, a file none of whose sampled records is usable is an error, a file the reader
cannot read at all (not Parquet, no such column, not a tar) is an error. Settings that
contradict each other (``min_side`` > ``max_side``) fail ``load_spec`` already.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from flywheel.core.settings.images import (
    ImageParquetSource,
    ImageSettings,
    VisualCountingSource,
    WebDatasetSource,
)
from flywheel.core.spec import Spec
from flywheel.data.images.ingest import ImageRecordChecker
from flywheel.data.images.sources import read_image_batches
from flywheel.data.images.store import ImageStore
from flywheel.data.ingest.readers import SourceReadError, resolve_files
from flywheel.preflight.problems import Problem, error
from flywheel.preflight.samples import SAMPLE, verdict

FILES = 8  # files of a glob sampled: each costs SAMPLE image decodes
ImageSource = ImageParquetSource | WebDatasetSource


def check_images(spec: Spec) -> list[Problem]:
    """A problem for every image source that is missing, unreadable or yields no record."""
    problems: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-check-images-") as scratch:
        store = ImageStore(Path(scratch))
        for i, source in enumerate(spec.images.sources):
            key = f"images.sources[{i}]"
            if isinstance(source, VisualCountingSource):  # rendered: no files to check
                continue
            try:
                files = resolve_files(source.name, source.path, spec.base_dir)
            except FileNotFoundError as exc:  # a missing file, a directory, a glob matching none
                problems.append(error(f"{key}.path", str(exc)))
                continue
            for file in files[:FILES]:
                if (root := _image_root(source, file)) is not None and not root.is_dir():
                    problems.append(error(f"{key}.image_root", "no such directory", root))
                    break
                one = source.model_copy(update={"path": str(file)})
                problems += _sample(spec.base_dir, spec.images, f"{key}.path", one, file, store)
    return problems


def _image_root(source: ImageSource, file: Path) -> Path | None:
    """Where a Parquet source's relative image paths resolve: as the reader resolves them,
    against the Parquet file's own directory."""
    if not isinstance(source, ImageParquetSource) or source.image_root is None:
        return None
    return file.parent / Path(source.image_root).expanduser()


def _sample(
    base_dir: Path,
    settings: ImageSettings,
    key: str,
    source: ImageSource,
    file: Path,
    store: ImageStore,
) -> list[Problem]:
    checker = ImageRecordChecker(
        source.name, store, settings.decode, require_id=getattr(source, "require_id", False)
    )
    batches = read_image_batches(
        source, base_dir=base_dir, batch_rows=SAMPLE, max_bytes=settings.decode.max_bytes
    )
    try:
        batch = next(batches, [])
    except SourceReadError as exc:
        return [error(key, str(exc), file)]
    finally:
        batches.close()
    checker.check_batch(batch)
    return verdict(key, file, len(batch), Counter(checker.quarantine_by_reason))
