"""The contract shared by the app and the trainer: pure Python + numpy/opencv/onnxruntime.

Nothing in here imports Qt or TensorFlow, so the trainer and the app read and write exactly the same
classes, metadata encoding, image preprocessing and model card.
"""
