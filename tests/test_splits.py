"""Train/val/test splits: grouped by lesion and patient, stratified, seeded, pinned by a file."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from desktop_app.core.errors import DatasetError
from trainer import splits
from trainer.splits import load_split, make_split, save_split, sidecar_path, split_groups

# class -> number of lesions; images per lesion vary from 1 to 4; a rare class with 3 lesions
_LESIONS = {"NV": 240, "MEL": 60, "BKL": 50, "BCC": 30, "AK": 15, "VASC": 6, "DF": 3}


def make_table(seed: int = 0, with_patients: bool = True) -> pd.DataFrame:
    """A table in the unified layout (no files needed for splitting)."""
    rng = np.random.default_rng(seed)
    rows = []
    n = 0
    for code, n_lesions in _LESIONS.items():
        for k in range(n_lesions):
            lesion = f"L_{code}_{k}"
            # every 4th lesion has a patient shared with the next lesion of the same class
            patient = f"P_{code}_{k // 2}" if with_patients and k % 4 < 2 else ""
            for j in range(int(rng.integers(1, 5))):
                # one image of some patient lesions lacks its patient id: still the same group
                pid = "" if (patient and j == 1) else patient
                rows.append(
                    {
                        "image_id": f"IMG_{n:05d}",
                        "path": f"/data/IMG_{n:05d}.jpg",
                        "label": code,
                        "lesion_id": lesion,
                        "patient_id": pid,
                        "age": 50.0,
                        "sex": "unknown",
                        "site": "unknown",
                        "source": "test",
                    }
                )
                n += 1
    return pd.DataFrame(rows)


def assert_groups_disjoint(table: pd.DataFrame, split: pd.Series) -> None:
    for key in ("lesion_id", "patient_id"):
        keyed = pd.DataFrame({"k": table[key], "s": split})
        keyed = keyed[keyed["k"] != ""]
        sides = keyed.groupby("k")["s"].nunique()
        assert (sides == 1).all(), f"{key} on two sides: {list(sides[sides > 1].index[:5])}"


def test_groups_join_lesions_and_patients():
    table = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e", "f"],
            "lesion_id": ["L1", "L1", "L2", "L3", "", "L4"],
            "patient_id": ["", "P1", "P1", "", "", "P2"],
            "label": ["NV"] * 6,
        }
    )
    g = split_groups(table)
    assert g[0] == g[1] == g[2]  # a-b share L1, b-c share P1
    assert len({g[0], g[3], g[4], g[5]}) == 4  # an empty lesion id is its own group


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 42, 1234])
def test_no_lesion_or_patient_on_two_sides(seed):
    table = make_table(seed)
    split = make_split(table, seed=seed)
    assert split.index.equals(table.index)
    assert set(split) == {"train", "val", "test"}
    assert_groups_disjoint(table, split)


def test_deterministic_for_a_seed_and_different_for_another():
    table = make_table()
    a = make_split(table, seed=5)
    b = make_split(table, seed=5)
    c = make_split(table, seed=6)
    pd.testing.assert_series_equal(a, b)
    assert (a != c).any()


def test_fractions_and_class_balance():
    table = make_table()
    split = make_split(table, val_frac=0.15, test_frac=0.15, seed=3)
    share = split.value_counts(normalize=True)
    assert 0.10 <= share["test"] <= 0.20
    assert 0.10 <= share["val"] <= 0.20
    assert 0.60 <= share["train"] <= 0.80
    # class proportions stay close to the whole set's for the common classes
    whole = table["label"].value_counts(normalize=True)
    for s in ("train", "val", "test"):
        part = table["label"][split == s].value_counts(normalize=True)
        for code in ("NV", "MEL", "BKL"):
            assert abs(part[code] - whole[code]) < 0.08, (s, code)


@pytest.mark.parametrize("seed", range(6))
def test_every_class_in_every_split_when_possible(seed):
    table = make_table(seed, with_patients=False)
    split = make_split(table, seed=seed)
    for s in ("train", "val", "test"):
        assert set(table["label"][split == s]) == set(_LESIONS), s


@pytest.mark.parametrize("seed", range(4))
def test_rare_classes_with_three_lesions_reach_every_split(seed):
    """Folds alone often miss some of several 3-lesion classes; the split moves a lesion in."""
    rng = np.random.default_rng(seed)
    rows = []
    counts = {"NV": 100, "MEL": 3, "BKL": 3, "BCC": 3, "AK": 3, "DF": 3, "VASC": 3, "SCC": 2}
    for code, n_lesions in counts.items():
        for k in range(n_lesions):
            for _ in range(int(rng.integers(1, 6))):
                rows.append(
                    {
                        "image_id": f"I{len(rows)}",
                        "label": code,
                        "lesion_id": f"{code}{k}",
                        "patient_id": "",
                    }
                )
    table = pd.DataFrame(rows)
    split = make_split(table, seed=seed)
    assert_groups_disjoint(table, split)
    for s in ("train", "val", "test"):
        assert set(table["label"][split == s]) >= set(counts) - {"SCC"}, s
    # two lesions cannot cover three splits: train and test get one each
    assert set(split[table["label"] == "SCC"]) == {"train", "test"}


def test_other_fractions():
    table = make_table()
    split = make_split(table, val_frac=0.2, test_frac=0.0, seed=1)
    assert set(split) == {"train", "val"}
    assert 0.12 <= (split == "val").mean() <= 0.28
    split = make_split(table, val_frac=0.1, test_frac=0.25, seed=1)
    assert 0.18 <= (split == "test").mean() <= 0.32
    assert_groups_disjoint(table, split)


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions(val, test):
    with pytest.raises(DatasetError):
        make_split(make_table(), val_frac=val, test_frac=test)


def test_too_few_groups():
    table = make_table().head(3).assign(lesion_id="L", patient_id="")
    with pytest.raises(DatasetError, match="too few"):
        make_split(table)


# --------------------------------------------------------------------------------------------------
# The split file
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    table = make_table()
    split = make_split(table, seed=11)
    path = save_split(table, split, tmp_path / "runs" / "split.csv")
    assert path.is_file() and sidecar_path(path) == tmp_path / "runs" / "split.csv.json"
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(saved.columns) == ["image_id", "lesion_id", "patient_id", "label", "split"]
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["seed"] == 11 and meta["val_frac"] == 0.15 and meta["test_frac"] == 0.15
    assert "lesion" in meta["grouping"] and "patient" in meta["grouping"]
    assert meta["n_images"] == len(table)
    assert sum(meta["counts"]["test"].values()) == int((split == "test").sum())
    assert meta["counts"]["train"]["DF"] >= 1 and "created" in meta
    assert not list(tmp_path.glob("runs/.*"))  # no temporary files left behind

    # rows in another order, another index: the split follows the image ids
    shuffled = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    loaded = load_split(path, shuffled)
    assert loaded.index.equals(shuffled.index)
    expected = split.set_axis(table["image_id"]).loc[shuffled["image_id"]].to_numpy()
    np.testing.assert_array_equal(loaded.to_numpy(), expected)
    assert loaded.attrs["seed"] == 11


def test_load_detects_a_changed_table(tmp_path):
    table = make_table()
    path = save_split(table, make_split(table), tmp_path / "split.csv")
    with pytest.raises(DatasetError, match=r"3 images of the split file are not in the data set"):
        load_split(path, table.iloc[3:])
    extra = pd.concat([table, table.iloc[:2].assign(image_id=["NEW_1", "NEW_2"])])
    with pytest.raises(DatasetError, match=r"2 images of the data set are not in the split file"):
        load_split(path, extra.reset_index(drop=True))
    relabelled = table.copy()
    relabelled.loc[0, "label"] = "MEL" if table.loc[0, "label"] != "MEL" else "NV"
    with pytest.raises(DatasetError, match="1 images changed label"):
        load_split(path, relabelled)
    # a deliberately smaller table may use a bigger split file when asked to
    part = load_split(path, table.iloc[3:], allow_extra=True)
    assert len(part) == len(table) - 3


def test_load_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "split.csv"
    bad.write_text("image_id,split\na,train\nb,holdout\n")
    with pytest.raises(DatasetError, match="not train/val/test"):
        load_split(bad, pd.DataFrame({"image_id": ["a", "b"], "label": ["NV", "NV"]}))
    bad.write_text("image_id,split\na,train\na,test\n")
    with pytest.raises(DatasetError, match="twice"):
        load_split(bad, pd.DataFrame({"image_id": ["a"], "label": ["NV"]}))
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "none.csv", pd.DataFrame({"image_id": [], "label": []}))


def test_split_command(synthetic_ham, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    splits.add_arguments(parser)
    out = tmp_path / "split.csv"
    args = parser.parse_args([str(synthetic_ham), "--out", str(out), "--seed", "3"])
    assert splits.run(args) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "test" in printed and "DF" in printed and "total" in printed
    from trainer.datasets import read_dataset

    table, _ = read_dataset(synthetic_ham)
    loaded = load_split(out, table)
    assert_groups_disjoint(table, loaded)
    assert json.loads(sidecar_path(out).read_text())["seed"] == 3


@pytest.mark.shared_data
def test_real_ham10000_split(shared_data_dir):
    root = shared_data_dir / "ham10000"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    from trainer.datasets import read_dataset

    table, _ = read_dataset(root)
    split = make_split(table, seed=42)
    assert_groups_disjoint(table, split)
    share = split.value_counts(normalize=True)
    assert 0.12 <= share["test"] <= 0.18 and 0.12 <= share["val"] <= 0.18
    for s in ("train", "val", "test"):
        assert table["label"][split == s].nunique() == 7
