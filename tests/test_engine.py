"""The inference engine: loading checks, provider choice, predict -> Prediction.

Most tests run on a hand-made ONNX model (no TensorFlow, fast); the ``slow`` ones run on the tiny
real MobileNetV2 model exported once per session by tests/model_factory.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from desktop_app.core.engine import Engine, Prediction, heatmap_for
from desktop_app.core.errors import ImageError, ModelError
from desktop_app.core.imaging import LoadedImage, load_image
from desktop_app.core.metadata import PatientMetadata
from desktop_app.core.onnx_digest import file_sha256
from desktop_app.core.risk import apply_temperature
from tests import model_factory as mf

MALIGNANT = ("MEL", "BCC")


def _rgb(seed: int, shape=(60, 80, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.onnx"
    path.write_bytes(mf.synthetic_onnx())
    return path


@pytest.fixture(scope="module")
def engine(synthetic_file):
    return Engine.load(synthetic_file)


# -- loading ------------------------------------------------------------------------------------


def test_load_reads_card_hash_and_provider(engine, synthetic_file):
    assert engine.card.codes == mf.TINY_CLASSES
    assert engine.path == synthetic_file
    assert engine.sha256 == file_sha256(synthetic_file)
    assert engine.provider == "CPU"  # no GPU on the test machines
    assert Engine.load(synthetic_file, providers="cpu").provider_note == ""
    assert "CPU" in repr(engine)


def test_forcing_cuda_either_uses_it_or_says_why_not(synthetic_file):
    try:
        forced = Engine.load(synthetic_file, providers="cuda")
    except ModelError as exc:
        assert "CUDA" in str(exc)
    else:
        assert forced.provider == "CUDA"
    with pytest.raises(ValueError, match="providers"):
        Engine.load(synthetic_file, providers="tpu")


def test_unreadable_files_give_readable_errors(tmp_path):
    with pytest.raises(ModelError, match=r"'absent.onnx' was not found"):
        Engine.load(tmp_path / "absent.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        Engine.load(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        Engine.load(empty)
    text = tmp_path / "readme.onnx"
    text.write_text("hello, I am not a model\n")
    with pytest.raises(ModelError, match=r"'readme.onnx' is not a valid ONNX model"):
        Engine.load(text)
    data = mf.synthetic_onnx()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Engine.load(cut)


def test_a_model_without_card_is_refused():
    with pytest.raises(ModelError, match=r"carries no LesionLens model card.*trainer export"):
        Engine.from_bytes(mf.strip_card(mf.synthetic_onnx()))


def test_a_changed_weight_fails_the_integrity_check():
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(mf.synthetic_onnx())
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w_img":
            arr = numpy_helper.to_array(init).copy()
            arr[0, 0] += 0.5
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, "w_img"))
    with pytest.raises(ModelError, match=r"modified since it was exported.*integrity check failed"):
        Engine.from_bytes(model.SerializeToString())


def test_a_card_describing_another_model_is_refused():
    def size(card):
        card["inputs"]["image"]["preprocess"]["height"] = 64
        card["inputs"]["image"]["preprocess"]["width"] = 64

    with pytest.raises(ModelError, match=r"does not match its model card.*64 x 64"):
        Engine.from_bytes(mf.synthetic_onnx(card_edit=size))

    def image_only(card):
        card["inputs"]["metadata"] = None

    with pytest.raises(ModelError, match=r"inputs are \['image', 'metadata'\]"):
        Engine.from_bytes(mf.synthetic_onnx(card_edit=image_only))

    def more_classes(card):
        card["classes"].append({"code": "DF", "name": "Dermatofibroma", "malignant": False})

    with pytest.raises(ModelError, match="4 classes, the card lists 5"):
        Engine.from_bytes(mf.synthetic_onnx(card_edit=more_classes))

    def other_encoding(card):
        card["inputs"]["metadata"]["encoding"]["sites"] = ["head/neck", "palms/soles"]
        del card["inputs"]["metadata"]["encoding"]["feature_names"]
        card["inputs"]["metadata"]["encoding"]["partial_sites"] = {}

    with pytest.raises(ModelError, match="metadata input has shape"):
        Engine.from_bytes(mf.synthetic_onnx(card_edit=other_encoding))


# -- predicting ---------------------------------------------------------------------------------


def _check_prediction(pred: Prediction, engine: Engine) -> None:
    k = len(engine.card.classes)
    assert pred.codes == engine.card.codes
    assert pred.probabilities.dtype == np.float64 and pred.probabilities.shape == (k,)
    assert pred.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    assert pred.raw_probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(
        pred.probabilities, apply_temperature(pred.logits, engine.card.temperature), atol=1e-12
    )
    idx = [pred.codes.index(c) for c in MALIGNANT]
    assert pred.risk == pytest.approx(pred.probabilities[idx].sum(), abs=1e-12)
    assert pred.threshold == engine.card.threshold
    assert pred.above_threshold == (pred.risk >= pred.threshold)
    assert pred.top_code == pred.codes[int(np.argmax(pred.probabilities))]
    assert pred.top_name == engine.card.classes[pred.codes.index(pred.top_code)].name
    assert 0.0 <= pred.entropy <= 1.0
    assert pred.heatmaps.dtype == np.float32 and pred.heatmaps.shape[-1] == k
    assert pred.heatmaps.min() >= 0.0 and pred.heatmaps.max() <= 1.0 + 1e-6


def test_predict_gives_calibrated_probabilities_and_risk(engine):
    images = [_rgb(i) for i in range(5)]
    metas = [
        PatientMetadata(age=70, sex="male", site="head/neck"),
        None,
        PatientMetadata(site="torso"),
        PatientMetadata(),
        None,
    ]
    preds = engine.predict(images, metas)
    assert len(preds) == 5
    for pred in preds:
        _check_prediction(pred, engine)
        # The card's temperature (1.7) softens the model's own softmax.
        assert not np.allclose(pred.probabilities, pred.raw_probabilities, atol=1e-4)
    assert engine.predict([]) == []
    assert not any(
        "meta" in name or "age" in name
        for name in Prediction.__dataclass_fields__
        if name != "used_metadata"
    )


def test_temperature_changes_probabilities_not_the_ranking():
    cold = Engine.from_bytes(
        mf.synthetic_onnx(card_edit=lambda c: c["calibration"].update(temperature=1.0))
    )
    hot = Engine.from_bytes(
        mf.synthetic_onnx(card_edit=lambda c: c["calibration"].update(temperature=4.0))
    )
    image = _rgb(3)
    a, b = cold.predict_one(image), hot.predict_one(image)
    np.testing.assert_allclose(a.probabilities, a.raw_probabilities, atol=1e-6)
    assert not np.allclose(a.probabilities, b.probabilities, atol=1e-3)
    assert np.argsort(a.probabilities).tolist() == np.argsort(b.probabilities).tolist()
    assert b.entropy > a.entropy


def test_threshold_decides_the_flag():
    image = _rgb(4)
    low = Engine.from_bytes(
        mf.synthetic_onnx(card_edit=lambda c: c["malignancy"].update(threshold=0.0))
    ).predict_one(image)
    high = Engine.from_bytes(
        mf.synthetic_onnx(card_edit=lambda c: c["malignancy"].update(threshold=1.0))
    ).predict_one(image)
    assert low.above_threshold and low.threshold == 0.0
    assert high.risk == pytest.approx(low.risk)
    assert not high.above_threshold or high.risk >= 1.0


def test_metadata_changes_the_output_and_none_means_unknown(engine):
    image = _rgb(5)
    old = engine.predict_one(image, PatientMetadata(age=80, sex="male", site="head/neck"))
    young = engine.predict_one(image, PatientMetadata(age=20, sex="female", site="lower extremity"))
    unknown = engine.predict_one(image, PatientMetadata())
    none = engine.predict_one(image, None)
    assert not np.allclose(old.probabilities, young.probabilities, atol=1e-4)
    np.testing.assert_array_equal(unknown.probabilities, none.probabilities)
    assert none.used_metadata


def test_batches_equal_single_predictions(engine):
    images = [_rgb(10 + i, (40 + 7 * i, 50, 3)) for i in range(7)]
    metas = [PatientMetadata(age=30 + i) for i in range(7)]
    batch = engine.predict(images, metas, batch_size=3)
    for image, meta, pred in zip(images, metas, batch, strict=True):
        single = engine.predict_one(image, meta)
        np.testing.assert_allclose(single.probabilities, pred.probabilities, atol=1e-6)
        np.testing.assert_allclose(single.heatmaps, pred.heatmaps, atol=1e-6)


def test_loaded_images_and_files_take_the_same_road(engine, tmp_path):
    rgb = _rgb(6, (48, 64, 3))
    path = tmp_path / "lesion.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    from_array = engine.predict_one(rgb)
    from_loaded = engine.predict_one(load_image(path))
    from_file = engine.predict_file(path)
    np.testing.assert_array_equal(from_array.probabilities, from_loaded.probabilities)
    np.testing.assert_array_equal(from_array.probabilities, from_file.probabilities)
    assert isinstance(load_image(path), LoadedImage)
    with pytest.raises(ImageError):
        engine.predict_file(tmp_path / "missing.jpg")


def test_input_mistakes_are_explained(engine):
    with pytest.raises(ValueError, match="2 images but 1 metadata"):
        engine.predict([_rgb(1), _rgb(2)], [PatientMetadata()])
    with pytest.raises(ValueError, match=r"images of shape \(N, 32, 32, 3\)"):
        engine.run_arrays(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"metadata of shape \(2, 14\)"):
        engine.run_arrays(np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        engine.predict_one(np.zeros((40, 40, 3), np.float32))


def test_image_only_model_ignores_metadata():
    engine = Engine.from_bytes(mf.synthetic_onnx(metadata=False))
    assert not engine.card.uses_metadata
    image = _rgb(8)
    a = engine.predict_one(image, PatientMetadata(age=90, sex="male"))
    b = engine.predict_one(image)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert not a.used_metadata


def test_heatmap_for_upsamples_one_class(engine):
    pred = engine.predict_one(_rgb(9))
    big = heatmap_for(pred, "MEL", (120, 90))
    assert big.shape == (90, 120) and big.dtype == np.float32
    assert big.min() >= 0.0 and big.max() <= 1.0
    same = heatmap_for(pred, "MEL", (32, 32))
    np.testing.assert_allclose(same, pred.heatmap("MEL"), atol=1e-6)
    assert pred.probability("MEL") == pred.probabilities[0]
    with pytest.raises(KeyError, match=r"no class 'SCC'"):
        heatmap_for(pred, "SCC", (10, 10))


# -- the real exported model --------------------------------------------------------------------


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    return mf.shared_export(tmp_path_factory, metadata=True)


@pytest.mark.slow
def test_engine_on_the_exported_model(real):
    from desktop_app.core.metadata import DEFAULT_ENCODING

    engine = Engine.load(real.path)
    assert engine.provider == "CPU"
    images = [np.clip(im, 0, 255).astype(np.uint8) for im in real.images[:4]]
    metas = mf.check_metas(4)
    preds = engine.predict(images, metas)
    for pred in preds:
        _check_prediction(pred, engine)
        assert pred.heatmaps.shape == (3, 3, len(mf.TINY_CLASSES))
        assert pred.features is not None and pred.features.shape == (1280,)
        assert pred.heatmaps.max() > 0
    # The engine feeds exactly the preprocessed uint8 pixels and the encoded metadata.
    x = np.stack(images).astype(np.float32)
    logits = np.asarray(real.core([x, DEFAULT_ENCODING.encode_many(metas)], training=False))
    np.testing.assert_allclose(np.stack([p.logits for p in preds]), logits, atol=1e-4)
    calibrated = apply_temperature(logits, mf.TINY_TEMPERATURE)
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), calibrated, atol=1e-4)
    # Metadata matters to the real model too.
    other = engine.predict_one(images[0], PatientMetadata(age=5, sex="female", site="palms/soles"))
    assert not np.allclose(other.probabilities, preds[0].probabilities, atol=1e-5)
    # A larger photo is resized by the card's preprocessing.
    big = cv2.resize(images[1], (300, 200))
    _check_prediction(engine.predict_one(big, metas[1]), engine)
