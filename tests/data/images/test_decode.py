"""Decoding and quarantine of each kind of bad image (flywheel.data.images.decode)."""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image, ImageFile

from flywheel.core.settings.images import ImageDecodeSettings
from flywheel.data.images.decode import (
    BOMB,
    TOO_LARGE,
    TRUNCATED,
    UNDECODABLE,
    UNSUPPORTED_MODE,
    DecodedImage,
    ImageProblem,
    decode_image,
)
from tests.data.images.conftest import encode, picture


def _problem(data: bytes, **settings) -> ImageProblem:
    result = decode_image(data, ImageDecodeSettings(**settings))
    assert isinstance(result, ImageProblem), result
    return result


def _png_declaring(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR is patched to declare width x height (CRC fixed)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 20, 30))))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_a_good_image_decodes_to_rgb_with_its_provenance() -> None:
    data = encode(picture(1))
    result = decode_image(data)
    assert isinstance(result, DecodedImage)
    assert (result.image.mode, result.width, result.height) == ("RGB", 128, 96)
    assert (result.format, result.mode, result.nbytes) == ("PNG", "RGB", len(data))
    assert len(result.image_id) == 32


def test_bytes_that_are_no_image_are_undecodable() -> None:
    assert _problem(b"this is not an image at all").reason == UNDECODABLE
    assert _problem(b"").reason == UNDECODABLE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_file_cut_short_is_quarantined_not_half_loaded(fmt: str) -> None:
    data = encode(picture(2), fmt)
    problem = _problem(data[: len(data) * 2 // 3])
    assert problem.reason == TRUNCATED, problem.detail
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_file_cut_inside_its_header_is_truncated_too() -> None:
    assert _problem(encode(picture(2))[:20]).reason == TRUNCATED


def test_the_pixel_cap_is_checked_on_the_header_before_decoding() -> None:
    # 60,000 x 60,000 = 3.6 G pixels declared: decoding it would need 10 GB; the header
    # check answers at once (and Pillow's own bomb error maps to the same reason)
    problem = _problem(_png_declaring(60_000, 60_000))
    assert problem.reason == BOMB
    # under Pillow's limit but over ours: still caught before decoding
    problem = _problem(_png_declaring(5_000, 5_000), max_pixels=1_000_000)
    assert problem.reason == BOMB and "25000000 pixels > max_pixels 1000000" in problem.detail


def test_pillows_bomb_warning_is_quarantined_too() -> None:
    over = int(Image.MAX_IMAGE_PIXELS**0.5) + 10  # past Pillow's warning, under its error
    problem = _problem(_png_declaring(over, over), max_pixels=10**12)
    assert problem.reason == BOMB


def test_more_encoded_bytes_than_the_cap_are_not_parsed() -> None:
    problem = _problem(encode(picture(3)), max_bytes=100)
    assert problem.reason == TOO_LARGE


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_modes_are_unsupported(mode: str) -> None:
    fmt = "PNG" if mode == "I;16" else "TIFF"
    problem = _problem(encode(Image.new(mode, (40, 40)), fmt))
    assert problem.reason == UNSUPPORTED_MODE and mode in problem.detail


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "LA", "RGBA"])
def test_accepted_modes_are_converted_to_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    result = decode_image(encode(picture(4).convert(mode), fmt))
    assert isinstance(result, DecodedImage) and result.image.mode == "RGB"
    assert result.mode == mode


def test_alpha_is_composited_over_white() -> None:
    im = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (0, 0, 20, 40))  # left half opaque blue
    result = decode_image(encode(im))
    assert isinstance(result, DecodedImage)
    assert result.image.getpixel((5, 5)) == (0, 0, 255)
    assert result.image.getpixel((30, 5)) == (255, 255, 255)


def test_the_same_pixels_in_another_encoding_get_the_same_id() -> None:
    im = picture(5)
    ids = {decode_image(encode(im, fmt, **kw)).image_id for fmt, kw in
           [("PNG", {}), ("PNG", {"compress_level": 9}), ("WEBP", {"lossless": True}),
            ("BMP", {})]}  # fmt: skip
    assert len(ids) == 1
    assert decode_image(encode(picture(6))).image_id not in ids


def test_exif_orientation_is_applied() -> None:
    im = picture(7)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tagged = decode_image(encode(im, "PNG", exif=exif))
    upright = decode_image(encode(im.transpose(Image.Transpose.ROTATE_270)))
    assert isinstance(tagged, DecodedImage) and tagged.image_id == upright.image_id


def test_refuses_to_run_when_truncated_images_would_be_loaded() -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
            decode_image(encode(picture(1)))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
