"""Never a half file: a failed write leaves the old file (or none) and no temporary behind."""

import os

import pytest

from desktop_app.core.atomic import atomic_open, atomic_write_text, atomic_write_with


def test_success_replaces_the_file(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["report.txt"]


def test_failure_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.txt"]


def test_writer_callback_gets_a_path_with_the_same_suffix(tmp_path):
    seen = []

    def writer(path: str) -> None:
        seen.append(path)
        raise OSError("no space left on device")

    with pytest.raises(OSError):
        atomic_write_with(tmp_path / "plot.png", writer)
    assert seen[0].endswith(".png")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_raises_and_writes_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write_text(ro / "x.txt", "data")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_written_files_get_ordinary_permissions_not_owner_only(tmp_path):
    target = tmp_path / "report.txt"
    atomic_write_text(target, "x")
    assert target.stat().st_mode & 0o044, "group/other should be able to read per the umask"
