"""Decoding and preprocessing: the one place where pixels enter LesionLens (app and trainer)."""

from __future__ import annotations

import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from desktop_app.core import imaging
from desktop_app.core.errors import ImageError, LesionLensError
from desktop_app.core.imaging import (
    MAX_PIXELS,
    MIN_SIDE,
    SUPPORTED_SUFFIXES,
    LoadedImage,
    PreprocessSpec,
    batch_preprocess,
    load_image,
    preprocess,
    resize_uint8,
)
from tests.image_factory import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    encode,
    exif_with_orientation,
    insert_png_chunk,
    left_right,
    patch_png_size,
    quadrants,
    solid,
    write,
)

FORMAT_OF = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
LOSSY = {"JPEG", "WEBP"}


def close(actual, expected, tol: int) -> bool:
    diff = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int))
    return bool(diff.max() <= tol)


def assert_quadrants(rgb: np.ndarray, layout: dict[str, tuple[int, int, int]], tol: int) -> None:
    """Check the colour at the centre of each quadrant ("tl", "tr", "bl", "br")."""
    h, w = rgb.shape[:2]
    centres = {
        "tl": (h // 4, w // 4),
        "tr": (h // 4, 3 * w // 4),
        "bl": (3 * h // 4, w // 4),
        "br": (3 * h // 4, 3 * w // 4),
    }
    for where, colour in layout.items():
        y, x = centres[where]
        assert close(rgb[y, x], colour, tol), f"{where}: {rgb[y, x]} != {colour}"


def assert_valid_rgb(loaded: LoadedImage) -> None:
    rgb = loaded.rgb
    assert isinstance(loaded, LoadedImage)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous and rgb.flags.writeable


# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert MIN_SIDE == 32
    assert MAX_PIXELS == 250_000_000
    assert frozenset(FORMAT_OF) == SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)
    assert issubclass(ImageError, LesionLensError)


def test_module_imports_no_qt_or_tensorflow() -> None:
    source = Path(imaging.__file__).read_text(encoding="utf-8")
    for banned in ("PySide", "PyQt", "tensorflow", "keras", "onnxruntime"):
        assert f"import {banned}" not in source and f"from {banned}" not in source


# --------------------------------------------------------------------------------------------------
# Round trips of every supported format
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [*sorted(SUPPORTED_SUFFIXES), ".JPG", ".PNG"])
def test_every_format_round_trips_in_rgb_order(tmp_path: Path, suffix: str) -> None:
    fmt = FORMAT_OF[suffix.lower()]
    img = quadrants(64, 48)
    kwargs = {"quality": 95} if fmt in LOSSY else {}
    path = write(tmp_path / f"lesion{suffix}", encode(img, fmt, **kwargs))

    loaded = load_image(path)

    assert_valid_rgb(loaded)
    assert loaded.rgb.shape == (48, 64, 3)
    assert loaded.original_size == (64, 48)
    assert loaded.source_mode == "RGB"
    assert loaded.notes == ()
    if fmt in LOSSY:
        # Red must stay red: a BGR mix-up would turn the top-left quadrant blue.
        assert_quadrants(loaded.rgb, {"tl": RED, "tr": GREEN, "bl": BLUE, "br": WHITE}, tol=40)
    else:
        np.testing.assert_array_equal(loaded.rgb, img)


def test_str_path_and_bytes_give_the_same_pixels(tmp_path: Path) -> None:
    data = encode(quadrants(), "PNG")
    path = write(tmp_path / "x.png", data)
    a = load_image(str(path))
    b = load_image(data)
    c = load_image(bytearray(data))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.rgb, c.rgb)


def test_content_decides_not_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "really_a_png.jpg", encode(quadrants(), "PNG"))
    np.testing.assert_array_equal(load_image(path).rgb, quadrants())


def test_returned_array_is_fresh_and_independent(tmp_path: Path) -> None:
    path = write(tmp_path / "x.png", encode(quadrants(), "PNG"))
    a = load_image(path)
    b = load_image(path)
    a.rgb[:] = 0  # writing into one result must not affect another
    np.testing.assert_array_equal(b.rgb, quadrants())


def test_opencv_written_jpeg_is_rgb(tmp_path: Path) -> None:
    """cv2.imwrite takes BGR; a correctly written red square must load as red."""
    rgb = left_right(80, 40, RED, BLUE)
    path = tmp_path / "cv.jpg"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = load_image(path).rgb
    assert close(out[20, 10], RED, 30) and close(out[20, 70], BLUE, 30)


# --------------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------------

# Stored top-left quadrant is red. Where must it appear once displayed?
_RED_GOES_TO = {3: "br", 6: "tr", 8: "bl"}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg(tmp_path: Path, orientation: int) -> None:
    img = quadrants(64, 48)  # wider than tall
    data = encode(img, "JPEG", quality=95, exif=exif_with_orientation(orientation))
    loaded = load_image(write(tmp_path / f"o{orientation}.jpg", data))

    rotated = orientation in (6, 8)
    assert loaded.rgb.shape == ((64, 48, 3) if rotated else (48, 64, 3))
    assert loaded.original_size == ((48, 64) if rotated else (64, 48))
    assert_quadrants(loaded.rgb, {_RED_GOES_TO[orientation]: RED}, tol=40)
    # And the rest follows: under 6 (rotate clockwise) green goes bottom-right, blue top-left.
    if orientation == 6:
        assert_quadrants(loaded.rgb, {"br": GREEN, "tl": BLUE, "bl": WHITE}, tol=40)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    img = quadrants(64, 48)
    img[5, 7] = (1, 2, 3)  # an asymmetric marker pixel
    data = encode(img, "PNG", exif=exif_with_orientation(orientation))
    loaded = load_image(write(tmp_path / "o.png", data))
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert loaded.original_size == (expected.shape[1], expected.shape[0])


def test_invalid_orientation_value_is_ignored(tmp_path: Path) -> None:
    data = encode(quadrants(), "JPEG", quality=95, exif=exif_with_orientation(0))
    loaded = load_image(write(tmp_path / "o0.jpg", data))
    assert loaded.rgb.shape == (48, 64, 3)


def test_exif_orientation_applied_on_16bit_colour_path(tmp_path: Path) -> None:
    """16-bit colour is decoded by OpenCV, which must neither skip nor repeat the rotation."""
    rgb16 = quadrants(64, 48).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    exif = exif_with_orientation(6)
    data = insert_png_chunk(buf.tobytes(), b"eXIf", exif[6:] if exif.startswith(b"Exif") else exif)
    loaded = load_image(write(tmp_path / "o6_16.png", data))
    assert loaded.source_mode == "RGB;16"
    assert loaded.rgb.shape == (64, 48, 3)
    assert_quadrants(loaded.rgb, {"tr": RED, "br": GREEN, "tl": BLUE, "bl": WHITE}, tol=0)


# --------------------------------------------------------------------------------------------------
# Bit depths
# --------------------------------------------------------------------------------------------------


def test_16bit_grey_png_is_scaled_by_257_with_rounding(tmp_path: Path) -> None:
    grey = np.zeros((40, 40), np.uint16)
    grey[:, :10] = 65535
    grey[:, 10:20] = 32768
    grey[:, 20:30] = 511  # 1.99 -> 2 (truncating the high byte would give 1)
    grey[:, 30:] = 0
    im = Image.fromarray(grey)
    assert im.mode == "I;16"
    loaded = load_image(write(tmp_path / "g16.png", encode(im, "PNG")))
    assert loaded.source_mode == "I;16"
    assert loaded.rgb[0, 0].tolist() == [255, 255, 255]
    assert loaded.rgb[0, 15].tolist() == [128, 128, 128]
    assert loaded.rgb[0, 25].tolist() == [2, 2, 2]
    assert loaded.rgb[0, 35].tolist() == [0, 0, 0]
    assert any("16-bit" in n for n in loaded.notes)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_rgb_written_by_opencv(tmp_path: Path, ext: str) -> None:
    bgr = np.zeros((40, 50, 3), np.uint16)
    bgr[...] = (511, 32768, 65535)  # B, G, R as OpenCV stores them
    path = tmp_path / f"rgb16{ext}"
    assert cv2.imwrite(str(path), bgr)
    loaded = load_image(path)
    assert loaded.source_mode == "RGB;16"
    assert loaded.rgb[10, 10].tolist() == [255, 128, 2]
    assert (loaded.rgb == loaded.rgb[0, 0]).all()
    assert any("16-bit" in n for n in loaded.notes)


def test_16bit_rgba_png_is_flattened_on_white(tmp_path: Path) -> None:
    bgra = np.zeros((40, 40, 4), np.uint16)
    bgra[:, :20] = (0, 0, 65535, 65535)  # opaque red
    bgra[:, 20:] = (0, 0, 65535, 0)  # fully transparent
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), bgra)
    loaded = load_image(path)
    assert loaded.source_mode == "RGBA;16"
    assert loaded.rgb[5, 5].tolist() == [255, 0, 0]
    assert loaded.rgb[5, 30].tolist() == [255, 255, 255]


def test_16bit_grey_tiff(tmp_path: Path) -> None:
    grey = np.full((40, 40), 32768, np.uint16)
    grey[:20] = 65535
    path = write(tmp_path / "g16.tif", encode(Image.fromarray(grey), "TIFF"))
    loaded = load_image(path)
    assert loaded.source_mode.startswith("I;16")
    assert loaded.rgb[0, 0].tolist() == [255] * 3
    assert loaded.rgb[30, 0].tolist() == [128] * 3


def test_32bit_integer_grey_tiff(tmp_path: Path) -> None:
    small = np.full((40, 40), 65535, np.int32)
    small[20:] = 32768
    loaded = load_image(write(tmp_path / "i32.tif", encode(Image.fromarray(small), "TIFF")))
    assert loaded.source_mode == "I"
    assert loaded.rgb[0, 0].tolist() == [255] * 3  # values <= 65535: treated as 16-bit
    assert loaded.rgb[30, 0].tolist() == [128] * 3

    wide = np.full((40, 40), 2**31 - 1, np.int32)
    wide[20:] = 2**30
    loaded = load_image(write(tmp_path / "i32w.tif", encode(Image.fromarray(wide), "TIFF")))
    assert loaded.rgb[0, 0].tolist() == [255] * 3
    assert loaded.rgb[30, 0].tolist() == [128] * 3  # scaled by the 32-bit range, not clipped
    assert any("32-bit" in n for n in loaded.notes)


@pytest.mark.parametrize(
    ("values", "expected"),
    [((0.0, 0.5, 1.0), (0, 128, 255)), ((0.0, 100.0, 300.0), (0, 100, 255))],
)
def test_float_tiff(tmp_path: Path, values, expected) -> None:
    f = np.zeros((40, 60), np.float32)
    f[:, 20:40] = values[1]
    f[:, 40:] = values[2]
    f[:, :20] = values[0]
    loaded = load_image(write(tmp_path / "f.tif", encode(Image.fromarray(f, mode="F"), "TIFF")))
    assert loaded.source_mode == "F"
    assert [loaded.rgb[0, x, 0] for x in (10, 30, 50)] == list(expected)


# --------------------------------------------------------------------------------------------------
# Colour modes
# --------------------------------------------------------------------------------------------------


def test_greyscale_is_replicated(tmp_path: Path) -> None:
    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))
    loaded = load_image(write(tmp_path / "g.png", encode(Image.fromarray(grey, "L"), "PNG")))
    assert loaded.source_mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(loaded.rgb[:, :, c], grey)
    assert any("grey" in n.lower() for n in loaded.notes)


def test_one_bit_image(tmp_path: Path) -> None:
    im = Image.new("1", (40, 40), 0)
    im.paste(1, (20, 0, 40, 40))
    loaded = load_image(write(tmp_path / "bw.png", encode(im, "PNG")))
    assert loaded.source_mode == "1"
    assert loaded.rgb[5, 5].tolist() == [0, 0, 0]
    assert loaded.rgb[5, 30].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_transparency_flattened_on_white(tmp_path: Path, fmt: str) -> None:
    rgba = solid(60, 40, (*RED, 255))
    rgba[:, 20:40] = (*RED, 0)  # transparent: becomes white whatever its colour
    rgba[:, 40:] = (*BLUE, 128)  # half transparent blue over white
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    loaded = load_image(write(tmp_path / f"a.{fmt.lower()}", encode(rgba, fmt, **kwargs)))
    assert loaded.source_mode == "RGBA"
    assert loaded.rgb[5, 5].tolist() == [255, 0, 0]
    assert loaded.rgb[5, 30].tolist() == [255, 255, 255]
    assert close(loaded.rgb[5, 50], (127, 127, 255), 1)
    assert any("white" in n for n in loaded.notes)


def test_opaque_alpha_adds_no_note(tmp_path: Path) -> None:
    rgba = solid(40, 40, (*GREEN, 255))
    loaded = load_image(write(tmp_path / "a.png", encode(rgba, "PNG")))
    assert loaded.rgb[0, 0].tolist() == list(GREEN)
    assert not any("white" in n for n in loaded.notes)


def test_la_alpha(tmp_path: Path) -> None:
    la = np.zeros((40, 40, 2), np.uint8)
    la[:, :20] = (60, 255)
    la[:, 20:] = (60, 0)
    loaded = load_image(write(tmp_path / "la.png", encode(Image.fromarray(la, "LA"), "PNG")))
    assert loaded.source_mode == "LA"
    assert loaded.rgb[5, 5].tolist() == [60, 60, 60]
    assert loaded.rgb[5, 30].tolist() == [255, 255, 255]


def test_palette_image(tmp_path: Path) -> None:
    im = Image.fromarray(left_right(60, 40, RED, BLUE)).convert("P")
    assert im.mode == "P"
    loaded = load_image(write(tmp_path / "p.png", encode(im, "PNG")))
    assert loaded.source_mode == "P"
    assert loaded.rgb[5, 5].tolist() == list(RED)
    assert loaded.rgb[5, 50].tolist() == list(BLUE)
    assert any("alette" in n for n in loaded.notes)


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    im = Image.fromarray(left_right(60, 40, RED, BLUE)).convert("P")
    blue_index = im.getpixel((50, 5))
    loaded = load_image(write(tmp_path / "pt.png", encode(im, "PNG", transparency=blue_index)))
    assert loaded.rgb[5, 5].tolist() == list(RED)
    assert loaded.rgb[5, 50].tolist() == list(WHITE)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (60, 40), (0, 255, 255, 0))  # red in print colours
    im.paste((255, 255, 0, 0), (30, 0, 60, 40))  # blue
    loaded = load_image(write(tmp_path / "cmyk.jpg", encode(im, "JPEG", quality=95)))
    assert loaded.source_mode == "CMYK"
    assert close(loaded.rgb[20, 10], RED, 30)
    assert close(loaded.rgb[20, 50], BLUE, 30)
    assert any("CMYK" in n for n in loaded.notes)


def test_multipage_tiff_uses_first_page(tmp_path: Path) -> None:
    first = Image.fromarray(solid(40, 40, RED))
    second = Image.fromarray(solid(40, 40, BLUE))
    data = encode(first, "TIFF", save_all=True, append_images=[second])
    loaded = load_image(write(tmp_path / "pages.tif", data))
    assert loaded.rgb[0, 0].tolist() == list(RED)
    assert any("first" in n for n in loaded.notes)


# --------------------------------------------------------------------------------------------------
# Bad files: every failure is an ImageError that says why, naming the file without its path
# --------------------------------------------------------------------------------------------------


def load_error(source) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    message = str(info.value)
    assert "Traceback" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    msg = load_error(tmp_path / "nowhere.jpg")
    assert "not found" in msg and "'nowhere.jpg'" in msg
    assert str(tmp_path) not in msg


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    msg = load_error(tmp_path / "folder.jpg")
    assert "folder" in msg and "not an image" in msg
    assert str(tmp_path) not in msg


def test_zero_byte_file(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path / "x.jpg", b""))
    assert msg == "The file 'x.jpg' is empty (0 bytes)."
    assert "empty" in load_error(b"")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root can read anything; needs POSIX modes"
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.png", encode(quadrants(), "PNG"))
    path.chmod(0)
    try:
        msg = load_error(path)
    finally:
        path.chmod(0o600)
    assert "permission" in msg and "'locked.png'" in msg


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.jpg", b"Patient seen on 3 May, lesion on left shoulder.\nFollow up in 3 months.\n"),
        ("page.png", b"<!DOCTYPE html><html><body>not an image</body></html>"),
        ("data.tif", b'{"image": "somewhere else"}'),
        ("umlaut.jpg", "Läsion am Rücken, Größe 4 mm\n".encode() * 10),
        ("bm.bmp", b"BMI values for the cohort: 21.3, 24.8, 30.1\n"),  # starts like a BMP
    ],
)
def test_text_file_is_not_an_image(tmp_path: Path, name: str, content: bytes) -> None:
    msg = load_error(write(tmp_path / name, content))
    assert msg == f"'{name}' is not an image file: it looks like text."


def test_unknown_binary(tmp_path: Path) -> None:
    data = bytes([0, 1, 2, 3, 250, 251, 252, 0]) * 100
    msg = load_error(write(tmp_path / "blob.jpg", data))
    assert "not a supported image format" in msg and "JPEG" in msg


def test_known_unsupported_formats_are_named(tmp_path: Path) -> None:
    gif = encode(quadrants(), "GIF")
    assert "GIF" in load_error(write(tmp_path / "a.gif", gif))
    heic = b"\x00\x00\x00\x18ftypheic" + bytes(100)
    assert "HEIC" in load_error(write(tmp_path / "a.heic", heic))
    assert "PDF" in load_error(write(tmp_path / "a.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"))


def test_corrupt_jpeg_random_bytes_after_header(tmp_path: Path) -> None:
    good = encode(quadrants(300, 200), "JPEG", quality=90)
    start_of_scan = good.index(b"\xff\xda")
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    msg = load_error(write(tmp_path / "bad.jpg", good[: start_of_scan + 20] + noise))
    assert msg == "The image file 'bad.jpg' is damaged or truncated and could not be decoded."


def test_jpeg_header_only(tmp_path: Path) -> None:
    good = encode(quadrants(300, 200), "JPEG", quality=90)
    assert "damaged" in load_error(write(tmp_path / "head.jpg", good[:100]))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "WEBP"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)  # noise: no tiny compressed files
    data = encode(img, fmt)
    msg = load_error(write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2]))
    assert "damaged or truncated" in msg


def test_truncation_is_not_silently_filled() -> None:
    """Pillow's LOAD_TRUNCATED_IMAGES would hide truncation with grey; we must not flip it."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("size", [(4, 4), (31, 100), (100, 31)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    msg = load_error(write(tmp_path / "tiny.png", encode(solid(*size), "PNG")))
    w, h = size
    assert "too small" in msg and f"({w} x {h} pixels)" in msg and "32 x 32" in msg


def test_minimum_size_is_accepted(tmp_path: Path) -> None:
    loaded = load_image(write(tmp_path / "min.png", encode(solid(MIN_SIDE, MIN_SIDE), "PNG")))
    assert loaded.rgb.shape == (MIN_SIDE, MIN_SIDE, 3)


def test_absurd_header_size_is_refused_before_decoding(tmp_path: Path) -> None:
    png = patch_png_size(encode(solid(40, 40), "PNG"), 60000, 60000)
    msg = load_error(write(tmp_path / "bomb.png", png))
    assert "too large" in msg and "3600 megapixels" in msg and "250 megapixels" in msg


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_just_over_our_limit_is_refused(tmp_path: Path) -> None:
    # 16000 x 16000 = 256 megapixels: over our limit, under twice Pillow's (raised) threshold.
    png = patch_png_size(encode(solid(40, 40), "PNG"), 16000, 16000)
    msg = load_error(write(tmp_path / "big.png", png))
    assert "too large" in msg and "16000 x 16000" in msg and "256 megapixels" in msg


def test_pillow_bomb_threshold_is_not_below_our_limit() -> None:
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= MAX_PIXELS


def test_programming_errors_are_not_image_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]
    path = write(tmp_path / "x.png", encode(quadrants(), "PNG"))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError):
            load_image(path, max_side=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# max_side
# --------------------------------------------------------------------------------------------------


def test_max_side_on_big_jpeg(tmp_path: Path) -> None:
    big = Image.new("RGB", (8000, 6000), RED)
    big.paste(BLUE, (4000, 0, 8000, 6000))
    path = write(tmp_path / "big.jpg", encode(big, "JPEG", quality=85))
    del big

    start = time.perf_counter()
    loaded = load_image(path, max_side=1024)
    elapsed = time.perf_counter() - start

    assert loaded.original_size == (8000, 6000)
    assert loaded.rgb.shape == (768, 1024, 3)
    assert max(loaded.rgb.shape[:2]) <= 1024
    assert_valid_rgb(loaded)
    assert close(loaded.rgb[384, 200], RED, 30) and close(loaded.rgb[384, 800], BLUE, 30)
    assert elapsed < 2.0, f"reduced decode took {elapsed:.2f} s"


def test_max_side_with_orientation_and_png(tmp_path: Path) -> None:
    data = encode(quadrants(400, 300), "JPEG", quality=95, exif=exif_with_orientation(6))
    loaded = load_image(write(tmp_path / "o6.jpg", data), max_side=100)
    assert loaded.original_size == (300, 400)
    assert loaded.rgb.shape == (100, 75, 3)
    assert_quadrants(loaded.rgb, {"tr": RED, "br": GREEN, "tl": BLUE}, tol=40)

    loaded = load_image(write(tmp_path / "q.png", encode(quadrants(400, 300), "PNG")), max_side=80)
    assert loaded.original_size == (400, 300)
    assert loaded.rgb.shape == (60, 80, 3)
    assert_quadrants(loaded.rgb, {"tl": RED, "tr": GREEN, "bl": BLUE, "br": WHITE}, tol=0)


def test_max_side_larger_than_image_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "q.png", encode(quadrants(), "PNG"))
    loaded = load_image(path, max_side=5000)
    np.testing.assert_array_equal(loaded.rgb, quadrants())
    assert loaded.notes == ()


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------


def test_thread_safe(tmp_path: Path) -> None:
    paths = []
    for i, fmt in enumerate(["PNG", "TIFF", "BMP", "WEBP"] * 3):
        img = np.roll(quadrants(64, 48), i, axis=1)
        kwargs = {"lossless": True} if fmt == "WEBP" else {}
        paths.append((write(tmp_path / f"{i}.{fmt.lower()}", encode(img, fmt, **kwargs)), img))
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda p: load_image(p[0]).rgb, paths * 3))
    for (_, img), rgb in zip(paths * 3, results, strict=True):
        np.testing.assert_array_equal(rgb, img)


# --------------------------------------------------------------------------------------------------
# PreprocessSpec
# --------------------------------------------------------------------------------------------------


def test_spec_defaults_and_dict_round_trip() -> None:
    spec = PreprocessSpec()
    assert (spec.height, spec.width, spec.resize, spec.dtype) == (224, 224, "stretch", "float32")
    assert spec.value_range == (0.0, 255.0)
    d = spec.to_dict()
    assert d["value_range"] == [0.0, 255.0]
    again = PreprocessSpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec

    custom = PreprocessSpec(height=96, width=128, resize="pad", value_range=(-1, 1))
    assert PreprocessSpec.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert PreprocessSpec.from_dict({"resize": "center_crop"}).resize == "center_crop"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resize": "foo"},
        {"height": 0},
        {"width": -3},
        {"height": 2.5},
        {"dtype": "int8"},
        {"value_range": (1.0, 0.0)},
        {"value_range": (0.0, float("nan"))},
        {"value_range": (0.0,)},
    ],
)
def test_invalid_spec(kwargs) -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)


def test_invalid_spec_dict() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({"height": 224, "colour": "yes"})
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({"value_range": [0, 1, 2]})


def test_spec_is_frozen() -> None:
    spec = PreprocessSpec()
    with pytest.raises(AttributeError):
        spec.height = 10  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# preprocess / resize_uint8 / batch_preprocess
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "pad"])
@pytest.mark.parametrize("shape", [(100, 200), (300, 120), (224, 224), (40, 50)])
def test_preprocess_shape_dtype_range_and_cache_equality(resize: str, shape) -> None:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    spec = PreprocessSpec(height=64, width=96, resize=resize)
    x = preprocess(rgb, spec)
    cached = resize_uint8(rgb, spec)
    assert x.shape == (64, 96, 3) and x.dtype == np.float32
    assert cached.shape == (64, 96, 3) and cached.dtype == np.uint8
    assert x.min() >= 0.0 and x.max() <= 255.0
    np.testing.assert_array_equal(x, cached.astype(np.float32))  # bit-exact, cache == live
    np.testing.assert_array_equal(preprocess(rgb, spec), x)  # deterministic


def test_preprocess_does_not_modify_input() -> None:
    rgb = quadrants(200, 100)
    before = rgb.copy()
    for resize in ("stretch", "center_crop", "pad"):
        preprocess(rgb, PreprocessSpec(resize=resize))
    np.testing.assert_array_equal(rgb, before)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 1.0)])
def test_value_range(low: float, high: float) -> None:
    rgb = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 64, 3))  # 256 x 64
    spec = PreprocessSpec(height=256, width=64, value_range=(low, high))
    x = preprocess(rgb, spec)
    assert x.dtype == np.float32
    assert x[0, 0, 0] == np.float32(low) and x[255, 0, 0] == np.float32(high)
    expected = resize_uint8(rgb, spec).astype(np.float64) * (high - low) / 255 + low
    np.testing.assert_array_equal(x, expected.astype(np.float32))


def test_stretch_geometry() -> None:
    rgb = left_right(200, 100, RED, BLUE)
    out = resize_uint8(rgb, PreprocessSpec(height=50, width=50, resize="stretch"))
    assert out[25, 5].tolist() == list(RED) and out[25, 45].tolist() == list(BLUE)
    assert out[0, 0].tolist() == list(RED) and out[49, 49].tolist() == list(BLUE)


def test_center_crop_geometry() -> None:
    # 200 x 100, left half red, right half blue; a square crop keeps x = 50..150, split mid-way.
    rgb = left_right(200, 100, RED, BLUE)
    out = resize_uint8(rgb, PreprocessSpec(height=100, width=100, resize="center_crop"))
    assert (out[:, :50] == RED).all() and (out[:, 50:] == BLUE).all()

    # Tall image: crop top and bottom. Rows 0..99 green, 100..199 red, 200..299 blue -> only red.
    tall = solid(100, 300, RED)
    tall[:100] = GREEN
    tall[200:] = BLUE
    out = resize_uint8(tall, PreprocessSpec(height=50, width=50, resize="center_crop"))
    assert (out == RED).all()


def test_pad_geometry() -> None:
    rgb = left_right(200, 100, RED, BLUE)
    out = resize_uint8(rgb, PreprocessSpec(height=100, width=100, resize="pad"))
    # Resized to 100 x 50 and centred: black bands of 25 rows above and below.
    assert (out[:25] == 0).all() and (out[75:] == 0).all()
    assert (out[25:75, :50] == RED).all() and (out[25:75, 50:] == BLUE).all()

    tall = solid(50, 100, GREEN)
    out = resize_uint8(tall, PreprocessSpec(height=100, width=100, resize="pad"))
    assert (out[:, :25] == 0).all() and (out[:, 75:] == 0).all()
    assert (out[:, 25:75] == GREEN).all()


def test_shrinking_uses_area_interpolation() -> None:
    # A 1-pixel checkerboard shrunk 3x: INTER_AREA averages (~113/142); INTER_LINEAR would sample
    # single pixels (0 or 255) and alias.
    board = ((np.indices((96, 96)).sum(axis=0) % 2) * 255).astype(np.uint8)
    rgb = np.repeat(board[:, :, None], 3, axis=2)
    out = resize_uint8(rgb, PreprocessSpec(height=32, width=32))
    assert out.min() >= 100 and out.max() <= 155
    np.testing.assert_array_equal(out, cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA))


def test_enlarging_uses_linear_interpolation() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = resize_uint8(rgb, PreprocessSpec(height=100, width=120))
    np.testing.assert_array_equal(out, cv2.resize(rgb, (120, 100), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_preprocess_rejects_bad_arrays(bad) -> None:
    with pytest.raises(ValueError):
        preprocess(bad, PreprocessSpec())
    with pytest.raises(ValueError):
        resize_uint8(bad, PreprocessSpec())


def test_batch_preprocess() -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 60), (80, 40)]]
    spec = PreprocessSpec(height=32, width=32, resize="center_crop")
    batch = batch_preprocess(images, spec)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.float32
    for i, img in enumerate(images):
        np.testing.assert_array_equal(batch[i], preprocess(img, spec))
    assert batch_preprocess([], spec).shape == (0, 32, 32, 3)


def test_loaded_image_feeds_preprocess(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jpg", encode(quadrants(300, 200), "JPEG", quality=95))
    x = preprocess(load_image(path).rgb, PreprocessSpec())
    assert x.shape == (224, 224, 3)
    assert close(x[50, 50], RED, 40) and close(x[170, 50], BLUE, 40)


# --------------------------------------------------------------------------------------------------
# Less common paths
# --------------------------------------------------------------------------------------------------


def test_max_side_uses_jpeg_draft_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    path = write(tmp_path / "q.jpg", encode(quadrants(1600, 1200), "JPEG", quality=90))
    loaded = load_image(path, max_side=200)
    assert calls == [("RGB", (200, 150))]
    assert loaded.rgb.shape == (150, 200, 3)
    assert_quadrants(loaded.rgb, {"tl": RED, "tr": GREEN, "bl": BLUE, "br": WHITE}, tol=40)
    calls.clear()
    load_image(path)  # no max_side: full decode, no draft
    assert calls == []


def test_cielab_tiff_is_colour_managed(tmp_path: Path) -> None:
    # sRGB red is L*=53, a*=80, b*=67; Pillow stores L scaled to 0..255 and a/b offset by 128.
    im = Image.new("LAB", (40, 40), (136, 208, 195))
    loaded = load_image(write(tmp_path / "lab.tif", encode(im, "TIFF")))
    assert loaded.source_mode == "LAB"
    assert close(loaded.rgb[0, 0], RED, 15)
    assert any("Lab" in n for n in loaded.notes)


def test_tiff_pillow_cannot_read_falls_back_to_opencv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise UnidentifiedImageError("cannot identify image file")

    path = tmp_path / "odd.tif"
    assert cv2.imwrite(str(path), cv2.cvtColor(quadrants(64, 48), cv2.COLOR_RGB2BGR))
    monkeypatch.setattr(Image, "open", refuse)
    loaded = load_image(path)
    assert loaded.source_mode == "RGB"
    np.testing.assert_array_equal(loaded.rgb, quadrants(64, 48))

    small = tmp_path / "small.tif"
    assert cv2.imwrite(str(small), np.zeros((8, 8, 3), np.uint8))
    assert "too small" in load_error(small)  # the size rules hold on this path too
    assert "damaged" in load_error(write(tmp_path / "junk.tif", b"II*\x00" + bytes(200)))


@pytest.mark.parametrize(
    ("array", "expected", "mode"),
    [
        (np.full((4, 4, 3), (10, 20, 30), np.uint8), (30, 20, 10), "RGB"),  # BGR in -> RGB out
        (np.full((4, 4, 4), (0, 0, 255, 0), np.uint8), (255, 255, 255), "RGBA"),
        (np.full((4, 4, 4), (0, 0, 255, 255), np.uint8), (255, 0, 0), "RGBA"),
        (np.full((4, 4), 32768, np.uint16), (128, 128, 128), "I;16"),
        (np.full((4, 4, 3), (0, 0, 65535), np.uint16), (255, 0, 0), "RGB;16"),
        (np.full((4, 4, 2), (77, 0), np.uint8), (255, 255, 255), "LA"),
        (np.full((4, 4, 1), 77, np.uint8), (77, 77, 77), "L"),
        (np.full((4, 4, 3), 0.5, np.float32), (128, 128, 128), "RGB;F"),
        (np.full((4, 4, 3), 300.0, np.float32), (255, 255, 255), "RGB;F"),
        (np.full((4, 4), np.nan, np.float32), (0, 0, 0), "F"),
    ],
)
def test_opencv_arrays_to_rgb(array: np.ndarray, expected, mode: str) -> None:
    notes: list[str] = []
    rgb = imaging._cv2_to_rgb(array, notes)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb[0, 0].tolist() == list(expected)
    assert imaging._cv2_source_mode(array) == mode


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(13, "Permission denied"), "permission denied"),
        (OSError(5, "Input/output error"), "could not be read (Input/output error)"),
    ],
)
def test_read_errors_are_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, words: str
) -> None:
    """Simulated, so it also runs as root (which can read mode-000 files)."""
    path = write(tmp_path / "locked.png", encode(quadrants(), "PNG"))

    def failing_open(*args, **kwargs):
        raise error

    monkeypatch.setattr(imaging, "open", failing_open, raising=False)
    msg = load_error(path)
    assert words in msg and "'locked.png'" in msg and str(tmp_path) not in msg


def test_16bit_packed_bmp_is_not_mistaken_for_16_bits_per_channel() -> None:
    """A 5-6-5 BMP has 16 bits per *pixel*: plain 8-bit colour, no 16-bit path, no note."""
    w, h = 40, 40
    row_data = np.full((h, w), 0xF800, "<u2").tobytes()  # pure red in 5-6-5
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(row_data), 2835, 2835, 0, 0)
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    offset = 14 + len(info) + len(masks)
    header = b"BM" + struct.pack("<IHHI", offset + len(row_data), 0, 0, offset)
    loaded = load_image(header + info + masks + row_data)
    assert loaded.source_mode == "RGB"
    assert loaded.rgb[0, 0].tolist() == list(RED)
    assert loaded.notes == ()
