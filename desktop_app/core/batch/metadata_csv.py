"""A spreadsheet of patient metadata joined to the images of a batch.

The CSV needs one column naming the image (``image``, ``image_id``, ``isic_id``, ``file``,
``filename``, ``file_name``, ``image_name``; any case), and any of the metadata columns of the
shared contract (:func:`desktop_app.core.metadata.metadata_from_row`): ISIC ``age_approx``, ``sex``,
``anatom_site_general`` or HAM10000 ``age``, ``sex``, ``localization``. Comma, semicolon (European
spreadsheets) and tab separators are recognised; UTF-8 (with or without the Excel byte-order mark)
and, failing that, Windows-1252 text.

Join: a row's image value is compared with each image's relative path, then its file name, then
its stem (the name without the suffix), case-insensitively: ``ISIC_0024306`` and
``ISIC_0024306.jpg`` both find ``ISIC_0024306.JPG``. Everything that does not join cleanly is a
*problem* (readable, with the spreadsheet row number, the header being row 1) and never stops the
batch; the images concerned run with metadata unknown:

* a row whose image is not in the folder (the first few listed, then a count);
* a row with an invalid value (the field and why); its image gets metadata unknown;
* two rows that say different things about one image; that image gets metadata unknown;
* a value that matches several images (a stem shared by ``x.jpg`` and ``x.png``, a name in two
  sub-folders): not applied;
* images with no row (a count, the first few names).

A file that cannot be used at all (missing, unreadable, no image column) raises
:class:`~desktop_app.core.errors.MetadataError` (field ``"csv"``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from desktop_app.core.errors import MetadataError
from desktop_app.core.metadata import PatientMetadata, metadata_from_row

__all__ = ["JOIN_COLUMNS", "MetadataTable", "load_metadata_csv"]

JOIN_COLUMNS = ("image", "image_id", "isic_id", "file", "filename", "file_name", "image_name")
_LISTED = 10  # unmatched rows / rowless images named one by one before a count


def _norm_key(value: str) -> str:
    text = str(value).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text.casefold()


def _image_keys(relative_path: str) -> tuple[str, str, str]:
    p = PurePosixPath(relative_path)
    return _norm_key(relative_path), _norm_key(p.name), _norm_key(p.stem)


@dataclass(frozen=True)
class MetadataTable:
    """The metadata of a batch, joined to its images. ``problems``: readable lines (row number,
    field) for everything that did not join cleanly. ``entries`` (relative path -> metadata) holds
    the images that joined with valid values; ``matched`` counts them."""

    source: Path
    problems: list[str]
    entries: Mapping[str, PatientMetadata] = field(default_factory=dict, repr=False)
    _by_key: Mapping[str, PatientMetadata | None] = field(default_factory=dict, repr=False)

    @property
    def matched(self) -> int:
        return len(self.entries)

    def lookup(self, relative_path: str) -> PatientMetadata | None:
        """The metadata for an image (None = unknown): by the relative path given at load time,
        else by file name, then stem."""
        if relative_path in self.entries:
            return self.entries[relative_path]
        for key in _image_keys(relative_path):
            if key in self._by_key:
                return self._by_key[key]
        return None


def _read_text(path: Path) -> str:
    name = path.name
    if path.is_dir():
        raise MetadataError("csv", f"'{name}' is a folder, not a metadata spreadsheet (CSV).")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetadataError("csv", f"The metadata file '{name}' was not found.") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MetadataError(
            "csv", f"The metadata file '{name}' could not be read ({reason})."
        ) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    first = text.splitlines()[0] if text else ""
    counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=lambda s: counts[s])
    if counts[sep] == 0:
        return csv.excel
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=sep)
    except csv.Error:

        class _Fallback(csv.excel):
            delimiter = sep

        return _Fallback


def load_metadata_csv(path: str | os.PathLike[str], image_paths: Sequence[str]) -> MetadataTable:
    """Read the CSV at ``path`` and join it to ``image_paths`` (relative POSIX paths of the batch).
    Raises MetadataError for a file that cannot be used at all; everything else is a problem."""
    source = Path(path)
    text = _read_text(source)
    name = source.name
    try:
        reader = csv.reader(io.StringIO(text, newline=""), _dialect(text))
        rows = list(reader)
    except csv.Error as exc:
        raise MetadataError(
            "csv", f"The metadata file '{name}' is not a valid CSV ({exc})."
        ) from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise MetadataError("csv", f"The metadata file '{name}' is empty.")
    header = [cell.strip().lower() for cell in rows[0]]
    join = next((c for c in JOIN_COLUMNS if c in header), None)
    if join is None:
        raise MetadataError(
            "csv",
            f"The metadata file '{name}' has no column naming the image; name one of its columns "
            f"{', '.join(JOIN_COLUMNS)}.",
        )
    join_at = header.index(join)

    # Image lookup keys: relative path, file name, stem (each may point to several images).
    by_key: dict[str, list[str]] = {}
    for rel in image_paths:
        for key in dict.fromkeys(_image_keys(rel)):
            by_key.setdefault(key, []).append(rel)

    problems: list[str] = []
    unmatched: list[str] = []
    assigned: dict[str, tuple[int, PatientMetadata | None]] = {}
    conflicted: set[str] = set()
    for number, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        value = cells[join_at].strip() if join_at < len(cells) else ""
        if not value:
            problems.append(f"row {number}: no image named in column '{join}'; row ignored")
            continue
        key = _norm_key(value)
        targets = by_key.get(key)
        if not targets:
            unmatched.append(f"row {number}: '{value}' matches no image in the folder")
            continue
        if len(targets) > 1:
            problems.append(
                f"row {number}: '{value}' matches {len(targets)} images "
                f"({', '.join(targets[:3])}{', ...' if len(targets) > 3 else ''}); not applied, "
                "those images run with metadata unknown"
            )
            continue
        record = dict(zip(header, cells, strict=False))
        try:
            meta: PatientMetadata | None = metadata_from_row(record)
        except MetadataError as exc:
            problems.append(
                f"row {number} ('{value}'): invalid {exc.field}: {exc} "
                "The image runs with metadata unknown."
            )
            meta = None
        rel = targets[0]
        if rel in assigned:
            first_row, first_meta = assigned[rel]
            if first_meta != meta and rel not in conflicted:
                problems.append(
                    f"rows {first_row} and {number} say different things about '{rel}'; "
                    "it runs with metadata unknown"
                )
                conflicted.add(rel)
            continue
        assigned[rel] = (number, meta)

    if unmatched:
        problems.extend(unmatched[:_LISTED])
        if len(unmatched) > _LISTED:
            problems.append(
                f"... and {len(unmatched) - _LISTED} more rows that match no image in the folder"
            )
    rowless = [rel for rel in image_paths if rel not in assigned]
    if rowless:
        shown = ", ".join(rowless[:_LISTED]) + (", ..." if len(rowless) > _LISTED else "")
        problems.append(
            f"{len(rowless)} of {len(image_paths)} images have no row in '{name}' and run with "
            f"metadata unknown: {shown}"
        )
    entries = {
        rel: meta
        for rel, (_, meta) in assigned.items()
        if meta is not None and rel not in conflicted
    }
    # For lookups by another spelling of a joined image: only keys naming exactly one image.
    unique = {key: entries.get(rels[0]) for key, rels in by_key.items() if len(rels) == 1}
    return MetadataTable(source=source, problems=problems, entries=entries, _by_key=unique)
