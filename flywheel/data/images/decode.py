"""Decode one encoded image into normalised RGB pixels, or say why it cannot be used.

    python -c "from flywheel.data.images import *; print(decode_image(open('x', 'rb').read()))"

Every image goes through the same steps, in this order, and the first that fails names the
quarantine reason:

1. ``too_large``: more encoded bytes than ``max_bytes`` (nothing is parsed).
2. ``undecodable_image``: Pillow cannot identify the format or parse the header.
3. ``decompression_bomb``: the header declares more than ``max_pixels`` pixels. ``Image.open``
   is lazy (it reads the header only), so this is checked BEFORE a pixel is decoded; Pillow's
   own ``DecompressionBombError`` and ``DecompressionBombWarning`` (raised as an error here)
   map to the same reason.
4. ``unsupported_mode``: a mode the policy below does not convert.
5. ``truncated_image``: the data ends before the pixels do. ``ImageFile.LOAD_TRUNCATED_IMAGES``
   must stay False (we refuse to run otherwise), so ``load()`` raises instead of returning a
   half-grey image; any other decoder error is ``undecodable_image``.

Mode policy. Accepted and converted to RGB: 1, L, P, RGB (unchanged), CMYK, YCbCr, LAB, HSV
(Pillow's conversions), and the alpha modes LA, La, PA, RGBA, RGBa, RGBX and P with a
transparency key, whose alpha is composited over WHITE (what a viewer shows, where dropping
alpha would expose whatever colour the transparent pixels happen to hold). Quarantined:
I, I;16*, F and other high-bit-depth modes: reducing them to 8 bits needs a scaling choice
(window, gamma) the data does not carry, and guessing it silently would change the content.
A multi-frame image (GIF, APNG, TIFF pages) is its first frame. EXIF orientation is applied,
so a rotated-by-tag JPEG and the same picture stored upright have the same pixels.

Identity. ``pixel_hash`` is a 128-bit BLAKE2b of the size and the normalised RGB bytes: two
encodings of the same pixels (a PNG and its lossless WebP re-encode) get the same hash, which
is both the exact-dedup key and the image's id in the content-addressed store.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from flywheel.core.settings.images import ImageDecodeSettings

# quarantine reasons of the image plane (text reasons come from flywheel.data.ingest.records)
TOO_LARGE = "too_large"
UNDECODABLE = "undecodable_image"
BOMB = "decompression_bomb"
UNSUPPORTED_MODE = "unsupported_mode"
TRUNCATED = "truncated_image"
IMAGE_REASONS = (TOO_LARGE, UNDECODABLE, BOMB, UNSUPPORTED_MODE, TRUNCATED)

CONVERTED_MODES = frozenset({"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV"})
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa", "RGBX"})
WHITE = (255, 255, 255)
_ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """A usable image: normalised RGB pixels and what the source file was."""

    image: Image.Image  # mode RGB, loaded
    image_id: str  # 32 hex: pixel_hash of ``image``
    format: str  # Pillow's name of the encoded format, e.g. "PNG", "JPEG"
    mode: str  # the mode as stored, before conversion
    nbytes: int  # encoded size

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass(frozen=True, slots=True)
class ImageProblem:
    """Why an image cannot be used: a reason from ``IMAGE_REASONS`` and the detail."""

    reason: str
    detail: str


def pixel_hash(image: Image.Image) -> str:
    """128-bit BLAKE2b hex of an RGB image's size and pixels (the exact-dedup key and id)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"RGB {image.width}x{image.height}\n".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def decode_image(
    data: bytes, settings: ImageDecodeSettings | None = None
) -> DecodedImage | ImageProblem:
    """The image in ``data`` as normalised RGB, or the problem that keeps it out."""
    s = settings or ImageDecodeSettings()
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
            "would be half-loaded instead of quarantined; set it back to False"
        )
    if len(data) > s.max_bytes:
        return ImageProblem(TOO_LARGE, f"{len(data)} encoded bytes > max_bytes {s.max_bytes}")
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, s)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return ImageProblem(BOMB, str(e))
        except UnidentifiedImageError as e:
            return ImageProblem(UNDECODABLE, str(e))
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
            # Pillow's decoders raise all of these on corrupt data (SyntaxError: bad PNG chunk)
            reason = TRUNCATED if _is_truncation(e) else UNDECODABLE
            return ImageProblem(reason, f"{type(e).__name__}: {e}")


def _decode(data: bytes, s: ImageDecodeSettings) -> DecodedImage | ImageProblem:
    # lazy: reads the header only. Not closed: a BytesIO holds no file handle, and closing
    # would free the pixels the returned image shares when it is RGB already
    im = Image.open(io.BytesIO(data))
    width, height = im.size
    if width * height > s.max_pixels:
        return ImageProblem(
            BOMB, f"{width}x{height} = {width * height} pixels > max_pixels {s.max_pixels}"
        )
    mode, fmt = im.mode, im.format or "unknown"
    if mode not in CONVERTED_MODES and mode not in ALPHA_MODES:
        return ImageProblem(UNSUPPORTED_MODE, f"mode {mode} ({fmt}) is not converted to RGB")
    im.load()  # raises on truncated or corrupt data (LOAD_TRUNCATED_IMAGES is False)
    if im.getexif().get(_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    rgb = _to_rgb(im)
    return DecodedImage(rgb, pixel_hash(rgb), fmt, mode, len(data))


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB pixels; alpha (or a palette's transparency key) composited over white."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES and im.mode != "RGBX":
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _is_truncation(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, EOFError) or "truncated" in text or "premature end" in text
