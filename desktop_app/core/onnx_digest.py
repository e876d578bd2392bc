"""A tamper check for ONNX files that needs neither the ``onnx`` package nor TensorFlow.

The model card lives in the ONNX ``metadata_props`` (field 14 of ``ModelProto``), so a hash of the
whole file cannot be stored inside the file. Instead we hash every *other* top-level field of the
``ModelProto`` (graph, weights, opsets, producer...) in file order. Protobuf writes top-level fields
independently, so adding the card changes none of the hashed bytes; changing a single weight does.

Only the protobuf wire format's outer layer is read here (tag, varint, length): ~40 lines instead of
a dependency on ``onnx`` in the app.
"""

from __future__ import annotations

import hashlib
import os

from desktop_app.core.errors import ModelError

_METADATA_PROPS_FIELD = 14


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelError("The model file is damaged: it ends in the middle of a record.")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _top_level_fields(data: bytes):
    """Yield (field_number, raw_bytes_of_the_whole_field) for each top-level protobuf field."""
    buf = memoryview(data)
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ModelError("The file is not an ONNX model (unexpected data layout).")
        if pos > len(buf) or number == 0:
            raise ModelError("The model file is damaged or truncated.")
        yield number, buf[start:pos]


def graph_digest(data: bytes) -> str:
    """SHA-256 (hex) over every top-level ModelProto field except metadata_props."""
    h = hashlib.sha256()
    seen_graph = False
    for number, raw in _top_level_fields(data):
        if number == _METADATA_PROPS_FIELD:
            continue
        seen_graph |= number == 7  # ModelProto.graph
        h.update(raw)
    if not seen_graph:
        raise ModelError("The file is not an ONNX model: it holds no graph.")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the whole file, as printed on reports."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
