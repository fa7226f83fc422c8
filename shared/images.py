"""What an uploaded image may cost before anything decodes it, and how an upload is kept.

The limits are read from the header alone (Pillow's ``Image.open`` parses the header and
decodes nothing): the bytes, the pixels, and the pixels a byte. A photo from a camera
carries a few pixels a byte (a 12-megapixel JPEG is 2 to 5 MB); a file that promises
hundreds of pixels a byte beyond a small free allowance is built to expand (a 38 KB PNG of
39.7 megapixels would take 120 MB decoded), and is refused before it is decoded.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest encoded image accepted, and largest decoded size: 40 megapixels is above any
#: phone camera's photo and below what would let one request exhaust a server's memory.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
#: pixels any image may have whatever its bytes (a 2000 × 2000 flat-colour PNG is tiny)
FREE_PIXELS = 4_000_000
#: above FREE_PIXELS, the pixels allowed per encoded byte
PIXELS_PER_BYTE = 200
#: the longest side an upload is kept at (re-encoded), enough for any gallery
KEPT_SIDE = 1600


class ImageError(ValueError):
    """The bytes are not a photo hashrec can use; the message says why."""


def check_header(data: bytes, max_bytes: int = MAX_IMAGE_BYTES,
                 max_pixels: int = MAX_PIXELS) -> str:
    """The image format, after the byte, pixel and pixels-a-byte limits are checked from
    the header alone."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"image is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image_format = image.format or ""
    except UnidentifiedImageError as error:
        raise ImageError("not a decodable image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"image rejected as a decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"image is truncated or corrupt: {error}") from error
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(f"image is {width}x{height} = {pixels:,} pixels; "
                         f"the limit is {max_pixels:,}")
    if pixels > max(FREE_PIXELS, PIXELS_PER_BYTE * len(data)):
        raise ImageError(f"image is {width}x{height} = {pixels:,} pixels in {len(data):,} "
                         f"bytes, over {PIXELS_PER_BYTE} pixels a byte: refused as a "
                         "decompression bomb before decoding")
    return image_format


def reencoded(data: bytes, side: int = KEPT_SIDE) -> tuple[bytes, str]:
    """The upload as it is kept: decoded (upright per EXIF), at most ``side`` pixels on its
    long side, encoded afresh as JPEG, or PNG when it has transparency: (bytes, media
    type). Nothing of the original file (metadata, trailing bytes, another format inside)
    survives. Call after ``check_header``."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, cheaply
        image = ImageOps.exif_transpose(image)
        image.thumbnail((side, side))
        transparent = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info)
        buffer = io.BytesIO()
        if transparent:
            image.convert("RGBA").save(buffer, "PNG", optimize=False)
            return buffer.getvalue(), "image/png"
        image.convert("RGB").save(buffer, "JPEG", quality=90)
        return buffer.getvalue(), "image/jpeg"
