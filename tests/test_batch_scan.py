"""Folder scan of the batch review: which files are analysed, and every other one listed once.

``make_zoo`` (also used by the pipeline and CLI tests) builds a folder of good images and every
kind of bad file a clinic folder holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from desktop_app.core.batch.scan import ScanError, scan_folder
from tests import image_factory as imf

# name -> expected outcome of a batch run ("ok" or "error"), for the files the scan takes.
ZOO_IMAGES: dict[str, str] = {
    "good_01.jpg": "ok",
    "good_02.JPG": "ok",
    "good_03.Jpeg": "ok",
    "good_04.png": "ok",
    "good_05.tif": "ok",
    "cmyk.jpg": "ok",
    "grey16.png": "ok",
    "rgb16.png": "ok",
    "alpha.png": "ok",
    "big.jpg": "ok",  # 3000 x 2200: decoded at reduced size, like everywhere else
    "corrupt.jpg": "error",
    "zero.jpg": "error",
    "text.jpg": "error",
    "truncated.jpg": "error",
    "tiny.png": "error",
    "huge.png": "error",  # claims 20000 x 20000 pixels
    "nested/inner.jpg": "ok",
}
ZOO_SKIPPED_FLAT = {"._good_01.jpg", ".hidden.jpg", "notes.txt", "photo.heic", "nested"}
ZOO_SKIPPED_RECURSIVE = {"._good_01.jpg", ".hidden.jpg", "notes.txt", "photo.heic"}


def lesion(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth random RGB image with a dark blob (distinct per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 230, (max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (min(width, height) / 6) ** 2))
    return np.clip(img * (1 - 0.6 * blob[..., None]), 0, 255).astype(np.uint8)


def write_good_images(folder: Path, count: int, start: int = 0, fmt: str = "jpg") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + count):
        name = f"img_{i:04d}.{fmt}"
        encoded = imf.encode(lesion(i), "JPEG" if fmt == "jpg" else "PNG")
        (folder / name).write_bytes(encoded)
        names.append(name)
    return names


def make_zoo(folder: Path) -> Path:
    """Good images in several formats and suffix spellings, and a zoo of bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["good_01.jpg", "good_02.JPG", "good_03.Jpeg"]):
        imf.write(folder / name, imf.encode(lesion(i), "JPEG"))
    imf.write(folder / "good_04.png", imf.encode(lesion(4), "PNG"))
    imf.write(folder / "good_05.tif", imf.encode(lesion(5), "TIFF"))
    imf.write(folder / "cmyk.jpg", imf.encode(Image.fromarray(lesion(6)).convert("CMYK"), "JPEG"))
    grey16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    imf.write(folder / "grey16.png", imf.encode(Image.fromarray(grey16), "PNG"))
    rgb16 = lesion(7).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])
    assert ok
    imf.write(folder / "rgb16.png", buf.tobytes())
    rgba = np.dstack([lesion(8), np.full((48, 64), 128, np.uint8)])
    imf.write(folder / "alpha.png", imf.encode(rgba, "PNG"))
    imf.write(folder / "big.jpg", imf.encode(lesion(9, 3000, 2200), "JPEG", quality=70))
    good = imf.encode(lesion(10), "JPEG")
    imf.write(folder / "corrupt.jpg", good[:4] + os.urandom(600))
    imf.write(folder / "zero.jpg", b"")
    imf.write(folder / "text.jpg", b"Patient list\nthis is not an image\n")
    imf.write(folder / "truncated.jpg", imf.encode(lesion(11, 400, 300), "JPEG")[:900])
    imf.write(folder / "tiny.png", imf.encode(lesion(12, 10, 10), "PNG"))
    imf.write(folder / "huge.png", imf.patch_png_size(imf.encode(lesion(13), "PNG"), 20000, 20000))
    imf.write(folder / "._good_01.jpg", b"\x00\x05\x16\x07" + b"\x00" * 60)  # AppleDouble
    imf.write(folder / ".hidden.jpg", imf.encode(lesion(14), "JPEG"))
    imf.write(folder / "notes.txt", b"clinic notes")
    imf.write(folder / "photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    nested = folder / "nested"
    nested.mkdir(exist_ok=True)
    imf.write(nested / "inner.jpg", imf.encode(lesion(15), "JPEG"))
    return folder


def test_flat_scan_accounts_for_every_entry_once(tmp_path: Path) -> None:
    root = make_zoo(tmp_path / "zoo")
    scan = scan_folder(root)
    flat = {k for k in ZOO_IMAGES if "/" not in k}
    assert set(scan.images) == flat
    skipped = dict(scan.skipped)
    assert set(skipped) == ZOO_SKIPPED_FLAT
    assert len(scan.images) + len(scan.skipped) == len(os.listdir(root)) == scan.total
    assert "resource" in skipped["._good_01.jpg"]
    assert "hidden" in skipped[".hidden.jpg"]
    assert "HEIC" in skipped["photo.heic"]
    assert "recursive" in skipped["nested"]
    assert "'.txt'" in skipped["notes.txt"]


def test_recursive_scan_enters_sub_folders(tmp_path: Path) -> None:
    root = make_zoo(tmp_path / "zoo")
    scan = scan_folder(root, recursive=True)
    assert set(scan.images) == set(ZOO_IMAGES)
    assert {p for p, _ in scan.skipped} == ZOO_SKIPPED_RECURSIVE


def test_order_is_stable_and_case_insensitive(tmp_path: Path) -> None:
    root = tmp_path / "f"
    root.mkdir()
    for name in ["b.jpg", "A.jpg", "a.png", "C.PNG", "sub/x.jpg", "Sub2/y.jpg"]:
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(b"x")
    scan = scan_folder(root, recursive=True)
    assert scan.images == ["A.jpg", "a.png", "b.jpg", "C.PNG", "sub/x.jpg", "Sub2/y.jpg"]
    assert scan_folder(root, recursive=True) == scan


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlink_loops_are_not_followed_twice(tmp_path: Path) -> None:
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    os.symlink(root, root / "a" / "loop")  # a/loop -> the root itself
    os.symlink(root / "a", root / "again")  # a second way into a/
    os.symlink(root / "missing.jpg", root / "broken.jpg")
    os.symlink(root / "a" / "x.jpg", root / "link.jpg")  # a link to a file is a file
    scan = scan_folder(root, recursive=True)
    skipped = dict(scan.skipped)
    assert scan.images == ["a/x.jpg", "link.jpg"]
    assert "already scanned" in skipped["a/loop"]
    assert "already scanned" in skipped["again"]
    assert "broken" in skipped["broken.jpg"]


def test_excluded_output_folder_is_left_out_silently(tmp_path: Path) -> None:
    root = tmp_path / "f"
    out = root / "lesionlens-batch"
    out.mkdir(parents=True)
    (out / "results.csv").write_text("x")
    (root / "a.jpg").write_bytes(b"x")
    assert scan_folder(root, recursive=True, exclude=[out]).total == 1
    assert scan_folder(root, exclude=[out]).skipped == []


def test_missing_folder_and_file_are_readable_errors(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="not found"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ScanError, match="not a folder"):
        scan_folder(tmp_path / "file.jpg")


def test_empty_folder(tmp_path: Path) -> None:
    scan = scan_folder(tmp_path)
    assert scan.images == [] and scan.skipped == [] and scan.total == 0
