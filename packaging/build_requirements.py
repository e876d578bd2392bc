"""Print the pip requirements of one build flavour, taken from pyproject.toml.

The app's runtime dependencies (``[project] dependencies``) plus the ``dist`` extra (PyInstaller),
with the onnxruntime package chosen by the flavour:

- ``gpu`` (the default, as in pyproject.toml): ``onnxruntime-gpu`` (CUDA when present, else CPU);
- ``cpu``: ``onnxruntime``, with the same version bounds.

Both packages import as ``onnxruntime``, so a build venv must hold exactly one of them; that is why
each flavour gets its own venv (``build/venv-<flavour>``). Used by ``packaging/build.sh``::

    python packaging/build_requirements.py --flavour cpu > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ("gpu", "cpu")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read the package name of {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(flavour: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirement lines for ``flavour`` ("gpu" or "cpu")."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps = [d.split("#")[0].strip() for d in project["dependencies"]]
    extras = project.get("optional-dependencies", {})
    if "dist" not in extras:
        raise ValueError("pyproject.toml has no `dist` extra (PyInstaller)")
    ort = [d for d in deps if _name(d) in ("onnxruntime", "onnxruntime-gpu")]
    if len(ort) != 1:
        raise ValueError(f"expected one onnxruntime dependency in pyproject.toml, found {ort}")
    spec = ort[0][len(_NAME.match(ort[0]).group(1)) :]  # version bounds and markers
    wanted = ("onnxruntime-gpu" if flavour == "gpu" else "onnxruntime") + spec
    out = [wanted if d == ort[0] else d for d in deps]
    return out + [d.split("#")[0].strip() for d in extras["dist"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=FLAVOURS, default="gpu")
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(requirements(args.flavour)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
