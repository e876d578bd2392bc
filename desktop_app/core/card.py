"""The model card: the contract a model file carries about itself.

It is JSON, validated against a versioned JSON Schema, and stored in the ONNX file's
``metadata_props`` under :data:`CARD_KEY`. The app reads classes, the metadata encoding, the input size
and preprocessing, the calibration temperature and the malignancy threshold from here, never from its
own constants: a model trained on ISIC 2019's 8 classes works in the app with no code change.

The trainer writes cards with :func:`card_to_json`; the app reads them with :func:`card_from_json`.
Both sides validate, so a card the app cannot understand is refused at export time already.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema

from desktop_app import INTENDED_USE
from desktop_app.core.classes import LesionClass
from desktop_app.core.errors import ModelError
from desktop_app.core.imaging import PreprocessSpec
from desktop_app.core.metadata import MetadataEncoding

CARD_KEY = "lesionlens.model_card"
SCHEMA_ID = "lesionlens.model_card"
SCHEMA_VERSION = 1

_CLASS = {
    "type": "object",
    "required": ["code", "name", "malignant"],
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,15}$"},
        "name": {"type": "string", "minLength": 1},
        "malignant": {"type": "boolean"},
    },
}

CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "LesionLens model card",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "name",
        "version",
        "created",
        "trainer_version",
        "architecture",
        "classes",
        "inputs",
        "outputs",
        "calibration",
        "malignancy",
        "training_data",
        "metrics",
        "licence",
        "intended_use",
        "limitations",
        "integrity",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1},
        "version": {"type": "string", "minLength": 1},
        "created": {"type": "string", "format": "date-time"},
        "trainer_version": {"type": "string"},
        "architecture": {
            "type": "object",
            "required": ["backbone", "uses_metadata"],
            "properties": {
                "backbone": {"type": "string"},
                "uses_metadata": {"type": "boolean"},
                "heatmap_layer": {"type": "string"},
                "parameters": {"type": "integer", "minimum": 0},
            },
        },
        "classes": {"type": "array", "minItems": 2, "items": _CLASS},
        "inputs": {
            "type": "object",
            "required": ["image", "metadata"],
            "properties": {
                "image": {
                    "type": "object",
                    "required": ["name", "preprocess"],
                    "properties": {
                        "name": {"type": "string"},
                        "layout": {"const": "NHWC"},
                        "color": {"const": "RGB"},
                        "preprocess": {
                            "type": "object",
                            "required": ["height", "width", "resize", "dtype", "value_range"],
                            "properties": {
                                "height": {"type": "integer", "minimum": 16, "maximum": 2048},
                                "width": {"type": "integer", "minimum": 16, "maximum": 2048},
                                "resize": {"enum": ["stretch", "center_crop", "pad"]},
                                "dtype": {"const": "float32"},
                                "value_range": {
                                    "type": "array",
                                    "items": {"type": "number"},
                                    "minItems": 2,
                                    "maxItems": 2,
                                },
                            },
                        },
                    },
                },
                "metadata": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["name", "encoding"],
                            "properties": {
                                "name": {"type": "string"},
                                "encoding": {
                                    "type": "object",
                                    "required": ["version", "age_scale", "sexes", "sites"],
                                },
                            },
                        },
                    ]
                },
            },
        },
        "outputs": {
            "type": "object",
            "required": ["probabilities", "logits", "heatmaps"],
            "properties": {
                "probabilities": {"type": "string"},
                "logits": {"type": "string"},
                "heatmaps": {"type": "string"},
                "features": {"type": "string"},
            },
        },
        "calibration": {
            "type": "object",
            "required": ["temperature"],
            "properties": {"temperature": {"type": "number", "exclusiveMinimum": 0}},
        },
        "malignancy": {
            "type": "object",
            "required": ["classes", "threshold", "description"],
            "properties": {
                "classes": {"type": "array", "items": {"type": "string"}},
                "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "target_sensitivity": {"type": ["number", "null"]},
                "description": {"type": "string"},
            },
        },
        "training_data": {"type": "object"},
        "metrics": {"type": "object"},
        "licence": {"type": "string", "minLength": 1},
        "intended_use": {"type": "string", "minLength": 1},
        "limitations": {"type": "array", "items": {"type": "string"}},
        "integrity": {
            "type": "object",
            "required": ["graph_sha256"],
            "properties": {
                "graph_sha256": {"type": "string", "pattern": "^([0-9a-f]{64}|)$"},
                # optional: cards exported before it existed have none
                "card_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "ood": {"type": "object"},
    },
}


@dataclass(frozen=True)
class ModelCard:
    """Typed view of a validated card; ``raw`` keeps every field, including free-form ones."""

    name: str
    version: str
    classes: tuple[LesionClass, ...]
    preprocess: PreprocessSpec
    metadata_encoding: MetadataEncoding | None
    image_input: str
    metadata_input: str | None
    outputs: dict[str, str]
    temperature: float
    malignant_codes: tuple[str, ...]
    threshold: float
    threshold_description: str
    graph_sha256: str
    raw: dict[str, Any] = field(repr=False)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.classes)

    @property
    def uses_metadata(self) -> bool:
        return self.metadata_encoding is not None

    def to_json(self) -> str:
        return card_to_json(self.raw)


def _format_validation_error(err: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
    return f"{where}: {err.message}"


def validate_card_dict(data: Mapping[str, Any]) -> None:
    """Raise ModelError with every schema violation, readable, if the card is not valid."""
    validator = jsonschema.Draft202012Validator(CARD_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        details = "; ".join(_format_validation_error(e) for e in errors[:5])
        raise ModelError(f"The model card is not valid: {details}.")
    codes = [c["code"] for c in data["classes"]]
    if len(set(codes)) != len(codes):
        raise ModelError("The model card lists a class twice.")
    unknown = [c for c in data["malignancy"]["classes"] if c not in codes]
    if unknown:
        raise ModelError(f"The malignancy classes {unknown} are not classes of this model.")


def card_from_dict(data: Mapping[str, Any]) -> ModelCard:
    """Validate and convert. Raises ModelError for anything the app could not rely on."""
    if not isinstance(data, Mapping):
        raise ModelError("The model card is not a JSON object.")
    if data.get("schema") == SCHEMA_ID and data.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(
            f"This model's card has schema version {data.get('schema_version')!r}; this version "
            f"of LesionLens reads version {SCHEMA_VERSION}. Update LesionLens or re-export the model."
        )
    validate_card_dict(data)
    try:
        meta = data["inputs"]["metadata"]
        encoding = MetadataEncoding.from_dict(meta["encoding"]) if meta else None
        preprocess = PreprocessSpec.from_dict(data["inputs"]["image"]["preprocess"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"The model card's input description is not usable: {exc}.") from None
    classes = tuple(
        LesionClass(c["code"], c["name"], bool(c["malignant"])) for c in data["classes"]
    )
    return ModelCard(
        name=data["name"],
        version=data["version"],
        classes=classes,
        preprocess=preprocess,
        metadata_encoding=encoding,
        image_input=data["inputs"]["image"]["name"],
        metadata_input=meta["name"] if meta else None,
        outputs=dict(data["outputs"]),
        temperature=float(data["calibration"]["temperature"]),
        malignant_codes=tuple(data["malignancy"]["classes"]),
        threshold=float(data["malignancy"]["threshold"]),
        threshold_description=data["malignancy"]["description"],
        graph_sha256=data["integrity"]["graph_sha256"],
        raw=json.loads(json.dumps(data)),
    )


def card_from_json(text: str) -> ModelCard:
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"The model card is not readable JSON ({exc}).") from None
    return card_from_dict(data)


def card_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the card's content without ``integrity.card_sha256`` (canonical JSON).

    Why: the graph digest cannot cover the card (the card holds it), yet the card carries what
    turns scores into advice: the temperature, the malignancy threshold, the class order. Stored
    in ``integrity.card_sha256`` by the exporter, it lets the app refuse a card edited after
    export. Like the graph digest it detects changes, it does not prove authorship (no key).
    """
    content = json.loads(json.dumps(data))
    content.get("integrity", {}).pop("card_sha256", None)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def card_to_json(data: Mapping[str, Any]) -> str:
    """Validate then serialise (stable key order, so identical cards give identical files)."""
    validate_card_dict(data)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


def new_card(
    *,
    name: str,
    version: str,
    trainer_version: str,
    backbone: str,
    classes: list[LesionClass],
    preprocess: PreprocessSpec,
    metadata_encoding: MetadataEncoding | None,
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    temperature: float = 1.0,
    malignancy_threshold: float = 0.5,
    target_sensitivity: float | None = None,
    threshold_description: str | None = None,
    licence: str,
    limitations: list[str],
    heatmap_layer: str = "",
    parameters: int = 0,
    ood: dict[str, Any] | None = None,
    input_names: tuple[str, str] = ("image", "metadata"),
    output_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A complete card dict with this project's defaults (intended use, schema ids, timestamps)."""
    malignant = [c.code for c in classes if c.malignant]
    if threshold_description is None:
        threshold_description = (
            f"set for {target_sensitivity:.0%} sensitivity to malignant lesions "
            f"({', '.join(malignant)}) on validation data"
            if target_sensitivity is not None
            else "not tuned: default 0.5"
        )
    card: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "trainer_version": trainer_version,
        "architecture": {
            "backbone": backbone,
            "uses_metadata": metadata_encoding is not None,
            "heatmap_layer": heatmap_layer,
            "parameters": int(parameters),
        },
        "classes": [c.to_dict() for c in classes],
        "inputs": {
            "image": {
                "name": input_names[0],
                "layout": "NHWC",
                "color": "RGB",
                "preprocess": preprocess.to_dict(),
            },
            "metadata": None
            if metadata_encoding is None
            else {"name": input_names[1], "encoding": metadata_encoding.to_dict()},
        },
        "outputs": output_names
        or {
            "logits": "logits",
            "probabilities": "probabilities",
            "heatmaps": "heatmaps",
            "features": "features",
        },
        "calibration": {"temperature": float(temperature), "method": "temperature scaling"},
        "malignancy": {
            "classes": malignant,
            "threshold": float(malignancy_threshold),
            "target_sensitivity": target_sensitivity,
            "description": threshold_description,
        },
        "training_data": training_data,
        "metrics": metrics,
        "licence": licence,
        "intended_use": INTENDED_USE,
        "limitations": limitations,
        "integrity": {"graph_sha256": ""},
    }
    if ood is not None:
        card["ood"] = ood
    validate_card_dict(card)
    return card
