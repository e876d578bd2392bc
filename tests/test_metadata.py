"""Patient metadata: validation, data-set mappings, and the encoder shared by trainer and app."""

import math

import numpy as np
import pytest

from desktop_app.core import metadata as md
from desktop_app.core.errors import MetadataError


def all_metadata():
    ages = [None, 0, 0.5, 35, 85, 120]
    for age in ages:
        for sex in md.SEX_CHOICES:
            for site in md.SITE_CHOICES:
                yield md.PatientMetadata(age=age, sex=sex, site=site)


def test_encoder_round_trips_every_vocabulary_value():
    enc = md.DEFAULT_ENCODING
    seen = set()
    for meta in all_metadata():
        vec = enc.encode(meta)
        assert vec.shape == (enc.size,) and vec.dtype == np.float32
        assert enc.decode(vec) == meta
        seen.add(vec.tobytes())
    assert len(seen) == 6 * 3 * 10  # every combination encodes differently


def test_vector_layout_is_explicit_about_unknown():
    enc = md.DEFAULT_ENCODING
    names = enc.feature_names()
    unknown = dict(zip(names, enc.unknown_vector(), strict=True))
    assert unknown["age_unknown"] == 1 and unknown["age_scaled"] == 0
    assert unknown["sex_unknown"] == 1 and unknown["site_unknown"] == 1
    assert sum(unknown.values()) == 3
    v = dict(
        zip(names, enc.encode(md.PatientMetadata(54, "female", "posterior torso")), strict=True)
    )
    assert v["age_scaled"] == pytest.approx(0.54) and v["age_unknown"] == 0
    assert v["sex_female"] == 1 and v["sex_male"] == 0 and v["sex_unknown"] == 0
    assert v["site_posterior torso"] == 1 and v["site_unknown"] == 0


def test_unspecified_torso_is_spread_over_the_three_torso_sites():
    enc = md.DEFAULT_ENCODING
    v = dict(zip(enc.feature_names(), enc.encode(md.PatientMetadata(site="torso")), strict=True))
    for part in md.TORSO_PARTS:
        assert v[f"site_{part}"] == pytest.approx(1 / 3)
    assert v["site_unknown"] == 0


def test_field_slices_cover_the_vector_exactly():
    enc = md.DEFAULT_ENCODING
    covered = []
    for sl in enc.field_slices().values():
        covered.extend(range(enc.size)[sl])
    assert covered == list(range(enc.size))


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"age": -3}, "age", "between 0 and 120"),
        ({"age": 200}, "age", "between 0 and 120"),
        ({"age": "old"}, "age", "number of years"),
        ({"sex": "x"}, "sex", "female, male, unknown"),
        ({"site": "elbow"}, "site", "head/neck"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(kwargs, field, words):
    with pytest.raises(MetadataError) as err:
        md.PatientMetadata(**kwargs)
    assert err.value.field == field
    assert words in str(err.value)


def test_friendly_spellings_are_accepted():
    m = md.PatientMetadata(age="54", sex="F", site="Head / Neck")
    assert (m.age, m.sex, m.site) == (54.0, "female", "head/neck")
    assert md.PatientMetadata(age=float("nan"), sex="", site=None).is_unknown
    assert md.PatientMetadata(age="unknown").age is None


def test_every_ham10000_localization_maps_into_the_vocabulary():
    for loc, site in md.HAM10000_LOCALIZATION.items():
        assert md.site_from_ham10000(loc) == site
        assert site in md.SITE_CHOICES
    with pytest.raises(MetadataError):
        md.site_from_ham10000("elbow")


def test_rows_with_isic_or_ham_column_names():
    isic = md.metadata_from_row(
        {"age_approx": 45.0, "sex": "male", "anatom_site_general": "anterior torso"}
    )
    ham = md.metadata_from_row({"age": 45.0, "sex": "male", "localization": "chest"})
    assert isic == ham == md.PatientMetadata(45, "male", "anterior torso")
    assert md.metadata_from_row({"age": math.nan, "sex": "unknown"}).is_unknown


def test_encoding_spec_round_trips_through_json_dict():
    enc = md.DEFAULT_ENCODING
    again = md.MetadataEncoding.from_dict(enc.to_dict())
    assert again == enc
    bad = enc.to_dict() | {"feature_names": ["x"]}
    with pytest.raises(ValueError):
        md.MetadataEncoding.from_dict(bad)


def test_a_model_with_a_smaller_site_list_refuses_sites_it_does_not_know():
    enc = md.MetadataEncoding(sites=("head/neck", "upper extremity"), partial_sites={})
    with pytest.raises(MetadataError, match="does not know the site"):
        enc.encode(md.PatientMetadata(site="palms/soles"))
