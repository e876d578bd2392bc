"""Errors as values a clinician can read.

Every failure the user can cause (a bad image, bad metadata, a wrong model file) is raised as one of
these, with a message written for the person at the screen, not for a developer. The UI and the CLI
show ``str(error)``; nobody swallows them.
"""

from __future__ import annotations


class LesionLensError(Exception):
    """Base of every error meant to be shown to the user."""


class ImageError(LesionLensError):
    """The file could not be used as a dermoscopy image (unreadable, empty, absurd size...)."""


class MetadataError(LesionLensError, ValueError):
    """A patient metadata value is invalid. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ModelError(LesionLensError):
    """The model file is missing, corrupt, tampered with, or does not carry a valid model card."""


class DatasetError(LesionLensError):
    """A training data set could not be read (missing files, unknown layout)."""
