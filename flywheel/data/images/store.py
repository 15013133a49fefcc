"""The content-addressed image store: each distinct image stored once, named by its pixels.

    python -c "from flywheel.data.images.store import *; print(ImageStore(Path('data/images')))"

Layout: ``<root>/<id[:2]>/<id>`` where id is ``decode.pixel_hash`` (BLAKE2b-128 of the
normalised RGB pixels and size). Shards never hold image bytes, only ``image_id``.

What is stored: the ENCODED bytes as the source gave them (the first encoding seen of those
pixels), not a re-encode. Re-encoding JPEG to PNG would multiply the size ~5-10x and re-encoding
to JPEG would lose information; keeping the bytes costs nothing and ``load`` decodes them with
the same ``decode_image`` policy, which by construction gives exactly the pixels the id names
(``verify`` checks it). A second encoding of the same pixels (a lossless re-encode) is not
stored again: its id exists already.

Writes are atomic (temporary file, fsync, rename), so a reader never sees half an image and two
writers of the same id are harmless (same name, same pixels). A file exists only once complete;
images written by a run that failed before its shard set was committed stay as unreferenced
files, found by ``unreferenced``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from flywheel.core.settings.images import ImageDecodeSettings
from flywheel.data.images.decode import DecodedImage, ImageProblem, decode_image

_ID = re.compile(r"^[0-9a-f]{32}$")


class ImageStore:
    """Images by id under ``root``; ``put`` is idempotent."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    def path(self, image_id: str) -> Path:
        if not _ID.match(image_id):
            raise ValueError(f"not an image id (32 lowercase hex digits): {image_id!r}")
        return self.root / image_id[:2] / image_id

    def __contains__(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def put(self, image_id: str, data: bytes) -> bool:
        """Store ``data`` (the encoded image whose pixels hash to ``image_id``) unless the id
        is stored already; True if this call wrote it."""
        target = self.path(image_id)
        if target.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def read_bytes(self, image_id: str) -> bytes:
        path = self.path(image_id)
        if not path.is_file():
            raise KeyError(f"image {image_id} is not in the store {self.root}")
        return path.read_bytes()

    def load(self, image_id: str, settings: ImageDecodeSettings | None = None) -> DecodedImage:
        """The stored image, decoded by the same policy that named it."""
        decoded = decode_image(self.read_bytes(image_id), settings)
        if isinstance(decoded, ImageProblem):
            raise ValueError(f"stored image {image_id} no longer decodes: {decoded.detail}")
        return decoded

    def verify(self, image_id: str) -> bool:
        """Whether the stored bytes still decode to the pixels their name says."""
        try:
            return self.load(image_id).image_id == image_id
        except ValueError:
            return False

    def ids(self) -> Iterator[str]:
        """Every stored id (a directory walk: for maintenance, not for readers)."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                yield from sorted(p.name for p in sub.iterdir() if _ID.match(p.name))

    def unreferenced(self, referenced: Iterable[str]) -> list[str]:
        """Stored ids that no shard references (e.g. left by a failed ingest)."""
        keep = set(referenced)
        return [i for i in self.ids() if i not in keep]
