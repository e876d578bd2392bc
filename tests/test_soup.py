"""``trainer soup``: weight averaging of runs that share a split, chosen on validation only."""

import json
from pathlib import Path

import numpy as np
import pytest

from desktop_app.core.errors import ModelError
from trainer.soup import average_weights, check_ingredients


def _fake_run(root: Path, name: str, split: str, **config) -> Path:
    run = root / name
    run.mkdir()
    base = {"classes": ["MEL", "NV"], "backbone": "MobileNetV2", "image_size": 64}
    (run / "config.json").write_text(json.dumps({**base, **config}))
    (run / "model.keras").write_bytes(b"")
    (run / "split.csv").write_text(split)
    return run


def test_average_weights_is_the_elementwise_mean_and_keeps_integer_state():
    a = [np.array([1.0, 2.0], np.float32), np.array([3], np.int64)]
    b = [np.array([3.0, 6.0], np.float32), np.array([3], np.int64)]
    mean, step = average_weights([a, b])
    np.testing.assert_array_equal(mean, [2.0, 4.0])
    assert mean.dtype == np.float32 and step.tolist() == [3]
    with pytest.raises(ModelError, match="integer"):
        average_weights([a, [b[0], np.array([4], np.int64)]])


def test_ingredients_must_share_the_split(tmp_path):
    split = "image_id,split\nA,train\nB,test\n"
    a = _fake_run(tmp_path, "a", split)
    b = _fake_run(tmp_path, "b", split)
    assert len(check_ingredients([a, b])) == 2
    c = _fake_run(tmp_path, "c", "image_id,split\nA,test\nB,train\n")
    with pytest.raises(ModelError, match="another split"):
        check_ingredients([a, c])


def test_ingredients_must_have_the_same_shape(tmp_path):
    split = "image_id,split\nA,train\n"
    a = _fake_run(tmp_path, "a", split)
    b = _fake_run(tmp_path, "b", split, image_size=96)
    with pytest.raises(ModelError, match="image_size"):
        check_ingredients([a, b])
    with pytest.raises(ModelError, match="at least two"):
        check_ingredients([a])
