"""The fast header sniff agrees with Pillow on every file it answers for, and answers for the common ones."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from kubeinfer.runtime.errors import InferenceError
from kubeinfer.runtime.images import ImageInput, check_encoded, declared_pixels, sniff_size


def _pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil_bytes(_photo(40, 30), "JPEG", exif=exif)


COMMON = {
    "opencv jpeg": cv2.imencode(".jpg", np.zeros((123, 321, 3), np.uint8))[1].tobytes(),
    "pillow jpeg": _pil_bytes(_photo(64, 48), "JPEG", quality=90),
    "progressive jpeg": _pil_bytes(_photo(200, 100), "JPEG", progressive=True),
    "grey jpeg": _pil_bytes(_photo(33, 77, "L"), "JPEG"),
    "cmyk jpeg": _pil_bytes(_photo(20, 10, "CMYK"), "JPEG"),
    "exif-rotated jpeg": _exif_rotated(),
    "jpeg with a comment": _pil_bytes(_photo(50, 60), "JPEG", comment=b"x" * 300),
    "png": _pil_bytes(_photo(17, 9), "PNG"),
    "grey png": _pil_bytes(_photo(300, 5, "L"), "PNG"),
    "16-bit png": cv2.imencode(".png", np.zeros((11, 13), np.uint16))[1].tobytes(),
}
OTHERS = {
    "webp": _pil_bytes(_photo(30, 20), "WEBP"),
    "bmp": _pil_bytes(_photo(30, 20), "BMP"),
    "gif": _pil_bytes(_photo(30, 20), "GIF"),
    "junk": b"definitely not an image" * 10,
    "jpeg cut before its frame header": COMMON["pillow jpeg"][:40],
    "jpeg start only": b"\xff\xd8",
    "png cut in its signature": COMMON["png"][:10],
    "empty": b"",
}


@pytest.mark.parametrize("name", COMMON)
def test_common_files_are_sniffed_as_pillow_reads_them(name: str) -> None:
    data = COMMON[name]
    with Image.open(io.BytesIO(data)) as header:
        assert sniff_size(data) == header.size


@pytest.mark.parametrize("name", OTHERS)
def test_other_files_are_left_to_pillow(name: str) -> None:
    data = OTHERS[name]
    assert sniff_size(data) is None
    try:
        with Image.open(io.BytesIO(data)) as header:
            expected = header.size[0] * header.size[1]
    except Exception:
        expected = 0
    assert declared_pixels(ImageInput(encoded=data)) == expected  # the same answer, through Pillow


@pytest.mark.parametrize("name", COMMON)
def test_the_header_check_reads_what_pillow_reads(name: str) -> None:
    """check_encoded reads plain JPEGs and PNGs without Pillow; what it says is what Pillow's parse says."""
    data = COMMON[name]
    header = check_encoded(data, 0, 10**9, jpeg_layout=True)
    with Image.open(io.BytesIO(data)) as pil:
        plain = pil.format == "JPEG" and pil.mode in ("RGB", "L") and pil.getexif().get(0x0112, 1) == 1
        assert (header.format, header.width, header.height, header.plain_jpeg) == (pil.format, *pil.size, plain)
    assert not check_encoded(data, 0, 10**9).plain_jpeg  # asked for only with jpeg_layout
    with pytest.raises(InferenceError, match="exceeds the limit"):
        check_encoded(data, 3, header.width * header.height - 1)
