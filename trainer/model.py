"""The dual-input model: image backbone + metadata branch + fusion head.

Layer names are part of the contract with :mod:`trainer.export`, which derives the Grad-CAM heatmap
from them: ``backbone`` (a nested model whose output is the last convolutional feature map),
``pool`` (global average pooling), ``meta_dense`` (metadata branch), ``fusion`` (concatenate),
``head_dense`` (ReLU), ``head_dropout``, ``logits`` (linear). The model takes 0-255 RGB float images:
each backbone's own scaling sits inside the model (``preprocess`` layer), so the app feeds every
backbone the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from keras import layers

# name -> (constructor, preprocessing, supports local weights file)
BACKBONES: dict[str, str] = {
    "MobileNetV2": "mobilenet_v2",
    "EfficientNetB0": "efficientnet",
    "EfficientNetB1": "efficientnet",
    "EfficientNetB2": "efficientnet",
    "EfficientNetB3": "efficientnet",
    "EfficientNetB4": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2",
    "ResNet50": "caffe",
}


@keras.saving.register_keras_serializable(package="lesionlens")
class ScaleToBackbone(layers.Layer):
    """Map 0-255 RGB floats to what a backbone expects. Kept in the model so the app never has to know.

    modes: ``tf`` -> [-1, 1] (MobileNetV2); ``none`` -> unchanged (EfficientNet rescales itself);
    ``caffe`` -> BGR minus the ImageNet mean (ResNet50).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "none", "caffe"):
            raise ValueError(f"unknown scaling mode {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            bgr = keras.ops.flip(x, axis=-1)
            mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
            return bgr - mean
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


_SCALING = {
    "mobilenet_v2": "tf",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "caffe": "caffe",
}


@dataclass(frozen=True)
class ModelSpec:
    """What to build. ``weights``: 'imagenet' (downloads when online), a local .h5 path, or None."""

    num_classes: int
    image_size: int = 224
    backbone: str = "MobileNetV2"
    weights: str | None = None
    metadata_size: int | None = 14  # None -> image-only model
    meta_units: int = 32
    head_units: int = 256
    dropout: float = 0.3


def build_backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    """A headless ImageNet backbone whose output is its last convolutional feature map."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise FileNotFoundError(f"weights file not found: {weights}")
    ctor = getattr(keras.applications, name)
    kwargs = {"include_top": False, "weights": weights, "input_shape": (image_size, image_size, 3)}
    if name.startswith("EfficientNetV2"):
        kwargs["include_preprocessing"] = True
    base = ctor(**kwargs)
    return keras.Model(base.inputs, base.output, name="backbone")


def build_model(spec: ModelSpec) -> keras.Model:
    """The core model that is trained and exported. Output: class logits (no softmax)."""
    image = keras.Input((spec.image_size, spec.image_size, 3), name="image", dtype="float32")
    backbone = build_backbone(spec.backbone, spec.image_size, spec.weights)
    x = ScaleToBackbone(_SCALING[BACKBONES[spec.backbone]], name="preprocess")(image)
    # BatchNormalization must stay in inference mode while fine-tuning (the keras-io recipe: small
    # batches would wreck its statistics). In Keras 3 the `training=False` below is not enough once
    # BN layers are trainable; set_backbone_trainable() keeps every BN layer frozen (trainable=False
    # layers run in inference mode), and tests/test_train.py checks the moving statistics stay put.
    fmap = backbone(x, training=False)
    pooled = layers.GlobalAveragePooling2D(name="pool")(fmap)
    inputs = [image]
    if spec.metadata_size:
        meta = keras.Input((spec.metadata_size,), name="metadata", dtype="float32")
        inputs.append(meta)
        m = layers.Dense(spec.meta_units, activation="relu", name="meta_dense")(meta)
        fused = layers.Concatenate(name="fusion")([pooled, m])
    else:
        fused = pooled
    h = layers.Dense(spec.head_units, activation="relu", name="head_dense")(fused)
    h = layers.Dropout(spec.dropout, name="head_dropout")(h)
    logits = layers.Dense(spec.num_classes, name="logits")(h)
    name = f"lesionlens_{spec.backbone.lower()}_{'dual' if spec.metadata_size else 'image'}"
    return keras.Model(inputs, logits, name=name)


def set_backbone_trainable(model: keras.Model, unfreeze_layers: int) -> int:
    """Freeze the backbone, then unfreeze its top ``unfreeze_layers`` layers (-1: all), always
    keeping BatchNormalization frozen. Returns how many backbone layers are trainable."""
    backbone = model.get_layer("backbone")
    if unfreeze_layers == 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    blayers = backbone.layers
    cut = 0 if unfreeze_layers < 0 else max(0, len(blayers) - unfreeze_layers)
    n = 0
    for i, layer in enumerate(blayers):
        trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        n += bool(trainable and layer.weights)
    return n


def uses_metadata(model: keras.Model) -> bool:
    return any(t.name.startswith("metadata") or "metadata" in t.name for t in model.inputs)


CUSTOM_OBJECTS = {"ScaleToBackbone": ScaleToBackbone}
