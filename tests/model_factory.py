"""Tiny real models for the export and engine tests, built once per test session.

``shared_export(tmp_path_factory)`` builds a 96x96 MobileNetV2 dual-input core model with a
16-unit head (random backbone, head weights perturbed so every class gets a non-trivial heatmap),
exports it with :func:`trainer.export.export_onnx` and caches the result, so test_export.py and
test_engine.py pay for one export in total. TensorFlow is imported only when a model is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core.card import CARD_KEY, new_card
from desktop_app.core.classes import get
from desktop_app.core.imaging import PreprocessSpec
from desktop_app.core.metadata import DEFAULT_ENCODING, PatientMetadata

TINY_SIZE = 96  # MobileNetV2 -> a 3x3 feature map: small, but a real map to correlate
TINY_CLASSES = ("MEL", "NV", "BCC", "BKL")  # two malignant, two benign
TINY_TEMPERATURE = 1.7
TINY_THRESHOLD = 0.45


def tiny_core(*, metadata: bool = True, seed: int = 0, image_size: int = TINY_SIZE) -> Any:
    """A small core model from trainer.model.build_model with a perturbed head."""
    import keras

    from trainer.model import ModelSpec, build_model

    keras.utils.set_random_seed(seed)
    core = build_model(
        ModelSpec(
            num_classes=len(TINY_CLASSES),
            image_size=image_size,
            weights=None,
            metadata_size=DEFAULT_ENCODING.size if metadata else None,
            meta_units=8,
            head_units=16,
        )
    )
    perturb_head(core, seed)
    return core


def perturb_head(core: Any, seed: int) -> None:
    """Random, larger head weights: fresh Dense biases are zero and the logits nearly uniform,
    which would leave many heatmaps all-zero and the metadata effect invisible."""
    rng = np.random.default_rng(seed)
    for name in ("meta_dense", "head_dense", "logits"):
        try:
            layer = core.get_layer(name)
        except ValueError:
            continue
        for var in layer.weights:
            scale = 0.5 if len(var.shape) == 2 else 0.2
            var.assign(rng.normal(0.0, scale, var.shape).astype("float32"))


def tiny_card(
    *,
    metadata: bool = True,
    image_size: int = TINY_SIZE,
    temperature: float = TINY_TEMPERATURE,
    threshold: float = TINY_THRESHOLD,
) -> dict[str, Any]:
    return new_card(
        name="tiny test model",
        version="0.0.1",
        trainer_version="test",
        backbone="MobileNetV2",
        classes=[get(c) for c in TINY_CLASSES],
        preprocess=PreprocessSpec(height=image_size, width=image_size),
        metadata_encoding=DEFAULT_ENCODING if metadata else None,
        training_data={"dataset": "random"},
        metrics={},
        temperature=temperature,
        malignancy_threshold=threshold,
        licence="test only",
        limitations=["a test model that knows nothing"],
    )


def check_metas(n: int) -> list[PatientMetadata]:
    sites = ["posterior torso", "head/neck", "torso", "lower extremity", "unknown"]
    sexes = ["male", "female", "unknown"]
    return [
        PatientMetadata(
            age=None if i % 4 == 3 else 20 + 9 * i, sex=sexes[i % 3], site=sites[i % len(sites)]
        )
        for i in range(n)
    ]


def random_images(n: int, seed: int = 1, size: int = TINY_SIZE) -> np.ndarray:
    """Smooth random 'lesions' (blurred noise + a dark blob), float32 0..255, (n, size, size, 3)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        noise = rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32)
        img = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        img = img * (1 - 0.7 * blob[..., None])
        out[i] = np.clip(img, 0, 255)
    return out


@dataclass
class TinyExport:
    path: Path
    core: Any
    report: Any
    images: np.ndarray  # the check images (float32)
    metadata: np.ndarray | None


_CACHE: dict[bool, TinyExport] = {}


def shared_export(tmp_path_factory: Any, *, metadata: bool = True) -> TinyExport:
    """Export the tiny model once per session (per metadata flag) and reuse it."""
    if metadata not in _CACHE:
        from trainer.export import export_onnx

        core = tiny_core(metadata=metadata)
        images = random_images(8)
        meta = DEFAULT_ENCODING.encode_many(check_metas(8)) if metadata else None
        folder = tmp_path_factory.mktemp("dual" if metadata else "image_only")
        path = folder / "model.onnx"
        report = export_onnx(
            core, tiny_card(metadata=metadata), path, check_images=images, check_metadata=meta
        )
        _CACHE[metadata] = TinyExport(path, core, report, images, meta)
    return _CACHE[metadata]


def replace_card(data: bytes, mutate: Callable[[dict[str, Any]], None]) -> bytes:
    """The same graph with an edited card (the card is outside the integrity digest)."""
    import onnx

    model = onnx.load_from_string(data)
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY])
    mutate(card)
    for p in model.metadata_props:
        if p.key == CARD_KEY:
            p.value = json.dumps(card)
    return model.SerializeToString()


def strip_card(data: bytes) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    return model.SerializeToString()


HEAD_CHANGES = ("extra_dense", "no_relu", "swapped_fusion", "softmax_logits", "max_pool")


def changed_head_core(kind: str, image_size: int = 32) -> Any:
    """The build_model layer names around a head changed in one way (``kind`` in HEAD_CHANGES,
    or "none" for the unchanged head built by hand)."""
    import keras
    from keras import layers

    from trainer.model import ScaleToBackbone, build_backbone

    image = keras.Input((image_size, image_size, 3), name="image")
    meta = keras.Input((DEFAULT_ENCODING.size,), name="metadata")
    backbone = build_backbone("MobileNetV2", image_size, None)
    fmap = backbone(ScaleToBackbone("tf", name="preprocess")(image), training=False)
    pool_cls = layers.GlobalMaxPooling2D if kind == "max_pool" else layers.GlobalAveragePooling2D
    pooled = pool_cls(name="pool")(fmap)
    m = layers.Dense(8, activation="relu", name="meta_dense")(meta)
    fused = layers.Concatenate(name="fusion")(
        [m, pooled] if kind == "swapped_fusion" else [pooled, m]
    )
    h = layers.Dense(16, activation=None if kind == "no_relu" else "relu", name="head_dense")(fused)
    if kind == "extra_dense":
        h = layers.Dense(16, activation="relu", name="head_dense_2")(h)
    h = layers.Dropout(0.3, name="head_dropout")(h)
    act = "softmax" if kind == "softmax_logits" else None
    logits = layers.Dense(len(TINY_CLASSES), activation=act, name="logits")(h)
    return keras.Model([image, meta], logits)


def synthetic_onnx(
    *,
    image_size: int = 32,
    metadata: bool = True,
    seed: int = 0,
    card_edit: Callable[[dict[str, Any]], None] | None = None,
) -> bytes:
    """A hand-made ONNX model (no TensorFlow) honouring the card contract, with a valid card:
    features = mean colour (N,3); logits = features/255 @ W + metadata @ Wm; heatmaps =
    image/255 @ Wh (N,H,W,K) in [0,1]. Fast enough for tests that do not need a real network."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from desktop_app.core.onnx_digest import graph_digest

    rng = np.random.default_rng(seed)
    k = len(TINY_CLASSES)
    s = image_size
    inits = [
        numpy_helper.from_array((rng.normal(0, 3, (3, k))).astype(np.float32), "w_img"),
        numpy_helper.from_array(np.full((3, k), 1 / 3, np.float32), "w_heat"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["features"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["features", "inv255"], ["feat01"]),
        helper.make_node("MatMul", ["feat01", "w_img"], ["logits_img"]),
        helper.make_node("Mul", ["image", "inv255"], ["image01"]),
        helper.make_node("MatMul", ["image01", "w_heat"], ["heatmaps"]),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", s, s, 3])]
    if metadata:
        size = DEFAULT_ENCODING.size
        inputs.append(helper.make_tensor_value_info("metadata", TensorProto.FLOAT, ["batch", size]))
        inits.append(
            numpy_helper.from_array(rng.normal(0, 2, (size, k)).astype(np.float32), "w_meta")
        )
        nodes += [
            helper.make_node("MatMul", ["metadata", "w_meta"], ["logits_meta"]),
            helper.make_node("Add", ["logits_img", "logits_meta"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["logits_img"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", s, s, k]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]),
    ]
    graph = helper.make_graph(nodes, "synthetic", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    card = tiny_card(metadata=metadata, image_size=s)
    card["integrity"]["graph_sha256"] = graph_digest(model.SerializeToString())
    if card_edit is not None:
        card_edit(card)
    entry = model.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = json.dumps(card)
    return model.SerializeToString()
