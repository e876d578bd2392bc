"""Patient metadata: the schema, its validation, the mappings from public data sets, and the encoder.

One encoder, configured by a spec that travels inside the model card, turns a :class:`PatientMetadata`
into the float vector the model was trained on. The trainer and the app both call it, so age scaling,
the order of the site list and the meaning of "unknown" cannot drift between training and use.

Vector layout (spec version 1), for the default spec::

    [age/100, age_unknown,
     sex_female, sex_male, sex_unknown,
     site_<each ISIC general site>..., site_unknown]

"Unknown" is never a zero that could be mistaken for a value: each field has an explicit flag.
HAM10000's ``trunk`` does not say which side of the torso: it is encoded as the unspecified site
``torso`` (as the ISIC 2020 challenge spells it), spread evenly over anterior, posterior and lateral
torso rather than guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from isic_metadata.fields import AnatomSiteGeneralEnum

from desktop_app.core.errors import MetadataError

UNKNOWN = "unknown"
AGE_MIN, AGE_MAX = 0.0, 120.0
SEXES: tuple[str, ...] = ("female", "male")
# The ISIC general anatomical sites, in the order isic-metadata declares them.
SITES: tuple[str, ...] = tuple(e.value for e in AnatomSiteGeneralEnum)
TORSO = "torso"
TORSO_PARTS: tuple[str, ...] = ("anterior torso", "posterior torso", "lateral torso")
SITE_CHOICES: tuple[str, ...] = (*SITES, TORSO, UNKNOWN)
SEX_CHOICES: tuple[str, ...] = (*SEXES, UNKNOWN)

# HAM10000 `localization` -> ISIC general site. Documented in docs/metadata.md.
HAM10000_LOCALIZATION: dict[str, str] = {
    "abdomen": "anterior torso",
    "acral": "palms/soles",
    "back": "posterior torso",
    "chest": "anterior torso",
    "ear": "head/neck",
    "face": "head/neck",
    "foot": "lower extremity",
    "genital": "oral/genital",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "neck": "head/neck",
    "scalp": "head/neck",
    "trunk": TORSO,
    "upper extremity": "upper extremity",
    "unknown": UNKNOWN,
}

_MISSING_TEXT = {"", "unknown", "nan", "none", "null", "na", "n/a", "?", "-"}
_SEX_SYNONYMS = {"female": "female", "f": "female", "male": "male", "m": "male"}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


def _norm_text(value: Any) -> str:
    text = str(value).strip().lower().replace("_", " ")
    text = re.sub(r"\s*/\s*", "/", text)
    return re.sub(r"\s+", " ", text)


def parse_age(value: Any) -> float | None:
    """Age in years, or None when unknown. Raises MetadataError for anything else."""
    if _is_missing(value):
        return None
    try:
        age = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise MetadataError(
            "age", f"Age must be a number of years between 0 and 120, or unknown; got {value!r}."
        ) from None
    if math.isnan(age):
        return None
    if not AGE_MIN <= age <= AGE_MAX:
        raise MetadataError(
            "age", f"Age must be between 0 and 120 years, or unknown; got {value!r}."
        )
    return age


def parse_sex(value: Any) -> str:
    if _is_missing(value):
        return UNKNOWN
    key = _norm_text(value)
    if key in _SEX_SYNONYMS:
        return _SEX_SYNONYMS[key]
    raise MetadataError("sex", f"Sex must be one of {', '.join(SEX_CHOICES)}; got {value!r}.")


def parse_site(value: Any) -> str:
    """An anatomical site on the ISIC general vocabulary (plus 'torso' and 'unknown')."""
    if _is_missing(value):
        return UNKNOWN
    key = _norm_text(value)
    if key in SITE_CHOICES:
        return key
    raise MetadataError(
        "site",
        f"Anatomical site must be one of {', '.join(SITE_CHOICES)}; got {value!r}.",
    )


def site_from_ham10000(localization: Any) -> str:
    """Map a HAM10000 ``localization`` value to the ISIC general site vocabulary."""
    if _is_missing(localization):
        return UNKNOWN
    key = _norm_text(localization)
    if key in HAM10000_LOCALIZATION:
        return HAM10000_LOCALIZATION[key]
    raise MetadataError(
        "site",
        f"Unknown HAM10000 localization {localization!r}; known values are "
        f"{', '.join(sorted(HAM10000_LOCALIZATION))}.",
    )


def site_from_isic(anatom_site_general: Any) -> str:
    """Map ISIC 2019/2020/archive ``anatom_site_general`` (already the general vocabulary)."""
    return parse_site(anatom_site_general)


@dataclass(frozen=True)
class PatientMetadata:
    """What the clinician knows about the patient and the lesion. Every field may be unknown."""

    age: float | None = None
    sex: str = UNKNOWN
    site: str = UNKNOWN

    def __post_init__(self) -> None:
        object.__setattr__(self, "age", parse_age(self.age))
        object.__setattr__(self, "sex", parse_sex(self.sex))
        object.__setattr__(self, "site", parse_site(self.site))

    @property
    def is_unknown(self) -> bool:
        return self.age is None and self.sex == UNKNOWN and self.site == UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"age": self.age, "sex": self.sex, "site": self.site}

    def describe(self) -> str:
        age = UNKNOWN if self.age is None else f"{self.age:g}"
        return f"age {age}, sex {self.sex}, site {self.site}"


# Column names of the public data sets, in order of preference.
AGE_COLUMNS = ("age", "age_approx")
SEX_COLUMNS = ("sex",)
ISIC_SITE_COLUMNS = ("anatom_site_general", "anatom_site_general_challenge", "site")
HAM_SITE_COLUMNS = ("localization",)


def metadata_from_row(row: Mapping[str, Any]) -> PatientMetadata:
    """Build metadata from a CSV row with ISIC (age_approx, sex, anatom_site_general) or HAM10000
    (age, sex, localization) column names. Raises MetadataError naming the bad field."""

    def first(columns: tuple[str, ...]) -> tuple[bool, Any]:
        for name in columns:
            if name in row:
                return True, row[name]
        return False, None

    _, age = first(AGE_COLUMNS)
    _, sex = first(SEX_COLUMNS)
    found_isic, site = first(ISIC_SITE_COLUMNS)
    if found_isic:
        site_value = site_from_isic(site)
    else:
        found_ham, loc = first(HAM_SITE_COLUMNS)
        site_value = site_from_ham10000(loc) if found_ham else UNKNOWN
    return PatientMetadata(age=parse_age(age), sex=parse_sex(sex), site=site_value)


UNKNOWN_METADATA = PatientMetadata()


@dataclass(frozen=True)
class MetadataEncoding:
    """The encoding spec stored in the model card. Version 1 is described in the module docstring."""

    version: int = 1
    age_scale: float = 100.0
    sexes: tuple[str, ...] = SEXES
    sites: tuple[str, ...] = SITES
    partial_sites: dict[str, tuple[str, ...]] = field(default_factory=lambda: {TORSO: TORSO_PARTS})

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ValueError(f"unsupported metadata encoding version {self.version}")
        if not self.age_scale > 0:
            raise ValueError("age_scale must be positive")
        for name, parts in self.partial_sites.items():
            missing = [p for p in parts if p not in self.sites]
            if missing or not parts:
                raise ValueError(f"partial site {name!r} refers to unknown sites {missing}")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "age_scale": self.age_scale,
            "sexes": list(self.sexes),
            "sites": list(self.sites),
            "partial_sites": {k: list(v) for k, v in self.partial_sites.items()},
            "feature_names": self.feature_names(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetadataEncoding:
        enc = cls(
            version=int(data["version"]),
            age_scale=float(data["age_scale"]),
            sexes=tuple(data["sexes"]),
            sites=tuple(data["sites"]),
            partial_sites={k: tuple(v) for k, v in dict(data.get("partial_sites", {})).items()},
        )
        names = data.get("feature_names")
        if names is not None and list(names) != enc.feature_names():
            raise ValueError("metadata feature_names do not match the encoding spec")
        return enc

    # -- layout -------------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return [
            "age_scaled",
            "age_unknown",
            *(f"sex_{s}" for s in self.sexes),
            "sex_unknown",
            *(f"site_{s}" for s in self.sites),
            "site_unknown",
        ]

    @property
    def size(self) -> int:
        return len(self.feature_names())

    def field_slices(self) -> dict[str, slice]:
        """Which vector positions belong to each field (used for metadata dropout in training)."""
        n_sex, n_site = len(self.sexes) + 1, len(self.sites) + 1
        return {
            "age": slice(0, 2),
            "sex": slice(2, 2 + n_sex),
            "site": slice(2 + n_sex, 2 + n_sex + n_site),
        }

    def site_choices(self) -> tuple[str, ...]:
        return (*self.sites, *self.partial_sites, UNKNOWN)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, meta: PatientMetadata) -> np.ndarray:
        """One patient -> float32 vector of length ``size``."""
        vec = np.zeros(self.size, dtype=np.float32)
        if meta.age is None:
            vec[1] = 1.0
        else:
            vec[0] = meta.age / self.age_scale
        sl = self.field_slices()
        sex = vec[sl["sex"]]
        if meta.sex in self.sexes:
            sex[self.sexes.index(meta.sex)] = 1.0
        else:
            sex[-1] = 1.0
        site = vec[sl["site"]]
        if meta.site in self.sites:
            site[self.sites.index(meta.site)] = 1.0
        elif meta.site in self.partial_sites:
            parts = self.partial_sites[meta.site]
            for part in parts:
                site[self.sites.index(part)] = 1.0 / len(parts)
        elif meta.site == UNKNOWN:
            site[-1] = 1.0
        else:
            raise MetadataError(
                "site",
                f"This model does not know the site {meta.site!r}; it knows "
                f"{', '.join(self.site_choices())}.",
            )
        return vec

    def encode_many(self, metas: list[PatientMetadata]) -> np.ndarray:
        if not metas:
            return np.zeros((0, self.size), dtype=np.float32)
        return np.stack([self.encode(m) for m in metas])

    def unknown_vector(self) -> np.ndarray:
        return self.encode(UNKNOWN_METADATA)

    def decode(self, vec: np.ndarray) -> PatientMetadata:
        """Inverse of :meth:`encode` (for tests, logs-free debugging and the batch store)."""
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (self.size,):
            raise ValueError(f"expected a vector of length {self.size}, got shape {vec.shape}")
        sl = self.field_slices()
        age = None if vec[1] >= 0.5 else float(round(vec[0] * self.age_scale, 4))
        sex_v = vec[sl["sex"]]
        sex = UNKNOWN if sex_v[-1] >= 0.5 else self.sexes[int(np.argmax(sex_v[:-1]))]
        site_v = vec[sl["site"]]
        if site_v[-1] >= 0.5:
            site = UNKNOWN
        elif site_v[:-1].max() >= 0.99:
            site = self.sites[int(np.argmax(site_v[:-1]))]
        else:
            hot = {self.sites[i] for i in np.flatnonzero(site_v[:-1] > 0)}
            site = next(n for n, parts in self.partial_sites.items() if set(parts) == hot)
        return PatientMetadata(age=age, sex=sex, site=site)


DEFAULT_ENCODING = MetadataEncoding()
