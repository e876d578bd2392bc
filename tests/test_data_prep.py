"""The image cache (the app's own decoding + resizing, cached once) and prepare()."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from desktop_app.core import imaging
from desktop_app.core.errors import DatasetError
from desktop_app.core.imaging import PreprocessSpec
from desktop_app.core.metadata import DEFAULT_ENCODING
from trainer import cache as cache_mod
from trainer.cache import build_cache, cache_path
from trainer.data import prepare, stratified_subset
from trainer.datasets import encode_metadata, read_dataset
from trainer.splits import load_split


def noisy_image(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def few_images(tmp_path: Path) -> list[Path]:
    d = tmp_path / "imgs"
    return [
        noisy_image(d / "a.jpg", 200, 150, 1),
        noisy_image(d / "b.png", 90, 120, 2),
        noisy_image(d / "c.jpg", 64, 64, 3),
        noisy_image(d / "d.png", 150, 200, 4),
    ]


def expected(paths, spec) -> np.ndarray:
    return np.stack([imaging.resize_uint8(imaging.load_image(p).rgb, spec) for p in paths])


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "pad"])
def test_cache_equals_the_app_preprocessing(few_images, tmp_path, resize):
    spec = PreprocessSpec(height=48, width=64, resize=resize)
    images = build_cache(few_images, spec, tmp_path / "cache", workers=1, progress=False)
    assert images.dtype == np.uint8 and images.shape == (4, 48, 64, 3)
    assert isinstance(images, np.memmap) and not images.flags.writeable
    np.testing.assert_array_equal(images, expected(few_images, spec))


def test_cache_reused_when_unchanged_and_rebuilt_when_a_file_changes(
    few_images, tmp_path, monkeypatch
):
    spec = PreprocessSpec(height=32, width=32)
    cache_dir = tmp_path / "cache"
    first = build_cache(few_images, spec, cache_dir, workers=1, progress=False)
    npy = cache_path(few_images, spec, cache_dir)
    assert npy.is_file() and Path(first.filename) == npy
    assert sorted(p.name for p in cache_dir.iterdir()) == [npy.name]  # no temporary leftovers

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(cache_mod, "_fill", no_decoding)
    again = build_cache(few_images, spec, cache_dir, workers=1, progress=False)
    np.testing.assert_array_equal(again, first)
    monkeypatch.undo()

    # change one image (new content, new size and mtime): a new cache with the new pixels
    st = os.stat(few_images[2])
    noisy_image(few_images[2], 70, 70, 99)
    os.utime(few_images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    changed = build_cache(few_images, spec, cache_dir, workers=1, progress=False)
    assert cache_path(few_images, spec, cache_dir) != npy
    np.testing.assert_array_equal(changed, expected(few_images, spec))
    assert not np.array_equal(changed[2], first[2])
    np.testing.assert_array_equal(changed[[0, 1, 3]], first[[0, 1, 3]])

    # another size or order is another cache
    assert cache_path(few_images, PreprocessSpec(height=32, width=40), cache_dir) != npy
    reordered = build_cache(few_images[::-1], spec, cache_dir, workers=1, progress=False)
    np.testing.assert_array_equal(reordered, changed[::-1])


def test_fast_decode_is_bounded_and_cached_separately(few_images, tmp_path):
    spec = PreprocessSpec(height=24, width=24)  # bound 96 px < the 200 px images
    exact = build_cache(few_images, spec, tmp_path, workers=1, progress=False)
    fast = build_cache(few_images, spec, tmp_path, workers=1, progress=False, fast_decode=True)
    assert Path(fast.filename) != Path(exact.filename)
    bounded = [imaging.load_image(p, max_side=96).rgb for p in few_images]
    np.testing.assert_array_equal(fast, np.stack([imaging.resize_uint8(b, spec) for b in bounded]))
    np.testing.assert_array_equal(exact, expected(few_images, spec))
    assert not np.array_equal(exact[0], fast[0])  # a 200 px image: decoded differently
    np.testing.assert_array_equal(exact[2], fast[2])  # 64 px: within the bound, identical


def test_parallel_build_matches_serial(synthetic_ham, tmp_path):
    table, _ = read_dataset(synthetic_ham)
    paths = table["path"].tolist()
    assert len(paths) >= cache_mod._MIN_PARALLEL  # really goes through the process pool
    spec = PreprocessSpec(height=24, width=24)
    par = build_cache(paths, spec, tmp_path / "par", workers=2, progress=False)
    np.testing.assert_array_equal(par, expected(paths, spec))


def test_unreadable_images(few_images, tmp_path):
    broken = few_images[1].with_name("broken.jpg")
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    text = few_images[1].with_name("notes.png")
    text.write_text("hello, I am text")
    paths = [few_images[0], broken, few_images[2], text]
    spec = PreprocessSpec(height=16, width=16)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        build_cache(paths, spec, cache_dir, workers=1, progress=False)
    msg = str(err.value)
    assert "2 of 4 images could not be read" in msg
    assert "broken.jpg" in msg and "notes.png" in msg and "text" in msg
    assert list(cache_dir.iterdir()) == []  # nothing half-written is left

    images, bad = build_cache(paths, spec, cache_dir, workers=1, progress=False, on_error="report")
    assert sorted(bad) == [1, 3] and "notes.png" in bad[3]
    assert not images[1].any() and not images[3].any()
    np.testing.assert_array_equal(images[[0, 2]], expected([paths[0], paths[2]], spec))
    # reused with the same record of bad images
    _, bad2 = build_cache(paths, spec, cache_dir, workers=1, progress=False, on_error="report")
    assert bad2 == bad
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        build_cache(paths, spec, cache_dir, workers=1, progress=False)


# --------------------------------------------------------------------------------------------------
# prepare()
# --------------------------------------------------------------------------------------------------


def test_prepare_synthetic_ham(synthetic_ham, tmp_path):
    split_out = tmp_path / "run" / "split.csv"
    data = prepare(
        synthetic_ham,
        image_size=32,
        cache_dir=tmp_path / "cache",
        split_out=split_out,
        workers=1,
        progress=False,
    )
    n = len(data)
    assert n == 84
    assert data.classes == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC")  # catalog order
    assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.image_size == (32, 32)
    assert data.metadata.shape == (n, DEFAULT_ENCODING.size)
    assert data.metadata.dtype == np.float32
    np.testing.assert_array_equal(data.metadata, encode_metadata(data.table, DEFAULT_ENCODING))
    assert data.labels.dtype.kind == "i"
    assert [data.classes[i] for i in data.labels] == data.table["label"].tolist()
    # images line up with the table rows
    spec = PreprocessSpec(height=32, width=32)
    for i in (0, 41, 83):
        np.testing.assert_array_equal(
            data.images[i], expected([data.table["path"].iloc[i]], spec)[0]
        )
    # the three splits partition the rows, with every class in each
    parts = [data.indices(s) for s in ("train", "val", "test")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    for s in ("train", "val", "test"):
        assert (data.class_counts(s) > 0).all(), s
    assert data.class_counts().sum() == n
    with pytest.raises(ValueError):
        data.indices("holdout")

    # the saved split is used as is the next time
    assert data.split_path == split_out and split_out.is_file()
    again = prepare(
        synthetic_ham,
        split_path=split_out,
        image_size=(32, 32),
        cache_dir=tmp_path / "cache",
        seed=7,  # ignored: the split comes from the file
        workers=1,
        progress=False,
    )
    pd.testing.assert_series_equal(again.table["split"], data.table["split"])
    assert again.cache_path == data.cache_path

    # prepare(config): a run's config.json as trainer.train writes it
    config = {
        "data": str(synthetic_ham),
        "format": "auto",
        "split": str(split_out),
        "image_size": 32,
        "resize": "stretch",
        "seed": 42,
        "limit": None,
        "cache_dir": str(tmp_path / "cache"),
        "classes": list(data.classes),
        "metadata_encoding": DEFAULT_ENCODING.to_dict(),
        "backbone": "ignored",
        "progress": False,
        "workers": 1,
    }
    from_config = prepare(config)
    assert from_config.classes == data.classes and from_config.cache_path == data.cache_path
    pd.testing.assert_series_equal(from_config.table["split"], data.table["split"])
    with pytest.raises(DatasetError, match="where the data set is"):
        prepare({"format": "auto"})


def test_prepare_limit_and_classes(synthetic_ham, tmp_path):
    kwargs = {"image_size": 16, "cache_dir": tmp_path / "cache", "workers": 1, "progress": False}
    small = prepare(synthetic_ham, limit=40, split_out=tmp_path / "s.csv", **kwargs)
    assert 35 <= len(small) <= 50
    assert set(small.table["label"]) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"}
    # whole lesions only
    full, _ = read_dataset(synthetic_ham)
    per_lesion = full["lesion_id"].value_counts()
    kept = small.table["lesion_id"].value_counts()
    assert (kept == per_lesion[kept.index]).all()
    # deterministic, and the saved split file works with the same limit
    again = prepare(synthetic_ham, limit=40, split_path=tmp_path / "s.csv", **kwargs)
    assert again.table["image_id"].tolist() == small.table["image_id"].tolist()
    pd.testing.assert_series_equal(again.table["split"], small.table["split"])

    two = prepare(synthetic_ham, classes=["nevus", "MEL"], **kwargs)
    assert two.classes == ("MEL", "NV")
    assert set(two.labels.tolist()) == {0, 1} and len(two) == 24
    assert two.excluded == {"AK": 12, "BCC": 12, "BKL": 12, "DF": 12, "VASC": 12}


def test_prepare_refuses_a_split_of_another_data_set(synthetic_ham, tmp_path):
    other = tmp_path / "split.csv"
    other.write_text("image_id,split\nISIC_0000001,train\n")
    with pytest.raises(DatasetError, match="does not match"):
        prepare(
            synthetic_ham,
            split_path=other,
            image_size=16,
            cache_dir=tmp_path / "c",
            workers=1,
            progress=False,
        )
    with pytest.raises(DatasetError, match="At least two classes"):
        prepare(synthetic_ham, classes=["MEL"], cache_dir=tmp_path / "c", progress=False)


def test_stratified_subset_is_deterministic_and_grouped(synthetic_ham):
    table, _ = read_dataset(synthetic_ham)
    a = stratified_subset(table, 30, seed=1)
    b = stratified_subset(table, 30, seed=1)
    c = stratified_subset(table, 30, seed=2)
    assert a.index.equals(b.index) and not a.index.equals(c.index)
    assert a.index.is_monotonic_increasing
    assert stratified_subset(table, 10_000).equals(table)
    lesions = set(a["lesion_id"])
    assert set(table.index[table["lesion_id"].isin(lesions)]) == set(a.index)


def test_load_split_after_prepare_matches(synthetic_ham, tmp_path):
    data = prepare(
        synthetic_ham,
        image_size=16,
        cache_dir=tmp_path / "c",
        split_out=tmp_path / "split.csv",
        seed=3,
        workers=1,
        progress=False,
    )
    table, _ = read_dataset(synthetic_ham)
    loaded = load_split(tmp_path / "split.csv", table)
    assert loaded.tolist() == data.table["split"].tolist()
