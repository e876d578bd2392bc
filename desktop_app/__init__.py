"""LesionLens: offline decision support for clinicians reading dermoscopy images.

Intended use: decision support for trained clinicians reading dermoscopy images. Not a diagnosis,
not for self-screening, not validated for clinical use.
"""

import os

# onnxruntime (1.31 on Linux) queues usage telemetry (a device ID, the program's path, the system)
# under ~/.cache/Microsoft for upload over HTTPS. LesionLens makes no network calls and keeps
# nothing about the machine, so it is switched off here, before anything of ours can import
# onnxruntime (the variable is read at import; ``disable_telemetry_events()`` afterwards is late).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"

INTENDED_USE = (
    "Decision support for trained clinicians reading dermoscopy images of skin lesions. "
    "It is not a diagnosis, not for self-screening by patients, and not validated for clinical use."
)
