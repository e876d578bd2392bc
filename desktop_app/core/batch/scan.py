"""Which files of a folder a batch review analyses, and why every other file is left out.

Every entry of the folder is accounted for exactly once: it is either in ``images`` (to be decoded;
a file that turns out to be unreadable becomes an error row later) or in ``skipped`` with a reason a
clinician can read. Rules:

* Images are chosen by file name suffix (:data:`desktop_app.core.imaging.SUPPORTED_SUFFIXES`, in any
  case: ``.JPG``, ``.Jpeg``...). Decoding goes by content later, so a text file named ``.jpg`` is an
  image here and an error row in the results.
* Hidden files and folders (name starting with ".") are skipped, macOS ``._`` resource-fork files
  with their own reason; so are files of other types (a known unsupported image type such as HEIC
  says what to do), things that are not regular files, broken links and names that are not valid
  text.
* Sub-folders are entered only with ``recursive=True`` (otherwise listed as skipped). Symbolic links
  are followed, but a folder is entered once: real folders are walked first, then linked ones, and
  a link to a folder already visited (a loop, or a second way in) is listed as skipped.
* ``exclude``: folders left out silently (the batch's own output folder when it sits inside).
* Order: paths are POSIX-style, relative to the root, sorted case-insensitively (ties by the exact
  name), so the same folder gives the same order on every operating system.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from desktop_app.core.errors import LesionLensError
from desktop_app.core.imaging import SUPPORTED_SUFFIXES

__all__ = ["ScanError", "ScanResult", "scan_folder", "sort_key"]

# Image types a clinician may well have in the folder, which LesionLens does not read: say why.
_UNSUPPORTED = {
    ".heic": "HEIC/HEIF photo (the iPhone default), not supported: export it as JPEG first",
    ".heif": "HEIC/HEIF photo, not supported: export it as JPEG first",
    ".avif": "AVIF image, not supported: export it as JPEG or PNG first",
    ".gif": "GIF image (at most 256 colours), not supported",
    ".dcm": "DICOM file, not supported: export the image from your viewer as PNG or TIFF first",
    ".jp2": "JPEG 2000 image, not supported",
    ".raw": "camera RAW file, not supported: export it as JPEG or TIFF first",
    ".dng": "camera RAW file, not supported: export it as JPEG or TIFF first",
    ".cr2": "camera RAW file, not supported: export it as JPEG or TIFF first",
    ".nef": "camera RAW file, not supported: export it as JPEG or TIFF first",
}


class ScanError(LesionLensError):
    """The folder itself cannot be scanned (missing, not a folder, not readable)."""


@dataclass(frozen=True)
class ScanResult:
    """``images``: POSIX paths relative to ``root``, in a stable sorted order. ``skipped``:
    (relative path, reason) for every other entry, in the same order."""

    root: Path
    images: list[str]
    skipped: list[tuple[str, str]]

    @property
    def total(self) -> int:
        """Every entry accounted for: images plus skipped."""
        return len(self.images) + len(self.skipped)


def sort_key(relative_path: str) -> tuple[str, str]:
    """The order of a scan: case-insensitive, ties broken by the exact text."""
    return relative_path.casefold(), relative_path


def _valid_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a POSIX file name (surrogate escapes)
        return False
    return True


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def scan_folder(
    root: str | os.PathLike[str],
    recursive: bool = False,
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> ScanResult:
    """List the images of ``root`` (and of its sub-folders when ``recursive``), and every other
    entry with the reason it is skipped. Raises :class:`ScanError` when ``root`` is not a readable
    folder."""
    base = Path(root)
    if not base.exists():
        raise ScanError(f"The folder '{base.name or base}' was not found.")
    if not base.is_dir():
        raise ScanError(f"'{base.name or base}' is not a folder.")
    excluded = {fid for fid in (_folder_id(os.fspath(p)) for p in exclude) if fid is not None}
    images: list[str] = []
    skipped: list[tuple[str, str]] = []
    root_id = _folder_id(os.fspath(base))
    visited: set[tuple[int, int]] = {root_id} if root_id else set()

    def walk(folder: str, prefix: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if not prefix:
                reason = exc.strerror or type(exc).__name__
                raise ScanError(
                    f"The folder '{base.name or base}' could not be read ({reason})."
                ) from None
            skipped.append((prefix.rstrip("/"), "folder could not be read"))
            return
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if not _valid_text(name):
                skipped.append((rel, "file name is not valid text (rename the file)"))
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                skipped.append((rel, "broken link or unreadable entry"))
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and (st.st_dev, st.st_ino) in excluded:
                continue  # our own output folder
            if name.startswith("._"):
                skipped.append((rel, "macOS resource file (._), not an image"))
                continue
            if name.startswith("."):
                skipped.append((rel, "hidden folder" if is_dir else "hidden file"))
                continue
            if is_dir:
                if not recursive:
                    skipped.append((rel, "folder (not scanned: recursive is off)"))
                elif entry.is_symlink():
                    links.append((os.path.join(folder, name), rel, (st.st_dev, st.st_ino)))
                else:
                    visited.add((st.st_dev, st.st_ino))
                    walk(os.path.join(folder, name), rel + "/")
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append((rel, "not a regular file"))
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in SUPPORTED_SUFFIXES:
                images.append(rel)
            elif suffix in _UNSUPPORTED:
                skipped.append((rel, _UNSUPPORTED[suffix]))
            else:
                kind = f"'{suffix}' file" if suffix else "file without a type suffix"
                skipped.append((rel, f"not an image ({kind})"))

    # Real folders first, linked ones after: a folder reachable both ways is listed under its
    # real path, whatever the names; a link to a folder already scanned (a loop) is skipped.
    links: list[tuple[str, str, tuple[int, int]]] = []
    walk(os.fspath(base), "")
    while links:
        links.sort(key=lambda item: sort_key(item[1]))
        path, rel, key = links.pop(0)
        if key in visited:
            skipped.append((rel, "link to a folder already scanned (not scanned twice)"))
            continue
        visited.add(key)
        walk(path, rel + "/")
    images.sort(key=sort_key)
    skipped.sort(key=lambda item: sort_key(item[0]))
    return ScanResult(root=base, images=images, skipped=skipped)
