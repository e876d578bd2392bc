"""ONNX export with in-graph Grad-CAM: parity with Keras, the card, integrity, refusals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from desktop_app.core.card import CARD_KEY
from desktop_app.core.errors import ModelError
from desktop_app.core.metadata import DEFAULT_ENCODING
from desktop_app.core.onnx_digest import file_sha256, graph_digest
from tests import model_factory as mf

pytestmark = pytest.mark.slow

OUTPUTS = {"logits", "probabilities", "heatmaps", "features"}


@pytest.fixture(scope="session")
def dual(tmp_path_factory):
    return mf.shared_export(tmp_path_factory, metadata=True)


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_export_writes_a_checked_file(dual):
    import onnx

    assert dual.path.is_file()
    model = onnx.load(str(dual.path))
    onnx.checker.check_model(model)
    graph = model.graph
    assert [i.name for i in graph.input] == ["image", "metadata"]
    assert {o.name for o in graph.output} == OUTPUTS
    used = {name for node in graph.node for name in node.input}
    assert all(i.name in used for i in graph.input), "no unused graph inputs"
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", mf.TINY_SIZE, mf.TINY_SIZE, 3]
    assert "not a diagnosis" in model.doc_string
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY])
    assert card["integrity"]["graph_sha256"] == graph_digest(dual.path.read_bytes())
    assert card["architecture"]["heatmap_layer"].startswith("backbone/")
    assert card["export"]["parity"]["probabilities_max_abs_diff"] <= 1e-4
    on_disk = json.loads((dual.path.parent / "model_card.json").read_text())
    assert on_disk == card

    report = dual.report
    assert report.sha256 == file_sha256(dual.path)
    assert report.size_bytes == dual.path.stat().st_size
    assert report.parity["probabilities_max_abs_diff"] <= 1e-4
    assert report.parity["heatmap_corr_min"] >= 0.99
    # The perturbed head gives real heatmaps: most maps are not all-zero.
    assert report.parity["heatmap_maps"] >= 0.5 * 2 * 2 * 8 * len(mf.TINY_CLASSES)
    assert "sha256" in report.summary()


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_keras_on_a_dynamic_batch(dual, batch):
    from trainer.gradcam import gradcam_tape, heatmap_correlation

    images = mf.random_images(batch, seed=100 + batch)
    meta = DEFAULT_ENCODING.encode_many(mf.check_metas(batch))
    out = dict(
        zip(
            [o.name for o in _session(dual.path).get_outputs()],
            _session(dual.path).run(None, {"image": images, "metadata": meta}),
            strict=True,
        )
    )
    logits = np.asarray(dual.core([images, meta], training=False))
    assert out["probabilities"].shape == (batch, len(mf.TINY_CLASSES))
    assert np.abs(out["probabilities"] - _softmax(logits)).max() <= 1e-4
    assert np.abs(out["logits"] - logits).max() <= 1e-4
    assert out["heatmaps"].shape == (batch, 3, 3, len(mf.TINY_CLASSES))
    assert out["heatmaps"].min() >= 0 and out["heatmaps"].max() <= 1
    ref = gradcam_tape(dual.core, images, meta)
    corr = heatmap_correlation(out["heatmaps"], ref)
    valid = corr[~np.isnan(corr)]
    assert valid.size >= corr.size // 2
    assert valid.min() >= 0.99 and valid.mean() >= 0.99
    assert out["features"].shape == (batch, 1280)


def test_closed_form_gradcam_equals_gradient_tape_in_keras():
    from trainer.gradcam import build_inference_model, gradcam_tape, heatmap_correlation

    for metadata in (True, False):
        core = mf.tiny_core(metadata=metadata, seed=3, image_size=64)
        images = mf.random_images(4, seed=7, size=64)
        meta = DEFAULT_ENCODING.encode_many(mf.check_metas(4)) if metadata else None
        inputs = [images, meta] if metadata else [images]
        out = build_inference_model(core)(inputs, training=False)
        ref = gradcam_tape(core, images, meta)
        assert np.abs(np.asarray(out["heatmaps"]) - ref).max() < 1e-4
        corr = heatmap_correlation(np.asarray(out["heatmaps"]), ref)
        assert np.nanmin(corr) >= 0.99
        one = gradcam_tape(core, images, meta, class_index=2)
        assert one.shape == (4, 2, 2, 1)
        np.testing.assert_allclose(one[..., 0], ref[..., 2], atol=1e-6)


def test_card_round_trips_through_the_engine(dual):
    from desktop_app.core.engine import Engine

    engine = Engine.load(dual.path, providers="cpu")
    card = json.loads((dual.path.parent / "model_card.json").read_text())
    assert engine.card.raw == card
    assert engine.card.codes == mf.TINY_CLASSES
    assert engine.card.temperature == pytest.approx(mf.TINY_TEMPERATURE)
    assert engine.card.threshold == pytest.approx(mf.TINY_THRESHOLD)
    assert engine.card.malignant_codes == ("MEL", "BCC")
    assert engine.sha256 == file_sha256(dual.path)
    assert engine.path == dual.path


def test_a_flipped_weight_byte_is_detected(dual, tmp_path):
    import onnx

    from desktop_app.core.engine import Engine

    data = dual.path.read_bytes()
    model = onnx.load_from_string(data)
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    start = data.find(biggest.raw_data)
    assert start > 0 and len(biggest.raw_data) > 1000
    tampered = bytearray(data)
    tampered[start + len(biggest.raw_data) // 2] ^= 0x01
    bad = tmp_path / "tampered.onnx"
    bad.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match=r"modified since it was exported.*integrity"):
        Engine.load(bad)


def test_damaged_files_are_refused(dual, tmp_path):
    from desktop_app.core.engine import Engine

    data = dual.path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Engine.load(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 50)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Engine.load(text)
    no_card = tmp_path / "no_card.onnx"
    no_card.write_bytes(mf.strip_card(data))
    with pytest.raises(ModelError, match="carries no LesionLens model card"):
        Engine.load(no_card)


@pytest.mark.parametrize("kind", mf.HEAD_CHANGES)
def test_a_changed_head_is_refused(kind):
    from trainer.gradcam import build_inference_model

    with pytest.raises(ModelError, match="Grad-CAM"):
        build_inference_model(mf.changed_head_core(kind))


def test_the_hand_built_reference_head_is_accepted():
    from trainer.gradcam import build_inference_model

    model = build_inference_model(mf.changed_head_core("none"))
    assert set(model.output_names) == OUTPUTS


def test_a_card_that_does_not_fit_the_model_is_refused(dual, tmp_path):
    from trainer.export import export_onnx

    card = mf.tiny_card(image_size=128)
    with pytest.raises(ModelError, match="128x128"):
        export_onnx(
            dual.core,
            card,
            tmp_path / "m.onnx",
            check_images=dual.images,
            check_metadata=dual.metadata,
        )
    card = mf.tiny_card(metadata=False)
    with pytest.raises(ModelError, match="metadata"):
        export_onnx(
            dual.core,
            card,
            tmp_path / "m.onnx",
            check_images=dual.images,
            check_metadata=dual.metadata,
        )
    assert not list(tmp_path.iterdir())


def test_parity_failures_are_listed_with_numbers(dual):
    from trainer.export import check_parity

    other = mf.tiny_core(metadata=True, seed=5)  # same architecture, other weights
    with pytest.raises(ModelError, match=r"probabilities differ by [0-9.e-]+ \(limit 0.0001\)"):
        check_parity(
            other,
            _session(dual.path),
            dual.images,
            dual.metadata,
            DEFAULT_ENCODING.unknown_vector(),
        )


def test_nothing_is_written_when_a_check_fails(dual, tmp_path, monkeypatch):
    import trainer.export as export

    def fail(*args, **kwargs):
        raise ModelError("parity failed (test)")

    monkeypatch.setattr(export, "check_parity", fail)
    with pytest.raises(ModelError, match="parity failed"):
        export.export_onnx(
            dual.core,
            mf.tiny_card(),
            tmp_path / "m.onnx",
            check_images=dual.images,
            check_metadata=dual.metadata,
        )
    assert not list(tmp_path.iterdir())


def _export_command(argv: list[str]) -> int:
    """``python -m trainer export ARGV`` without the other sub-commands' modules."""
    import argparse

    from trainer import export

    parser = argparse.ArgumentParser(prog="export")
    export.add_arguments(parser)
    return export.run(parser.parse_args(argv))


def _fake_run(tmp_path, core, **config_extra):
    """A run folder like `train` writes (config.json, split.csv, model.keras)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    core.save(run_dir / "model.keras")
    config = {
        "data": str(tmp_path / "moved" / "HAM10000"),
        "format": "auto",
        "dataset": "HAM10000",
        "split": str(run_dir / "split.csv"),
        "classes": list(mf.TINY_CLASSES),
        "image_size": int(core.inputs[0].shape[1]),
        "backbone": "MobileNetV2",
        "weights": None,
        "use_metadata": len(core.inputs) == 2,
        "seed": 7,
        "command": "python -m trainer train --test",
        **config_extra,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "split.csv").write_text(
        "image_id,lesion_id,patient_id,label,split\n"
        "a,l1,,MEL,train\nb,l2,,NV,train\nc,l3,,NV,val\nd,l4,,BCC,test\n"
    )
    return run_dir, config


def test_card_from_an_unevaluated_run_is_uncalibrated(dual, tmp_path, capsys):
    from trainer.export import card_from_run

    run_dir, config = _fake_run(tmp_path, dual.core)
    card = card_from_run(run_dir, config, dual.core, version="2.0.0")
    assert "UNCALIBRATED" in capsys.readouterr().err
    assert card["version"] == "2.0.0"
    assert card["calibration"]["temperature"] == 1.0
    assert card["malignancy"]["threshold"] == 0.5
    assert card["malignancy"]["classes"] == ["MEL", "BCC"]
    assert card["licence"].startswith("CC BY-NC-SA 4.0")
    assert card["training_data"]["dataset"] == "HAM10000"
    assert card["training_data"]["counts"] == {
        "test": {"BCC": 1},
        "train": {"MEL": 1, "NV": 1},
        "val": {"NV": 1},
    }
    assert card["metrics"] == {"train_command": "python -m trainer train --test"}
    assert any("SCC" in item for item in card["limitations"])
    assert any("akiec" in item for item in card["limitations"])
    assert card["inputs"]["metadata"]["encoding"]["version"] == 1


def test_card_from_an_evaluated_run_carries_calibration_and_metrics(dual, tmp_path):
    from desktop_app.core.onnx_digest import file_sha256
    from trainer.export import card_from_run

    run_dir, config = _fake_run(tmp_path, dual.core, dataset="ISIC2019")
    (run_dir / "evaluation").mkdir()
    metrics = {
        "command": "python -m trainer evaluate run",
        "model_sha256": file_sha256(run_dir / "model.keras"),
        "classes": list(mf.TINY_CLASSES),
        "temperature": 1.25,
        "threshold": {"value": 0.31, "target_sensitivity": 0.95, "tuned": True},
        "validation": {"balanced_accuracy": 0.61, "roc": list(range(500))},
        "test": {"balanced_accuracy": 0.58, "auc_macro": float("nan")},
    }
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    card = card_from_run(run_dir, config, dual.core, licence="CC BY-NC 4.0 (ISIC 2019)")
    assert card["calibration"]["temperature"] == 1.25
    assert card["malignancy"]["threshold"] == 0.31
    assert card["malignancy"]["target_sensitivity"] == 0.95
    assert "95% sensitivity" in card["malignancy"]["description"]
    assert card["metrics"]["test"] == {"balanced_accuracy": 0.58, "auc_macro": None}
    assert card["metrics"]["validation"] == {"balanced_accuracy": 0.61, "roc": None}
    assert card["metrics"]["evaluate_command"] == "python -m trainer evaluate run"
    assert card["licence"] == "CC BY-NC 4.0 (ISIC 2019)"
    assert not any("akiec" in item for item in card["limitations"])

    metrics["model_sha256"] = "0" * 64
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelError, match=r"another model\.keras"):
        card_from_run(run_dir, config, dual.core)
    metrics["model_sha256"] = file_sha256(run_dir / "model.keras")
    metrics["classes"] = ["MEL", "NV"]
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelError, match="classes"):
        card_from_run(run_dir, config, dual.core)


def test_check_images_fall_back_to_synthetic_with_a_warning(dual, tmp_path, capsys):
    import argparse

    from trainer.export import _check_inputs_from_run

    run_dir, config = _fake_run(tmp_path, dual.core)
    args = argparse.Namespace(check_images=10, data=None, cache_dir=None)
    images, meta, source = _check_inputs_from_run(
        config, run_dir, args, dual.core, DEFAULT_ENCODING.size, list(mf.TINY_CLASSES)
    )
    assert "synthetic" in source and "synthetic" in capsys.readouterr().err
    assert images.shape == (10, mf.TINY_SIZE, mf.TINY_SIZE, 3)
    assert meta.shape == (10, DEFAULT_ENCODING.size)


def test_export_command_on_an_image_only_run(synthetic_ham, tmp_path, capsys):
    """`export RUN_DIR` end to end on a run folder over a (synthetic) HAM10000-layout data set:
    real validation images for the checks, an image-only model the app loads."""
    from desktop_app.core.engine import Engine
    from trainer.data import prepare

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = prepare(
        synthetic_ham,
        split_out=run_dir / "split.csv",
        image_size=64,
        cache_dir=tmp_path / "cache",
        classes=list(mf.TINY_CLASSES),
        progress=False,
    )
    assert data.classes == mf.TINY_CLASSES and len(data.indices("val")) > 0
    core = mf.tiny_core(metadata=False, seed=2, image_size=64)
    core.save(run_dir / "model.keras")
    config = {
        "data": str(synthetic_ham),
        "format": "auto",
        "dataset": "HAM10000",
        "split": str(run_dir / "split.csv"),
        "image_size": 64,
        "classes": list(data.classes),
        "cache_dir": str(tmp_path / "cache"),
        "backbone": "MobileNetV2",
        "use_metadata": False,
        "seed": 42,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    licence = tmp_path / "LICENCE.txt"
    licence.write_text("test licence\n")
    out = tmp_path / "exported.onnx"
    argv = [str(run_dir), "--out", str(out), "--name", "Tiny", "--licence-file", str(licence)]
    assert _export_command(argv) == 0
    captured = capsys.readouterr()
    assert "validation images of the run's split" in captured.err
    assert "synthetic" not in captured.err
    assert "heatmaps vs GradientTape" in captured.out

    engine = Engine.load(out, providers="cpu")
    assert not engine.card.uses_metadata and engine.card.metadata_input is None
    assert engine.card.name == "Tiny" and engine.card.raw["licence"] == "test licence"
    assert engine.card.raw["export"]["check_images"] == min(16, len(data.indices("val")))
    assert (tmp_path / "model_card.json").is_file()
    pred = engine.predict_one(np.full((80, 100, 3), 120, np.uint8), metadata=None)
    assert pred.heatmaps.shape == (2, 2, len(mf.TINY_CLASSES))
    assert abs(pred.probabilities.sum() - 1) < 1e-9


def test_export_command_reports_a_missing_run_folder(tmp_path):
    with pytest.raises(ModelError, match="not a folder"):
        _export_command([str(tmp_path / "nope")])
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelError, match=r"config.json is missing"):
        _export_command([str(tmp_path / "run")])
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"model.keras is missing"):
        _export_command([str(tmp_path / "run")])


def test_export_module_keeps_tensorflow_out_of_import():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = "import sys, trainer.export, trainer.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_the_inference_model_shares_the_core_weights():
    from trainer.gradcam import build_inference_model

    core = mf.tiny_core(metadata=True, seed=4, image_size=64)
    model = build_inference_model(core)
    assert len(model.weights) == len(core.weights)  # nothing copied
    images = mf.random_images(2, seed=9, size=64)
    meta = DEFAULT_ENCODING.encode_many(mf.check_metas(2))
    before = np.asarray(model([images, meta])["logits"])
    kernel = core.get_layer("logits").kernel
    kernel.assign(np.asarray(kernel) * 2.0)
    after = np.asarray(model([images, meta])["logits"])
    assert not np.allclose(before, after)


def test_tidy_graph_renames_suffixed_names_and_drops_unused_inputs():
    """What tf2onnx / Keras' own export can produce: suffixed names and a normalisation constant
    left as a graph input that nothing reads (onnxruntime refuses to run such a graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from trainer.export import tidy_graph

    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("serving_default_image:0", f, ["unk__1", 8, 8, 3]),
        helper.make_tensor_value_info("metadata_1", f, ["unk__2", 2]),
        helper.make_tensor_value_info("normalization/mean", f, [3]),
    ]
    nodes = [
        helper.make_node(
            "ReduceMean", ["serving_default_image:0"], ["features:0"], axes=[1, 2], keepdims=0
        ),
        helper.make_node("Concat", ["features:0", "metadata_1"], ["logits_1"], axis=1),
        helper.make_node("Softmax", ["logits_1"], ["probabilities:0"], axis=-1),
        helper.make_node("Identity", ["serving_default_image:0"], ["heatmaps"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits_1", f, ["unk__3", 5]),
        helper.make_tensor_value_info("probabilities:0", f, ["unk__4", 5]),
        helper.make_tensor_value_info("heatmaps", f, ["unk__5", 8, 8, 3]),
        helper.make_tensor_value_info("features:0", f, ["unk__6", 3]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    removed, renamed = tidy_graph(model, ("image", "metadata"))
    assert removed == ["normalization/mean"]
    assert renamed == {
        "serving_default_image:0": "image",
        "metadata_1": "metadata",
        "logits_1": "logits",
        "probabilities:0": "probabilities",
        "features:0": "features",
    }
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "metadata"]
    assert session.get_inputs()[0].shape[0] == "batch"
    out = session.run(
        ["probabilities"],
        {"image": np.ones((2, 8, 8, 3), np.float32), "metadata": np.zeros((2, 2), np.float32)},
    )[0]
    assert out.shape == (2, 5)

    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.output[0].name = "scores"
    with pytest.raises(ModelError, match="outputs"):
        tidy_graph(broken, ("image", "metadata"))


def test_a_distilled_models_card_warns_that_its_test_figures_may_be_optimistic():
    from trainer.export import default_limitations

    plain = default_limitations(["MEL", "NV"], "HAM10000", True)
    distilled = default_limitations(["MEL", "NV"], "HAM10000", True, teacher="sklesion")
    assert not any("Distilled" in item for item in plain)
    (note,) = [item for item in distilled if "Distilled" in item]
    assert "sklesion" in note and "optimistic" in note


def test_a_card_edited_after_export_is_refused(dual, tmp_path):
    """The threshold and the temperature turn scores into advice: an edited card must not load."""
    import onnx

    from desktop_app.core.card import CARD_KEY, card_digest
    from desktop_app.core.engine import Engine

    model = onnx.load_from_string(dual.path.read_bytes())
    (prop,) = [p for p in model.metadata_props if p.key == CARD_KEY]
    card = json.loads(prop.value)
    assert card["integrity"]["card_sha256"] == card_digest(card)
    card["malignancy"]["threshold"] = 0.9
    prop.value = json.dumps(card)
    edited = tmp_path / "edited-card.onnx"
    edited.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"card .*has been changed since .*exported"):
        Engine.load(edited)
