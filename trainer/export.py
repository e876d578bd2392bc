"""``export``: the trained Keras model -> one checked ONNX file carrying its model card.

The exported graph (:func:`trainer.gradcam.build_inference_model`) has the core model's inputs
(``image`` (N,H,W,3) float32 0-255 RGB and, for a dual-input model, ``metadata`` (N,D)) and four
outputs: ``logits``, ``probabilities``, ``heatmaps`` (Grad-CAM of every class, closed form) and
``features`` (pooled image features). Nothing is written until every check has passed:

1. ``onnx.checker`` on the converted graph, inputs/outputs named exactly as the card says, no unused
   graph inputs (tf2onnx can leave a backbone's constants as inputs onnxruntime refuses to run);
2. onnxruntime (CPU) against Keras on real check images, with their real metadata and with all
   metadata unknown, as one batch and as a batch of one: probabilities within 1e-4, logits within
   1e-4 (relative to their scale when above 1), features within 1e-4 relative, heatmaps with
   Pearson correlation >= 0.99 against ``tf.GradientTape`` Grad-CAM for every non-zero map;
3. the card is validated, its ``integrity.graph_sha256`` set to the digest of the graph and the file
   re-opened the way the app opens it (:meth:`desktop_app.core.engine.Engine.from_bytes`).

TensorFlow, tf2onnx and onnx are imported inside functions: ``python -m trainer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app import INTENDED_USE
from desktop_app.core.atomic import atomic_write_bytes, atomic_write_text
from desktop_app.core.card import CARD_KEY, card_digest, card_from_json, card_to_json
from desktop_app.core.errors import ModelError

OUTPUT_NAMES = ("logits", "probabilities", "heatmaps", "features")
PROB_TOL = 1e-4
LOGIT_TOL = 1e-4
FEATURE_TOL = 1e-4
HEATMAP_MIN_CORR = 0.99
CARD_FILE = "model_card.json"
HAM10000_LICENCE = (
    "CC BY-NC-SA 4.0 (model trained on HAM10000, Tschandl et al. 2018; non-commercial, share-alike)"
)
OTHER_LICENCE = "see training data licences"


@dataclass
class ExportReport:
    """What the export did and measured; :meth:`summary` is what the CLI prints."""

    path: Path
    card_path: Path | None
    size_bytes: int
    sha256: str
    graph_sha256: str
    opset: int
    n_check_images: int
    parity: dict[str, float] = field(default_factory=dict)
    removed_inputs: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        p = self.parity
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, opset {self.opset})",
            f"  sha256        {self.sha256}",
            f"  graph sha256  {self.graph_sha256} (in the card)",
        ]
        if self.card_path is not None:
            lines.append(f"  card          {self.card_path}")
        lines += [
            f"  checked on {self.n_check_images} images (batch of {self.n_check_images} and of 1; "
            "real and unknown metadata):",
            f"    probabilities max |ONNX - Keras| {p.get('probabilities_max_abs_diff', 0):.2e}",
            f"    logits        max |ONNX - Keras| {p.get('logits_max_abs_diff', 0):.2e}",
            f"    features      max rel. diff      {p.get('features_max_rel_diff', 0):.2e}",
            f"    heatmaps vs GradientTape: correlation min {p.get('heatmap_corr_min', 1):.5f}, "
            f"mean {p.get('heatmap_corr_mean', 1):.5f} over {int(p.get('heatmap_maps', 0))} "
            f"non-zero maps (max |diff| {p.get('heatmaps_max_abs_diff', 0):.2e})",
        ]
        if self.removed_inputs:
            lines.append(f"  removed unused graph inputs: {', '.join(self.removed_inputs)}")
        if self.renamed:
            lines.append("  renamed: " + ", ".join(f"{a} -> {b}" for a, b in self.renamed.items()))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Graph clean-up
# --------------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """``image:0`` / ``image_1`` / ``serving_default_image:0`` -> ``image`` (tf2onnx suffixes)."""
    name = re.sub(r":\d+$", "", name)
    name = re.sub(r"^serving_default_", "", name)
    return re.sub(r"_\d+$", "", name)


def _rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for seq in (node.input, node.output):
            for i, value in enumerate(seq):
                if value == old:
                    seq[i] = new
    for seq in (graph.input, graph.output, graph.value_info):
        for vi in seq:
            if vi.name == old:
                vi.name = new


def _match_names(
    graph: Any, kind: str, present: list[str], expected: tuple[str, ...], renamed: dict[str, str]
) -> None:
    """Rename ``present`` graph inputs/outputs to ``expected`` where tf2onnx suffixed them."""
    taken = set(present)
    for want in expected:
        if want in taken:
            continue
        candidates = [n for n in present if n not in expected and _canonical(n) == want]
        if len(candidates) != 1:
            raise ModelError(
                f"The converted ONNX graph's {kind} are {present}; expected {list(expected)} "
                "and they could not be matched unambiguously."
            )
        _rename_value(graph, candidates[0], want)
        renamed[candidates[0]] = want
        taken.add(want)


def tidy_graph(
    model: Any, input_names: tuple[str, ...], output_names: tuple[str, ...] = OUTPUT_NAMES
) -> tuple[list[str], dict[str, str]]:
    """Make the graph's interface exactly ``input_names`` -> ``output_names``: drop graph inputs no
    node reads, undo tf2onnx name suffixes, name the batch dimension ``batch``. Returns (removed
    inputs, renames)."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    removed = [i.name for i in graph.input if i.name not in used or i.name in initializers]
    keep = [i for i in graph.input if i.name not in removed]
    del graph.input[:]
    graph.input.extend(keep)

    renamed: dict[str, str] = {}
    _match_names(graph, "inputs", [i.name for i in graph.input], input_names, renamed)
    _match_names(graph, "outputs", [o.name for o in graph.output], output_names, renamed)
    got_in = sorted(i.name for i in graph.input)
    got_out = sorted(o.name for o in graph.output)
    if got_in != sorted(input_names) or got_out != sorted(output_names):
        raise ModelError(
            f"The converted ONNX graph has inputs {got_in} and outputs {got_out}; expected "
            f"{sorted(input_names)} and {sorted(output_names)}."
        )
    for vi in [*graph.input, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    return removed, renamed


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_card_matches(card: dict[str, Any], core: Any, info: Any) -> None:
    """The card must describe this model: classes, input size, metadata size."""
    n_classes = len(card["classes"])
    if n_classes != info.num_classes:
        raise ModelError(f"The card lists {n_classes} classes; the model has {info.num_classes}.")
    pre = card["inputs"]["image"]["preprocess"]
    _, h, w, c = core.inputs[0].shape
    if (pre["height"], pre["width"], 3) != (h, w, c):
        raise ModelError(
            f"The card says {pre['height']}x{pre['width']} images; the model takes {h}x{w}x{c}."
        )
    meta = card["inputs"]["metadata"]
    if info.uses_metadata != (meta is not None):
        raise ModelError(
            "The card and the model disagree on whether the model uses metadata "
            f"(card: {meta is not None}, model: {info.uses_metadata})."
        )
    if meta is not None:
        from desktop_app.core.metadata import MetadataEncoding

        size = MetadataEncoding.from_dict(meta["encoding"]).size
        if int(core.inputs[1].shape[-1]) != size:
            raise ModelError(
                f"The card's metadata encoding has {size} values; the model takes "
                f"{core.inputs[1].shape[-1]}."
            )
    names = (card["inputs"]["image"]["name"], *([meta["name"]] if meta else []))
    if names != tuple(("image", "metadata")[: len(names)]):
        raise ModelError(f"The card names the inputs {names}; the exporter writes image/metadata.")
    if {card["outputs"].get(k) for k in OUTPUT_NAMES} != set(OUTPUT_NAMES):
        raise ModelError(f"The card's outputs {card['outputs']} are not {list(OUTPUT_NAMES)}.")


def _run_parity(
    core: Any,
    session: Any,
    images: np.ndarray,
    metadata: np.ndarray | None,
) -> dict[str, Any]:
    """Compare onnxruntime with Keras on one metadata variant, as one batch and as a batch of 1."""
    import keras

    from trainer.gradcam import check_head, gradcam_tape, heatmap_correlation

    info = check_head(core)
    feats_model = keras.Model(core.inputs, info.pooled)
    keras_in = [images] if metadata is None else [images, metadata]
    ref_logits = np.asarray(core(keras_in, training=False))
    ref_feats = np.asarray(feats_model(keras_in, training=False))
    ref_maps = gradcam_tape(core, images, metadata)

    def ort(sl: slice) -> dict[str, np.ndarray]:
        feed = {"image": images[sl]}
        if metadata is not None:
            feed["metadata"] = metadata[sl]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed), strict=True))

    full = ort(slice(None))
    one = ort(slice(0, 1))
    scale = max(1.0, float(np.abs(ref_logits).max()))
    fscale = max(1e-6, float(np.abs(ref_feats).max()))
    corr = heatmap_correlation(full["heatmaps"], ref_maps)
    corr_one = heatmap_correlation(one["heatmaps"], ref_maps[:1])
    valid = np.concatenate([corr[~np.isnan(corr)], corr_one[~np.isnan(corr_one)]])
    return {
        "probabilities_max_abs_diff": max(
            float(np.abs(full["probabilities"] - _softmax(ref_logits)).max()),
            float(np.abs(one["probabilities"] - _softmax(ref_logits[:1])).max()),
        ),
        "logits_max_abs_diff": max(
            float(np.abs(full["logits"] - ref_logits).max()),
            float(np.abs(one["logits"] - ref_logits[:1]).max()),
        ),
        "logits_scale": scale,
        "features_max_rel_diff": max(
            float(np.abs(full["features"] - ref_feats).max()),
            float(np.abs(one["features"] - ref_feats[:1]).max()),
        )
        / fscale,
        "heatmaps_max_abs_diff": float(np.abs(full["heatmaps"] - ref_maps).max()),
        "heatmap_corr": valid,
        "heatmap_zero_maps": int(np.isnan(corr).sum()),
        "heatmap_shape": tuple(full["heatmaps"].shape),
    }


def check_parity(
    core: Any,
    session: Any,
    images: np.ndarray,
    metadata: np.ndarray | None,
    unknown_metadata: np.ndarray | None,
) -> dict[str, float]:
    """All export checks against Keras; raise ModelError listing the numbers if any fails."""
    variants = [("real metadata" if metadata is not None else "image only", metadata)]
    if metadata is not None and unknown_metadata is not None:
        unknown = np.tile(np.asarray(unknown_metadata, np.float32), (len(images), 1))
        variants.append(("unknown metadata", unknown))
    results = {label: _run_parity(core, session, images, meta) for label, meta in variants}

    corrs = np.concatenate([r["heatmap_corr"] for r in results.values()])
    summary = {
        "probabilities_max_abs_diff": max(
            r["probabilities_max_abs_diff"] for r in results.values()
        ),
        "logits_max_abs_diff": max(r["logits_max_abs_diff"] for r in results.values()),
        "features_max_rel_diff": max(r["features_max_rel_diff"] for r in results.values()),
        "heatmaps_max_abs_diff": max(r["heatmaps_max_abs_diff"] for r in results.values()),
        "heatmap_corr_min": float(corrs.min()) if corrs.size else float("nan"),
        "heatmap_corr_mean": float(corrs.mean()) if corrs.size else float("nan"),
        "heatmap_maps": float(corrs.size),
        "heatmap_zero_maps": float(sum(r["heatmap_zero_maps"] for r in results.values())),
    }
    failures = []
    for label, r in results.items():
        if not r["probabilities_max_abs_diff"] <= PROB_TOL:
            failures.append(
                f"{label}: probabilities differ by {r['probabilities_max_abs_diff']:.3g} "
                f"(limit {PROB_TOL:g})"
            )
        if not r["logits_max_abs_diff"] <= LOGIT_TOL * r["logits_scale"]:
            failures.append(
                f"{label}: logits differ by {r['logits_max_abs_diff']:.3g} "
                f"(limit {LOGIT_TOL * r['logits_scale']:.3g})"
            )
        if not r["features_max_rel_diff"] <= FEATURE_TOL:
            failures.append(
                f"{label}: features differ by {r['features_max_rel_diff']:.3g} relative "
                f"(limit {FEATURE_TOL:g})"
            )
        c = r["heatmap_corr"]
        if c.size and not (c.min() >= HEATMAP_MIN_CORR and c.mean() >= HEATMAP_MIN_CORR):
            failures.append(
                f"{label}: heatmap correlation with GradientTape min {c.min():.4f}, mean "
                f"{c.mean():.4f} (limit {HEATMAP_MIN_CORR}) over {c.size} maps"
            )
    if failures:
        raise ModelError(
            "The exported ONNX model does not reproduce the Keras model; nothing was written. "
            + "; ".join(failures)
            + "."
        )
    return summary


def _as_check_inputs(
    images: Any, metadata: Any, size: tuple[int, int], meta_size: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (*size, 3) or len(x) == 0:
        raise ModelError(
            f"Export check images must be a non-empty (N, {size[0]}, {size[1]}, 3) array of "
            f"preprocessed images; got shape {x.shape}."
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if meta_size is None:
        return x, None
    if metadata is None:
        raise ModelError("This model uses metadata: export checks need the images' metadata.")
    m = np.ascontiguousarray(metadata, dtype=np.float32)
    if m.shape != (len(x), meta_size):
        raise ModelError(f"Export check metadata must have shape ({len(x)}, {meta_size}).")
    return x, m


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def export_onnx(
    core: Any,
    card_dict: dict[str, Any],
    out_path: str | Path,
    *,
    check_images: Any,
    check_metadata: Any = None,
    opset: int = 17,
    write_card_json: bool = True,
) -> ExportReport:
    """Convert ``core`` (from :func:`trainer.model.build_model`) to ONNX with in-graph Grad-CAM,
    check it against Keras, embed ``card_dict`` (a :func:`desktop_app.core.card.new_card` dict; its
    integrity digest is filled in here) and write it atomically to ``out_path``, plus
    ``model_card.json`` beside it. ``check_images``: (N,H,W,3) preprocessed images (0-255 float or
    uint8), ideally >= 8 real ones; ``check_metadata``: their encoded metadata (N,D) for a model
    that uses metadata. Raises ModelError, writing nothing, when any check fails."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from desktop_app.core.engine import Engine
    from desktop_app.core.metadata import MetadataEncoding
    from desktop_app.core.onnx_digest import graph_digest
    from trainer.gradcam import build_inference_model, check_head

    out_path = Path(out_path)
    if not 13 <= int(opset) <= 18:
        raise ModelError(f"ONNX opset {opset} is not supported here; use 13 to 18.")
    if not out_path.parent.is_dir():
        raise ModelError(f"The output folder {out_path.parent} does not exist.")
    card = copy.deepcopy(dict(card_dict))
    info = check_head(core)
    check_card_matches(card, core, info)
    inference = build_inference_model(core)

    _, height, width, _ = core.inputs[0].shape
    meta_size = int(core.inputs[1].shape[-1]) if info.uses_metadata else None
    images, metadata = _as_check_inputs(check_images, check_metadata, (height, width), meta_size)
    warnings = []
    if len(images) < 8:
        warnings.append(f"only {len(images)} check images (8 or more recommended)")

    signature = [tf.TensorSpec((None, height, width, 3), tf.float32, name="image")]
    input_names: tuple[str, ...] = ("image",)
    if meta_size is not None:
        signature.append(tf.TensorSpec((None, meta_size), tf.float32, name="metadata"))
        input_names = ("image", "metadata")
    try:
        model, _ = tf2onnx.convert.from_keras(inference, input_signature=signature, opset=opset)
    except Exception as exc:
        raise ModelError(f"tf2onnx could not convert the model: {exc}") from exc
    removed, renamed = tidy_graph(model, input_names)

    model.doc_string = INTENDED_USE
    model.graph.doc_string = f"LesionLens {card['name']} {card['version']}"
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"The converted ONNX graph fails onnx.checker: {exc}") from exc
    del model.metadata_props[:]
    plain = model.SerializeToString()
    digest = graph_digest(plain)

    session = ort.InferenceSession(plain, providers=["CPUExecutionProvider"])
    unknown = None
    if info.uses_metadata:
        unknown = MetadataEncoding.from_dict(
            card["inputs"]["metadata"]["encoding"]
        ).unknown_vector()
    parity = check_parity(core, session, images, metadata, unknown)

    card["integrity"] = {"graph_sha256": digest}
    arch = card.setdefault("architecture", {})
    if not arch.get("heatmap_layer"):
        arch["heatmap_layer"] = f"backbone/{core.get_layer('backbone').layers[-1].name}"
    if not arch.get("parameters"):
        arch["parameters"] = int(core.count_params())
    arch["feature_map"] = [*info.map_size, info.channels]
    card["export"] = {
        "opset": int(opset),
        "converter": f"tf2onnx {tf2onnx.__version__}",
        "tensorflow": tf.__version__,
        "check_images": len(images),
        "parity": {k: round(v, 8) for k, v in parity.items()},
    }
    card["integrity"]["card_sha256"] = card_digest(card)  # last: it covers everything above
    card_json = card_to_json(card)
    card_from_json(card_json)  # what the app will parse, parsed now
    entry = model.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = card_json
    final = model.SerializeToString()
    if graph_digest(final) != digest:
        raise ModelError("Embedding the model card changed the graph digest; nothing was written.")

    # Open it exactly as the app will (card, digest, input/output contract) and run it once.
    engine = Engine.from_bytes(final, providers="cpu", path=out_path)
    again = engine.run_arrays(images[:1], None if metadata is None else metadata[:1])
    feed = {"image": images[:1], **({} if metadata is None else {"metadata": metadata[:1]})}
    before = session.run(["probabilities"], feed)[0]
    if not np.array_equal(again["probabilities"], before):
        raise ModelError(
            "The model with its card gives other outputs than without; nothing written."
        )

    atomic_write_bytes(out_path, final)
    card_path = None
    if write_card_json:
        card_path = out_path.with_name(CARD_FILE)
        atomic_write_text(card_path, card_json + "\n")
    return ExportReport(
        path=out_path,
        card_path=card_path,
        size_bytes=len(final),
        sha256=hashlib.sha256(final).hexdigest(),
        graph_sha256=digest,
        opset=int(opset),
        n_check_images=len(images),
        parity=parity,
        removed_inputs=removed,
        renamed=renamed,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------------
# The run-folder sub-command
# --------------------------------------------------------------------------------------------------


def default_limitations(
    class_codes: list[str], dataset: str, uses_metadata: bool, teacher: str | None = None
) -> list[str]:
    """What a clinician must know the model cannot know (model card ``limitations``).

    ``teacher``: the distillation teacher, if any. A teacher trained on data we cannot see may have
    learned this data set's test images, and the student inherits what it learned, so the test
    figures of a distilled model are flagged as possibly optimistic.
    """
    from desktop_app.core.classes import CATALOG

    missing = [c for c in CATALOG if c.code not in class_codes]
    items = []
    if missing:
        names = ", ".join(f"{c.name} ({c.code})" for c in missing)
        items.append(
            f"It only knows the classes it was trained on; it has never seen {names}, nor "
            "other skin lesions, and will assign such lesions to one of its own classes."
        )
    ham = "ham10000" in dataset.lower()
    items += [
        "Trained on dermoscopy images only: clinical (non-dermoscopic) photographs and "
        "smartphone pictures are outside what it has seen.",
        "Skin types in the training data are mostly light (Fitzpatrick I-III); performance on "
        "darker skin is unknown and may be worse.",
        (
            "Training images come from two sites (ViDIR group, Medical University of Vienna, "
            "Austria, and a skin cancer practice in Queensland, Australia) and their dermoscopes; "
            "other devices, lighting and magnification may lower accuracy."
            if ham
            else "Training images come from a limited set of clinics and dermoscopes; other "
            "devices, lighting and magnification may lower accuracy."
        ),
        "Not evaluated for children: very few training images are of patients under 18.",
        "Not evaluated on mucosal, nail, acral-volar or hair-covered lesions beyond the few "
        "present in the training data.",
        "Probabilities are calibrated on validation data of the same sources; they may be "
        "over- or under-confident elsewhere.",
        "Test metrics come from a split of the same data set (grouped by lesion/patient), not "
        "from an external prospective study.",
    ]
    if ham:
        items.insert(
            1,
            "HAM10000's 'akiec' class mixes actinic keratoses and intraepithelial carcinoma "
            "(Bowen's disease); invasive squamous cell carcinoma is not in the data.",
        )
    if teacher:
        items.append(
            f"Distilled from the teacher model '{teacher}', whose training data are not known to "
            "us and may include this data set's test images: the test figures may be optimistic. "
            "Judge it on an external test set."
        )
    if uses_metadata:
        items.append(
            "Age, sex and site shift the prediction as they did in the training data; entering "
            "them wrongly changes the answer. Leave a field unknown rather than guess."
        )
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="training run folder")
    parser.add_argument("--out", type=Path, help="ONNX file to write (default RUN_DIR/model.onnx)")
    parser.add_argument("--name", help="model name shown in the app (default from the run)")
    parser.add_argument("--version", default="1.0.0", help="model version (default 1.0.0)")
    parser.add_argument(
        "--opset", type=int, default=17, metavar="N", help="ONNX opset, 13 to 18 (default 17)"
    )
    parser.add_argument("--licence", help="licence statement for the model card")
    parser.add_argument(
        "--licence-file", type=Path, help="read the licence statement from this text file"
    )
    parser.add_argument(
        "--data", help="data set folder, when it has moved since training (default: config.json)"
    )
    parser.add_argument("--cache-dir", help="image cache folder (default: config.json's)")
    parser.add_argument(
        "--check-images",
        type=int,
        default=16,
        metavar="N",
        help="validation images used for the ONNX-vs-Keras checks (default 16)",
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: {what}.") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read ({exc}).") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object.")
    return data


def _classes_from_config(config: dict[str, Any]) -> list[Any]:
    from desktop_app.core.classes import LesionClass, get, normalize_label

    raw = config.get("classes")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ModelError("config.json has no 'classes' list (the model's output order).")
    out = []
    for item in raw:
        if isinstance(item, dict):
            base = get(normalize_label(item["code"]))
            out.append(
                LesionClass(
                    base.code,
                    item.get("name", base.name),
                    bool(item.get("malignant", base.malignant)),
                )
            )
        else:
            out.append(get(normalize_label(str(item))))
    return out


def _preprocess_from_config(config: dict[str, Any], core: Any) -> Any:
    from desktop_app.core.imaging import PreprocessSpec

    _, h, w, _ = core.inputs[0].shape
    if isinstance(config.get("preprocess"), dict):
        spec = PreprocessSpec.from_dict(config["preprocess"])
    else:
        size = config.get("image_size", h)
        sh, sw = (size, size) if isinstance(size, int) else tuple(size)
        spec = PreprocessSpec(height=int(sh), width=int(sw), resize=config.get("resize", "stretch"))
    if (spec.height, spec.width) != (h, w):
        raise ModelError(
            f"config.json says {spec.height}x{spec.width} images but model.keras takes {h}x{w}."
        )
    return spec


def _metrics_summary(value: Any, depth: int = 0) -> Any:
    """Metrics for the card: everything but long arrays (curves) and deep nesting."""
    if isinstance(value, dict):
        if depth > 4:
            return None
        return {str(k): _metrics_summary(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return value if len(value) <= 64 else None
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _split_counts(run_dir: Path, config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    import pandas as pd

    candidates = [run_dir / "split.csv"]
    for key in ("split", "split_file"):
        if isinstance(config.get(key), str):
            candidates.append(Path(config[key]))
    for path in candidates:
        if path.is_file():
            try:
                table = pd.read_csv(path, usecols=["label", "split"])
            except (OSError, ValueError) as exc:
                _warn(f"could not read the split file {path} ({exc})")
                continue
            counts = table.groupby(["split", "label"]).size()
            out: dict[str, Any] = {}
            for (split, label), n in counts.items():
                out.setdefault(str(split), {})[str(label)] = int(n)
            return path.name, out
    _warn("no split file found: the card will not list image counts per split")
    return None, {}


def _dataset_name(config: dict[str, Any]) -> str:
    for key in ("dataset", "dataset_name"):
        if isinstance(config.get(key), str) and config[key]:
            return config[key]
    fmt = str(config.get("format") or "")
    data = str(config.get("data") or "")
    if "ham10000" in (fmt + data).lower() or fmt.lower() == "ham":
        return "HAM10000"
    if fmt and fmt != "auto":
        return fmt
    return Path(data).name or "unknown"


def _load_run_data(config: dict[str, Any], run_dir: Path, args: argparse.Namespace) -> Any:
    """The run's PreparedData the way `evaluate` loads it (same split file, cache, classes)."""
    try:
        from trainer.evaluate import load_prepared_data
    except ImportError:
        load_prepared_data = None
    data_path = getattr(args, "data", None)
    cache_dir = getattr(args, "cache_dir", None)
    if load_prepared_data is not None:
        return load_prepared_data(config, run_dir, data_path, cache_dir)
    from trainer.data import prepare

    split = run_dir / "split.csv"
    return prepare(
        data_path or config["data"],
        fmt=config.get("format", "auto"),
        split_path=split if split.is_file() else config["split"],
        image_size=config["image_size"],
        cache_dir=cache_dir or config.get("cache_dir"),
        seed=config.get("seed", 42),
        classes=config.get("classes"),
        limit=config.get("limit"),
        resize=config.get("resize", "stretch"),
        progress=False,
    )


def _check_inputs_from_run(
    config: dict[str, Any],
    run_dir: Path,
    args: argparse.Namespace,
    core: Any,
    meta_size: int | None,
    class_codes: list[str],
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The first validation images of the run's split (real data); synthetic ones if unavailable."""
    _, h, w, _ = core.inputs[0].shape
    n = max(1, int(args.check_images))
    try:
        prepared = _load_run_data(config, run_dir, args)
        if list(prepared.classes) != class_codes:
            raise ValueError(f"the data's classes {list(prepared.classes)} are not {class_codes}")
        idx = np.asarray(prepared.indices("val"))[:n]
        if idx.size == 0:
            raise ValueError("the validation split is empty")
        images = np.asarray(prepared.images[idx], dtype=np.float32)
        if images.shape[1:] != (h, w, 3):
            raise ValueError(f"prepared images have shape {images.shape[1:]}, model takes {h}x{w}")
        meta = None if meta_size is None else np.asarray(prepared.metadata[idx], np.float32)
        return images, meta, f"{len(idx)} validation images of the run's split"
    except Exception as exc:  # any failure here only weakens the check: say so, go on
        _warn(
            f"could not load validation images for the export checks ({type(exc).__name__}: "
            f"{exc}); checking on synthetic random images instead (pass --data if the data set "
            "has moved)"
        )
    rng = np.random.default_rng(0)
    count = max(8, n)
    images = rng.integers(0, 256, (count, h, w, 3)).astype(np.float32)
    meta = None
    if meta_size is not None:
        from desktop_app.core.metadata import DEFAULT_ENCODING, PatientMetadata

        sexes = ["female", "male", "unknown"]
        sites = [*DEFAULT_ENCODING.site_choices()]
        metas = [
            PatientMetadata(
                age=float(rng.integers(5, 90)) if i % 4 else None,
                sex=sexes[i % 3],
                site=sites[i % len(sites)],
            )
            for i in range(count)
        ]
        meta = DEFAULT_ENCODING.encode_many(metas)
        if meta.shape[1] != meta_size:
            meta = rng.uniform(0, 1, (count, meta_size)).astype(np.float32)
    return images, meta, f"{count} synthetic random images"


def pooled_features(core: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The pooled backbone features (the ONNX ``features`` output) of uint8/float images."""
    import keras
    import tensorflow as tf

    image_input = core.inputs[0]
    feature_model = keras.Model(image_input, core.get_layer("pool").output)
    spec = tf.TensorSpec((None, *image_input.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def run_batch(batch):
        return feature_model(batch, training=False)

    out = [
        run_batch(np.asarray(images[i : i + batch_size], np.float32)).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, feature_model.output.shape[-1]))


def feature_statistics(core: Any, prepared: Any, max_train: int = 3000, seed: int = 0) -> dict:
    """The card's ``ood`` section: the training images' feature distribution (a random subset of
    at most ``max_train``), with thresholds at the 99th percentile of the validation images.
    The test split is not used."""
    from desktop_app.core.uncertainty import fit_feature_model

    rng = np.random.default_rng(seed)
    train_idx = np.asarray(prepared.indices("train"))
    if len(train_idx) > max_train:
        train_idx = np.sort(rng.choice(train_idx, max_train, replace=False))
    val_idx = np.asarray(prepared.indices("val"))
    train_features = pooled_features(core, prepared.images[train_idx])
    val_features = pooled_features(core, prepared.images[val_idx])
    return fit_feature_model(train_features, val_features)


def card_from_run(
    run_dir: Path,
    config: dict[str, Any],
    core: Any,
    *,
    name: str | None = None,
    version: str = "1.0.0",
    licence: str | None = None,
) -> dict[str, Any]:
    """The model card of a run folder's model: classes, input and metadata contract from
    ``config.json`` (checked against ``core``), temperature, threshold and metrics from
    ``evaluation/metrics.json`` (uncalibrated defaults, with a warning, when it is missing)."""
    import trainer
    from desktop_app.core.card import new_card
    from desktop_app.core.metadata import DEFAULT_ENCODING, MetadataEncoding
    from desktop_app.core.onnx_digest import file_sha256
    from trainer.model import uses_metadata

    classes = _classes_from_config(config)
    codes = [c.code for c in classes]
    preprocess = _preprocess_from_config(config, core)
    dual = uses_metadata(core)
    if "use_metadata" in config and bool(config["use_metadata"]) != dual:
        _warn(
            f"config.json says use_metadata={config['use_metadata']} but model.keras "
            f"{'takes' if dual else 'does not take'} metadata; following the model"
        )
    encoding = None
    if dual:
        enc = config.get("metadata_encoding")
        encoding = MetadataEncoding.from_dict(enc) if isinstance(enc, dict) else DEFAULT_ENCODING
        meta_size = int(core.inputs[1].shape[-1])
        if encoding.size != meta_size:
            raise ModelError(
                f"The metadata encoding has {encoding.size} values; the model takes {meta_size}."
            )

    metrics_path = run_dir / "evaluation" / "metrics.json"
    if metrics_path.is_file():
        evaluation = _read_json(metrics_path, "written by `python -m trainer evaluate`")
    else:
        evaluation = {}
        _warn(
            f"{metrics_path} not found: the model is UNCALIBRATED (temperature 1), its "
            "malignancy threshold is the untuned 0.5 and the card carries no test metrics. "
            "Run `python -m trainer evaluate` first for a model meant for use."
        )
    if evaluation.get("classes") is not None and list(evaluation["classes"]) != codes:
        raise ModelError(
            f"{metrics_path} was computed for the classes {evaluation['classes']}, "
            f"but this run has {codes}; re-run `python -m trainer evaluate`."
        )
    evaluated = evaluation.get("model_sha256")
    model_path = run_dir / "model.keras"
    if evaluated and model_path.is_file() and evaluated != file_sha256(model_path):
        raise ModelError(
            f"{metrics_path} was computed for another model.keras (sha256 {evaluated[:12]}...): "
            "its temperature and threshold do not belong to this model. Re-run "
            "`python -m trainer evaluate` first."
        )
    temperature = float(evaluation.get("temperature") or 1.0)
    threshold_info = evaluation.get("threshold") or {}
    if isinstance(threshold_info, int | float):
        threshold_info = {"value": float(threshold_info)}
    threshold = float(threshold_info.get("value", 0.5))
    target = threshold_info.get("target_sensitivity")
    if threshold_info.get("tuned") is False:
        _warn("the malignancy threshold was not tuned on validation data (no malignant case)")
    metrics: dict[str, Any] = {}
    for key in ("test", "validation"):
        if isinstance(evaluation.get(key), dict):
            metrics[key] = _metrics_summary(evaluation[key])
    for key in ("command", "created", "split"):
        if evaluation.get(key):
            metrics[f"evaluate_{key}"] = evaluation[key]
    if evaluation.get("commands"):
        metrics["commands"] = evaluation["commands"]
    if config.get("command"):
        metrics["train_command"] = config["command"]

    dataset = _dataset_name(config)
    summary = config.get("dataset_summary")
    if isinstance(summary, dict) and isinstance(summary.get("counts"), dict):
        split_name: str | None = Path(str(config.get("split") or "split.csv")).name
        counts = summary["counts"]
    else:
        split_name, counts = _split_counts(run_dir, config)
    training_data = {
        "dataset": dataset,
        "format": config.get("format"),
        "split_file": split_name,
        "seed": config.get("seed"),
        "counts": counts,
    }
    if isinstance(summary, dict) and summary.get("excluded_classes"):
        training_data["excluded_classes"] = summary["excluded_classes"]
    if licence is None:
        licence = HAM10000_LICENCE if dataset.lower() == "ham10000" else OTHER_LICENCE
    if not licence.strip():
        raise ModelError("The licence statement is empty.")

    backbone = str(config.get("backbone", "unknown"))
    return new_card(
        name=name or config.get("name") or f"LesionLens {backbone} ({run_dir.name})",
        version=version,
        trainer_version=trainer.__version__,
        backbone=backbone,
        classes=classes,
        preprocess=preprocess,
        metadata_encoding=encoding,
        training_data=training_data,
        metrics=metrics,
        temperature=temperature,
        malignancy_threshold=threshold,
        target_sensitivity=None if target is None else float(target),
        licence=licence.strip(),
        limitations=default_limitations(
            codes, dataset, dual, (config.get("train_config") or {}).get("teacher")
        ),
    )


def run(args: argparse.Namespace) -> int:
    import keras

    from trainer.model import CUSTOM_OBJECTS

    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir} is not a folder (expected a training run folder).")
    config = _read_json(run_dir / "config.json", "it is written by `python -m trainer train`")
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise ModelError(f"{model_path} is missing: train the model first.")
    licence = args.licence
    if args.licence_file is not None:
        try:
            licence = args.licence_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"The licence file could not be read ({exc}).") from None
    try:
        core = keras.models.load_model(model_path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as exc:
        raise ModelError(f"{model_path} could not be loaded ({exc}).") from exc

    card = card_from_run(
        run_dir, config, core, name=args.name, version=args.version, licence=licence
    )
    meta_size = int(core.inputs[1].shape[-1]) if card["inputs"]["metadata"] else None
    codes = [c["code"] for c in card["classes"]]
    images, meta, source = _check_inputs_from_run(config, run_dir, args, core, meta_size, codes)
    try:
        print("fitting the unusual-image statistics on training features...", file=sys.stderr)
        card["ood"] = feature_statistics(core, _load_run_data(config, run_dir, args))
    except Exception as exc:  # the model still works; the app then says the check is unavailable
        _warn(
            f"could not fit the unusual-image statistics ({type(exc).__name__}: {exc}); the "
            "model will be exported without them"
        )
    out = args.out or run_dir / "model.onnx"
    print(f"exporting {model_path} -> {out}; checking on {source}", file=sys.stderr)
    report = export_onnx(
        core, card, out, check_images=images, check_metadata=meta, opset=args.opset
    )
    print(report.summary())
    return 0


__all__ = [
    "CARD_FILE",
    "ExportReport",
    "add_arguments",
    "card_from_run",
    "check_parity",
    "default_limitations",
    "export_onnx",
    "run",
    "tidy_graph",
]
