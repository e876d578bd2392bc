"""Test images made on the fly (no binary fixtures in the repository).

Small helpers to draw images with known pixels, save them in any format, add EXIF orientation, and
craft broken files (patched headers, extra chunks) for the decoding tests.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
GREY = (128, 128, 128)
WHITE = (255, 255, 255)


def solid(width: int, height: int, colour: tuple[int, ...] = GREY) -> np.ndarray:
    """An RGB(A) uint8 image of one colour, shape (height, width, len(colour))."""
    return np.tile(np.array(colour, dtype=np.uint8), (height, width, 1))


def quadrants(width: int = 64, height: int = 48) -> np.ndarray:
    """RGB image: top-left red, top-right green, bottom-left blue, bottom-right white.

    Every orientation change moves these to a unique place, and BGR/RGB mix-ups show.
    """
    img = solid(width, height, WHITE)
    hw, hh = width // 2, height // 2
    img[:hh, :hw] = RED
    img[:hh, hw:] = GREEN
    img[hh:, :hw] = BLUE
    return img


def left_right(width: int = 200, height: int = 100, left=RED, right=BLUE) -> np.ndarray:
    """RGB image: left half ``left``, right half ``right``."""
    img = solid(width, height, left)
    img[:, width // 2 :] = right
    return img


def encode(image: np.ndarray | Image.Image, fmt: str, **save_kwargs) -> bytes:
    """Encode an array or PIL image with Pillow in format ``fmt`` ("JPEG", "PNG", ...)."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    pil.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def exif_with_orientation(orientation: int) -> bytes:
    """EXIF block (as Pillow's ``exif=`` save argument wants it) holding only an Orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def insert_png_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """Insert a chunk right after IHDR (signature 8 + IHDR chunk 25 bytes)."""
    return png[:33] + png_chunk(kind, payload) + png[33:]


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR's width/height (and its CRC) so the header claims another size."""
    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]
