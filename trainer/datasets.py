"""Read public dermoscopy data sets into one table, and say exactly what was kept, skipped and why.

Four layouts are understood (``read_dataset(path, fmt="auto")`` picks one by the files present):

``ham10000``
    ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type, age, sex, localization) and the
    JPEGs in ``images/``, ``HAM10000_images_part_1/`` + ``HAM10000_images_part_2/`` or the root.
``isic2019``
    ``ISIC_2019_Training_GroundTruth.csv`` (one-hot: image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC,
    UNK), optionally ``ISIC_2019_Training_Metadata.csv`` (image, age_approx, anatom_site_general,
    lesion_id, sex), images in ``ISIC_2019_Training_Input/`` or the root.
``isic-archive``
    What ``isic-cli image download`` writes: ``{isic_id}.jpg`` files next to ``metadata.csv``
    (isic_id, attribution, copyright_license, then the clinical fields). The diagnosis is either the
    hierarchical ``diagnosis_1`` .. ``diagnosis_5`` columns or, in older exports, a legacy
    ``diagnosis`` column; both are mapped to our codes by :data:`ISIC_HIERARCHY_MAP` and
    :data:`ISIC_LEGACY_MAP` below.
``folders``
    One sub-folder per class (``MEL/``, ``melanoma/``, ``akiec/``...), no metadata.

Every row of the source is accounted for: it is either in the table or counted in the
:class:`ReadReport` (missing image, unknown label, bad row, dropped on purpose, duplicate). Invalid
*metadata* (an age of "abc") does not cost the image: the field becomes unknown and the row is
listed under ``metadata_issues``. The label is what matters: a row without a usable label is dropped
and reported.

The table's columns are :data:`COLUMNS` (see docs/trainer-internals.md).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from desktop_app.core import classes as cls_catalog
from desktop_app.core.atomic import atomic_save_json
from desktop_app.core.errors import DatasetError, MetadataError
from desktop_app.core.metadata import (
    UNKNOWN,
    MetadataEncoding,
    PatientMetadata,
    parse_age,
    parse_sex,
    site_from_ham10000,
    site_from_isic,
)

COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "label",
    "lesion_id",
    "patient_id",
    "age",
    "sex",
    "site",
    "source",
)
FORMATS: tuple[str, ...] = ("ham10000", "isic2019", "isic-archive", "folders")

HAM_CSV = "HAM10000_metadata.csv"
HAM_IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", ".")
ISIC2019_GT_CSV = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META_CSV = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGE_DIRS = (
    "ISIC_2019_Training_Input",
    "ISIC_2019_Training_Input/ISIC_2019_Training_Input",  # how the official zip unpacks twice
    "images",
    ".",
)
ISIC2019_UNK = "UNK"
ISIC_ARCHIVE_CSV = "metadata.csv"
ISIC_ARCHIVE_IMAGE_DIRS = (".", "images")
DOWNSAMPLED_SUFFIX = "_downsampled"

try:  # the colleague's module decides which suffixes count as images
    from desktop_app.core.imaging import SUPPORTED_SUFFIXES as _SUFFIXES
except ImportError:  # pragma: no cover - only while imaging.py is being written
    _SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
IMAGE_SUFFIXES: frozenset[str] = frozenset(s.lower() for s in _SUFFIXES)


# --------------------------------------------------------------------------------------------------
# ISIC archive diagnosis mapping
# --------------------------------------------------------------------------------------------------
# The ISIC archive's hierarchical diagnosis (isic_metadata.diagnosis_hierarchical.DiagnosisEnum) is
# a path "level1:level2:level3[:level4[:level5]]". A path maps to the code of the LONGEST prefix
# listed here; a path under none of them is an unknown label (reported with its text, never
# guessed).
#
# Decisions (the eight ISIC 2019 classes, as the challenge defined them):
# - MEL: the whole "Malignant melanocytic proliferations (Melanoma)" branch: invasive, in situ, NOS
#   and melanoma metastasis (isic_metadata's own is_melanoma() counts this whole branch too).
# - NV: "Benign melanocytic proliferations:Nevus" and all its sub-types (Spitz, blue, congenital,
#   dysplastic/Clark...). Other benign melanocytic entries (lentigo simplex, dermal melanocytosis,
#   pigmented epithelioid melanocytoma...) are NOT nevi and stay unknown; so do the "Indeterminate
#   melanocytic proliferations" (atypical Spitz tumour, MELTUMP, AIMP...).
# - BCC: "Basal cell carcinoma" and its sub-types.
# - AK: "Solar or actinic keratosis" (+ sub-types, Bowenoid AK included), "Solar or actinic
#   cheilitis" (actinic keratosis of the lip), AND "Squamous cell carcinoma in situ" (+ "Bowens
#   disease"). Rationale: our AK class is HAM10000's "akiec" = actinic keratoses AND
#   intraepithelial carcinoma (Bowen's disease), which is also what ISIC 2019's AK class contains
#   (its AK images come from HAM10000's akiec); desktop_app.core.classes lists "bowen" as an AK
#   alias. ISIC 2019's SCC class holds invasive SCC, so:
# - SCC: "Squamous cell carcinoma, Invasive" (+ sub-types), "Squamous cell carcinoma, NOS" and
#   "Keratoacanthoma" (a well-differentiated SCC variant per WHO; ISIC lists a keratoacanthoma-type
#   invasive SCC). Bowenoid papulosis and verrucous carcinoma stay unknown.
# - BKL: seborrheic keratosis, solar lentigo, lichen planus-like keratosis and "pigmented benign
#   keratosis" (ISIC 2019's BKL definition). Other benign epidermal proliferations stay unknown.
# - DF: "Dermatofibroma" and sub-types (not dermatofibrosarcoma, which is malignant).
# - VASC: what ISIC 2019's VASC contains: angiomas (the "Hemangioma" entries), angiokeratoma,
#   pyogenic granuloma and haemorrhage. Other vascular entries (venous lake, telangiectasia, glomus
#   tumour, nevus anemicus, malignant vascular tumours...) stay unknown.
_B = "Benign"
_BE = "Benign:Benign epidermal proliferations"
_BV = "Benign:Benign soft tissue proliferations - Vascular"
_ME = "Malignant:Malignant epidermal proliferations"
_MA = "Malignant:Malignant adnexal epithelial proliferations - Follicular"
ISIC_HIERARCHY_MAP: dict[str, str] = {
    "Malignant:Malignant melanocytic proliferations (Melanoma)": "MEL",
    f"{_B}:Benign melanocytic proliferations:Nevus": "NV",
    f"{_MA}:Basal cell carcinoma": "BCC",
    "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis": "AK",
    "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic cheilitis": "AK",
    f"{_ME}:Squamous cell carcinoma in situ": "AK",
    f"{_ME}:Squamous cell carcinoma, Invasive": "SCC",
    f"{_ME}:Squamous cell carcinoma, NOS": "SCC",
    f"{_ME}:Keratoacanthoma": "SCC",
    f"{_BE}:Seborrheic keratosis": "BKL",
    f"{_BE}:Solar lentigo": "BKL",
    f"{_BE}:Lichen planus like keratosis": "BKL",
    f"{_BE}:Pigmented benign keratosis": "BKL",
    f"{_B}:Benign soft tissue proliferations - Fibro-histiocytic:Dermatofibroma": "DF",
    f"{_BV}:Hemangioma": "VASC",
    f"{_BV}:Acquired elastotic hemangioma": "VASC",
    f"{_BV}:Glomeruloid hemangioma": "VASC",
    f"{_BV}:Verrucous hemangioma": "VASC",
    f"{_BV}:Angiokeratoma": "VASC",
    f"{_BV}:Pyogenic granuloma": "VASC",
    f"{_B}:Hemorrhagic lesions": "VASC",
}

# Legacy ``diagnosis`` values (isic_metadata.fields.LegacyDxEnum). Same decisions as above;
# everything else (AIMP, lentigo NOS/simplex, atypical melanocytic proliferation, merkel cell
# carcinoma, "other", ...) is an unknown label.
ISIC_LEGACY_MAP: dict[str, str] = {
    "melanoma": "MEL",
    "melanoma metastasis": "MEL",
    "nevus": "NV",
    "basal cell carcinoma": "BCC",
    "actinic keratosis": "AK",
    "squamous cell carcinoma": "SCC",
    "seborrheic keratosis": "BKL",
    "solar lentigo": "BKL",
    "lichenoid keratosis": "BKL",
    "pigmented benign keratosis": "BKL",
    "dermatofibroma": "DF",
    "angioma": "VASC",
    "angiokeratoma": "VASC",
    "pyogenic granuloma": "VASC",
    "vascular lesion": "VASC",
}


def _norm_dx(text: str) -> str:
    """Case- and spacing-insensitive form of a diagnosis path (levels joined by ':')."""
    parts = [re.sub(r"\s+", " ", p).strip().lower() for p in str(text).split(":")]
    return ":".join(p for p in parts if p)


_HIERARCHY_NORM = {_norm_dx(k): v for k, v in ISIC_HIERARCHY_MAP.items()}
_LEGACY_NORM = {_norm_dx(k): v for k, v in ISIC_LEGACY_MAP.items()}


def isic_diagnosis_to_code(path: str) -> str | None:
    """Map an ISIC hierarchical diagnosis path (or a legacy ``diagnosis`` value) to our code.

    Returns None when the diagnosis is not one of our classes (the caller reports it as unknown).
    """
    key = _norm_dx(path)
    if not key:
        return None
    if ":" not in key and key in _LEGACY_NORM:
        return _LEGACY_NORM[key]
    parts = key.split(":")
    for n in range(len(parts), 0, -1):
        code = _HIERARCHY_NORM.get(":".join(parts[:n]))
        if code is not None:
            return code
    return None


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclass
class RowIssue:
    """One row that was dropped (or kept with a field set to unknown), and why.

    ``row`` is the line number in the CSV file (the header is line 1), or the running number of the
    file for the class-folder reader.
    """

    row: int
    image_id: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "image_id": self.image_id, "reason": self.reason}

    def __str__(self) -> str:
        who = f" ({self.image_id})" if self.image_id else ""
        return f"row {self.row}{who}: {self.reason}"


@dataclass
class ReadReport:
    """What a reader found. ``rows_read`` always equals ``images_found`` plus everything skipped."""

    source: str
    fmt: str
    root: str = ""
    rows_read: int = 0
    images_found: int = 0
    missing_images: list[str] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    bad_rows: list[RowIssue] = field(default_factory=list)
    metadata_issues: list[RowIssue] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: list[RowIssue] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- bookkeeping used by the readers ------------------------------------------------------
    def unknown(self, text: str, n: int = 1) -> None:
        key = str(text) if str(text).strip() else "(empty)"
        self.unknown_labels[key] = self.unknown_labels.get(key, 0) + n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    @property
    def n_skipped(self) -> int:
        return (
            len(self.missing_images)
            + sum(self.unknown_labels.values())
            + len(self.bad_rows)
            + sum(self.dropped.values())
            + len(self.duplicates)
        )

    def check_accounting(self) -> None:
        """Every row read is either kept or counted; a mismatch is a bug in a reader."""
        if self.rows_read != self.images_found + self.n_skipped:
            raise AssertionError(
                f"{self.source}: {self.rows_read} rows read but {self.images_found} kept + "
                f"{self.n_skipped} skipped"
            )

    # -- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.fmt,
            "root": self.root,
            "rows_read": self.rows_read,
            "images_found": self.images_found,
            "skipped": self.n_skipped,
            "missing_images": list(self.missing_images),
            "unknown_labels": dict(self.unknown_labels),
            "bad_rows": [r.to_dict() for r in self.bad_rows],
            "metadata_issues": [r.to_dict() for r in self.metadata_issues],
            "dropped": dict(self.dropped),
            "duplicates": [r.to_dict() for r in self.duplicates],
            "class_counts": dict(self.class_counts),
            "notes": list(self.notes),
        }

    def summary(self, max_items: int = 5) -> str:
        def more(n: int) -> str:
            return f"    ... and {n - max_items} more" if n > max_items else ""

        lines = [
            f"Data set: {self.source} (format {self.fmt}) at {self.root}",
            f"  rows read: {self.rows_read}",
            f"  images kept: {self.images_found}",
            f"  skipped: {self.n_skipped}",
        ]
        if self.missing_images:
            lines.append(f"  image file not found: {len(self.missing_images)}")
            lines += [f"    {i}" for i in self.missing_images[:max_items]]
            lines.append(more(len(self.missing_images)))
        if self.unknown_labels:
            n = sum(self.unknown_labels.values())
            lines.append(f"  label not one of our classes: {n}")
            for text, k in sorted(self.unknown_labels.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {k} x {text!r}")
        if self.bad_rows:
            lines.append(f"  unusable rows: {len(self.bad_rows)}")
            lines += [f"    {r}" for r in self.bad_rows[:max_items]]
            lines.append(more(len(self.bad_rows)))
        for reason, k in sorted(self.dropped.items()):
            lines.append(f"  dropped on purpose: {k} x {reason}")
        if self.duplicates:
            lines.append(f"  duplicate image ids (first kept): {len(self.duplicates)}")
            lines += [f"    {r}" for r in self.duplicates[:max_items]]
            lines.append(more(len(self.duplicates)))
        if self.metadata_issues:
            lines.append(
                f"  invalid metadata (image kept, field set to unknown): "
                f"{len(self.metadata_issues)}"
            )
            lines += [f"    {r}" for r in self.metadata_issues[:max_items]]
            lines.append(more(len(self.metadata_issues)))
        if self.class_counts:
            lines.append("  images per class:")
            for code, k in self.class_counts.items():
                lines.append(f"    {code:5s} {k}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(line for line in lines if line)


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.startswith("._")
        and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
    )


def _index_images(root: Path, subdirs: Iterable[str]) -> dict[str, str]:
    """Map file stem -> absolute path for the image files directly inside ``root/subdir``.

    The first folder listed wins when a stem occurs twice.
    """
    index: dict[str, str] = {}
    for sub in subdirs:
        folder = (root / sub) if sub != "." else root
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            entries = sorted(
                (e for e in it if e.is_file() and _is_image_name(e.name)), key=lambda e: e.name
            )
        for e in entries:
            index.setdefault(os.path.splitext(e.name)[0], os.path.abspath(e.path))
    return index


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as text, every cell a str ('' where empty), header names stripped."""
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"Could not read {path.name}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def _require_columns(df: pd.DataFrame, needed: Iterable[str], file: Path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{file.name} lacks the column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, df.columns))}."
        )


def _row_metadata(
    age: Any, sex: Any, site: Any, site_parser, report: ReadReport, row: int, image_id: str
) -> tuple[float, str, str]:
    """Parse each field on its own; an invalid one becomes unknown and the row is reported."""
    problems: list[str] = []

    def parsed(parser, value: Any, fallback: Any) -> Any:
        try:
            return parser(value)
        except MetadataError as exc:
            problems.append(str(exc))
            return fallback

    age_v = parsed(parse_age, age, None)
    sex_v = parsed(parse_sex, sex, UNKNOWN)
    site_v = parsed(site_parser, site, UNKNOWN)
    if problems:
        report.metadata_issues.append(RowIssue(row, image_id, " ".join(problems)))
    return (math.nan if age_v is None else float(age_v)), sex_v, site_v


class _TableBuilder:
    """Collects rows, drops duplicate image ids (first kept) and fills the report's counts."""

    def __init__(self, report: ReadReport) -> None:
        self.report = report
        self.rows: list[dict[str, Any]] = []
        self.first_row: dict[str, tuple[int, str]] = {}

    def seen(self, image_id: str, row: int, label_text: str = "") -> bool:
        """True (and reported) if ``image_id`` already appeared; else remember it."""
        if image_id in self.first_row:
            first, first_label = self.first_row[image_id]
            extra = ""
            if label_text and first_label and label_text != first_label:
                extra = f" with a different label ({label_text!r} vs {first_label!r})"
            self.report.duplicates.append(
                RowIssue(row, image_id, f"same image id as row {first}{extra}; row skipped")
            )
            return True
        self.first_row[image_id] = (row, label_text)
        return False

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def finish(self) -> tuple[pd.DataFrame, ReadReport]:
        table = _make_table(self.rows)
        self.report.images_found = len(table)
        self.report.class_counts = class_counts(table)
        self.report.check_accounting()
        return table, self.report


def _make_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in COLUMNS:
        if col == "age":
            table[col] = table[col].astype(np.float64)
        else:
            table[col] = table[col].astype(object)
    return table.reset_index(drop=True)


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Images per class, in catalog order (codes absent from the table are left out)."""
    counts = Counter(table["label"]) if len(table) else Counter()
    return {c: int(counts[c]) for c in cls_catalog.CODES if counts.get(c)}


def _resolve_label(text: str) -> str | None:
    try:
        return cls_catalog.normalize_label(text)
    except cls_catalog.UnknownClassError:
        return None


# --------------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------------


def read_ham10000(root: str | os.PathLike) -> tuple[pd.DataFrame, ReadReport]:
    """HAM10000: ``HAM10000_metadata.csv`` + the images (see the module docstring for folders)."""
    root = Path(root)
    csv = root / HAM_CSV
    if not csv.is_file():
        raise DatasetError(f"{HAM_CSV} was not found in {root}.")
    df = _read_csv(csv)
    _require_columns(df, ("image_id", "dx"), csv)
    images = _index_images(root, HAM_IMAGE_DIRS)
    report = ReadReport("HAM10000", "ham10000", str(root.resolve()), rows_read=len(df))
    builder = _TableBuilder(report)
    has = set(df.columns)
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 2
        image_id = rec["image_id"]
        if not image_id:
            report.bad_rows.append(RowIssue(row, "", "empty image_id"))
            continue
        if builder.seen(image_id, row, rec["dx"]):
            continue
        label = _resolve_label(rec["dx"])
        if label is None:
            report.unknown(rec["dx"])
            continue
        path = images.get(image_id)
        if path is None:
            report.missing_images.append(image_id)
            continue
        age, sex, site = _row_metadata(
            rec.get("age", ""),
            rec.get("sex", ""),
            rec.get("localization", ""),
            site_from_ham10000,
            report,
            row,
            image_id,
        )
        builder.add(
            image_id=image_id,
            path=path,
            label=label,
            lesion_id=rec.get("lesion_id", "") or image_id,
            patient_id="",
            age=age,
            sex=sex,
            site=site,
            source="HAM10000",
        )
    if "lesion_id" not in has:
        report.notes.append("no lesion_id column: each image is its own lesion for splitting")
    report.notes.append("HAM10000 has no patient ids: splits are grouped by lesion_id")
    return builder.finish()


# --------------------------------------------------------------------------------------------------
# ISIC 2019
# --------------------------------------------------------------------------------------------------


def _canonical_isic_id(name: str) -> str:
    return name[: -len(DOWNSAMPLED_SUFFIX)] if name.endswith(DOWNSAMPLED_SUFFIX) else name


def _find_image(index: Mapping[str, str], name: str) -> str | None:
    """Find ``name`` with or without the ``_downsampled`` suffix the ISIC 2019 CSVs use."""
    canonical = _canonical_isic_id(name)
    for key in (name, canonical, canonical + DOWNSAMPLED_SUFFIX):
        if key in index:
            return index[key]
    return None


def read_isic2019(root: str | os.PathLike) -> tuple[pd.DataFrame, ReadReport]:
    """ISIC 2019 training set: one-hot ground truth + optional metadata CSV + images."""
    root = Path(root)
    gt_csv = root / ISIC2019_GT_CSV
    if not gt_csv.is_file():
        raise DatasetError(f"{ISIC2019_GT_CSV} was not found in {root}.")
    gt = _read_csv(gt_csv)
    _require_columns(gt, ("image",), gt_csv)
    class_cols: dict[str, str] = {}  # column -> code, or UNK
    for col in gt.columns:
        if col == "image":
            continue
        if col.strip().upper() == ISIC2019_UNK:
            class_cols[col] = ISIC2019_UNK
            continue
        code = _resolve_label(col)
        if code is None:
            raise DatasetError(
                f"{gt_csv.name}: the column {col!r} is not a class we know "
                f"({', '.join(cls_catalog.CODES)}, UNK)."
            )
        class_cols[col] = code
    if not class_cols:
        raise DatasetError(f"{gt_csv.name} has no class columns.")

    meta: dict[str, dict[str, str]] = {}
    meta_csv = root / ISIC2019_META_CSV
    if meta_csv.is_file():
        mdf = _read_csv(meta_csv)
        _require_columns(mdf, ("image",), meta_csv)
        for rec in mdf.to_dict("records"):
            meta.setdefault(_canonical_isic_id(rec["image"]), rec)
    images = _index_images(root, ISIC2019_IMAGE_DIRS)
    report = ReadReport("ISIC 2019", "isic2019", str(root.resolve()), rows_read=len(gt))
    if not meta_csv.is_file():
        report.notes.append(f"{ISIC2019_META_CSV} not found: age, sex and site are unknown")
    builder = _TableBuilder(report)
    cols = list(class_cols)
    values = gt[cols]
    names = gt["image"].tolist()
    n_no_meta = 0
    for i, (name, onehot) in enumerate(zip(names, values.itertuples(index=False), strict=True)):
        row = i + 2
        if not name:
            report.bad_rows.append(RowIssue(row, "", "empty image name"))
            continue
        image_id = _canonical_isic_id(name)
        try:
            nums = [float(v) for v in onehot]
        except ValueError:
            report.bad_rows.append(
                RowIssue(row, image_id, f"non-numeric class value in {list(onehot)}")
            )
            continue
        hot = [c for c, v in zip(cols, nums, strict=True) if v == 1.0]
        others_zero = all(v in (0.0, 1.0) for v in nums)
        if len(hot) != 1 or not others_zero:
            report.bad_rows.append(
                RowIssue(
                    row,
                    image_id,
                    f"the one-hot label has {len(hot)} classes set "
                    f"({', '.join(hot) or 'none'}); exactly one 1 and the rest 0 is needed",
                )
            )
            continue
        code = class_cols[hot[0]]
        if builder.seen(image_id, row, code):
            continue
        if code == ISIC2019_UNK:
            report.drop("UNK (ISIC 2019 'none of the others' class)")
            continue
        path = _find_image(images, name)
        if path is None:
            report.missing_images.append(image_id)
            continue
        m = meta.get(image_id)
        if m is None:
            n_no_meta += 1
            m = {}
        age, sex, site = _row_metadata(
            m.get("age_approx", ""),
            m.get("sex", ""),
            m.get("anatom_site_general", m.get("anatom_site_general_challenge", "")),
            site_from_isic,
            report,
            row,
            image_id,
        )
        builder.add(
            image_id=image_id,
            path=path,
            label=code,
            lesion_id=m.get("lesion_id", "") or image_id,
            patient_id="",
            age=age,
            sex=sex,
            site=site,
            source="ISIC2019",
        )
    if meta_csv.is_file() and n_no_meta:
        report.notes.append(f"{n_no_meta} images have no row in {ISIC2019_META_CSV}: unknown")
    report.notes.append(
        "ISIC 2019 has no patient ids; images without lesion_id are their own lesion"
    )
    return builder.finish()


# --------------------------------------------------------------------------------------------------
# ISIC archive (isic-cli export)
# --------------------------------------------------------------------------------------------------

_DX_LEVELS = tuple(f"diagnosis_{k}" for k in range(1, 6))


def _archive_diagnosis(rec: Mapping[str, str], hierarchical: bool) -> str:
    """The most specific diagnosis of a row as one path 'level1:level2:...' (or legacy text)."""
    if not hierarchical:
        return rec.get("diagnosis", "")
    levels = [rec.get(c, "") for c in _DX_LEVELS]
    levels = [v for v in levels if v]
    if not levels:
        return rec.get("diagnosis", "")
    full = [v for v in levels if ":" in v]
    if full:  # some exports repeat the whole path in each column: take the deepest one
        return max(full, key=lambda v: v.count(":"))
    return ":".join(levels)


def read_isic_archive(root: str | os.PathLike) -> tuple[pd.DataFrame, ReadReport]:
    """An ``isic-cli image download`` folder: ``metadata.csv`` + ``{isic_id}.jpg``."""
    root = Path(root)
    csv = root / ISIC_ARCHIVE_CSV
    if not csv.is_file():
        raise DatasetError(f"{ISIC_ARCHIVE_CSV} was not found in {root}.")
    df = _read_csv(csv)
    _require_columns(df, ("isic_id",), csv)
    hierarchical = any(c in df.columns for c in _DX_LEVELS)
    if not hierarchical and "diagnosis" not in df.columns:
        raise DatasetError(
            f"{csv.name} has no diagnosis: expected diagnosis_1..diagnosis_5 or diagnosis columns "
            f"(download with metadata; images without a diagnosis cannot be used for training)."
        )
    images = _index_images(root, ISIC_ARCHIVE_IMAGE_DIRS)
    report = ReadReport("ISIC archive", "isic-archive", str(root.resolve()), rows_read=len(df))
    builder = _TableBuilder(report)
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 2
        image_id = rec["isic_id"]
        if not image_id:
            report.bad_rows.append(RowIssue(row, "", "empty isic_id"))
            continue
        dx = _archive_diagnosis(rec, hierarchical)
        if builder.seen(image_id, row, dx):
            continue
        code = isic_diagnosis_to_code(dx)
        if code is None:
            report.unknown(dx)
            continue
        path = images.get(image_id)
        if path is None:
            report.missing_images.append(image_id)
            continue
        age, sex, site = _row_metadata(
            rec.get("age_approx", rec.get("age", "")),
            rec.get("sex", ""),
            rec.get("anatom_site_general", ""),
            site_from_isic,
            report,
            row,
            image_id,
        )
        builder.add(
            image_id=image_id,
            path=path,
            label=code,
            lesion_id=rec.get("lesion_id", "") or image_id,
            patient_id=rec.get("patient_id", ""),
            age=age,
            sex=sex,
            site=site,
            source="ISIC archive",
        )
    report.notes.append(
        "diagnoses mapped with trainer.datasets.ISIC_HIERARCHY_MAP / ISIC_LEGACY_MAP; anything "
        "else is counted as an unknown label"
    )
    return builder.finish()


# --------------------------------------------------------------------------------------------------
# One folder per class
# --------------------------------------------------------------------------------------------------


def _class_folder_images(folder: Path) -> tuple[list[Path], int, int]:
    """Image files under ``folder`` (recursively, sorted); hidden and ``._*`` files skipped.

    Returns (images, hidden_skipped, other_files_skipped).
    """
    found: list[Path] = []
    hidden = other = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        kept_dirs = [d for d in dirnames if not d.startswith(".")]
        hidden += len(dirnames) - len(kept_dirs)
        dirnames[:] = sorted(kept_dirs)
        for name in sorted(filenames):
            if name.startswith("."):
                hidden += 1
            elif _is_image_name(name):
                found.append(Path(dirpath) / name)
            else:
                other += 1
    return found, hidden, other


def read_class_folders(root: str | os.PathLike) -> tuple[pd.DataFrame, ReadReport]:
    """One sub-folder per class (``MEL``, ``melanoma``, ``akiec``, ``nevus``...); no metadata."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"The folder {root} does not exist.")
    report = ReadReport("class folders", "folders", str(root.resolve()))
    builder = _TableBuilder(report)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    n = hidden = other = 0
    for folder in subfolders:
        files, h, o = _class_folder_images(folder)
        hidden += h
        other += o
        code = _resolve_label(folder.name)
        if code is None:
            if files:
                report.rows_read += len(files)
                n += len(files)
                report.unknown(folder.name, len(files))
            continue
        for path in files:
            n += 1
            report.rows_read += 1
            image_id = path.stem
            if builder.seen(image_id, n, code):
                continue
            builder.add(
                image_id=image_id,
                path=str(path.resolve()),
                label=code,
                lesion_id=image_id,
                patient_id="",
                age=math.nan,
                sex=UNKNOWN,
                site=UNKNOWN,
                source=root.name or "class folders",
            )
    loose = [p for p in root.iterdir() if p.is_file() and _is_image_name(p.name)]
    if loose:
        report.notes.append(f"{len(loose)} image files directly in {root.name}/ have no class")
    if hidden:
        report.notes.append(f"{hidden} hidden files/folders (.*, ._*) skipped")
    if other:
        report.notes.append(f"{other} files that are not images skipped")
    report.notes.append(
        "no lesion or patient ids: splits are grouped per image, so near-duplicate images of one "
        "lesion may leak between train and test"
    )
    report.notes.append("no metadata: age, sex and site are unknown for every image")
    return builder.finish()


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------

READERS = {
    "ham10000": read_ham10000,
    "isic2019": read_isic2019,
    "isic-archive": read_isic_archive,
    "folders": read_class_folders,
}


def _is_archive_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as f:
            header = f.readline()
    except OSError:
        return False
    return "isic_id" in [h.strip().strip('"') for h in header.split(",")]


def detect_format(root: str | os.PathLike) -> str:
    """Which reader fits ``root``, judging by the files present. Raises DatasetError if none."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"The data set folder {root} does not exist.")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; give the folder that holds the data set.")
    if (root / HAM_CSV).is_file():
        return "ham10000"
    if (root / ISIC2019_GT_CSV).is_file():
        return "isic2019"
    if (root / ISIC_ARCHIVE_CSV).is_file() and _is_archive_csv(root / ISIC_ARCHIVE_CSV):
        return "isic-archive"
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(_resolve_label(p.name) for p in subdirs):
        return "folders"
    raise DatasetError(
        f"Could not recognise the data set layout in {root}. Looked for {HAM_CSV} (HAM10000), "
        f"{ISIC2019_GT_CSV} (ISIC 2019), {ISIC_ARCHIVE_CSV} with an isic_id column (ISIC archive "
        f"export) and sub-folders named after classes ({', '.join(cls_catalog.CODES)}, "
        "'melanoma', 'nevus', ...). Pass --format to choose a reader explicitly."
    )


def read_dataset(path: str | os.PathLike, fmt: str = "auto") -> tuple[pd.DataFrame, ReadReport]:
    """Read any supported data set into the unified table; see the module docstring.

    ``path`` is the data set folder (a CSV inside it is accepted too: its folder is used).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"The data set path {root} does not exist.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root} is not a folder or a CSV file.")
        if fmt == "auto":
            fmt = {
                HAM_CSV: "ham10000",
                ISIC2019_GT_CSV: "isic2019",
                ISIC2019_META_CSV: "isic2019",
                ISIC_ARCHIVE_CSV: "isic-archive",
            }.get(root.name, "auto")
        root = root.parent
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt not in READERS:
        raise DatasetError(f"Unknown data set format {fmt!r}; use auto or {', '.join(FORMATS)}.")
    if not root.is_dir():
        raise DatasetError(f"The data set folder {root} does not exist.")
    return READERS[fmt](root)


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def table_metadata(table: pd.DataFrame) -> list[PatientMetadata]:
    """One :class:`PatientMetadata` per row (NaN age = unknown)."""
    ages = table["age"].to_numpy(dtype=np.float64)
    return [
        PatientMetadata(age=None if math.isnan(a) else float(a), sex=s, site=t)
        for a, s, t in zip(ages, table["sex"], table["site"], strict=True)
    ]


def encode_metadata(table: pd.DataFrame, encoding: MetadataEncoding) -> np.ndarray:
    """float32 ``(N, encoding.size)``: the same encoder the app uses."""
    out = encoding.encode_many(table_metadata(table))
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# `python -m trainer data`
# --------------------------------------------------------------------------------------------------


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=("auto", *FORMATS),
        help="data set layout (default: detect from the files present)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="data set folder (HAM10000, ISIC 2019, ISIC archive export, "
        "or one sub-folder per class)",
    )
    add_format_argument(parser)
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON here")


def run(args: argparse.Namespace) -> int:
    table, report = read_dataset(args.path, args.fmt)
    print(report.summary())
    n_lesions = table["lesion_id"].nunique() if len(table) else 0
    print(f"  distinct lesions: {n_lesions}")
    if args.json:
        data = report.to_dict()
        data["distinct_lesions"] = int(n_lesions)
        atomic_save_json(args.json, data)
        print(f"report written to {args.json}")
    if not len(table):
        print("error: no usable image was found", flush=True)
        return 1
    return 0
