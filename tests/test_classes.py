"""The class catalog: every spelling of a class maps to one ISIC code, and malignancy is right."""

import pytest

from desktop_app.core import classes
from desktop_app.core.errors import LesionLensError


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("akiec", "AK"),
        ("AK", "AK"),
        ("Actinic keratosis", "AK"),
        ("mel", "MEL"),
        ("Melanoma", "MEL"),
        ("nv", "NV"),
        ("Nevus", "NV"),
        ("bkl", "BKL"),
        ("bcc", "BCC"),
        ("df", "DF"),
        ("vasc", "VASC"),
        ("SCC", "SCC"),
        ("squamous_cell_carcinoma", "SCC"),
    ],
)
def test_known_spellings_map_to_isic_codes(label, code):
    assert classes.normalize_label(label) == code


def test_unknown_label_is_a_clear_error():
    with pytest.raises(LesionLensError, match=r"Unknown diagnosis label 'UNK'.*MEL"):
        classes.normalize_label("UNK")
    with pytest.raises(LesionLensError, match="known codes"):
        classes.get("XYZ")


def test_catalog_has_the_isic_2019_codes_and_malignancy():
    assert classes.CODES == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    malignant = {c.code for c in classes.CATALOG if c.malignant}
    assert malignant == {"MEL", "BCC", "AK", "SCC"}
    assert all(c.name and c.name != c.code for c in classes.CATALOG)
