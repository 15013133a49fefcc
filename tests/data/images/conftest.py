"""Small rendered pictures (no downloads) and their encodings, for the image-plane tests."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def picture(seed: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A distinct RGB picture: a smooth random colour field, shapes, a little noise."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    w, h = size
    k = rng.randint(2, 5)
    field = Image.fromarray((nrng.random((k, k, 3)) * 255).astype(np.uint8))
    arr = np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    im = Image.fromarray(np.clip(arr + nrng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(4, 8)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, x0 + rng.randint(10, w // 2), y0 + rng.randint(10, h // 2))
        shape = rng.choice([draw.ellipse, draw.rectangle])
        shape(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard of ``(member name, bytes)`` in order, as WebDataset writes them."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path
