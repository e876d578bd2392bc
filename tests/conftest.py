"""Shared pytest fixtures and the ``shared_data`` marker.

``shared_data``: tests that read the real data sets under ``$LESIONLENS_SHARED_DATA`` (default
``<repo>/../shared/data``). They are skipped, with the reason, when that folder is missing, so the
suite passes on a machine without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_path() -> Path:
    """Where the real data sets are (may not exist)."""
    env = os.environ.get("LESIONLENS_SHARED_DATA")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def has_shared_data() -> bool:
    return shared_data_path().is_dir()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_shared_data():
        return
    skip = pytest.mark.skip(
        reason=f"shared data not found at {shared_data_path()} (set LESIONLENS_SHARED_DATA)"
    )
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data folder; skips the test when it is missing."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set LESIONLENS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def synthetic_ham(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HAM10000-layout data set (7 classes x 12 images, 2 images per lesion), made once."""
    from tests.synthetic import make_ham10000

    return make_ham10000(tmp_path_factory.mktemp("synthetic_ham"))
