"""Decode and resize every image once, with the app's own functions, and keep the result as ``.npy``.

Each image goes through ``imaging.load_image(path)`` then ``imaging.resize_uint8(rgb, spec)``: the
same code the desktop app runs before inference (``engine.predict_path``: ``load_image(path)``, full
resolution, then ``preprocess``), so the network trains on exactly the pixels it will be fed. The
cache is a uint8 ``(N, H, W, 3)`` array, returned memory-mapped (read-only).

``fast_decode=True`` decodes with ``load_image(path, max_side=4 * max(h, w))`` instead (JPEG draft
mode + an extra INTER_AREA step): much faster on multi-megapixel files, but for images larger than
that bound the pixels differ slightly (a few grey levels) from what the app computes. Images no
larger than the bound (HAM10000's 600x450 at 224 px) are identical either way.

The file name is a hash of the ordered image paths with their sizes and modification times, the
geometry of the spec (height, width, resize mode), the decoding mode and the source of
``desktop_app.core.imaging``: a changed data set, size or decoder builds a new cache, anything else reuses the old one. The file is
written under a temporary name and renamed, so an interrupted build leaves no half cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from desktop_app.core.atomic import atomic_save_json, atomic_write_with
from desktop_app.core.errors import DatasetError, ImageError

CACHE_VERSION = 1
# Below this many images the work is done in this process: starting workers costs more.
_MIN_PARALLEL = 64


def _spec_key(spec) -> dict:
    return {"height": int(spec.height), "width": int(spec.width), "resize": str(spec.resize)}


def decode_max_side(spec, fast_decode: bool) -> int | None:
    """The ``max_side`` given to load_image: None (full resolution, as the app) unless fast."""
    return 4 * max(int(spec.height), int(spec.width)) if fast_decode else None


def _imaging_digest() -> str:
    from desktop_app.core import imaging

    try:
        src = Path(inspect.getsourcefile(imaging) or "").read_bytes()
    except OSError:  # pragma: no cover - frozen builds
        src = getattr(imaging, "__version__", "unknown").encode()
    return hashlib.sha256(src).hexdigest()[:16]


def cache_key(paths: Sequence[str | os.PathLike], spec, fast_decode: bool = False) -> str:
    """Hex digest of (ordered paths + sizes + mtimes, spec geometry, decoding, decoder source).

    The paths' order is part of the key: row i of the cache is image i.
    """
    h = hashlib.sha256()
    h.update(f"lesionlens-cache-v{CACHE_VERSION}\n".encode())
    key = {**_spec_key(spec), "max_side": decode_max_side(spec, fast_decode)}
    h.update(json.dumps(key, sort_keys=True).encode())
    h.update(_imaging_digest().encode())
    for p in paths:
        p = os.fspath(p)
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{os.path.abspath(p)}\t{stamp}".encode())
    return h.hexdigest()


def cache_path(
    paths: Sequence[str | os.PathLike],
    spec,
    cache_dir: str | os.PathLike,
    fast_decode: bool = False,
) -> Path:
    """Where the cache for these paths and this spec lives (whether or not it exists yet)."""
    key = cache_key(paths, spec, fast_decode)[:20]
    name = f"images_{spec.height}x{spec.width}_{spec.resize}_{len(paths)}_{key}.npy"
    return Path(cache_dir) / name


def _bad_path(npy: Path) -> Path:
    return npy.with_name(npy.name + ".bad.json")


# --------------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------------


def _worker_init() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)  # one decode per process; no oversubscription
    except Exception:  # pragma: no cover
        pass


def load_resized(
    path: str, height: int, width: int, resize: str, max_side: int | None = None
) -> np.ndarray:
    """One image as the app sees it: load_image then resize_uint8 (uint8 H x W x 3)."""
    from desktop_app.core import imaging

    spec = imaging.PreprocessSpec(height=height, width=width, resize=resize)
    loaded = imaging.load_image(path, max_side=max_side)
    return imaging.resize_uint8(loaded.rgb, spec)


def _job(
    args: tuple[int, str, int, int, str, int | None],
) -> tuple[int, np.ndarray | None, str | None]:
    i, path, height, width, resize, max_side = args
    try:
        return i, load_resized(path, height, width, resize, max_side), None
    except ImageError as exc:
        return i, None, str(exc)
    except Exception as exc:  # an unexpected decoder failure still names the file
        return i, None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _fill(
    out: np.ndarray,
    paths: list[str],
    spec,
    workers: int,
    progress: bool,
    max_side: int | None,
) -> dict[int, str]:
    from tqdm.auto import tqdm

    jobs = [(i, p, spec.height, spec.width, spec.resize, max_side) for i, p in enumerate(paths)]
    errors: dict[int, str] = {}
    bar = tqdm(total=len(jobs), desc="Caching images", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(jobs) < _MIN_PARALLEL:
            results = map(_job, jobs)
            for i, arr, err in results:
                _store(out, errors, i, arr, err)
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent may already run TensorFlow threads.
            ctx = mp.get_context("spawn")
            chunk = max(1, min(64, len(jobs) // (workers * 8)))
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init
            ) as pool:
                for i, arr, err in pool.map(_job, jobs, chunksize=chunk):
                    _store(out, errors, i, arr, err)
                    bar.update(1)
    finally:
        bar.close()
    return errors


def _store(
    out: np.ndarray, errors: dict[int, str], i: int, arr: np.ndarray | None, err: str | None
) -> None:
    if err is not None or arr is None:
        errors[i] = err or "could not be decoded"
        out[i] = 0
    else:
        out[i] = arr


def _load_existing(npy: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if arr.shape != shape or arr.dtype != np.uint8:
        return None
    return arr


def build_cache(
    paths: Sequence[str | os.PathLike],
    spec,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    on_error: Literal["raise", "report"] = "raise",
    fast_decode: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[int, str]]:
    """uint8 ``(N, spec.height, spec.width, 3)`` for ``paths``, memory-mapped read-only.

    Reuses the cache in ``cache_dir`` when paths, file sizes/mtimes, spec geometry and decoder are
    unchanged; otherwise decodes in parallel (``workers`` processes, default ``os.cpu_count()``)
    and writes it atomically.

    ``on_error="raise"`` (default): an unreadable image raises DatasetError naming the first few
    files and why (nothing is cached). ``on_error="report"``: returns ``(images, bad)`` where ``bad``
    maps the index of each unreadable image to the reason; those rows are black (zeros).
    ``fast_decode``: see the module docstring (default False: exactly the app's pixels).
    """
    if on_error not in ("raise", "report"):
        raise ValueError("on_error must be 'raise' or 'report'")
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    npy = cache_path(paths, spec, cache_dir, fast_decode)
    shape = (len(paths), spec.height, spec.width, 3)
    bad_file = _bad_path(npy)

    existing = _load_existing(npy, shape) if npy.is_file() else None
    if existing is not None:
        bad: dict[int, str] = {}
        if bad_file.is_file():
            try:
                bad = {int(k): v for k, v in json.loads(bad_file.read_text("utf-8")).items()}
            except (OSError, ValueError):
                existing = None  # unreadable record: rebuild
        if existing is not None:
            if bad and on_error == "raise":
                raise _error(paths, bad)
            return (existing, bad) if on_error == "report" else existing

    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    errors: dict[int, str] = {}

    def writer(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            errors.update(
                _fill(out, paths, spec, workers, progress, decode_max_side(spec, fast_decode))
            )
            if errors and on_error == "raise":
                raise _error(paths, errors)
            out.flush()
        finally:
            del out
        # the record of unreadable images goes first, so a cache is never without it
        if errors:
            atomic_save_json(bad_file, {str(k): v for k, v in sorted(errors.items())})
        elif bad_file.exists():
            bad_file.unlink()

    atomic_write_with(npy, writer)
    images = np.load(npy, mmap_mode="r")
    return (images, errors) if on_error == "report" else images


def _error(paths: list[str], errors: dict[int, str], k: int = 5) -> DatasetError:
    items = sorted(errors.items())
    lines = [f"  {os.path.basename(paths[i])}: {reason}" for i, reason in items[:k]]
    more = f"\n  ... and {len(items) - k} more" if len(items) > k else ""
    return DatasetError(
        f"{len(items)} of {len(paths)} images could not be read:\n" + "\n".join(lines) + more
    )
