"""Image decoding and size guards. Runs in the worker pool; only a request's lone thumbnail (at most
``tasks.base.INLINE_MAX_PIXELS``) or raw pixels that need no work is decoded on the event loop.

Decoded images are HWC uint8, BGR by default (OpenCV's native layout, which the
detectors take as is). Callers whose model wants RGB ask for ``order="rgb"``: raw RGB
pixels then come back as a read-only view of the request bytes, with no copy at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage

from kubeinfer.runtime.errors import invalid_argument

# Pillow only identifies here (header read); the pixel guard is ours, so lift Pillow's own.
PILImage.MAX_IMAGE_PIXELS = None
ENCODED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class ImageInput:
    """One image as received: encoded file bytes, or raw RGB/grey pixels with their shape (``pixels`` may be a
    ``memoryview`` of the request's own bytes: a batch of images in one tensor is not copied apart)."""

    encoded: bytes | None = None
    pixels: bytes | memoryview | None = None
    height: int = 0
    width: int = 0
    channels: int = 3


@dataclass(frozen=True, slots=True)
class EncodedHeader:
    """What an encoded image's header says; ``plain_jpeg``: a JPEG that any JPEG decoder turns into the same
    upright RGB pixels (asked for with ``check_encoded(..., jpeg_layout=True)``, else False)."""

    format: str
    width: int
    height: int
    plain_jpeg: bool = False


def declared_pixels(image: ImageInput) -> int:
    """The pixels ``image`` says it has, from its header or raw shape, without decoding; 0 when unreadable
    (decoding then names the problem)."""
    if image.pixels is not None:
        return max(0, image.height) * max(0, image.width)
    if not image.encoded:
        return 0
    size = sniff_size(image.encoded)
    if size is not None:
        return size[0] * size[1]
    try:
        with PILImage.open(io.BytesIO(image.encoded)) as header:
            width, height = header.size
    except Exception:
        return 0
    return int(width) * int(height)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image size
JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and RSTn: no length field
SNIFF_MAX_SEGMENTS = 64


@dataclass(frozen=True, slots=True)
class SniffedHeader:
    """What ``sniff_header`` read: the size, and for a JPEG its frame's sample precision and component count
    and whether an Exif block (which may rotate it) came before the frame."""

    format: str
    width: int
    height: int
    precision: int = 8
    components: int = 0
    exif: bool = False


def sniff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG (its IHDR) or a JPEG (its first start-of-frame, as Pillow and libjpeg read it),
    in a few microseconds where Pillow's header parse takes ~40; None for anything else or anything unusual,
    which callers then hand to Pillow."""
    header = sniff_header(data)
    return None if header is None else (header.width, header.height)


def sniff_header(data: bytes) -> SniffedHeader | None:
    """The header of a PNG or a JPEG read by walking its markers (see ``sniff_size``); None when unusual."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return SniffedHeader("PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    position, end, exif = 2, len(data), False
    for _ in range(SNIFF_MAX_SEGMENTS):
        if position + 4 > end or data[position] != 0xFF:
            return None
        while data[position + 1] == 0xFF and position + 5 < end:  # fill bytes before a marker
            position += 1
        marker = data[position + 1]
        if marker in JPEG_STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in JPEG_SOF:
            if length < 8 or position + 10 > end:
                return None
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            if not (width and height):
                return None
            return SniffedHeader("JPEG", width, height, data[position + 4], data[position + 9], exif)
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame header
            return None
        if marker == 0xE1 and data[position + 4:position + 10] == b"Exif\x00\x00":
            exif = True
        position += 2 + length
    return None


def decode(image: ImageInput, index: int, max_pixels: int, order: str = "bgr") -> np.ndarray:
    """Decode to uint8 HWC in ``order`` ("bgr" or "rgb"), refusing malformed or oversized images by ``index``."""
    if image.encoded is not None:
        pixels = _decode_encoded(image.encoded, index, max_pixels)
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels) if order == "rgb" else pixels
    if image.pixels is not None:
        return _decode_raw(image, index, max_pixels, order)
    raise invalid_argument(f"image {index}: empty (set either encoded bytes or raw pixels)")


def _decode_encoded(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    return decode_checked(data, check_encoded(data, index, max_pixels), index)


def check_encoded(data: bytes, index: int, max_pixels: int, *, jpeg_layout: bool = False) -> EncodedHeader:
    """The guards every encoded image passes before any decoder sees it (header read only): readable, a
    supported format, within ``max_pixels``. With ``jpeg_layout`` the header also tells whether the file is a
    plain JPEG (see ``EncodedHeader``), for callers that may decode it elsewhere."""
    if not data:
        raise invalid_argument(f"image {index}: empty encoded bytes")
    fast = _plain_header(data)
    if fast is not None:  # the common 8-bit colour or grey JPEG (or PNG), read in microseconds
        _check_pixels(index, fast.width, fast.height, max_pixels)
        return EncodedHeader(fast.format, fast.width, fast.height, jpeg_layout and fast.format == "JPEG")
    try:
        with PILImage.open(io.BytesIO(data)) as header:
            width, height = header.size
            fmt = header.format
            plain = jpeg_layout and fmt == "JPEG" and _plain_jpeg(header)
    except Exception:
        raise invalid_argument(f"image {index}: not a decodable JPEG, PNG, WebP or BMP image") from None
    if fmt not in ENCODED_FORMATS:
        raise invalid_argument(f"image {index}: unsupported format {fmt}; send JPEG, PNG, WebP or BMP")
    _check_pixels(index, width, height, max_pixels)
    return EncodedHeader(str(fmt), int(width), int(height), plain)


def _plain_header(data: bytes) -> SniffedHeader | None:
    """A PNG, or an 8-bit JPEG of 1 or 3 components without an Exif block, read by ``sniff_header``: what
    Pillow's header parse (~30 us back to back, more in the server, with its quantisation tables) would tell too.
    Anything else (CMYK, 12-bit, rotations, unusual layouts) goes through Pillow."""
    header = sniff_header(data)
    if header is None or (header.format == "JPEG" and (header.precision != 8 or header.components not in (1, 3)
                                                       or header.exif)):
        return None
    return header


def _plain_jpeg(header: PILImage.Image) -> bool:
    """YCbCr or grey (not CMYK) and stored upright: OpenCV applies an EXIF rotation, the device decoder does not,
    so a rotated file must take OpenCV's path to come out the same."""
    if header.mode not in ("RGB", "L"):
        return False
    try:
        return header.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # an unreadable EXIF block: let OpenCV decide what it means
        return False


def decode_checked(data: bytes, header: EncodedHeader, index: int) -> np.ndarray:
    """Decode an image ``check_encoded`` passed, to BGR HWC uint8 (OpenCV, in the worker pool)."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise invalid_argument(f"image {index}: {header.format} data is corrupt or truncated")
    return pixels


def _decode_raw(image: ImageInput, index: int, max_pixels: int, order: str) -> np.ndarray:
    channels = image.channels or 3
    if channels not in (1, 3):
        raise invalid_argument(f"image {index}: raw images need 1 or 3 channels, got {channels}")
    if image.height <= 0 or image.width <= 0:
        raise invalid_argument(f"image {index}: raw image needs positive height and width")
    _check_pixels(index, image.width, image.height, max_pixels)
    expected = image.height * image.width * channels
    assert image.pixels is not None
    if len(image.pixels) != expected:
        raise invalid_argument(
            f"image {index}: raw pixels hold {len(image.pixels)} bytes, "
            f"expected {image.height}x{image.width}x{channels} = {expected}")
    array = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width, channels)
    if channels == 3 and order == "rgb":
        return array  # read-only view of the request: resizing or batching makes the first copy
    code = (cv2.COLOR_GRAY2RGB if order == "rgb" else cv2.COLOR_GRAY2BGR) if channels == 1 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(array, code)


def _check_pixels(index: int, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise invalid_argument(
            f"image {index}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(--max-image-pixels)")


def warm_up_pixels(side: int = 96) -> np.ndarray:
    """A BGR image with some structure (a gradient and a block): what warm-ups send through the request path."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, side, dtype=np.uint8)
    pixels[side // 4:side // 2, side // 4:side // 2] = 255
    return pixels
