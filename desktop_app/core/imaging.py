"""Decoding and preprocessing of dermoscopy images: the single place where pixels enter LesionLens.

The trainer (TensorFlow side) and the desktop app (onnxruntime side) both call this module, so a
model is fed exactly the same numbers in use as in training. Only the standard library, numpy,
Pillow and OpenCV (headless) are imported here: never Qt, never TensorFlow.

Every failure caused by the file itself is raised as :class:`ImageError` with a message meant for
the clinician at the screen (it names the file by its base name only, never a full path).
Programming errors (a wrong array passed to :func:`preprocess`, an invalid
:class:`PreprocessSpec`) raise ``ValueError``/``TypeError``.

Thread safety: nothing here changes global state at call time, so the functions can run in worker
threads and in multiprocessing workers. At import time Pillow's decompression-bomb threshold is
raised to :data:`MAX_PIXELS` (if it was lower), because our own, clinician-readable size check
replaces it; Pillow still refuses anything above twice that before allocating memory.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from desktop_app.core.errors import ImageError

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "RESIZE_MODES",
    "SUPPORTED_SUFFIXES",
    "LoadedImage",
    "PreprocessSpec",
    "batch_preprocess",
    "load_image",
    "preprocess",
    "resize_uint8",
    "scale_values",
]

MIN_SIDE = 32
"""Smallest accepted width and height in pixels: below this there is nothing to analyse."""

MAX_PIXELS = 250_000_000
# Every analysis (window, CLI, batch) decodes at most this many pixels on the longest side and
# predicts on that copy: one road, so the same file gives the same answer everywhere. Big JPEGs then
# decode at reduced scale (fast, little memory); the model's input is far smaller anyway.
ANALYSIS_MAX_SIDE = 2048
"""Largest accepted image (width x height) - protects the workstation's memory."""

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
)
"""File name suffixes offered in file dialogs (lower case). Decoding goes by content, not suffix."""

RESIZE_MODES: frozenset[str] = frozenset({"stretch", "center_crop", "pad"})

_SUPPORTED_NAMES = "JPEG, PNG, TIFF, BMP, WebP"

# Our own size check (below) gives the clinician a readable message; Pillow's default bomb limit
# (~89 megapixels) would refuse legitimate large scans first, so lift it to our limit. Done once at
# import, never at call time. Pillow keeps raising DecompressionBombError above 2 x MAX_PIXELS.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Magic numbers of the formats we decode, mapped to the Pillow format names allowed for them.
_JPEG_FORMATS = ("JPEG", "MPO")
_PNG_FORMATS = ("PNG",)
_TIFF_FORMATS = ("TIFF",)
_BMP_FORMATS = ("BMP",)
_WEBP_FORMATS = ("WEBP",)

_EXIF_ORIENTATION_TAG = 0x0112


# --------------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image, ready for display and preprocessing.

    ``rgb`` is HxWx3 uint8 in RGB order, C-contiguous, EXIF orientation applied. ``original_size``
    is (width, height) as the image is meant to be viewed (after EXIF rotation) at full resolution,
    even when ``max_side`` made ``rgb`` smaller. ``source_mode`` says what the file held (Pillow
    mode names, e.g. "RGB", "L", "I;16", "RGBA", "CMYK", "P"; "RGB;16" for 16-bit colour).
    ``notes`` lists, in plain words, every conversion that changed the pixels' meaning, so the
    clinician can be told (may be empty).
    """

    rgb: np.ndarray
    original_size: tuple[int, int]
    source_mode: str
    notes: tuple[str, ...] = field(default=())

    @property
    def width(self) -> int:
        """Width of ``rgb`` in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Height of ``rgb`` in pixels."""
        return int(self.rgb.shape[0])


# --------------------------------------------------------------------------------------------------
# Reading and sniffing
# --------------------------------------------------------------------------------------------------


class _Source:
    """The bytes to decode and how to name them to the user (base name only, never a path)."""

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str | None) -> None:
        self.data = data
        self.name = name

    @property
    def file(self) -> str:
        """'The file 'x.jpg'' or 'The image data', for the start of a sentence."""
        return f"The file '{self.name}'" if self.name else "The image data"

    @property
    def image_file(self) -> str:
        return f"The image file '{self.name}'" if self.name else "The image data"

    @property
    def image(self) -> str:
        return f"The image '{self.name}'" if self.name else "The image"

    @property
    def quoted(self) -> str:
        return f"'{self.name}'" if self.name else "The data"


def _read_source(source: str | os.PathLike[str] | bytes) -> _Source:
    """Read all bytes of ``source`` ourselves, so every I/O failure gets a clear message."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        src = _Source(data, None)
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        name = os.path.basename(os.path.normpath(path)) or path
        try:
            if os.path.isdir(path):
                raise ImageError(f"'{name}' is a folder, not an image file.")
            with open(path, "rb") as fh:
                data = fh.read()
        except ImageError:
            raise
        except FileNotFoundError:
            raise ImageError(
                f"The file '{name}' was not found. It may have been moved, renamed or deleted."
            ) from None
        except IsADirectoryError:
            raise ImageError(f"'{name}' is a folder, not an image file.") from None
        except PermissionError:
            raise ImageError(
                f"The file '{name}' could not be read: permission denied. "
                "Check that your account is allowed to open it."
            ) from None
        except MemoryError:
            raise ImageError(
                f"The file '{name}' is too big to be read into memory on this computer."
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ImageError(f"The file '{name}' could not be read ({reason}).") from None
        src = _Source(data, name)
    else:
        raise TypeError(f"load_image() needs a path or bytes, not {type(source).__name__}")
    if not src.data:
        raise ImageError(f"{src.file} is empty (0 bytes).")
    return src


def _image_formats(data: bytes) -> tuple[str, ...] | None:
    """Pillow format names to try for ``data`` by its magic number, or None if not supported."""
    if data.startswith(b"\xff\xd8\xff"):
        return _JPEG_FORMATS
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG_FORMATS
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _TIFF_FORMATS
    if data.startswith(b"BM"):
        return _BMP_FORMATS
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP_FORMATS
    return None


_HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"hevm",
    b"hevs",
    b"mif1",
    b"msf1",
}


def _known_unsupported(data: bytes) -> str | None:
    """Name formats a clinician may plausibly pick by mistake, to say more than 'unsupported'."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF image (at most 256 colours, too few for reliable analysis)"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            return "an HEIC/HEIF photo (the iPhone default); export it as JPEG first"
        if brand in (b"avif", b"avis"):
            return "an AVIF image; export it as JPEG or PNG first"
        return "a video or other media file"
    if data.startswith(b"%PDF"):
        return "a PDF document"
    if data[128:132] == b"DICM":
        return "a DICOM file; export the image from your viewer as PNG or TIFF first"
    if data.startswith(b"PK\x03\x04"):
        return "a ZIP archive or office document"
    if data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "a JPEG 2000 image"
    return None


def _looks_like_text(data: bytes) -> bool:
    """True if the start of ``data`` reads as text (a renamed .txt, HTML, JSON, CSV, SVG...)."""
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 byte-order mark
        return True
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"<", b"{"):
        return True
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of our window is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\t\r\n\f\v")
    return printable / len(text) >= 0.95


def _not_an_image(src: _Source) -> ImageError:
    return ImageError(f"{src.quoted} is not an image file: it looks like text.")


def _refuse_unknown(src: _Source) -> ImageError:
    """The error for bytes whose magic number is not one we decode."""
    known = _known_unsupported(src.data)
    if known is not None:
        return ImageError(f"{src.quoted} is {known}. LesionLens accepts {_SUPPORTED_NAMES} images.")
    if _looks_like_text(src.data):
        return _not_an_image(src)
    return ImageError(f"{src.quoted} is not a supported image format ({_SUPPORTED_NAMES}).")


def _damaged(src: _Source) -> ImageError:
    return ImageError(f"{src.image_file} is damaged or truncated and could not be decoded.")


def _fmt_megapixels(pixels: int) -> str:
    text = f"{pixels / 1e6:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _check_size(src: _Source, width: int, height: int) -> None:
    """Refuse absurd sizes before any pixel memory is allocated."""
    pixels = int(width) * int(height)
    if pixels > MAX_PIXELS:
        raise ImageError(
            f"{src.image} is too large ({width} x {height} pixels, "
            f"{_fmt_megapixels(pixels)} megapixels); the limit is "
            f"{_fmt_megapixels(MAX_PIXELS)} megapixels."
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(
            f"{src.image} is too small ({width} x {height} pixels); "
            f"at least {MIN_SIDE} x {MIN_SIDE} are needed."
        )


_BOMB_RE = re.compile(r"Image size \((\d+) pixels\)")


def _too_large_from_bomb(src: _Source, exc: Exception) -> ImageError:
    match = _BOMB_RE.search(str(exc))
    size = f" ({_fmt_megapixels(int(match.group(1)))} megapixels)" if match else ""
    return ImageError(
        f"{src.image} is too large{size}; the limit is {_fmt_megapixels(MAX_PIXELS)} megapixels."
    )


# --------------------------------------------------------------------------------------------------
# Pixel conversions (all return fresh arrays; inputs are never modified)
# --------------------------------------------------------------------------------------------------


def _u16_to_u8(arr: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by value/257 rounded half up (65535 -> 255, 32768 -> 128), not truncation."""
    wide = arr.astype(np.uint32)
    return ((2 * wide + 257) // 514).astype(np.uint8)


def _float_to_u8(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Float pixels: 0..1 if that is the data's range, else taken as 0..255; NaN -> 0."""
    data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    finite_max = float(data.max()) if data.size else 0.0
    if finite_max <= 1.0:
        scaled = np.clip(data, 0.0, 1.0) * 255.0
        notes.append("Floating-point image (values 0 to 1) converted to 8 bits.")
    else:
        if finite_max > 255.0 or float(data.min()) < 0.0:
            notes.append("Floating-point image: values outside 0 to 255 were clipped.")
        scaled = np.clip(data, 0.0, 255.0)
        notes.append("Floating-point image converted to 8 bits.")
    return np.rint(scaled).astype(np.uint8)


def _int_to_u8(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Integer pixels of more than 8 bits -> 8 bits, scaled by the bit depth the data really uses.

    16-bit data (any byte order) is divided by 257. Wider integers (Pillow mode "I", 32-bit TIFF)
    whose values all fit in 0..65535 are 16-bit data stored wide and are treated as such; anything
    larger is scaled from the full signed 32-bit range. Nothing is clipped silently.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        notes.append("16-bit image reduced to 8 bits.")
        return _u16_to_u8(arr)
    data = arr.astype(np.int64)
    if data.size and int(data.min()) < 0:
        notes.append("Negative pixel values were set to 0.")
        data = np.clip(data, 0, None)
    top = int(data.max()) if data.size else 0
    if top <= 0xFFFF:
        notes.append("16-bit image reduced to 8 bits.")
        return _u16_to_u8(data.astype(np.uint16))
    scale = float(max(top, 2**31 - 1))
    notes.append("32-bit image reduced to 8 bits.")
    return np.rint(data * (255.0 / scale)).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _flatten_alpha(rgba: np.ndarray, notes: list[str]) -> np.ndarray:
    """Composite RGBA uint8 onto white (transparent areas of clinical cut-outs are background)."""
    rgb = rgba[:, :, :3]
    alpha = rgba[:, :, 3]
    if bool((alpha == 255).all()):
        return np.array(rgb)  # fully opaque: nothing to flatten, nothing to report
    a = alpha.astype(np.uint16)[:, :, np.newaxis]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    notes.append("Transparent areas were filled with white (transparency flattened on white).")
    return out.astype(np.uint8)


def _convert_lab(im: Image.Image, notes: list[str]) -> np.ndarray:
    """CIELab -> sRGB through LittleCMS; Pillow's plain convert() would not do colour science."""
    try:
        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        out = ImageCms.applyTransform(im, transform)
    except Exception as exc:  # any colour-management failure means the same here
        raise ImageError(
            "The image uses CIELab colours that could not be converted to RGB."
        ) from exc
    notes.append("CIELab colours converted to RGB.")
    return np.asarray(out.convert("RGB"))


def _convert_cmyk(im: Image.Image, notes: list[str]) -> np.ndarray:
    """CMYK (print) -> RGB, through the embedded ICC profile when there is a usable one."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(
                im, src_profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except Exception:  # a broken profile: fall back to the plain conversion
            out = None
        if out is not None:
            notes.append("CMYK (print) colours converted to RGB using the embedded colour profile.")
            return np.asarray(out)
    notes.append("CMYK (print) colours converted to RGB.")
    return np.asarray(im.convert("RGB"))


_GREY_MODES = {"L": "Greyscale", "1": "Black-and-white (1-bit)"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _pil_to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Any loaded Pillow image -> HxWx3 uint8 RGB, reporting what was changed in ``notes``."""
    mode = im.mode
    has_key = im.info.get("transparency") is not None and mode in {"P", "L", "RGB"}
    if mode == "RGB" and not has_key:
        return np.asarray(im)
    if mode in _ALPHA_MODES or has_key:
        rgba_img = im.convert("RGBA")
        rgba = np.asarray(rgba_img)
        if mode in {"P", "PA"}:
            notes.append("Palette (indexed-colour) image expanded to RGB.")
        elif mode in {"L", "LA", "La"}:
            notes.append("Greyscale image: the grey level was copied to all three colour channels.")
        return _flatten_alpha(rgba, notes)
    if mode in _GREY_MODES:
        grey = np.asarray(im.convert("L") if mode == "1" else im)
        notes.append(
            f"{_GREY_MODES[mode]} image: the grey level was copied to all three colour channels."
        )
        return _grey_to_rgb(grey)
    if mode.startswith("I;16") or mode == "I":
        grey = _int_to_u8(np.asarray(im), notes)
        notes.append("Greyscale image: the grey level was copied to all three colour channels.")
        return _grey_to_rgb(grey)
    if mode == "F":
        grey = _float_to_u8(np.asarray(im), notes)
        notes.append("Greyscale image: the grey level was copied to all three colour channels.")
        return _grey_to_rgb(grey)
    if mode == "P":
        notes.append("Palette (indexed-colour) image expanded to RGB.")
        return np.asarray(im.convert("RGB"))
    if mode == "CMYK":
        return _convert_cmyk(im, notes)
    if mode == "LAB":
        return _convert_lab(im, notes)
    if mode in {"YCbCr", "RGBX", "HSV"}:
        return np.asarray(im.convert("RGB"))
    try:
        out = im.convert("RGB")
    except Exception as exc:
        raise ImageError(
            f"The image uses an unusual pixel format ({mode}) that cannot be converted to RGB."
        ) from exc
    notes.append(f"Image in pixel format {mode} converted to RGB.")
    return np.asarray(out)


def _cv2_source_mode(arr: np.ndarray) -> str:
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    base = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    if arr.dtype == np.uint8:
        return base
    if arr.dtype == np.uint16:
        return "I;16" if base == "L" else f"{base};16"
    if arr.dtype.kind == "f":
        return "F" if base == "L" else f"{base};F"
    return f"{base};{arr.dtype.name}"


def _cv2_to_rgb(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """An array from cv2.imdecode(IMREAD_UNCHANGED) -> RGB uint8. OpenCV decodes to BGR(A)!"""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        channels = 1
    elif arr.ndim == 3 and arr.shape[2] in (2, 3, 4):
        channels = arr.shape[2]
    else:
        raise ImageError("The image has an unusual number of colour channels and cannot be used.")

    if arr.dtype == np.uint8:
        u8 = arr
    elif arr.dtype == np.uint16:
        notes.append("16-bit image reduced to 8 bits.")
        u8 = _u16_to_u8(arr)
    elif arr.dtype.kind == "f":
        u8 = _float_to_u8(arr, notes)
    elif arr.dtype.kind in "iu":
        u8 = _int_to_u8(arr, notes)
    else:
        raise ImageError("The image stores its pixels in a format that cannot be used.")

    if channels == 1:
        notes.append("Greyscale image: the grey level was copied to all three colour channels.")
        return _grey_to_rgb(u8)
    if channels == 2:  # grey + alpha
        notes.append("Greyscale image: the grey level was copied to all three colour channels.")
        grey = u8[:, :, 0]
        rgba = np.dstack([grey, grey, grey, u8[:, :, 1]])
        return _flatten_alpha(rgba, notes)
    if channels == 3:
        return np.ascontiguousarray(u8[:, :, ::-1])  # BGR -> RGB
    rgba = np.ascontiguousarray(u8[:, :, [2, 1, 0, 3]])  # BGRA -> RGBA
    return _flatten_alpha(rgba, notes)


def _cv2_decode(data: bytes) -> np.ndarray | None:
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    return arr if isinstance(arr, np.ndarray) and arr.size else None


# --------------------------------------------------------------------------------------------------
# Orientation and reduction
# --------------------------------------------------------------------------------------------------


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an HxWxC array, exactly as PIL.ImageOps.exif_transpose."""
    if orientation == 2:
        return rgb[:, ::-1]
    if orientation == 3:
        return rgb[::-1, ::-1]
    if orientation == 4:
        return rgb[::-1]
    if orientation == 5:
        return rgb.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(rgb, k=-1)
    if orientation == 7:
        return rgb.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(rgb, k=1)
    return rgb


def _read_orientation(im: Image.Image, notes: list[str]) -> int:
    """The EXIF orientation (1 if absent or meaningless); a broken EXIF block is reported."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF must not make the image unusable
        notes.append(
            "The camera orientation information in the file could not be read; "
            "the image is shown as stored."
        )
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int] | None:
    """(w, h) with the longest side == max_side and the aspect ratio kept; None if no reduction."""
    longest = max(width, height)
    if longest <= max_side:
        return None
    new_w = max(1, round(width * max_side / longest))
    new_h = max(1, round(height * max_side / longest))
    return min(new_w, max_side), min(new_h, max_side)


# --------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------


def _is_16bit_colour(im: Image.Image) -> bool:
    """Pillow silently keeps only the high byte of 16-bit RGB(A) PNG/TIFF; detect those files."""
    # Only PNG and TIFF hold 16 bits per channel ("BGR;16" in a BMP is 5-6-5 packed colour).
    if im.mode not in {"RGB", "RGBA"} or im.format not in {"PNG", "TIFF"}:
        return False
    for tile in getattr(im, "tile", ()) or ():
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _decode_with_cv2_only(src: _Source, max_side: int | None) -> LoadedImage:
    """Last resort for TIFF variants Pillow cannot read. No EXIF orientation is available here."""
    arr = _cv2_decode(src.data)
    if arr is None:
        raise _damaged(src)
    height, width = arr.shape[:2]
    _check_size(src, width, height)
    notes: list[str] = []
    rgb = _cv2_to_rgb(arr, notes)
    return _finish(rgb, (width, height), _cv2_source_mode(arr), notes, max_side)


def _finish(
    rgb: np.ndarray,
    original_size: tuple[int, int],
    source_mode: str,
    notes: list[str],
    max_side: int | None,
) -> LoadedImage:
    """Reduce to max_side if asked, make the array a fresh C-contiguous uint8 HxWx3, wrap it."""
    if max_side is not None:
        target = _target_size(original_size[0], original_size[1], max_side)
        if target is not None and (rgb.shape[1], rgb.shape[0]) != target:
            rgb = cv2.resize(np.ascontiguousarray(rgb), target, interpolation=cv2.INTER_AREA)
            notes.append(
                f"Reduced from {original_size[0]} x {original_size[1]} to "
                f"{target[0]} x {target[1]} pixels."
            )
    fresh = rgb.base is None and rgb.flags.c_contiguous and rgb.flags.writeable
    out = rgb if fresh and rgb.dtype == np.uint8 else np.array(rgb, dtype=np.uint8, order="C")
    if out.ndim != 3 or out.shape[2] != 3:  # pragma: no cover - guarded by the converters
        raise ImageError("The image could not be converted to three colour channels.")
    return LoadedImage(
        rgb=out,
        original_size=(int(original_size[0]), int(original_size[1])),
        source_mode=source_mode,
        notes=tuple(dict.fromkeys(notes)),  # de-duplicated, order kept
    )


def load_image(
    source: str | os.PathLike[str] | bytes, *, max_side: int | None = None
) -> LoadedImage:
    """Decode any supported image file (path or bytes) into RGB uint8, the same way everywhere.

    ``max_side``: if set, the returned array's longest side is at most ``max_side`` (large JPEGs are
    decoded at reduced scale via Pillow's draft mode, then an INTER_AREA resize gives the exact
    size). Used for display and caches; ``original_size`` always reports the full size.

    Raises :class:`ImageError` (clinician-readable) for anything wrong with the file; ``TypeError``
    / ``ValueError`` for programming errors.
    """
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive int or None, not {max_side!r}")

    src = _read_source(source)
    formats = _image_formats(src.data)
    if formats is None:
        raise _refuse_unknown(src)

    try:
        im = Image.open(io.BytesIO(src.data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large_from_bomb(src, exc) from None
    except UnidentifiedImageError:
        if _looks_like_text(src.data):
            raise _not_an_image(src) from None
        if formats == _TIFF_FORMATS:
            return _decode_with_cv2_only(src, max_side)
        raise _damaged(src) from None
    except MemoryError:
        raise ImageError(f"{src.image} is too large to open on this computer.") from None
    except Exception:  # whatever a broken header raises, the file is damaged (or text)
        if _looks_like_text(src.data):
            raise _not_an_image(src) from None
        raise _damaged(src) from None

    with im:
        return _decode_pillow(src, im, formats, max_side)


def _decode_pillow(
    src: _Source, im: Image.Image, formats: tuple[str, ...], max_side: int | None
) -> LoadedImage:
    stored_w, stored_h = im.size
    _check_size(src, stored_w, stored_h)
    notes: list[str] = []

    n_frames = getattr(im, "n_frames", 1)
    if isinstance(n_frames, int) and n_frames > 1 and im.format != "MPO":
        # MPO = a camera JPEG with an extra preview/depth picture: the first one is the photo.
        notes.append(f"The file holds {n_frames} images (pages or frames); the first was used.")

    is_16bit_colour = _is_16bit_colour(im)
    source_mode = f"{im.mode};16" if is_16bit_colour else im.mode

    if max_side is not None and im.format in _JPEG_FORMATS:
        scale = max_side / max(stored_w, stored_h)
        if scale < 1:
            request = (max(1, math.ceil(stored_w * scale)), max(1, math.ceil(stored_h * scale)))
            with contextlib.suppress(Exception):  # draft is an optimisation only
                im.draft("RGB", request)

    try:
        im.load()
    except MemoryError:
        raise ImageError(f"{src.image} is too large to open on this computer.") from None
    except Image.DecompressionBombError as exc:
        raise _too_large_from_bomb(src, exc) from None
    except Exception as exc:  # truncated, broken stream, bad zlib data...
        # A TIFF variant Pillow cannot decode may still be readable by OpenCV; a cut file must
        # never be "rescued" that way (it would come back with made-up pixels).
        if formats == _TIFF_FORMATS and "truncated" not in str(exc):
            return _decode_with_cv2_only(src, max_side)
        raise _damaged(src) from None

    orientation = _read_orientation(im, notes)
    swapped = orientation in (5, 6, 7, 8)
    original_size = (stored_h, stored_w) if swapped else (stored_w, stored_h)

    if is_16bit_colour:
        # Pillow has validated the whole stream; decode again with OpenCV for the real 16 bits.
        arr = _cv2_decode(src.data)
        if arr is not None and arr.shape[:2] == (stored_h, stored_w) and arr.dtype == np.uint16:
            rgb = _cv2_to_rgb(arr, notes)
        else:
            notes.append("16-bit image reduced to 8 bits.")
            rgb = _pil_to_rgb(im, notes)
    else:
        try:
            rgb = _pil_to_rgb(im, notes)
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(f"{src.image} is too large to open on this computer.") from None
        except Exception:
            raise _damaged(src) from None

    rgb = _orient(rgb, orientation)
    return _finish(rgb, original_size, source_mode, notes, max_side)


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes model input. Stored in the model card so app == training.

    ``resize``: "stretch" resizes the whole image to height x width ignoring the aspect ratio;
    "center_crop" crops the central largest box of the target aspect ratio, then resizes;
    "pad" letterboxes: resizes to fit inside, then pads with black (0) evenly on both sides.
    ``value_range``: the (low, high) that 0 and 255 map to; the default (0, 255) feeds plain RGB
    floats because the model rescales internally.
    """

    height: int = 224
    width: int = 224
    resize: str = "stretch"
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"PreprocessSpec.{name} must be a positive int, not {value!r}")
            object.__setattr__(self, name, int(value))
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"PreprocessSpec.resize must be one of {sorted(RESIZE_MODES)}, not {self.resize!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"PreprocessSpec.dtype must be one of {sorted(_DTYPES)}, not {self.dtype!r}"
            )
        try:
            low, high = (float(v) for v in self.value_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"PreprocessSpec.value_range must be two numbers, not {self.value_range!r}"
            ) from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(
                "PreprocessSpec.value_range must be finite with low < high, "
                f"not {self.value_range!r}"
            )
        object.__setattr__(self, "value_range", (low, high))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Rebuild from :meth:`to_dict` output (e.g. a model card); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"PreprocessSpec.from_dict needs a dict, not {type(d).__name__}")
        known = {"height", "width", "resize", "dtype", "value_range"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown PreprocessSpec field(s): {sorted(unknown)}")
        kwargs = dict(d)
        if "value_range" in kwargs:
            vr = kwargs["value_range"]
            if not isinstance(vr, list | tuple) or len(vr) != 2:
                raise ValueError(f"PreprocessSpec.value_range must be two numbers, not {vr!r}")
            kwargs["value_range"] = tuple(vr)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (value_range as a list)."""
        return {
            "height": self.height,
            "width": self.width,
            "resize": self.resize,
            "dtype": self.dtype,
            "value_range": [self.value_range[0], self.value_range[1]],
        }


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected a non-empty image, got shape {rgb.shape}")


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """INTER_AREA when the target area is smaller (anti-aliased), INTER_LINEAR when enlarging."""
    src_h, src_w = img.shape[:2]
    if (src_w, src_h) == (width, height):
        return np.array(img, order="C", copy=True)
    interp = cv2.INTER_AREA if width * height < src_w * src_h else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=interp)


def resize_uint8(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The geometry of :func:`preprocess`, kept in uint8 (H x W x 3) so the trainer can cache it.

    ``preprocess(x, spec)`` is exactly ``scale_values(resize_uint8(x, spec), spec)``.
    """
    _check_rgb(rgb)
    src_h, src_w = rgb.shape[:2]
    out_w, out_h = spec.width, spec.height

    if spec.resize == "stretch":
        out = _resize(rgb, out_w, out_h)
    elif spec.resize == "center_crop":
        # Compare aspect ratios with integers: src_w/src_h vs out_w/out_h.
        if src_w * out_h > out_w * src_h:  # source is wider: crop left and right
            crop_w = max(1, min(src_w, (2 * src_h * out_w + out_h) // (2 * out_h)))
            x0 = (src_w - crop_w) // 2
            box = rgb[:, x0 : x0 + crop_w]
        else:  # source is taller (or the same aspect): crop top and bottom
            crop_h = max(1, min(src_h, (2 * src_w * out_h + out_w) // (2 * out_w)))
            y0 = (src_h - crop_h) // 2
            box = rgb[y0 : y0 + crop_h]
        out = _resize(box, out_w, out_h)
    else:  # "pad"
        if src_w * out_h >= out_w * src_h:  # source is wider: full width, bands top and bottom
            fit_w = out_w
            fit_h = max(1, min(out_h, (2 * src_h * out_w + src_w) // (2 * src_w)))
        else:  # source is taller: full height, bands left and right
            fit_h = out_h
            fit_w = max(1, min(out_w, (2 * src_w * out_h + src_h) // (2 * src_h)))
        inner = _resize(rgb, fit_w, fit_h)
        out = np.zeros((out_h, out_w, 3), dtype=np.uint8)
        y0 = (out_h - fit_h) // 2
        x0 = (out_w - fit_w) // 2
        out[y0 : y0 + fit_h, x0 : x0 + fit_w] = inner

    return np.ascontiguousarray(out, dtype=np.uint8)


def scale_values(resized: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 H x W x 3 (e.g. from a resize_uint8 cache) -> spec.dtype in spec.value_range.

    With the default range (0, 255) this is a plain cast, so cached uint8 and live input agree
    bit for bit.
    """
    _check_rgb(resized)
    dtype = _DTYPES[spec.dtype]
    low, high = spec.value_range
    if (low, high) == (0.0, 255.0):
        return resized.astype(dtype)
    scaled = resized.astype(np.float64) * ((high - low) / 255.0) + low
    return scaled.astype(dtype)


def preprocess(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 RGB -> (spec.height, spec.width, 3) spec.dtype (float32) in spec.value_range.

    Deterministic; the one preprocessing used by both training and the app. Raises ValueError for
    a wrong input array (not uint8, not 3 channels) - a programming error, not a user error.
    """
    return scale_values(resize_uint8(rgb, spec), spec)


def batch_preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several images and stack them: (N, spec.height, spec.width, 3)."""
    dtype = _DTYPES[spec.dtype]
    out = np.empty((len(images), spec.height, spec.width, 3), dtype=dtype)
    for i, rgb in enumerate(images):
        out[i] = preprocess(rgb, spec)
    return out
