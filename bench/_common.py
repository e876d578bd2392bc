"""Helpers shared by the benchmarks: statistics, machine description, image choice, results files.

Nothing here imports TensorFlow or Qt. The benchmarks are not part of the app; they live in
``bench/`` and are run from the repository root (``.venv/bin/python bench/bench_engine.py``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"

if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/, not the repository, on sys.path
    sys.path.insert(0, str(REPO))


def stats_ms(samples_s: Any) -> dict[str, float]:
    """median / p10 / p90 / mean / min / max in milliseconds of a list of seconds."""
    import numpy as np  # imported lazily: the launch benchmark's parent stays small (see there)

    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def pick_images(folder: Path, count: int) -> list[Path]:
    """``count`` JPEG/PNG files spread evenly over the sorted folder (deterministic, no RNG)."""
    exts = {".jpg", ".jpeg", ".png"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise SystemExit(f"no images (.jpg/.jpeg/.png) in {folder}")
    if count >= len(files):
        return files
    if count <= 1:
        return files[:count]
    step = (len(files) - 1) / (count - 1)
    return [files[round(i * step)] for i in range(count)]


def ham_metadata(images_dir: Path) -> dict[str, dict[str, str]]:
    """image_id -> the HAM10000 metadata row, when HAM10000_metadata.csv sits next to the images."""
    for cand in (images_dir.parent / "HAM10000_metadata.csv", images_dir / "HAM10000_metadata.csv"):
        if cand.is_file():
            with cand.open(newline="", encoding="utf-8") as f:
                return {row["image_id"]: row for row in csv.DictReader(f)}
    return {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def busy_processes(min_cpu: float = 10.0) -> list[str]:
    """Other processes using >= min_cpu % CPU right now (ps' lifetime average), with their nice."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,ni,pcpu,rss,args", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 4)
        if len(parts) < 5 or int(parts[0]) == os.getpid():
            continue
        try:
            cpu = float(parts[2])
        except ValueError:
            continue
        if cpu >= min_cpu:
            rows.append(
                f"pid {parts[0]} nice {parts[1]} cpu {cpu:.0f}% rss {int(parts[3]) // 1024} MB: "
                f"{parts[4][:110]}"
            )
    return rows


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including the background load right now."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "busy_processes": busy_processes(),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    return info


def versions(*modules: str) -> dict[str, str]:
    out = {}
    for name in modules:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def results_path(kind: str, when: datetime | None = None) -> Path:
    when = when or datetime.now()
    return RESULTS_DIR / f"{kind}-{when:%Y-%m-%d-%H%M%S}.json"


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table (also readable in a terminal)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
