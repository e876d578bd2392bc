"""The tamper check: the digest ignores the card but not a single changed weight byte."""

import pytest

from desktop_app.core.errors import ModelError
from desktop_app.core.onnx_digest import graph_digest

onnx = pytest.importorskip("onnx", reason="the onnx package is a trainer dependency")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tiny_model_bytes(weight: float = 2.0, props: dict | None = None) -> bytes:
    import numpy as np

    w = numpy_helper.from_array(np.full((3,), weight, np.float32), "w")
    node = helper.make_node("Mul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [w],
    )
    model = helper.make_model(graph)
    if props:
        helper.set_model_props(model, props)
    return model.SerializeToString()


def test_digest_ignores_metadata_props_but_sees_weights():
    plain = tiny_model_bytes()
    with_card = tiny_model_bytes(props={"lesionlens.model_card": "{...}"})
    assert plain != with_card
    assert graph_digest(plain) == graph_digest(with_card)
    assert graph_digest(tiny_model_bytes(weight=2.0001)) != graph_digest(plain)


def test_garbage_and_truncated_files_are_model_errors():
    data = tiny_model_bytes()
    with pytest.raises(ModelError):
        graph_digest(data[: len(data) // 2])
    with pytest.raises(ModelError):
        graph_digest(b"this is not an onnx file at all")
