"""Everything a training or evaluation step needs about the data, prepared once: :func:`prepare`.

read the data set (``trainer.datasets``) -> optional deterministic subset (``limit``) -> split
(loaded from a split file, or made and saved) -> classes -> cached uint8 images
(``trainer.cache``, the app's own decoding and resizing) -> encoded metadata (the app's encoder)
-> integer labels. See docs/trainer-internals.md for :class:`PreparedData`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from desktop_app.core import classes as cls_catalog
from desktop_app.core.errors import DatasetError
from desktop_app.core.metadata import DEFAULT_ENCODING, MetadataEncoding

DEFAULT_CACHE_DIR = Path(
    os.environ.get("LESIONLENS_CACHE", Path.home() / ".cache" / "lesionlens" / "images")
)


@dataclass
class PreparedData:
    """The table (with a ``split`` column) and the arrays aligned with its rows."""

    table: pd.DataFrame
    classes: tuple[str, ...]
    encoding: MetadataEncoding
    images: np.ndarray  # uint8 (N, H, W, 3), memory-mapped
    metadata: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,), indices into ``classes``
    spec: object = None  # imaging.PreprocessSpec used for the cache
    report: object = None  # datasets.ReadReport of the read
    split_path: Path | None = None
    cache_path: Path | None = None
    excluded: dict[str, int] = field(default_factory=dict)  # label -> rows left out (classes=)

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of one split ("train", "val" or "test"), ascending."""
        from trainer.splits import SPLITS

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def class_counts(self, split: str | None = None) -> np.ndarray:
        """Images per class (in ``classes`` order), for one split or all."""
        labels = self.labels if split is None else self.labels[self.indices(split)]
        return np.bincount(labels, minlength=len(self.classes))

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __len__(self) -> int:
        return len(self.table)


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def stratified_subset(table: pd.DataFrame, n: int, seed: int = 42) -> pd.DataFrame:
    """About ``n`` rows keeping class proportions, whole lesions/patients only, deterministic.

    Groups are taken in a seeded random order per class until the class has its share of ``n``;
    every class keeps at least 3 groups (or all it has) so it can reach train, val and test.
    Returns the chosen rows in their original order (index preserved).
    """
    from trainer.splits import split_groups

    if n <= 0:
        raise DatasetError(f"limit must be a positive number of images, not {n}.")
    if n >= len(table):
        return table
    groups = split_groups(table)
    labels = table["label"].astype(str).to_numpy()
    frame = pd.DataFrame({"g": groups, "label": labels})
    # a group's class for the quota: its most frequent label (ties: catalog order)
    order = {c: i for i, c in enumerate(cls_catalog.CODES)}
    main = (
        frame.groupby(["g", "label"])
        .size()
        .reset_index(name="k")
        .assign(o=lambda d: d["label"].map(order).fillna(len(order)))
        .sort_values(["g", "k", "o"], ascending=[True, False, True])
        .drop_duplicates("g")
        .set_index("g")["label"]
    )
    sizes = frame.groupby("g").size()
    rng = np.random.default_rng(seed)
    total = len(table)
    chosen: list[int] = []
    for code in sorted(set(main), key=lambda c: (order.get(c, len(order)), c)):
        gs = main.index[main == code].to_numpy()
        gs = gs[rng.permutation(len(gs))]
        share = round(n * float(sizes[gs].sum()) / total)
        taken = 0
        for k, g in enumerate(gs):
            if taken >= share and k >= min(3, len(gs)):
                break
            chosen.append(int(g))
            taken += int(sizes[g])
    keep = np.isin(groups, np.array(chosen, dtype=np.int64))
    return table[keep]


def resolve_classes(table: pd.DataFrame, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The model's classes: given codes (validated) or those present, in catalog order."""
    if classes is None:
        present = set(table["label"])
        out = tuple(c for c in cls_catalog.CODES if c in present)
    else:
        out = tuple(cls_catalog.normalize_label(c) for c in classes)
        if len(set(out)) != len(out):
            raise DatasetError(f"The class list {list(classes)} names a class twice.")
        out = tuple(c for c in cls_catalog.CODES if c in out)
    if len(out) < 2:
        raise DatasetError(f"At least two classes are needed to train; found {list(out)}.")
    return out


# config.json keys (as trainer.train writes them) -> prepare() parameters, first match wins
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "data_path": ("data_path", "data"),
    "fmt": ("fmt", "format"),
    "split_path": ("split_path", "split"),
    "split_out": ("split_out",),
    "image_size": ("image_size",),
    "cache_dir": ("cache_dir",),
    "seed": ("seed",),
    "classes": ("classes",),
    "encoding": ("encoding", "metadata_encoding"),
    "limit": ("limit",),
    "val_frac": ("val_frac",),
    "test_frac": ("test_frac",),
    "resize": ("resize",),
    "workers": ("workers",),
    "progress": ("progress",),
    "fast_decode": ("fast_decode",),
}


def _kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """prepare() keyword arguments from a run's config.json (unknown keys ignored; None = default)."""
    kwargs: dict[str, Any] = {}
    for param, keys in _CONFIG_KEYS.items():
        for key in keys:
            if config.get(key) is not None:
                kwargs[param] = config[key]
                break
    if "data_path" not in kwargs:
        raise DatasetError("The configuration does not say where the data set is ('data').")
    enc = kwargs.get("encoding")
    if isinstance(enc, Mapping):
        kwargs["encoding"] = MetadataEncoding.from_dict(enc)
    classes = kwargs.get("classes")
    if classes is not None:  # a model card style list of {"code": ...} is accepted too
        kwargs["classes"] = [c["code"] if isinstance(c, Mapping) else str(c) for c in classes]
    if isinstance(kwargs.get("image_size"), list):
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return kwargs


def prepare(
    data_path: str | os.PathLike | Mapping[str, Any],
    fmt: str = "auto",
    split_path: str | os.PathLike | None = None,
    split_out: str | os.PathLike | None = None,
    image_size: int | Sequence[int] = 224,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 42,
    classes: Sequence[str] | None = None,
    encoding: MetadataEncoding = DEFAULT_ENCODING,
    limit: int | None = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    resize: str = "stretch",
    workers: int | None = None,
    progress: bool = True,
    fast_decode: bool = False,
) -> PreparedData:
    """Read, (subset,) split, cache and encode a data set. See docs/trainer-internals.md.

    ``prepare(config)``: the first argument may also be a run's configuration (the dict of
    ``config.json``: ``data``, ``format``, ``split``, ``image_size``, ``resize``, ``seed``, ``limit``,
    ``cache_dir``, ``classes``, ``metadata_encoding``...); other arguments are then ignored.

    - ``split_path``: an existing split file to use (it must match the data set; with ``limit`` it
      may also list images outside the subset). When None, a new split is made with ``seed``,
      ``val_frac`` and ``test_frac`` and saved at ``split_out`` (if given).
    - ``limit``: keep about that many images (whole lesions, classes in proportion, chosen by
      ``seed``) BEFORE splitting, for smoke runs.
    - ``classes``: codes the model predicts (default: those present, in catalog order). Rows of
      other classes are left out, and counted in ``PreparedData.excluded``.
    - ``fast_decode``: bounded JPEG decoding for the cache (see ``trainer.cache``); the default
      decodes at full resolution, exactly as the app does.
    """
    from desktop_app.core.imaging import PreprocessSpec
    from trainer.cache import build_cache, cache_path
    from trainer.datasets import encode_metadata, read_dataset
    from trainer.splits import load_split, make_split, save_split

    if isinstance(data_path, Mapping):
        return prepare(**_kwargs_from_config(data_path))
    table, report = read_dataset(data_path, fmt)
    if len(table) == 0:
        raise DatasetError(f"No usable image was found in {data_path}.\n{report.summary()}")
    if limit is not None:
        table = stratified_subset(table, int(limit), seed=seed)

    if split_path is not None:
        split = load_split(split_path, table, allow_extra=limit is not None)
        used_split = Path(split_path)
    else:
        split = make_split(table, val_frac=val_frac, test_frac=test_frac, seed=seed)
        used_split = None
        if split_out is not None:
            extra = {"data_path": str(Path(data_path).resolve()), "limit": limit}
            used_split = save_split(table, split, split_out, extra=extra)
    table = table.assign(split=split.to_numpy())

    chosen = resolve_classes(table, classes)
    outside = ~table["label"].isin(chosen)
    excluded = {str(k): int(v) for k, v in table.loc[outside, "label"].value_counts().items()}
    table = table[~outside].reset_index(drop=True)

    h, w = _image_hw(image_size)
    spec = PreprocessSpec(height=h, width=w, resize=resize)
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    paths = table["path"].tolist()
    images = build_cache(
        paths, spec, cache_dir, workers=workers, progress=progress, fast_decode=fast_decode
    )
    metadata = encode_metadata(table, encoding)
    index = {c: i for i, c in enumerate(chosen)}
    labels = table["label"].map(index).to_numpy(dtype=np.int64)
    return PreparedData(
        table=table,
        classes=chosen,
        encoding=encoding,
        images=images,
        metadata=metadata,
        labels=labels,
        spec=spec,
        report=report,
        split_path=used_split,
        cache_path=cache_path(paths, spec, cache_dir, fast_decode),
        excluded=excluded,
    )
