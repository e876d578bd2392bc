"""The diagnostic class catalog, on the ISIC challenge codes.

A model never relies on the order written here: its card lists the codes it was trained on, in the
order of its output vector, and the app reads them from there. The catalog only supplies the facts a
code stands for (full name, malignancy) and the spellings other data sets use for it, so that HAM10000's
``akiec``, ISIC 2019's ``AK`` and a folder named ``actinic keratosis`` all become ``AK``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from desktop_app.core.errors import LesionLensError


@dataclass(frozen=True)
class LesionClass:
    """One diagnostic class: its ISIC code, the name a clinician reads, and whether it is malignant."""

    code: str
    name: str
    malignant: bool
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "malignant": self.malignant}


# ISIC 2019 codes. AK includes HAM10000's "akiec" (actinic keratoses and intraepithelial carcinoma /
# Bowen's disease): both are treated as malignant / pre-malignant for the risk score, as in the
# literature that reports "malignant vs benign" on HAM10000 (MEL, BCC, AKIEC).
CATALOG: tuple[LesionClass, ...] = (
    LesionClass("MEL", "Melanoma", True, ("mel", "melanoma")),
    LesionClass("NV", "Melanocytic nevus", False, ("nv", "nevus", "naevus", "melanocytic nevus")),
    LesionClass("BCC", "Basal cell carcinoma", True, ("bcc", "basal cell carcinoma")),
    LesionClass(
        "AK",
        "Actinic keratosis / intraepithelial carcinoma",
        True,
        ("ak", "akiec", "actinic keratosis", "actinic keratoses", "bowen", "bowens disease"),
    ),
    LesionClass(
        "BKL",
        "Benign keratosis (solar lentigo, seborrheic keratosis, lichen planus-like keratosis)",
        False,
        ("bkl", "benign keratosis", "seborrheic keratosis", "solar lentigo"),
    ),
    LesionClass("DF", "Dermatofibroma", False, ("df", "dermatofibroma")),
    LesionClass(
        "VASC",
        "Vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
        False,
        ("vasc", "vascular", "vascular lesion"),
    ),
    LesionClass("SCC", "Squamous cell carcinoma", True, ("scc", "squamous cell carcinoma")),
)

CODES: tuple[str, ...] = tuple(c.code for c in CATALOG)
_BY_CODE = {c.code: c for c in CATALOG}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_BY_ALIAS: dict[str, str] = {}
for _c in CATALOG:
    for _a in (_c.code, _c.name, *_c.aliases):
        _BY_ALIAS[_norm(_a)] = _c.code


class UnknownClassError(LesionLensError, KeyError):
    """A label that names no class of the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown class"


def get(code: str) -> LesionClass:
    """The catalog entry for an ISIC code (exact, upper-case)."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise UnknownClassError(
            f"Unknown class code {code!r}; known codes are {', '.join(CODES)}."
        ) from None


def normalize_label(label: str) -> str:
    """Map any known spelling of a class (``akiec``, ``Melanoma``, ``nevus``) to its ISIC code."""
    key = _norm(str(label))
    if key in _BY_ALIAS:
        return _BY_ALIAS[key]
    raise UnknownClassError(
        f"Unknown diagnosis label {label!r}; known classes are {', '.join(CODES)}."
    )


def is_malignant(code: str) -> bool:
    return get(code).malignant
