"""Grouped, stratified, seeded train/val/test splits, and the split file that pins them down.

Grouping: images are linked when they share a lesion_id or a (non-empty) patient_id, and every
connected set of images is one group. So a patient's lesions stay together, and a lesion stays
together even if only some of its images carry the patient id. No group is ever on two sides.

Stratification: scikit-learn's ``StratifiedGroupKFold`` carves the test split first (one fold of
``round(1/test_frac)``), then the validation split from the rest, so class proportions stay close to
the whole set's. Then every class is placed in as many splits as it has groups (train first, then
test, then val): a class with three lesions is in all three splits, one with two is in train and
test. If a fold missed a rare class, one of its small groups is moved. Everything is determined by
the seed.

The split file is a CSV ``image_id,lesion_id,patient_id,label,split`` with a JSON sidecar
``<file>.json`` (e.g. ``split.csv.json``) recording seed, fractions, grouping and counts.
:func:`load_split` refuses a file that does not match the table exactly, so every later evaluation
scores exactly the same test images.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from desktop_app.core import classes as cls_catalog
from desktop_app.core.atomic import atomic_save_json, atomic_write_text
from desktop_app.core.errors import DatasetError

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "patient_id", "label", "split")
GROUPING = (
    "connected components of images sharing a lesion_id or a non-empty patient_id "
    "(patient where known, else lesion)"
)


# --------------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------------


def split_groups(table: pd.DataFrame) -> np.ndarray:
    """Group number per row: images sharing a lesion_id or a non-empty patient_id are one group."""
    n = len(table)
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def link(keys: pd.Series) -> None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if not key:
                continue
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)

    lesions = table["lesion_id"].fillna("").astype(str)
    # an empty lesion id means "this image alone"
    lesions = lesions.where(lesions != "", table["image_id"].astype(str))
    link(lesions)
    if "patient_id" in table.columns:
        link(table["patient_id"].fillna("").astype(str))
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, groups = np.unique(roots, return_inverse=True)
    return groups.astype(np.int64)


def _assert_disjoint(groups: np.ndarray, split: np.ndarray) -> None:
    frame = pd.DataFrame({"g": groups, "s": split})
    sides = frame.groupby("g")["s"].nunique()
    bad = sides[sides > 1]
    assert bad.empty, f"{len(bad)} groups are on more than one side of the split"


# --------------------------------------------------------------------------------------------------
# Making a split
# --------------------------------------------------------------------------------------------------


def _check_fractions(val_frac: float, test_frac: float) -> None:
    for name, f in (("val", val_frac), ("test", test_frac)):
        if not 0.0 <= f < 1.0:
            raise DatasetError(f"The {name} fraction must be at least 0 and below 1, not {f}.")
    if val_frac + test_frac >= 1.0:
        raise DatasetError(
            f"val + test fractions ({val_frac} + {test_frac}) leave nothing to train on."
        )


def _carve(
    labels: np.ndarray,
    groups: np.ndarray,
    candidates: np.ndarray,
    frac: float,
    seed: int,
    n_classes: int,
) -> np.ndarray:
    """Indices (into ``candidates``) of one StratifiedGroupKFold fold close to ``frac``."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups[candidates]))
    n_splits = max(2, round(1.0 / frac))
    if n_groups < n_splits:
        raise DatasetError(
            f"Only {n_groups} lesions/patients to split, too few for a {frac:.0%} split; "
            "use a bigger data set or smaller fractions."
        )
    _, class_sizes = np.unique(labels[candidates], return_counts=True)
    if np.all(class_sizes < n_splits):
        # every class is smaller than the number of folds (tiny smoke sets): StratifiedGroupKFold
        # refuses; plain grouped folds, then _ensure_every_class spreads the classes.
        from sklearn.model_selection import GroupKFold

        kfold = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        kfold = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    target = frac * len(candidates)
    best, best_key = None, None
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected for rare classes.
        warnings.simplefilter("ignore", UserWarning)
        folds = list(kfold.split(candidates, labels[candidates], groups[candidates]))
    for _, fold in folds:
        missing = n_classes - len(np.unique(labels[candidates[fold]]))
        key = (missing, abs(len(fold) - target))
        if best_key is None or key < best_key:
            best, best_key = fold, key
    assert best is not None
    return best


def _ensure_every_class(
    labels: np.ndarray,
    groups: np.ndarray,
    split: np.ndarray,
    rng: np.random.Generator,
    active: tuple[str, ...] = SPLITS,
) -> None:
    """Give each class a place in as many splits as it has groups: train first, then test, val.

    A fold can miss a rare class; one of its smallest groups is then moved from the split holding
    the most groups of that class. Whole groups move, so no group ends up on two sides.
    """
    priority = [s for s in ("train", "test", "val") if s in active]
    for code in np.unique(labels):
        has = labels == code
        n_groups = len(np.unique(groups[has]))
        needed = priority[: min(len(priority), n_groups)]
        for _ in range(len(needed)):
            groups_of = {s: np.unique(groups[has & (split == s)]) for s in active}
            empty = [s for s in needed if len(groups_of[s]) == 0]
            if not empty:
                break
            donors = [s for s in active if len(groups_of[s]) >= (2 if s in needed else 1)]
            if not donors:
                break
            donor = max(donors, key=lambda s: (len(groups_of[s]), -priority.index(s)))
            # the donor's group of this class with the fewest images (ties broken by the seed)
            cand = rng.permutation(groups_of[donor])
            sizes = [int(np.sum(groups == g)) for g in cand]
            chosen = cand[int(np.argmin(sizes))]
            split[groups == chosen] = empty[0]


def make_split(
    table: pd.DataFrame,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 42,
) -> pd.Series:
    """``"train"``/``"val"``/``"test"`` per row of ``table`` (index-aligned), grouped + stratified.

    The returned Series carries ``attrs`` (seed, fractions, grouping) that :func:`save_split` records.
    """
    _check_fractions(val_frac, test_frac)
    n = len(table)
    if n == 0:
        raise DatasetError("The data set is empty: nothing to split.")
    labels = table["label"].astype(str).to_numpy()
    groups = split_groups(table)
    n_classes = len(np.unique(labels))
    split = np.full(n, "train", dtype=object)
    everything = np.arange(n)
    if test_frac > 0:
        fold = _carve(labels, groups, everything, test_frac, seed, n_classes)
        split[everything[fold]] = "test"
    if val_frac > 0:
        rest = np.flatnonzero(split == "train")
        rel = val_frac / (1.0 - test_frac)
        fold = _carve(labels, groups, rest, rel, seed + 1, len(np.unique(labels[rest])))
        split[rest[fold]] = "val"
    active = tuple(s for s, f in (("train", 1.0), ("val", val_frac), ("test", test_frac)) if f)
    _ensure_every_class(labels, groups, split, np.random.default_rng(seed), active)
    _assert_disjoint(groups, split)
    out = pd.Series(split, index=table.index, name="split", dtype=object)
    out.attrs.update(
        {"seed": int(seed), "val_frac": float(val_frac), "test_frac": float(test_frac)}
    )
    return out


def split_counts(table: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, int]]:
    """Images per class in each split, classes in catalog order: ``{split: {code: n}}``."""
    present = [c for c in cls_catalog.CODES if c in set(table["label"])]
    others = sorted(set(table["label"]) - set(present))
    out: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        labels = table["label"][split == s]
        counts = labels.value_counts()
        out[s] = {c: int(counts.get(c, 0)) for c in (*present, *others)}
    return out


def format_counts(table: pd.DataFrame, split: pd.Series) -> str:
    """A small text table: one row per class, one column per split, plus totals."""
    counts = split_counts(table, split)
    codes = list(next(iter(counts.values())).keys()) if counts else []
    lines = [f"{'class':8s}" + "".join(f"{s:>8s}" for s in SPLITS) + f"{'all':>8s}"]
    for c in codes:
        row = [counts[s][c] for s in SPLITS]
        lines.append(f"{c:8s}" + "".join(f"{k:8d}" for k in row) + f"{sum(row):8d}")
    totals = [sum(counts[s].values()) for s in SPLITS]
    lines.append(f"{'total':8s}" + "".join(f"{k:8d}" for k in totals) + f"{sum(totals):8d}")
    n = max(sum(totals), 1)
    lines.append(f"{'share':8s}" + "".join(f"{k / n:8.1%}" for k in totals))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The split file
# --------------------------------------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike) -> Path:
    """``split.csv`` -> ``split.csv.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def save_split(
    table: pd.DataFrame,
    split: pd.Series,
    path: str | os.PathLike,
    *,
    seed: int | None = None,
    val_frac: float | None = None,
    test_frac: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the split CSV and its JSON sidecar atomically. Returns the CSV path."""
    path = Path(path)
    split = split.reindex(table.index)
    if split.isna().any() or not split.isin(SPLITS).all():
        raise ValueError("every row of the table needs a split in train/val/test")
    frame = pd.DataFrame(
        {
            "image_id": table["image_id"].astype(str),
            "lesion_id": table["lesion_id"].astype(str),
            "patient_id": table.get("patient_id", pd.Series("", index=table.index)).astype(str),
            "label": table["label"].astype(str),
            "split": split.astype(str),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    atomic_write_text(path, buf.getvalue())
    attrs = dict(split.attrs)
    groups = split_groups(table)
    meta: dict[str, Any] = {
        "file": path.name,
        "seed": seed if seed is not None else attrs.get("seed"),
        "val_frac": val_frac if val_frac is not None else attrs.get("val_frac"),
        "test_frac": test_frac if test_frac is not None else attrs.get("test_frac"),
        "grouping": GROUPING,
        "stratified_by": "label",
        "n_images": len(frame),
        "n_groups": len(np.unique(groups)),
        "counts": split_counts(table, split),
        "images_per_split": {s: int((split == s).sum()) for s in SPLITS},
        "groups_per_split": {s: len(np.unique(groups[(split == s).to_numpy()])) for s in SPLITS},
        "sources": sorted(set(table["source"].astype(str))) if "source" in table else [],
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        meta.update(extra)
    atomic_save_json(sidecar_path(path), meta)
    return path


def read_split_file(path: str | os.PathLike) -> pd.DataFrame:
    """The split CSV as a DataFrame, checked for columns, values and duplicate image ids."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"The split file {path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"Could not read the split file {path.name}: {exc}") from None
    missing = [c for c in ("image_id", "split") if c not in frame.columns]
    if missing:
        raise DatasetError(f"The split file {path.name} lacks the column(s) {', '.join(missing)}.")
    bad = frame.loc[~frame["split"].isin(SPLITS), "split"]
    if len(bad):
        raise DatasetError(
            f"The split file {path.name} has {len(bad)} rows whose split is not train/val/test "
            f"(e.g. {bad.iloc[0]!r})."
        )
    dup = frame["image_id"][frame["image_id"].duplicated()]
    if len(dup):
        raise DatasetError(
            f"The split file {path.name} lists {len(dup)} image ids twice (e.g. {dup.iloc[0]})."
        )
    return frame


def _examples(ids: list[str], k: int = 5) -> str:
    shown = ", ".join(ids[:k])
    return shown + (", ..." if len(ids) > k else "")


def load_split(
    path: str | os.PathLike, table: pd.DataFrame, *, allow_extra: bool = False
) -> pd.Series:
    """The split of every row of ``table`` from a split file (index-aligned, named ``split``).

    Raises DatasetError when the file and the table do not hold the same images (saying how many
    differ each way), or when an image's label changed: a test set must stay the test set.
    ``allow_extra=True`` accepts a file that also lists images the table lacks (a table that was
    deliberately subset, e.g. ``prepare(limit=...)``); table images missing from the file are
    always an error.
    """
    path = Path(path)
    frame = read_split_file(path)
    by_id = frame.set_index("image_id")
    ids = table["image_id"].astype(str)
    in_table = set(ids)
    in_file = set(by_id.index)
    not_in_file = sorted(in_table - in_file)
    not_in_table = sorted(in_file - in_table)
    problems = []
    if not_in_table and not allow_extra:
        problems.append(
            f"{len(not_in_table)} images of the split file are not in the data set "
            f"({_examples(not_in_table)})"
        )
    if not_in_file:
        problems.append(
            f"{len(not_in_file)} images of the data set are not in the split file "
            f"({_examples(not_in_file)})"
        )
    if problems:
        raise DatasetError(
            f"The split file {path.name} does not match the data set: "
            + "; ".join(problems)
            + ". Use the data set the split was made for, or make a new split (which changes the "
            "test set, so earlier test scores are not comparable)."
        )
    if "label" in by_id.columns:
        file_labels = by_id.loc[ids, "label"].to_numpy()
        changed = np.flatnonzero(file_labels != table["label"].astype(str).to_numpy())
        if len(changed):
            examples = [
                f"{ids.iloc[i]} {file_labels[i]}->{table['label'].iloc[i]}" for i in changed[:5]
            ]
            raise DatasetError(
                f"The split file {path.name} does not match the data set: {len(changed)} images "
                f"changed label ({', '.join(examples)})."
            )
    out = pd.Series(by_id.loc[ids, "split"].to_numpy(), index=table.index, name="split")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        import json

        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            out.attrs.update({k: meta.get(k) for k in ("seed", "val_frac", "test_frac")})
        except (OSError, ValueError):
            pass
    return out.astype(object)


# --------------------------------------------------------------------------------------------------
# `python -m trainer split`
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer.datasets import add_format_argument

    parser.add_argument("data", help="data set folder (see `python -m trainer data --help`)")
    parser.add_argument("--out", required=True, help="split CSV to write (plus OUT.json)")
    add_format_argument(parser)
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (0.15)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")


def run(args: argparse.Namespace) -> int:
    from trainer.datasets import read_dataset

    table, report = read_dataset(args.data, args.fmt)
    print(
        f"{report.source}: {report.images_found} images kept of {report.rows_read} rows "
        f"({report.n_skipped} skipped; `python -m trainer data` says why)"
    )
    split = make_split(table, val_frac=args.val, test_frac=args.test, seed=args.seed)
    out = save_split(table, split, args.out)
    groups = split_groups(table)
    print(f"{len(np.unique(groups))} groups (lesions/patients), none on two sides")
    print(format_counts(table, split))
    print(f"split written to {out} (+ {sidecar_path(out).name})")
    return 0
