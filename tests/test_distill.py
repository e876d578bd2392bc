"""Knowledge distillation: the loss against a numpy reference, the cached teacher logits, the
sklesion adapter (its metadata encoding always; its model only when the package is installed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from desktop_app.core.errors import ModelError  # noqa: E402
from trainer import distill, teachers  # noqa: E402
from trainer.distill import (  # noqa: E402
    DistillationLoss,
    class_sample_weights,
    distill_targets,
    teacher_logits_for,
)
from trainer.teachers import TeacherInputs  # noqa: E402
from trainer.teachers import sklesion as skl  # noqa: E402

K = 7


# --------------------------------------------------------------------------------------------------
# numpy reference
# --------------------------------------------------------------------------------------------------


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


def reference_loss(onehot, teacher, student, alpha, t):
    ce = -(onehot * _log_softmax(student)).sum(-1)
    lpt, lps = _log_softmax(teacher / t), _log_softmax(student / t)
    kl = (np.exp(lpt) * (lpt - lps)).sum(-1)
    return alpha * ce + (1 - alpha) * t * t * kl


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    teacher = rng.normal(0, 3, (n, K)).astype(np.float32)
    student = rng.normal(0, 3, (n, K)).astype(np.float32)
    return labels, teacher, student


def _per_sample(loss: DistillationLoss, y_true, y_pred) -> np.ndarray:
    return keras.ops.convert_to_numpy(loss.call(y_true, y_pred))


# --------------------------------------------------------------------------------------------------
# DistillationLoss
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "t"), [(0.0, 1.0), (0.3, 2.0), (0.5, 4.0), (0.9, 8.0)])
def test_loss_matches_numpy_reference(alpha, t):
    labels, teacher, student = _batch()
    y = distill_targets(labels, teacher, K)
    got = _per_sample(DistillationLoss(alpha, t), y, student)
    want = reference_loss(y[:, :K], teacher, student, alpha, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    reduced = float(DistillationLoss(alpha, t)(y, student))
    assert reduced == pytest.approx(float(want.mean()), rel=1e-5)


def test_alpha_one_is_plain_cross_entropy():
    labels, teacher, student = _batch(seed=1)
    y = distill_targets(labels, teacher, K)
    got = float(DistillationLoss(alpha=1.0, temperature=3.0)(y, student))
    ce = keras.losses.CategoricalCrossentropy(from_logits=True)(y[:, :K], student)
    assert got == pytest.approx(float(ce), rel=1e-5)


def test_alpha_zero_t1_teacher_equals_student_is_zero():
    labels, teacher, _ = _batch(seed=2)
    y = distill_targets(labels, teacher, K)
    got = _per_sample(DistillationLoss(alpha=0.0, temperature=1.0), y, teacher)
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_gradient_points_to_teacher_soft_distribution():
    """d/ds [T^2 KL(p_t || p_s)] = T (softmax(s/T) - softmax(t/T)): a gradient step moves the
    student's tempered distribution toward the teacher's."""
    import tensorflow as tf

    labels, teacher, student = _batch(n=8, seed=3)
    t = 3.0
    y = tf.constant(distill_targets(labels, teacher, K))
    s = tf.Variable(student)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(DistillationLoss(alpha=0.0, temperature=t).call(y, s))
    grad = tape.gradient(total, s).numpy()
    want = t * (_softmax(student / t) - _softmax(teacher / t))
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)
    stepped = student - 0.5 * grad
    kl = lambda z: (_softmax(teacher / t) * (_log_softmax(teacher / t) - _log_softmax(z / t))).sum()  # noqa: E731
    assert kl(stepped) < kl(student)


def test_sample_weights_are_applied():
    labels, teacher, student = _batch(seed=4)
    y = distill_targets(labels, teacher, K)
    loss = DistillationLoss(0.5, 2.0)
    w = class_sample_weights(labels, {0: 3.0, 1: 0.5})
    per = reference_loss(y[:, :K], teacher, student, 0.5, 2.0)
    assert float(loss(y, student, sample_weight=w)) == pytest.approx(float((w * per).mean()), 1e-5)
    np.testing.assert_array_equal(w, np.where(labels == 0, 3.0, np.where(labels == 1, 0.5, 1.0)))


def test_config_round_trip_and_validation():
    loss = DistillationLoss(alpha=0.25, temperature=5.0, reduction="sum")
    cfg = loss.get_config()
    assert cfg["alpha"] == 0.25 and cfg["temperature"] == 5.0 and cfg["reduction"] == "sum"
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, DistillationLoss)
    assert (again.alpha, again.temperature, again.reduction) == (0.25, 5.0, "sum")
    with pytest.raises(ValueError):
        DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError):
        DistillationLoss(temperature=0.0)


def test_targets_refuse_missing_teacher_rows():
    labels, teacher, _ = _batch(n=4)
    teacher[2] = np.nan
    with pytest.raises(ValueError, match="test rows"):
        distill_targets(labels, teacher, K)


def test_soft_targets_teach_the_dark_knowledge():
    """A tiny softmax regression trained on the teacher's soft targets only (alpha=0) reproduces
    the teacher's non-argmax probabilities far better than the same model trained on hard labels."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, d, k = 2000, 8, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_teacher = rng.normal(0, 0.6, (d, k)).astype(np.float32)
    t_logits = x @ w_teacher
    labels = t_logits.argmax(1)
    y = distill_targets(labels, t_logits, k)

    def fit(alpha: float) -> np.ndarray:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
        model.compile(keras.optimizers.Adam(0.05), loss=DistillationLoss(alpha, temperature=2.0))
        model.fit(x, y, epochs=15, batch_size=128, verbose=0)
        return _softmax(model.predict(x, verbose=0))

    p_teacher = _softmax(t_logits)
    non_argmax = np.ones_like(p_teacher, bool)
    non_argmax[np.arange(n), labels] = False
    err_soft = np.abs(fit(0.0) - p_teacher)[non_argmax].mean()
    err_hard = np.abs(fit(1.0) - p_teacher)[non_argmax].mean()
    assert err_soft < 0.5 * err_hard, (err_soft, err_hard)


# --------------------------------------------------------------------------------------------------
# Cached teacher logits with a tiny teacher of our own
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("trainer.data")
    from tests.synthetic import make_ham10000
    from trainer.data import prepare

    root = tmp_path_factory.mktemp("ham")
    make_ham10000(root / "ham", per_class=8, seed=3)
    return prepare(root / "ham", image_size=32, cache_dir=root / "cache", progress=False, workers=1)


@pytest.fixture(scope="module")
def tiny_teacher(prepared, tmp_path_factory):
    """A .keras teacher in a run folder whose config.json lists the classes in REVERSED order."""
    from trainer.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("teacher_run")
    order = tuple(reversed(prepared.classes))
    spec = ModelSpec(
        num_classes=len(order),
        image_size=32,
        weights=None,
        metadata_size=prepared.metadata.shape[1],
    )
    model = build_model(spec)
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"classes": list(order)}))
    return run / "model.keras", model, order


def _count_loads(monkeypatch):
    calls = []
    real = teachers.load_keras_model

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(teachers, "load_keras_model", counting)
    return calls


@pytest.mark.slow
def test_teacher_logits_shape_test_rows_nan_order_and_cache(
    prepared, tiny_teacher, tmp_path, monkeypatch
):
    path, model, order = tiny_teacher
    calls = _count_loads(monkeypatch)
    cache = tmp_path / "teacher_logits.npy"
    out = teacher_logits_for(str(path), prepared, cache, progress=False)

    n, k = len(prepared.table), len(prepared.classes)
    assert out.shape == (n, k) and out.dtype == np.float32
    test = prepared.indices("test")
    seen = np.concatenate([prepared.indices("train"), prepared.indices("val")])
    assert len(test) and np.isnan(out[test]).all()
    assert np.isfinite(out[seen]).all()
    assert len(calls) == 1

    # class order: the teacher's outputs are reversed relative to data.classes
    raw = model.predict(
        [prepared.images[seen].astype(np.float32), prepared.metadata[seen]], verbose=0
    )
    mapping = [order.index(c) for c in prepared.classes]
    np.testing.assert_allclose(out[seen], raw[:, mapping], rtol=1e-4, atol=1e-4)

    meta = json.loads(cache.with_suffix(".json").read_text())
    assert meta["classes"] == list(prepared.classes)
    assert meta["teacher_classes"] == list(order)
    assert meta["teacher"].startswith("keras:model.keras:sha256=")
    assert len(meta["image_ids_sha256"]) == 64

    # second call: served from the cache, the model is not loaded again
    mtime = cache.stat().st_mtime_ns
    again = teacher_logits_for(str(path), prepared, cache, progress=False)
    assert len(calls) == 1 and cache.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again, out)

    # a different teacher id invalidates the cache
    meta["teacher"] = "keras:other"
    cache.with_suffix(".json").write_text(json.dumps(meta))
    teacher_logits_for(str(path), prepared, cache, progress=False)
    assert len(calls) == 2


@pytest.mark.slow
def test_teacher_at_another_size_reads_the_files(prepared, tmp_path):
    """A teacher whose input size differs from the cache decodes the original files again."""
    from trainer.model import ModelSpec, build_model

    run = tmp_path / "run"
    run.mkdir()
    spec = ModelSpec(
        num_classes=len(prepared.classes), image_size=48, weights=None, metadata_size=None
    )
    build_model(spec).save(run / "model.keras")  # no config.json: the data's class order is assumed
    with pytest.warns(UserWarning, match="no class list"):
        out = teacher_logits_for(
            str(run / "model.keras"), prepared, tmp_path / "t.npy", progress=False
        )
    assert out.shape == (len(prepared.table), len(prepared.classes))
    assert np.isnan(out[prepared.indices("test")]).all()
    assert np.isfinite(out[prepared.indices("train")]).all()


def test_teacher_never_sees_test_rows(prepared):
    with pytest.raises(AssertionError, match="test split"):
        TeacherInputs(prepared, prepared.indices("test")[:1])
    inputs = TeacherInputs(prepared, prepared.indices("train"))
    assert set(inputs.table["split"]) == {"train"}


class _FakeTeacher:
    """Records which rows it is shown; logits = one-hot of the true label in its own class order."""

    def __init__(self, classes):
        self.classes = tuple(classes)
        self.teacher_id = "fake:" + ",".join(classes)
        self.seen: list[str] = []

    def predict_logits(self, inputs, *, batch_size=16, progress=True):
        self.seen += list(inputs.table["split"])
        return np.stack([5.0 * (np.array(self.classes) == lab) for lab in inputs.table["label"]])


def test_class_mapping_and_test_rows_with_a_fake_teacher(prepared, tmp_path):
    extra = ("SCC", *reversed(prepared.classes))  # one class more, order shuffled
    fake = _FakeTeacher(extra)
    out = teacher_logits_for(fake, prepared, tmp_path / "fake.npy", progress=False)
    assert "test" not in fake.seen and len(fake.seen) == len(prepared.table) - len(
        prepared.indices("test")
    )
    seen = np.setdiff1d(np.arange(len(prepared.table)), prepared.indices("test"))
    # each row's largest logit is its own label, in data.classes order
    np.testing.assert_array_equal(out[seen].argmax(1), prepared.labels[seen])


def test_teacher_lacking_a_class_is_refused(prepared, tmp_path):
    fake = _FakeTeacher(prepared.classes[1:])
    with pytest.raises(ModelError, match=prepared.classes[0]):
        teacher_logits_for(fake, prepared, tmp_path / "x.npy", progress=False)
    assert fake.seen == []  # refused before running


def test_missing_teacher_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        teachers.load_teacher(str(tmp_path / "nope.keras"))


# --------------------------------------------------------------------------------------------------
# sklesion adapter
# --------------------------------------------------------------------------------------------------


def test_sklesion_metadata_encoding():
    v = skl.encode_metadata(45, "female", "posterior torso")
    np.testing.assert_allclose(v, [1, 0, 0, 0, 0, 0, 1, 0, 0.5, 0])
    v = skl.encode_metadata(None, "unknown", "unknown")
    np.testing.assert_allclose(v, [0, 0, 1, 0, 0, 0, 0, 1, skl.AGE_MEAN / 90, 1], rtol=1e-6)
    assert skl.encode_metadata(70, "male", "palms/soles")[3 + 4] == 1  # acral -> unknown
    assert skl.encode_metadata(70, "male", "torso")[3 + 3] == 1
    assert skl.encode_metadata(20, "male", "oral/genital")[3 + 2] == 1
    assert len(skl.META_FEATURES) == 10
    from desktop_app.core.metadata import SITE_CHOICES

    assert set(skl.SITE_TO_LOCATION) == set(SITE_CHOICES)


def test_sklesion_class_order_is_mapped_to_our_codes():
    assert skl.CLASSES == ("AK", "BCC", "BKL", "DF", "MEL", "NV", "VASC")


def test_sklesion_props_check_refuses_other_encodings():
    props = {
        "img_shape": np.array([254, 254]),
        "age_max": np.float64(90.0),
        "age_mean": np.float64(skl.AGE_MEAN),
        "i_cl_map": dict(enumerate(skl.SKLESION_CLASSES)),
        "oh_map": {"sex": skl.EXPECTED_PROPS["sex"], "loc": skl.EXPECTED_PROPS["loc"]},
    }
    skl.check_props(props)
    props["age_max"] = np.float64(100.0)
    with pytest.raises(ModelError, match="age_max"):
        skl.check_props(props)


def test_sklesion_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps sklesion"):
        teachers.load_teacher("sklesion")


needs_sklesion = pytest.mark.skipif(
    not skl.is_available(),
    reason="sklesion is not installed (pip install --no-deps sklesion; ~80 MB)",
)


@needs_sklesion
@pytest.mark.slow
def test_sklesion_gives_probabilities_over_our_codes():
    from desktop_app.core.metadata import PatientMetadata
    from tests.synthetic import draw_lesion

    teacher = skl.SklesionTeacher()
    skl.check_props(skl.read_props(teacher.folder))
    rng = np.random.default_rng(0)
    images = [draw_lesion("mel", rng), draw_lesion("nv", rng, size=(600, 450))]
    metas = [PatientMetadata(60, "male", "posterior torso"), None]
    p = teacher.predict_proba(images, metas)
    assert p.shape == (2, 7) and teacher.classes == skl.CLASSES
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert teacher.teacher_id.startswith("sklesion==")


@needs_sklesion
@pytest.mark.slow
def test_sklesion_as_teacher_for_prepared_data(prepared, tmp_path):
    out = teacher_logits_for("sklesion", prepared, tmp_path / "skl.npy", progress=False)
    assert out.shape == (len(prepared.table), len(prepared.classes))
    assert np.isnan(out[prepared.indices("test")]).all()
    assert np.isfinite(out[prepared.indices("val")]).all()
    meta = json.loads((tmp_path / "skl.json").read_text())
    assert meta["teacher_classes"] == list(skl.CLASSES)


def test_distill_module_has_no_test_split_backdoor():
    """The only rows a teacher is given are train and val (documented contract)."""

    class D:
        pass

    import pandas as pd

    d = D()
    d.table = pd.DataFrame({"split": ["train", "test", "val", "test"]})
    d.indices = lambda s: np.flatnonzero(d.table["split"].to_numpy() == s)
    np.testing.assert_array_equal(distill._teacher_rows(d), [0, 2])
