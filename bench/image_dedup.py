"""Benchmark of image dedup: planted near-duplicates found, and images/s against a plain loop.

    .venv/bin/python bench/image_dedup.py [--distinct N] [--per-kind K] [--threshold T] [--bands B]

Corpus (no downloads): ``--distinct`` images rendered with PIL, each different: a background
(linear or radial gradient, or a smooth random colour field), 4-12 filled shapes and lines,
a little text and Gaussian noise, 256x192, stored as PNG. Planted copies of randomly chosen
originals, ``--per-kind`` of each kind: ``resized`` (x0.4-0.8 or x1.2-1.6), ``jpeg``
(re-encoded at quality 40-90), ``cropped`` (2-5% of each dimension cut, split between the two
sides at random), ``brightness`` (x0.85-0.93 or x1.07-1.15), and ``exact`` (a lossless WebP
re-encode: other bytes, the same pixels). Arrival order is random, except that an original
comes before its copies; a copy is correctly found iff it is removed as a duplicate of its
original.

Measured in one run, on the same encoded bytes in memory:
(a) the pipeline: ``decode_image`` (pixel cap, RGB normalisation, pixel hash), batched pHash
    (``flywheel.data.images.phash``) and ``ImageDedupIndex.add`` per batch of 256;
(b) the plain per-image baseline: ``Image.open(...).convert("RGB")``, ``imagehash.phash``, then
    the image is a duplicate of the first KEPT image whose hash is within the threshold
    (``h - k <= t`` over every kept ``ImageHash``, O(n^2)), the same decision rule, so the
    two must agree on every image (``agree``);
(c) the same baseline with a numpy scan over the kept hashes instead of the Python loop
    (``ratio_scan``: what is left of the speed-up once the O(n^2) loop is vectorised);
(d) end to end: the corpus as WebDataset tar shards through ``ingest_images`` (store writes
    included) and ``dedup_image_set``.

Last line: key=value pairs; ``ratio`` = baseline seconds / pipeline seconds (> 1: faster),
``precision`` and ``recall`` of the pipeline's near-duplicate removals (planted ground truth),
``recall_<kind>`` per kind.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.core.settings.images import ImageDedupSettings, WebDatasetSource  # noqa: E402
from flywheel.core.shards import read_current  # noqa: E402
from flywheel.data.images import ImageDedupIndex, ImageStore, ingest_images  # noqa: E402
from flywheel.data.images.decode import ImageProblem, decode_image  # noqa: E402
from flywheel.data.images.phash import grey_thumbnail, phashes_from_thumbnails  # noqa: E402
from flywheel.data.images.stage import dedup_image_set  # noqa: E402

KINDS = ("resized", "jpeg", "cropped", "brightness", "exact")
BATCH = 256


def render(seed: int, w: int = 256, h: int = 192) -> Image.Image:
    """A distinct synthetic picture: background, shapes, text, noise."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    bg = rng.choice(["linear", "radial", "field", "field"])
    if bg == "field":  # a smooth random colour field: low frequencies of its own
        k = rng.randint(2, 6)
        small = Image.fromarray((nrng.random((k, k, 3)) * 255).astype(np.uint8))
        arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    else:
        if bg == "linear":
            angle = rng.uniform(0, 2 * np.pi)
            g = np.cos(angle) * x / w + np.sin(angle) * y / h
        else:
            g = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h))
        g = (g - g.min()) / (np.ptp(g) + 1e-9)
        c0, c1 = (np.array([rng.randrange(256) for _ in range(3)]) for _ in range(2))
        arr = c0 * (1 - g[..., None]) + c1 * g[..., None]
    arr = arr + nrng.normal(0, rng.uniform(2, 12), arr.shape)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(4, 12)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, x0 + rng.randint(15, w // 2), y0 + rng.randint(15, h // 2))
        shape = rng.choice(["ellipse", "rectangle", "polygon", "line"])
        if shape == "polygon":
            points = [(rng.randrange(w), rng.randrange(h)) for _ in range(rng.randint(3, 6))]
            draw.polygon(points, fill=colour)
        elif shape == "line":
            draw.line(box, fill=colour, width=rng.randint(2, 10))
        else:
            getattr(draw, shape)(box, fill=colour)
    for _ in range(rng.randint(0, 3)):
        ink = tuple(rng.randrange(256) for _ in range(3))
        draw.text(
            (rng.randrange(w - 40), rng.randrange(h - 12)), f"#{seed} {rng.random():.3f}", ink
        )
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **({"compress_level": 1} if fmt == "PNG" else {}), **kw)
    return out.getvalue()


def plant(im: Image.Image, kind: str, rng: random.Random) -> bytes:
    """The encoded near-duplicate of ``im`` of ``kind``."""
    w, h = im.size
    if kind == "resized":
        f = rng.choice([rng.uniform(0.4, 0.8), rng.uniform(1.2, 1.6)])
        return encode(im.resize((int(w * f), int(h * f)), Image.Resampling.BICUBIC))
    if kind == "jpeg":
        return encode(im, "JPEG", quality=rng.randint(40, 90))
    if kind == "cropped":
        fx, fy = rng.uniform(0.02, 0.05), rng.uniform(0.02, 0.05)
        left, top = int(w * fx * rng.random()), int(h * fy * rng.random())
        return encode(im.crop((left, top, left + int(w * (1 - fx)), top + int(h * (1 - fy)))))
    if kind == "brightness":
        f = rng.choice([rng.uniform(0.85, 0.93), rng.uniform(1.07, 1.15)])
        return encode(ImageEnhance.Brightness(im).enhance(f))
    return encode(im, "WEBP", lossless=True)  # exact: other bytes, the same pixels


def build_corpus(distinct: int, per_kind: int, seed: int):
    """(ids, encoded bytes, family of each image, kind of each image), in arrival order."""
    rng = random.Random(seed)
    originals = [render(seed * 1_000_003 + i) for i in range(distinct)]
    items = [(f"orig-{i}", encode(im), i, "original") for i, im in enumerate(originals)]
    for kind in KINDS:
        for n, family in enumerate(rng.sample(range(distinct), per_kind)):
            items.append((f"{kind}-{n}", plant(originals[family], kind, rng), family, kind))
    rng.shuffle(items)
    first: dict[int, int] = {}
    for pos, item in enumerate(items):  # the original takes its family's first position
        first.setdefault(item[2], pos)
    for family, pos in first.items():
        at = next(p for p, it in enumerate(items) if it[2] == family and it[3] == "original")
        items[pos], items[at] = items[at], items[pos]
    ids, data, families, kinds = (list(col) for col in zip(*items, strict=True))
    return ids, data, families, kinds


def run_pipeline(ids, data, settings: ImageDedupSettings):
    """Decode, hash and dedup in batches; (seconds, keep mask, {id: duplicate_of})."""
    started = time.perf_counter()
    index = ImageDedupIndex(settings)
    keep, dup_of = [], {}
    for b in range(0, len(ids), BATCH):
        decoded = [decode_image(d) for d in data[b : b + BATCH]]
        if any(isinstance(d, ImageProblem) for d in decoded):
            raise RuntimeError("a corpus image failed to decode")
        hashes = phashes_from_thumbnails(np.stack([grey_thumbnail(d.image) for d in decoded]))
        result = index.add(ids[b : b + BATCH], [d.image_id for d in decoded], hashes)
        keep += result.keep.tolist()
        dup_of.update(zip(result.duplicates["id"], result.duplicates["duplicate_of"], strict=True))
    return time.perf_counter() - started, keep, dup_of


def run_baseline(ids, data, threshold: int, vectorised: bool):
    """Per image: decode, imagehash.phash, compare with every kept hash (first within t)."""
    started = time.perf_counter()
    kept_hashes: list = []
    kept_ids: list[str] = []
    kept_ints = np.empty(len(ids), dtype=np.uint64)
    keep, dup_of = [], {}
    for i, d in zip(ids, data, strict=True):
        h = imagehash.phash(Image.open(io.BytesIO(d)).convert("RGB"))
        if vectorised:
            value = np.uint64(int(str(h), 16))
            near = np.flatnonzero(np.bitwise_count(kept_ints[: len(kept_ids)] ^ value) <= threshold)
            parent = int(near[0]) if near.size else None
        else:
            parent = next((j for j, k in enumerate(kept_hashes) if h - k <= threshold), None)
        keep.append(parent is None)
        if parent is None:
            kept_ints[len(kept_ids)] = int(str(h), 16)
            kept_hashes.append(h)
            kept_ids.append(i)
        else:
            dup_of[i] = kept_ids[parent]
    return time.perf_counter() - started, keep, dup_of


def score(ids, families, kinds, dup_of):
    """Precision and recall of removals against the planted families; recall per kind."""
    family_of = dict(zip(ids, families, strict=True))
    original = {f: i for i, f, k in zip(ids, families, kinds, strict=True) if k == "original"}
    correct = sum(1 for i, p in dup_of.items() if p == original[family_of[i]])
    planted = [(i, k) for i, k in zip(ids, kinds, strict=True) if k != "original"]
    per_kind = {
        k: np.mean([dup_of.get(i) == original[family_of[i]] for i, kk in planted if kk == k])
        for k in KINDS
    }
    precision = correct / len(dup_of) if dup_of else 1.0
    return precision, correct / len(planted), per_kind


def run_end_to_end(ids, data, settings: ImageDedupSettings) -> tuple[float, int, int]:
    """WebDataset shards -> ingest_images (store included) -> dedup_image_set."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for s in range(0, len(ids), 1000):
            with tarfile.open(root / f"shard-{s // 1000:04d}.tar", "w") as tar:
                for i, d in zip(ids[s : s + 1000], data[s : s + 1000], strict=True):
                    for ext, payload in (("png", d), ("txt", f"a picture {i}".encode())):
                        info = tarfile.TarInfo(f"{i}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        started = time.perf_counter()
        source = WebDatasetSource(name="bench", path="shard-*.tar")
        ingested = ingest_images(source, root / "raw", ImageStore(root / "images"), base_dir=root)
        kept, dupes, _ = dedup_image_set(
            read_current(root / "raw"),
            root / "dedup",
            ImageDedupIndex.open(root / "index", settings),
        )
        return time.perf_counter() - started, ingested.records, dupes.height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--distinct", type=int, default=2000)
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--threshold", type=int, default=ImageDedupSettings().threshold)
    parser.add_argument("--bands", type=int, default=ImageDedupSettings().bands)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    settings = ImageDedupSettings(threshold=args.threshold, bands=args.bands)
    t0 = time.perf_counter()
    ids, data, families, kinds = build_corpus(args.distinct, args.per_kind, args.seed)
    n = len(ids)
    print(f"corpus: {n} images ({args.distinct} distinct + {len(KINDS)} x {args.per_kind} "
          f"planted), {sum(map(len, data)) / 1e6:.1f} MB encoded, built in "
          f"{time.perf_counter() - t0:.1f}s; threshold={args.threshold} bands={args.bands} "
          f"(radius {settings.radius}, {settings.probes_per_image()} probes/image)")  # fmt: skip
    ours_s, keep, dup_of = run_pipeline(ids, data, settings)
    base_s, base_keep, base_dup = run_baseline(ids, data, args.threshold, vectorised=False)
    scan_s, scan_keep, _ = run_baseline(ids, data, args.threshold, vectorised=True)
    agree = np.mean([a == b for a, b in zip(keep, base_keep, strict=True)])
    same_parent = all(base_dup.get(i) == p for i, p in dup_of.items())
    precision, recall, per_kind = score(ids, families, kinds, dup_of)
    b_precision, b_recall, _ = score(ids, families, kinds, base_dup)
    e2e_s, e2e_records, e2e_removed = run_end_to_end(ids, data, settings)
    print(f"pipeline  {ours_s:7.2f}s  {n / ours_s:8.0f} images/s  removed {len(dup_of)}")
    print(f"baseline  {base_s:7.2f}s  {n / base_s:8.0f} images/s  removed {len(base_dup)} "
          f"(imagehash + Python loop over kept hashes)")  # fmt: skip
    print(f"scan      {scan_s:7.2f}s  {n / scan_s:8.0f} images/s  (imagehash + numpy scan)")
    print(f"end2end   {e2e_s:7.2f}s  {n / e2e_s:8.0f} images/s  {e2e_records} records, "
          f"{e2e_removed} removed (WebDataset -> ingest + store -> dedup)")  # fmt: skip
    print("recall by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items()))
    print(f"baseline precision {b_precision:.4f} recall {b_recall:.4f}; decisions agree "
          f"{agree:.4f}, same duplicate_of {same_parent}")  # fmt: skip
    kinds_kv = " ".join(f"recall_{k}={v:.4f}" for k, v in per_kind.items())
    print(
        f"images={n} ratio={base_s / ours_s:.2f} ratio_scan={scan_s / ours_s:.2f} "
        f"images_per_s={n / ours_s:.0f} baseline_images_per_s={n / base_s:.0f} "
        f"e2e_images_per_s={n / e2e_s:.0f} precision={precision:.4f} recall={recall:.4f} "
        f"{kinds_kv} agree={agree:.4f}"
    )


if __name__ == "__main__":
    main()
