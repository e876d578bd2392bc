"""LesionLens trainer: TensorFlow/Keras side. Reads data sets, splits, trains, evaluates, exports ONNX.

Imports ``desktop_app.core`` for the contract (classes, metadata encoding, preprocessing, model card)
so that what is trained is exactly what the app feeds.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides the messages users need.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
