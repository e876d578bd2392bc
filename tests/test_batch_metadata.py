"""The batch's metadata spreadsheet: ISIC and HAM10000 column names, the join by file name or
stem, and every row that does not join cleanly reported (the images concerned run unknown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop_app.core.batch import run_batch
from desktop_app.core.batch.metadata_csv import load_metadata_csv
from desktop_app.core.batch.store import ResultStore
from desktop_app.core.engine import Engine
from desktop_app.core.errors import MetadataError
from desktop_app.core.metadata import PatientMetadata
from tests import model_factory as mf
from tests.test_batch_scan import write_good_images

IMAGES = ["ISIC_0001.jpg", "ISIC_0002.JPG", "ISIC_0003.png", "sub/ISIC_0004.jpg", "ISIC_0005.jpg"]


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding, newline="")
    return path


def test_isic_columns_join_by_stem(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "isic.csv",
        "isic_id,age_approx,sex,anatom_site_general\n"
        "ISIC_0001,55,male,posterior torso\n"
        "isic_0002,40,female,head/neck\n"  # case-insensitive
        "ISIC_0004,,unknown,\n"
        "ISIC_0099,30,male,lower extremity\n",  # no such image
    )
    table = load_metadata_csv(csv, IMAGES)
    assert table.lookup("ISIC_0001.jpg") == PatientMetadata(55, "male", "posterior torso")
    assert table.lookup("ISIC_0002.JPG") == PatientMetadata(40, "female", "head/neck")
    assert table.lookup("sub/ISIC_0004.jpg") == PatientMetadata()
    assert table.lookup("ISIC_0003.png") is None
    assert table.matched == 3
    text = "\n".join(table.problems)
    assert "row 5: 'ISIC_0099' matches no image" in text
    assert "2 of 5 images have no row" in text and "ISIC_0003.png" in text


def test_ham10000_columns_join_by_file_name(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "ham.csv",
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0001.jpg,mel,histo,80.0,male,scalp\n"
        "HAM_2,ISIC_0003.png,nv,follow_up,35.0,female,trunk\n"
        "HAM_3,ISIC_0005,bkl,histo,,unknown,unknown\n",
    )
    table = load_metadata_csv(csv, IMAGES)
    assert table.lookup("ISIC_0001.jpg") == PatientMetadata(80, "male", "head/neck")
    assert table.lookup("ISIC_0003.png") == PatientMetadata(35, "female", "torso")
    assert table.lookup("ISIC_0005.jpg") == PatientMetadata()


def test_invalid_values_are_reported_and_run_unknown(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "bad.csv",
        "image,age_approx,sex,anatom_site_general\n"
        "ISIC_0001,150,male,posterior torso\n"
        "ISIC_0002,40,robot,head/neck\n"
        "ISIC_0003,40,female,elbow\n"
        "ISIC_0005,60,male,anterior torso\n"
        ",60,male,anterior torso\n",
    )
    table = load_metadata_csv(csv, IMAGES)
    for rel in ("ISIC_0001.jpg", "ISIC_0002.JPG", "ISIC_0003.png"):
        assert table.lookup(rel) is None
    assert table.lookup("ISIC_0005.jpg") == PatientMetadata(60, "male", "anterior torso")
    problems = table.problems
    assert any(p.startswith("row 2 ('ISIC_0001'): invalid age") for p in problems)
    assert any(p.startswith("row 3 ('ISIC_0002'): invalid sex") for p in problems)
    assert any(p.startswith("row 4 ('ISIC_0003'): invalid site") for p in problems)
    assert any(p.startswith("row 6: no image named") for p in problems)


def test_conflicting_duplicates_and_ambiguous_names(tmp_path: Path) -> None:
    images = ["a.jpg", "a.png", "b.jpg", "x/c.jpg", "y/c.jpg"]
    csv = write_csv(
        tmp_path / "dup.csv",
        "file;age;sex\n"  # semicolon-separated, as European spreadsheets write it
        "b.jpg;30;male\n"
        "b;31;male\n"  # the same image by stem, saying something else
        "a;50;female\n"  # a.jpg or a.png?
        "c.jpg;20;male\n"  # x/c.jpg or y/c.jpg?
        "x/c.jpg;22;female\n",  # by relative path: unambiguous
    )
    table = load_metadata_csv(csv, images)
    assert table.lookup("b.jpg") is None
    assert table.lookup("a.jpg") is None and table.lookup("a.png") is None
    assert table.lookup("x/c.jpg") == PatientMetadata(22, "female")
    assert table.lookup("y/c.jpg") is None
    text = "\n".join(table.problems)
    assert "rows 2 and 3 say different things about 'b.jpg'" in text
    assert "'a' matches 2 images" in text
    assert "'c.jpg' matches 2 images" in text


def test_excel_bom_and_identical_duplicates(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "excel.csv",
        "\ufeffImage_Name,Age_Approx,Sex\r\nISIC_0001,45,F\r\nISIC_0001.jpg,45,female\r\n",
    )
    table = load_metadata_csv(csv, IMAGES)
    assert table.lookup("ISIC_0001.jpg") == PatientMetadata(45, "female")
    assert not any("different things" in p for p in table.problems)


def test_unusable_files_raise_readable_errors(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="not found"):
        load_metadata_csv(tmp_path / "missing.csv", IMAGES)
    with pytest.raises(MetadataError, match="no column naming the image"):
        load_metadata_csv(write_csv(tmp_path / "x.csv", "name,age\nISIC_0001,3\n"), IMAGES)
    with pytest.raises(MetadataError, match="empty"):
        load_metadata_csv(write_csv(tmp_path / "e.csv", ""), IMAGES)


def test_many_unmatched_rows_are_summarised(tmp_path: Path) -> None:
    rows = "".join(f"ISIC_9{i:04d},50,male\n" for i in range(40))
    csv = write_csv(tmp_path / "big.csv", "image,age,sex\n" + rows)
    problems = load_metadata_csv(csv, IMAGES).problems
    assert sum("matches no image" in p for p in problems) == 10
    assert "... and 30 more rows that match no image in the folder" in problems


def test_batch_uses_the_joined_metadata(tmp_path: Path) -> None:
    engine = Engine.from_bytes(mf.synthetic_onnx(image_size=32), providers="cpu")
    folder = tmp_path / "imgs"
    names = write_good_images(folder, 4)
    csv = write_csv(
        tmp_path / "meta.csv",
        "image_id,age,sex,localization\n"
        f"{names[0]},70,male,back\n"
        f"{Path(names[1]).stem},200,female,face\n"
        f"{names[2]},30,female,trunk\n"
        "nobody.jpg,30,female,trunk\n",
    )
    out = tmp_path / "out"
    summary = run_batch(folder, engine, out, metadata_csv=csv)
    assert summary.ok == 4
    assert any("matches no image" in p for p in summary.problems)
    assert any("invalid age" in p for p in summary.problems)
    with ResultStore(summary.database) as store:
        used = {r.relative_path: r.metadata for r in store.results(engine.sha256)}
        assert used[names[0]] == {"age": 70.0, "sex": "male", "site": "posterior torso"}
        assert used[names[1]] == {"age": None, "sex": "unknown", "site": "unknown"}
        assert used[names[2]] == {"age": 30.0, "sex": "female", "site": "torso"}
        assert used[names[3]] == {"age": None, "sex": "unknown", "site": "unknown"}
        # the metadata reached the model: the same image without it gets another answer
        with_meta = store.get(names[0], engine.sha256)
    alone = engine.predict_file(folder / names[0])
    assert with_meta is not None
    assert with_meta.probabilities["MEL"] != pytest.approx(alone.probability("MEL"), abs=1e-6)
    meta_pred = engine.predict_file(
        folder / names[0], PatientMetadata(70, "male", "posterior torso")
    )
    assert with_meta.probabilities["MEL"] == pytest.approx(meta_pred.probability("MEL"), abs=1e-6)


def test_image_only_model_ignores_the_spreadsheet(tmp_path: Path) -> None:
    engine = Engine.from_bytes(mf.synthetic_onnx(image_size=32, metadata=False), providers="cpu")
    folder = tmp_path / "imgs"
    names = write_good_images(folder, 2)
    csv = write_csv(tmp_path / "m.csv", f"image,age,sex\n{names[0]},50,male\n")
    summary = run_batch(folder, engine, tmp_path / "out", metadata_csv=csv)
    assert summary.ok == 2
    assert "does not use age, sex or site" in summary.problems[0]
    with ResultStore(summary.database) as store:
        assert all(r.metadata == {} for r in store.results())
