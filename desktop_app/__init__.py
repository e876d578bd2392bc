"""LesionLens: offline decision support for clinicians reading dermoscopy images.

Intended use: decision support for trained clinicians reading dermoscopy images. Not a diagnosis,
not for self-screening, not validated for clinical use.
"""

__version__ = "0.1.0"

INTENDED_USE = (
    "Decision support for trained clinicians reading dermoscopy images of skin lesions. "
    "It is not a diagnosis, not for self-screening by patients, and not validated for clinical use."
)
