"""Data set readers: every row is either in the table or counted in the report, with the reason."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from desktop_app.core.errors import DatasetError
from desktop_app.core.metadata import DEFAULT_ENCODING, PatientMetadata
from trainer import datasets
from trainer.datasets import (
    COLUMNS,
    isic_diagnosis_to_code,
    read_class_folders,
    read_dataset,
    read_ham10000,
    read_isic2019,
    read_isic_archive,
)

FIXTURES = Path(__file__).parent / "fixtures" / "csv"


def write_image(path: Path, size: tuple[int, int] = (40, 40), value: int = 120) -> Path:
    """A tiny JPEG/PNG (the readers never decode; the cache tests do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size[1], size[0], 3), value, np.uint8)
    img[: size[1] // 2, : size[0] // 2] = (200, 40, 40)
    assert cv2.imwrite(str(path), img)
    return path


def ids_in(csv: Path, column: str) -> list[str]:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return [i for i in dict.fromkeys(df[column]) if i]


def assert_accounted(report: datasets.ReadReport, table: pd.DataFrame) -> None:
    assert report.images_found == len(table)
    assert report.rows_read == len(table) + report.n_skipped


# --------------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def ham_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ham"
    root.mkdir()
    shutil.copy(FIXTURES / "ham10000_broken.csv", root / "HAM10000_metadata.csv")
    ids = ids_in(root / "HAM10000_metadata.csv", "image_id")
    for k, image_id in enumerate(ids):
        if image_id == "ISIC_1000009":  # its image is missing on purpose
            continue
        part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
        write_image(root / part / f"{image_id}.jpg")
    (root / "HAM10000_images_part_1" / ".DS_Store").write_bytes(b"junk")
    return root


def test_ham10000_report_counts_every_row(ham_dir):
    table, report = read_ham10000(ham_dir)
    assert list(table.columns) == list(COLUMNS)
    assert report.fmt == "ham10000"
    assert report.rows_read == 16
    assert report.images_found == 10 == len(table)
    assert report.unknown_labels == {"xyz": 2, "mystery": 1}
    assert report.missing_images == ["ISIC_1000009"]
    assert [(r.row, r.image_id) for r in report.duplicates] == [(14, "ISIC_1000004")]
    assert "different label" in report.duplicates[0].reason
    assert [(r.row, r.reason) for r in report.bad_rows] == [(16, "empty image_id")]
    assert report.dropped == {}
    # invalid metadata: the image is kept, the field is unknown, the row is reported
    issues = {r.image_id: r for r in report.metadata_issues}
    assert sorted(issues) == ["ISIC_1000003", "ISIC_1000011", "ISIC_1000012"]
    assert issues["ISIC_1000003"].row == 4
    assert "'abc'" in issues["ISIC_1000003"].reason and "Age" in issues["ISIC_1000003"].reason
    assert "robot" in issues["ISIC_1000011"].reason and "moon" in issues["ISIC_1000011"].reason
    assert "200" in issues["ISIC_1000012"].reason
    assert_accounted(report, table)
    # the first copy of a duplicate wins
    assert table.set_index("image_id").loc["ISIC_1000004", "label"] == "AK"
    assert table["image_id"].is_unique


def test_ham10000_values_are_mapped(ham_dir):
    table, _ = read_ham10000(ham_dir)
    t = table.set_index("image_id")
    assert t.loc["ISIC_1000004", "label"] == "AK"  # akiec
    assert t.loc["ISIC_1000004", "site"] == "head/neck"  # face
    assert t.loc["ISIC_1000005", "site"] == "anterior torso"  # abdomen
    assert t.loc["ISIC_1000005", "sex"] == "unknown"
    assert t.loc["ISIC_1000003", "site"] == "torso"  # trunk: unspecified torso
    assert math.isnan(t.loc["ISIC_1000003", "age"])  # "abc" became unknown
    assert t.loc["ISIC_1000003", "sex"] == "female"  # ...the other fields survive
    assert t.loc["ISIC_1000012", "site"] == "palms/soles"  # acral
    assert math.isnan(t.loc["ISIC_1000012", "age"])
    assert t.loc["ISIC_1000013", "site"] == "oral/genital"
    assert t.loc["ISIC_1000010", "label"] == "DF"
    assert math.isnan(t.loc["ISIC_1000010", "age"])
    assert (t.loc["ISIC_1000011", "sex"], t.loc["ISIC_1000011", "site"]) == ("unknown", "unknown")
    assert t.loc["ISIC_1000001", "age"] == 55.0
    assert t.loc["ISIC_1000001", "lesion_id"] == t.loc["ISIC_1000002", "lesion_id"]
    assert set(t["patient_id"]) == {""}
    assert set(t["source"]) == {"HAM10000"}
    for p in t["path"]:
        assert Path(p).is_absolute() and Path(p).is_file()
    assert table["age"].dtype == np.float64


def test_ham10000_images_folder_layout(synthetic_ham):
    table, report = read_dataset(synthetic_ham)
    assert report.fmt == "ham10000"
    assert len(table) == 84 and report.n_skipped == 0
    assert set(table["label"]) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"}
    assert table["lesion_id"].nunique() == 42


def test_ham10000_missing_required_column(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text("image_id,age\nISIC_1,30\n")
    with pytest.raises(DatasetError, match="dx"):
        read_ham10000(tmp_path)


def test_report_summary_and_dict(ham_dir):
    _, report = read_ham10000(ham_dir)
    text = report.summary()
    assert "rows read: 16" in text
    assert "images kept: 10" in text
    assert "'xyz'" in text and "ISIC_1000009" in text and "row 4" in text
    data = report.to_dict()
    json.dumps(data)  # serialisable
    assert data["skipped"] == 6
    assert data["unknown_labels"] == {"xyz": 2, "mystery": 1}
    assert data["class_counts"] == {"MEL": 2, "NV": 4, "BCC": 1, "AK": 1, "DF": 1, "VASC": 1}
    assert data["bad_rows"] == [{"row": 16, "image_id": "", "reason": "empty image_id"}]


# --------------------------------------------------------------------------------------------------
# ISIC 2019
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def isic2019_dir(tmp_path: Path) -> Path:
    root = tmp_path / "isic2019"
    root.mkdir()
    shutil.copy(FIXTURES / "isic2019_groundtruth.csv", root / datasets.ISIC2019_GT_CSV)
    shutil.copy(FIXTURES / "isic2019_metadata.csv", root / datasets.ISIC2019_META_CSV)
    images = root / "ISIC_2019_Training_Input"
    for name in ids_in(root / datasets.ISIC2019_GT_CSV, "image"):
        if name in ("ISIC_0000014", "ISIC_0000001_downsampled"):
            continue  # 14: missing on purpose; 1_downsampled: the same image as ISIC_0000001
        write_image(images / f"{name}.jpg")
    return root


def test_isic2019_report_counts_every_row(isic2019_dir):
    table, report = read_isic2019(isic2019_dir)
    assert list(table.columns) == list(COLUMNS)
    assert report.rows_read == 15
    assert len(table) == 8
    assert report.dropped == {"UNK (ISIC 2019 'none of the others' class)": 2}
    assert [r.row for r in report.bad_rows] == [9, 10, 11]
    assert "2 classes set" in report.bad_rows[0].reason
    assert "0 classes set" in report.bad_rows[1].reason
    assert "non-numeric" in report.bad_rows[2].reason
    assert [(r.row, r.image_id) for r in report.duplicates] == [(15, "ISIC_0000001")]
    assert report.missing_images == ["ISIC_0000014"]
    assert report.unknown_labels == {}
    assert sorted(r.image_id for r in report.metadata_issues) == ["ISIC_0000005", "ISIC_0000012"]
    assert_accounted(report, table)


def test_isic2019_values(isic2019_dir):
    table, _ = read_isic2019(isic2019_dir)
    t = table.set_index("image_id")
    assert list(t.index) == [
        "ISIC_0000001",
        "ISIC_0000002",
        "ISIC_0000003",
        "ISIC_0000004",
        "ISIC_0000005",
        "ISIC_0000011",
        "ISIC_0000012",
        "ISIC_0000013",
    ]
    assert list(t["label"]) == ["MEL", "NV", "BCC", "AK", "SCC", "BKL", "DF", "VASC"]
    # the _downsampled suffix is dropped from the id, the file is still found
    assert t.loc["ISIC_0000002", "path"].endswith("ISIC_0000002_downsampled.jpg")
    assert t.loc["ISIC_0000002", "lesion_id"] == "ISIC_0000002"  # missing -> image id
    assert t.loc["ISIC_0000002", "sex"] == "female"
    assert t.loc["ISIC_0000001", "lesion_id"] == t.loc["ISIC_0000011", "lesion_id"]
    assert t.loc["ISIC_0000001", "site"] == "anterior torso"
    assert t.loc["ISIC_0000004", "sex"] == "unknown" and math.isnan(t.loc["ISIC_0000004", "age"])
    assert t.loc["ISIC_0000005", "site"] == "unknown" and t.loc["ISIC_0000005", "age"] == 80
    assert math.isnan(t.loc["ISIC_0000012", "age"]) and t.loc["ISIC_0000012", "site"] == (
        "palms/soles"
    )
    assert set(t["source"]) == {"ISIC2019"}


def test_isic2019_without_metadata_file(isic2019_dir):
    (isic2019_dir / datasets.ISIC2019_META_CSV).unlink()
    table, report = read_dataset(isic2019_dir)
    assert report.fmt == "isic2019"
    assert len(table) == 8 and report.metadata_issues == []
    assert set(table["sex"]) == {"unknown"} and table["age"].isna().all()
    assert (table["lesion_id"] == table["image_id"]).all()
    assert any("not found" in n for n in report.notes)


# --------------------------------------------------------------------------------------------------
# ISIC archive (isic-cli export)
# --------------------------------------------------------------------------------------------------


def _archive(tmp_path: Path, fixture: str, skip: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy(FIXTURES / fixture, root / "metadata.csv")
    for image_id in ids_in(root / "metadata.csv", "isic_id"):
        if image_id not in skip:
            write_image(root / f"{image_id}.jpg")
    return root


def test_isic_archive_hierarchical(tmp_path):
    root = _archive(tmp_path, "isic_archive_metadata.csv", skip=("ISIC_2000015",))
    (root / "attribution.txt").write_text("credits")
    table, report = read_dataset(root)
    assert report.fmt == "isic-archive"
    assert report.rows_read == 17
    assert len(table) == 12
    assert report.unknown_labels == {
        "Indeterminate:Indeterminate melanocytic proliferations:Atypical Spitz tumor": 1,
        "Benign:Benign melanocytic proliferations": 1,
        "(empty)": 1,
    }
    assert report.missing_images == ["ISIC_2000015"]
    assert [r.image_id for r in report.duplicates] == ["ISIC_2000003"]
    assert [r.image_id for r in report.metadata_issues] == ["ISIC_2000016"]
    assert_accounted(report, table)
    t = table.set_index("image_id")
    assert t["label"].to_dict() == {
        "ISIC_2000001": "MEL",
        "ISIC_2000002": "MEL",
        "ISIC_2000003": "NV",
        "ISIC_2000004": "BCC",
        "ISIC_2000005": "AK",
        "ISIC_2000006": "AK",  # SCC in situ / Bowen's disease -> AK (HAM10000 akiec)
        "ISIC_2000007": "SCC",
        "ISIC_2000008": "BKL",
        "ISIC_2000009": "DF",
        "ISIC_2000010": "VASC",
        "ISIC_2000011": "VASC",
        "ISIC_2000016": "BKL",
    }
    assert t.loc[["ISIC_2000001", "ISIC_2000002"], "patient_id"].tolist() == ["IP_0000001"] * 2
    assert t.loc["ISIC_2000004", "patient_id"] == ""
    assert t.loc["ISIC_2000007", "lesion_id"] == "ISIC_2000007"
    assert t.loc["ISIC_2000016", "site"] == "torso" and math.isnan(t.loc["ISIC_2000016", "age"])
    assert t.loc["ISIC_2000005", "age"] == 75 and t.loc["ISIC_2000005", "sex"] == "female"


def test_isic_archive_legacy_diagnosis(tmp_path):
    root = _archive(tmp_path, "isic_archive_legacy.csv")
    table, report = read_isic_archive(root)
    assert report.unknown_labels == {"lentigo NOS": 2, "AIMP": 1}
    assert list(table["label"]) == ["MEL", "NV", "BCC", "AK", "BKL", "BKL", "DF", "VASC", "SCC"]
    assert (table["lesion_id"] == table["image_id"]).all()
    assert_accounted(report, table)


@pytest.mark.parametrize(
    ("dx", "code"),
    [
        ("Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma Invasive", "MEL"),
        ("Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma, NOS", "MEL"),
        ("Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma metastasis", "MEL"),
        (
            "Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma in situ:"
            "Melanoma in situ, Lentigo maligna type",
            "MEL",
        ),
        ("Benign:Benign melanocytic proliferations:Nevus:Blue nevus", "NV"),
        ("benign:benign melanocytic proliferations:nevus", "NV"),  # case-insensitive
        ("Benign:Benign melanocytic proliferations:Lentigo simplex", None),
        (
            "Malignant:Malignant adnexal epithelial proliferations - Follicular:"
            "Basal cell carcinoma:Basal cell carcinoma, Superficial",
            "BCC",
        ),
        (
            "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis:"
            "Actinic keratosis, Bowenoid",
            "AK",
        ),
        (
            "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ:"
            "Squamous cell carcinoma in situ, Bowens disease",
            "AK",
        ),
        (
            "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma, Invasive:"
            "Squamous cell carcinoma, Invasive, Keratoacanthoma-type",
            "SCC",
        ),
        ("Malignant:Malignant epidermal proliferations:Squamous cell carcinoma, NOS", "SCC"),
        ("Malignant:Malignant epidermal proliferations:Keratoacanthoma", "SCC"),
        ("Malignant:Malignant epidermal proliferations:Bowenoid papulosis", None),
        ("Benign:Benign epidermal proliferations:Lichen planus like keratosis", "BKL"),
        ("Benign:Benign epidermal proliferations:Pigmented benign keratosis", "BKL"),
        ("Benign:Benign epidermal proliferations:Clear cell acanthoma", None),
        (
            "Benign:Benign soft tissue proliferations - Fibro-histiocytic:Dermatofibroma:"
            "Dermatofibroma, Aneurysmal",
            "DF",
        ),
        (
            "Malignant:Malignant soft tissue proliferations - Fibro-histiocytic:"
            "Dermatofibrosarcoma protuberans",
            None,
        ),
        ("Benign:Benign soft tissue proliferations - Vascular:Pyogenic granuloma", "VASC"),
        ("Benign:Benign soft tissue proliferations - Vascular:Hemangioma", "VASC"),
        ("Benign:Benign soft tissue proliferations - Vascular:Venous lake", None),
        ("Benign:Hemorrhagic lesions:Hemorrhage:Subungual hemorrhage", "VASC"),
        ("Malignant:Collision - At least one malignant proliferation", None),
        ("Benign", None),
        ("", None),
        ("melanoma", "MEL"),
        ("seborrheic keratosis", "BKL"),
        ("solar lentigo", "BKL"),
        ("vascular lesion", "VASC"),
        ("atypical melanocytic proliferation", None),
        ("other", None),
    ],
)
def test_isic_diagnosis_mapping(dx, code):
    assert isic_diagnosis_to_code(dx) == code


def test_every_mapped_hierarchy_entry_exists_in_isic_metadata():
    """The map's keys are real ISIC diagnosis paths (catches a typo that would map nothing)."""
    from isic_metadata.diagnosis_hierarchical import DiagnosisEnum

    known = {e.value for e in DiagnosisEnum}
    assert set(datasets.ISIC_HIERARCHY_MAP) <= known
    from isic_metadata.fields import LegacyDxEnum

    assert set(datasets.ISIC_LEGACY_MAP) <= {e.value for e in LegacyDxEnum}


# --------------------------------------------------------------------------------------------------
# Class folders
# --------------------------------------------------------------------------------------------------


def test_class_folders(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "Melanoma" / "a1.jpg")
    write_image(root / "Melanoma" / "a2.PNG")
    write_image(root / "Melanoma" / "deeper" / "a3.jpeg")
    write_image(root / "nevus" / "b1.jpg")
    write_image(root / "nevus" / "a1.jpg")  # same id as Melanoma/a1.jpg
    write_image(root / "akiec" / "c1.jpg")
    write_image(root / "mel" / "d1.jpg")
    write_image(root / "holiday photos" / "x1.jpg")
    write_image(root / "holiday photos" / "x2.jpg")
    (root / "nevus" / "._b1.jpg").write_bytes(b"\x00\x05\x16\x07 apple double")
    (root / "nevus" / ".hidden.jpg").write_bytes(b"junk")
    (root / "nevus" / "notes.txt").write_text("not an image")
    write_image(root / ".trash" / "MEL" / "z.jpg")
    write_image(root / "loose.jpg")
    table, report = read_dataset(root)
    assert report.fmt == "folders"
    assert report.rows_read == 9
    assert report.unknown_labels == {"holiday photos": 2}
    assert [r.image_id for r in report.duplicates] == ["a1"]
    assert sorted(table["image_id"]) == ["a1", "a2", "a3", "b1", "c1", "d1"]
    t = table.set_index("image_id")
    assert t.loc["a1", "label"] == "MEL"  # first folder (sorted) wins
    assert t.loc["c1", "label"] == "AK" and t.loc["d1", "label"] == "MEL"
    assert (table["lesion_id"] == table["image_id"]).all()
    assert set(table["sex"]) == {"unknown"} and set(table["site"]) == {"unknown"}
    assert table["age"].isna().all()
    notes = " ".join(report.notes)
    assert "per image" in notes and "leak" in notes
    assert "2 hidden" in notes and "1 files that are not images" in notes
    assert "1 image files directly" in notes
    assert_accounted(report, table)
    pd.testing.assert_frame_equal(read_class_folders(root)[0], table)


# --------------------------------------------------------------------------------------------------
# Detection and errors
# --------------------------------------------------------------------------------------------------


def test_format_detection(tmp_path, ham_dir, isic2019_dir):
    assert datasets.detect_format(ham_dir) == "ham10000"
    assert datasets.detect_format(isic2019_dir) == "isic2019"
    archive = _archive(tmp_path, "isic_archive_legacy.csv")
    assert datasets.detect_format(archive) == "isic-archive"
    folders = tmp_path / "f"
    write_image(folders / "BCC" / "x.jpg")
    assert datasets.detect_format(folders) == "folders"
    # a CSV path selects its folder and, by its name, the reader
    table, report = read_dataset(ham_dir / "HAM10000_metadata.csv")
    assert report.fmt == "ham10000" and len(table) == 10
    # an explicit format wins over detection
    with pytest.raises(DatasetError, match=r"HAM10000_metadata\.csv"):
        read_dataset(isic2019_dir, "ham10000")


def test_unknown_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "holiday").mkdir()
    (tmp_path / "metadata.csv").write_text("name,value\na,1\n")  # not an ISIC export
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path)
    msg = str(err.value)
    for looked_for in ("HAM10000_metadata.csv", "ISIC_2019_Training_GroundTruth.csv", "isic_id"):
        assert looked_for in msg
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="Unknown data set format"):
        read_dataset(tmp_path, "coco")


def test_encode_metadata_matches_the_app_encoder(ham_dir):
    table, _ = read_ham10000(ham_dir)
    enc = datasets.encode_metadata(table, DEFAULT_ENCODING)
    assert enc.dtype == np.float32 and enc.shape == (len(table), DEFAULT_ENCODING.size)
    row = table.index[table["image_id"] == "ISIC_1000004"][0]
    expected = DEFAULT_ENCODING.encode(PatientMetadata(age=70, sex="male", site="head/neck"))
    np.testing.assert_array_equal(enc[row], expected)
    row = table.index[table["image_id"] == "ISIC_1000003"][0]  # trunk: spread over the torso
    expected = DEFAULT_ENCODING.encode(PatientMetadata(age=None, sex="female", site="torso"))
    np.testing.assert_array_equal(enc[row], expected)


def run_command(module, argv: list[str]) -> int:
    """Run one sub-command the way trainer.cli does, without importing the other steps."""
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_data_command(ham_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert run_command(datasets, [str(ham_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows read: 16" in printed and "MEL" in printed and "distinct lesions: 9" in printed
    data = json.loads(out.read_text())
    assert data["rows_read"] == 16 and data["images_found"] == 10
    with pytest.raises(DatasetError, match="does not exist"):
        run_command(datasets, [str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit):  # argparse refuses an unknown format
        run_command(datasets, [str(ham_dir), "--format", "coco"])


@pytest.mark.shared_data
def test_real_ham10000_table(shared_data_dir):
    root = shared_data_dir / "ham10000"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    table, report = read_dataset(root)
    assert report.fmt == "ham10000"
    assert len(table) == 10015 and report.n_skipped == 0
    assert report.class_counts == {
        "MEL": 1113,
        "NV": 6705,
        "BCC": 514,
        "AK": 327,
        "BKL": 1099,
        "DF": 115,
        "VASC": 142,
    }
    assert table["lesion_id"].nunique() == 7470
    assert table["image_id"].is_unique
    assert (table["sex"] == "unknown").sum() == 57
    assert table["age"].isna().sum() == 57
    assert set(table["site"]) <= {*DEFAULT_ENCODING.site_choices()}
    assert not report.metadata_issues
