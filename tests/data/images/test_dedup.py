"""pHash dedup of image records: planted near-duplicates, exact copies, the incremental index."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from flywheel.core.settings.images import ImageDedupSettings
from flywheel.data.images import ImageDedupIndex, deduplicate_images, phashes
from flywheel.data.images.decode import decode_image
from flywheel.data.images.phash import hamming
from tests.data.images.conftest import encode, picture


def _planted(im: Image.Image, kind: str) -> Image.Image:
    w, h = im.size
    if kind == "resized":
        return im.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BICUBIC)
    if kind == "jpeg":
        return decode_image(encode(im, "JPEG", quality=50)).image
    if kind == "cropped":  # 4% off, split between the sides
        return im.crop((2, 2, w - 3, h - 2))
    return ImageEnhance.Brightness(im).enhance(1.12)


def _records(images: list[Image.Image], names: list[str]):
    decoded = [decode_image(encode(im)) for im in images]
    return names, [d.image_id for d in decoded], phashes([d.image for d in decoded])


KINDS = ("resized", "jpeg", "cropped", "brightness")


def test_phash_is_imagehash_bit_for_bit() -> None:
    images = [picture(s) for s in range(20)]
    ours = [f"{h:016x}" for h in phashes(images).tolist()]
    assert ours == [str(imagehash.phash(im)) for im in images]


def test_planted_near_duplicates_are_removed_and_distinct_images_kept() -> None:
    originals = [picture(s) for s in range(40)]
    images, names = list(originals), [f"orig-{i}" for i in range(40)]
    for i, kind in enumerate(KINDS * 3):
        images.append(_planted(originals[i], kind))
        names.append(f"{kind}-{i}")
    images.append(originals[5].copy())  # the same pixels: an exact duplicate
    names.append("exact-5")
    result = deduplicate_images(*_records(images, names))
    dupes = {r["id"]: r for r in result.duplicates.iter_rows(named=True)}
    assert set(dupes) == set(names[40:])  # every planted copy, no original
    for i, kind in enumerate(KINDS * 3):
        row = dupes[f"{kind}-{i}"]
        assert (row["duplicate_of"], row["method"]) == (f"orig-{i}", "phash")
        assert 1 - 10 / 64 <= row["similarity"] <= 1.0
    assert (dupes["exact-5"]["method"], dupes["exact-5"]["similarity"]) == ("exact", 1.0)
    assert result.keep.tolist() == [True] * 40 + [False] * 13
    assert result.stats["phash_removed"] == 12 and result.stats["exact_removed"] == 1


def _random_hashes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=n // 2, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False)))
             for k in rng.integers(0, 16, size=n - n // 2)]  # fmt: skip
    near = base[rng.integers(0, base.size, size=len(flips))] ^ np.array(flips, dtype=np.uint64)
    return np.concatenate([base, near])[rng.permutation(n)]


def _brute_force(hashes: np.ndarray, threshold: int) -> list[int | None]:
    """Each hash's earliest kept hash within the threshold (the plain O(n^2) loop)."""
    kept: list[int] = []
    parents: list[int | None] = []
    for j, h in enumerate(hashes):
        parent = next((k for k in kept if hamming(hashes[k], h) <= threshold), None)
        parents.append(parent)
        if parent is None:
            kept.append(j)
    return parents


@pytest.mark.parametrize(("threshold", "bands"), [(10, 4), (3, 4), (12, 5), (7, 2)])
def test_banded_search_decides_exactly_as_brute_force(threshold: int, bands: int) -> None:
    hashes = _random_hashes(600, seed=threshold)
    ids = [f"r{j}" for j in range(hashes.size)]
    settings = ImageDedupSettings(threshold=threshold, bands=bands, exact=False)
    index = ImageDedupIndex(settings)
    results = [index.add(ids[b : b + 128], ids[b : b + 128], hashes[b : b + 128])
               for b in range(0, hashes.size, 128)]  # fmt: skip
    got = {
        r["id"]: r["duplicate_of"] for res in results for r in res.duplicates.iter_rows(named=True)
    }
    expected = {
        ids[j]: ids[p] for j, p in enumerate(_brute_force(hashes, threshold)) if p is not None
    }
    assert got == expected and len(expected) > 50


def test_the_index_persists_and_continues_as_one_run(tmp_path: Path) -> None:
    hashes = _random_hashes(400, seed=1)
    ids = [f"r{j}" for j in range(400)]
    image_ids = [f"{j % 350:032x}" for j in range(400)]  # some exact copies too
    whole = deduplicate_images(ids, image_ids, hashes)
    index = ImageDedupIndex.open(tmp_path / "idx")
    first = index.add(ids[:250], image_ids[:250], hashes[:250])
    index.commit()
    reopened = ImageDedupIndex.open(tmp_path / "idx")
    assert len(reopened) == 250
    second = reopened.add(ids[250:], image_ids[250:], hashes[250:])
    reopened.commit()
    assert np.concatenate([first.keep, second.keep]).tolist() == whole.keep.tolist()
    merged = {**_pairs(first), **_pairs(second)}
    assert merged == _pairs(whole) and any(m == "exact" for _, m in merged.values())
    # re-adding known ids gives their recorded decisions and adds nothing
    again = ImageDedupIndex.open(tmp_path / "idx").add(ids[:100], image_ids[:100], hashes[:100])
    assert again.keep.tolist() == whole.keep[:100].tolist() and again.stats["new_docs"] == 0


def _pairs(result) -> dict[str, tuple[str, str]]:
    rows = result.duplicates.iter_rows(named=True)
    return {r["id"]: (r["duplicate_of"], r["method"]) for r in rows}


def test_an_index_built_with_other_bands_is_refused(tmp_path: Path) -> None:
    index = ImageDedupIndex.open(tmp_path / "idx", ImageDedupSettings(bands=4))
    index.add(["a"], ["0" * 32], [1])
    index.commit()
    with pytest.raises(ValueError, match="bands=4 in the index"):
        ImageDedupIndex.open(tmp_path / "idx", ImageDedupSettings(bands=5))


def test_settings_that_would_probe_too_many_keys_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="raise bands or lower the threshold"):
        ImageDedupSettings(threshold=20, bands=1)
    assert ImageDedupSettings().probes_per_image() == 4 * (1 + 16 + 120)


def test_only_kept_images_are_searched() -> None:
    """A chain a -> b -> c of small steps: c is compared with a (kept), not with b (removed)."""
    a = np.uint64(0)
    b = np.uint64((1 << 8) - 1)  # 8 bits from a
    c = np.uint64((1 << 16) - 1)  # 8 bits from b, 16 from a
    result = deduplicate_images(["a", "b", "c"], ["1" * 32, "2" * 32, "3" * 32], [a, b, c])
    assert result.keep.tolist() == [True, False, True]
