"""Offline batch review of a folder of dermoscopy images (see docs/batch-api.md).

One pipeline serves ``lesionlens batch`` and the window's Batch view; no Qt here. The summary PDF
module (reportlab) is imported only when used.
"""

from __future__ import annotations

from typing import Any

from desktop_app.core.batch.metadata_csv import MetadataTable, load_metadata_csv
from desktop_app.core.batch.pipeline import (
    CSV_NAME,
    REPORTS_DIR,
    SUMMARY_NAME,
    BatchError,
    BatchProgress,
    BatchSummary,
    report_relative_path,
    run_batch,
)
from desktop_app.core.batch.scan import ScanError, ScanResult, scan_folder
from desktop_app.core.batch.store import (
    DATABASE_NAME,
    THUMBNAIL_SIDE,
    CaseResult,
    Preview,
    ResultStore,
    StoreError,
)

__all__ = [
    "CSV_NAME",
    "DATABASE_NAME",
    "REPORTS_DIR",
    "SUMMARY_NAME",
    "THUMBNAIL_SIDE",
    "BatchError",
    "BatchProgress",
    "BatchSummary",
    "CaseResult",
    "MetadataTable",
    "Preview",
    "ResultStore",
    "ScanError",
    "ScanResult",
    "StoreError",
    "load_metadata_csv",
    "report_relative_path",
    "run_batch",
    "scan_folder",
    "write_batch_summary",
]


def __getattr__(name: str) -> Any:
    if name == "write_batch_summary":
        from desktop_app.core.batch.summary_pdf import write_batch_summary

        return write_batch_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
