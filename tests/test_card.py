"""The model card: schema validation with readable errors, and a faithful round trip."""

import copy
import json

import pytest

from desktop_app.core import card as card_mod
from desktop_app.core.classes import CATALOG, get
from desktop_app.core.errors import ModelError
from desktop_app.core.imaging import PreprocessSpec
from desktop_app.core.metadata import DEFAULT_ENCODING

HAM_CODES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC")


def make_card(**overrides):
    kwargs = dict(
        name="Test model",
        version="1.2.3",
        trainer_version="0.1.0",
        backbone="MobileNetV2",
        classes=[get(c) for c in HAM_CODES],
        preprocess=PreprocessSpec(height=192, width=192),
        metadata_encoding=DEFAULT_ENCODING,
        training_data={"datasets": ["HAM10000"]},
        metrics={"test": {"balanced_accuracy": 0.8}},
        temperature=1.7,
        malignancy_threshold=0.23,
        target_sensitivity=0.95,
        licence="CC BY-NC-SA 4.0",
        limitations=["SCC is not in HAM10000"],
    )
    kwargs.update(overrides)
    return card_mod.new_card(**kwargs)


def test_a_new_card_round_trips_through_json():
    data = make_card()
    card = card_mod.card_from_json(card_mod.card_to_json(data))
    assert card.codes == HAM_CODES
    assert card.preprocess == PreprocessSpec(height=192, width=192)
    assert card.metadata_encoding == DEFAULT_ENCODING
    assert card.temperature == pytest.approx(1.7)
    assert card.threshold == pytest.approx(0.23)
    assert card.malignant_codes == ("MEL", "BCC", "AK")
    assert "95% sensitivity" in card.threshold_description
    assert "not a diagnosis" in card.raw["intended_use"]
    assert card.image_input == "image" and card.metadata_input == "metadata"


def test_an_eight_class_isic_2019_card_needs_no_code_change():
    card = card_mod.card_from_dict(make_card(classes=list(CATALOG)))
    assert card.codes[-1] == "SCC" and "SCC" in card.malignant_codes


def test_image_only_card():
    card = card_mod.card_from_dict(make_card(metadata_encoding=None))
    assert not card.uses_metadata and card.metadata_input is None


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.pop("classes"), "'classes' is a required property"),
        (lambda d: d["calibration"].update(temperature=0), "calibration/temperature"),
        (lambda d: d["malignancy"].update(threshold=1.5), "malignancy/threshold"),
        (lambda d: d["classes"].append(dict(d["classes"][0])), "class twice"),
        (lambda d: d["malignancy"].update(classes=["XYZ"]), "not classes of this model"),
        (lambda d: d["inputs"]["image"]["preprocess"].update(resize="squash"), "resize"),
    ],
)
def test_invalid_cards_are_refused_with_a_readable_reason(mutate, words):
    data = copy.deepcopy(make_card())
    mutate(data)
    with pytest.raises(ModelError) as err:
        card_mod.card_from_dict(data)
    assert words in str(err.value)


def test_a_card_from_a_newer_lesionlens_says_so():
    data = make_card() | {"schema_version": 99}
    with pytest.raises(ModelError, match="schema version 99"):
        card_mod.card_from_dict(data)


def test_not_json_is_a_model_error():
    with pytest.raises(ModelError, match="not readable JSON"):
        card_mod.card_from_json("{not json")
    with pytest.raises(ModelError, match="not a JSON object"):
        card_mod.card_from_dict(json.loads("[1, 2]"))


def test_card_digest_covers_the_content_not_its_own_field_or_key_order():
    from desktop_app.core.card import card_digest

    card = {"malignancy": {"threshold": 0.2}, "integrity": {"graph_sha256": "a" * 64}}
    digest = card_digest(card)
    reordered = {
        "integrity": {"card_sha256": digest, "graph_sha256": "a" * 64},
        "malignancy": {"threshold": 0.2},
    }
    assert card_digest(reordered) == digest
    assert card_digest({**card, "malignancy": {"threshold": 0.21}}) != digest
