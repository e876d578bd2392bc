"""Batch review throughput and memory: ``run_batch`` against bare onnxruntime, and peak memory.

1. Throughput, in ONE process, interleaved (the machine may be shared with background work, so the
   result is read as a RATIO of neighbouring measurements):

     bare      session.run (Engine.run_arrays) on already decoded AND preprocessed float32
               batches of ``--batch-size`` images: inference only, the floor.
     pipeline  run_batch(folder of N real images, fresh output folder): scan, read + SHA-256,
               load_image(max_side=ANALYSIS_MAX_SIDE) on the decode threads, Engine.predict
               (calibration, risk, flags, unusual-image check), heatmap and image thumbnails,
               one SQLite transaction per group. Timed from the call to the last image's
               progress report; the final exports (results.csv, batch-summary.pdf) are timed
               apart.

   (a) whole runs: all N images in one run_batch, bare before and after (``--rounds``).
   (b) paired chunks: the same N images as runs of ``--chunk`` images, each between two bare
       passes over exactly its own images, seconds apart: the median and the pooled ratio are
       the most robust numbers on a shared machine.
   The round's ratio is pipeline / mean(the two bares). Also reported: the process CPU time per
   image of both (onnxruntime's spinning threads count as busy). The model sees unknown metadata
   in both. ``--no-spin`` (an experiment, not what the app does) gives the engine a session with
   onnxruntime's idle spinning off.

2. Peak memory (a fresh child process per size, so each peak is its own): run_batch over N images.
   Reported: RSS after loading the engine, the kernel's peak RSS (VmHWM) when the last image is
   done (the pipeline) and at the end (including the final exports).

Usage (from the repository root)::

    .venv/bin/python bench/bench_batch.py --model runs/ham-quick/model.onnx \\
        --images ../shared/data/ham10000/images --n 1000 --rounds 3 --memory 1000,10000

Writes bench/results/batch-<date>-<time>.json (atomically) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from desktop_app.core.engine import Engine  # after _common puts the repository on sys.path


def link_folder(images: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to the chosen images (what the scan sees as files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in images:
        os.symlink(src.resolve(), folder / src.name)
    return folder


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The kernel's high-water mark of this process's resident set (VmHWM): exact, not sampled.
    (ru_maxrss is not used: Linux carries it over from the parent across fork + exec.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bare_batches(engine: Engine, images: list[Path], batch_size: int) -> list[Any]:
    """Every image decoded the app's way and preprocessed, stacked in float32 batches."""
    from desktop_app.core.imaging import ANALYSIS_MAX_SIDE, batch_preprocess, load_image

    spec = engine.card.preprocess
    out = []
    for start in range(0, len(images), batch_size):
        rgb = [
            load_image(p, max_side=ANALYSIS_MAX_SIDE).rgb
            for p in images[start : start + batch_size]
        ]
        out.append(batch_preprocess(rgb, spec))
    return out


CPU_MS: dict[str, list[float]] = {"bare": [], "pipeline": []}  # process CPU ms per image


def time_bare(engine: Engine, batches: list[Any]) -> float:
    """Images per second of session.run over every batch once."""
    n = sum(len(b) for b in batches)
    c0, t0 = time.process_time(), time.perf_counter()
    for b in batches:
        engine.run_arrays(b)
    elapsed = time.perf_counter() - t0
    CPU_MS["bare"].append((time.process_time() - c0) * 1e3 / n)
    return n / elapsed


def time_pipeline(
    engine: Engine, folder: Path, out: Path, batch_size: int, workers: int
) -> dict[str, float]:
    from desktop_app.core.batch import run_batch

    last = [0.0]
    cpu_last = [0.0]
    c0, t0 = time.process_time(), time.perf_counter()

    def on_progress(p: Any) -> None:
        if p.done == p.total:
            last[0] = time.perf_counter()
            cpu_last[0] = time.process_time()

    summary = run_batch(
        folder, engine, out, on_progress=on_progress, batch_size=batch_size, decode_workers=workers
    )
    t_end = time.perf_counter()
    n = summary.ok + summary.errors
    assert summary.errors == 0 and summary.reused == 0, summary
    CPU_MS["pipeline"].append((cpu_last[0] - c0) * 1e3 / n)
    return {
        "images": n,
        "pipeline_s": last[0] - t0,
        "images_per_s": n / (last[0] - t0),
        "exports_s": t_end - last[0],
        "end_to_end_images_per_s": n / (t_end - t0),
    }


def _engine(args: argparse.Namespace) -> Engine:
    engine = Engine.load(args.model, providers="cpu")
    if not args.no_spin:
        return engine
    # Experiment only: the same model with onnxruntime's idle spinning off.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        args.model.read_bytes(), options, providers=["CPUExecutionProvider"]
    )
    return Engine(session, engine.card, path=engine.path, sha256=engine.sha256, provider="CPU")


def _round(
    engine: Engine, batches: list[Any], folder: Path, out: Path, args: argparse.Namespace
) -> dict[str, float]:
    before = time_bare(engine, batches)
    pipe = time_pipeline(engine, folder, out, args.batch_size, args.workers)
    after = time_bare(engine, batches)
    shutil.rmtree(out, ignore_errors=True)
    ratio = pipe["images_per_s"] / ((before + after) / 2)
    return {"bare_before": before, "bare_after": after, **pipe, "ratio": ratio}


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    images = C.pick_images(args.images, args.n)
    engine = _engine(args)
    result: dict[str, Any] = {
        "n": len(images),
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "provider": engine.provider,
        "allow_spinning": not args.no_spin,
    }
    # (a) whole runs: all N images in one run_batch, bare before and after
    folder = link_folder(images, work / "throughput")
    batches = bare_batches(engine, images, args.batch_size)
    time_bare(engine, batches[:10])  # warm-up
    rounds = []
    for r in range(args.rounds):
        row = _round(engine, batches, folder, work / f"out-{r}", args)
        rounds.append(row)
        print(
            f"whole run {r + 1}: bare {row['bare_before']:.1f} / {row['bare_after']:.1f} img/s, "
            f"pipeline {row['images_per_s']:.1f} img/s ({row['ratio']:.1%}), "
            f"exports {row['exports_s']:.1f} s",
            flush=True,
        )
    result["whole"] = {
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "median_pipeline_images_per_s": statistics.median(r["images_per_s"] for r in rounds),
        "median_bare_images_per_s": statistics.median(
            (r["bare_before"] + r["bare_after"]) / 2 for r in rounds
        ),
    }
    # (b) paired chunks: the same N images as runs of --chunk images, each between two bares
    # of exactly its own images: seconds apart, so background load shifts cancel out.
    chunks = []
    for j, start in enumerate(range(0, len(images), args.chunk)):
        part = images[start : start + args.chunk]
        sub = link_folder(part, work / f"chunk-{j}")
        row = _round(
            engine,
            batches_for(batches, start, len(part), args.batch_size),
            sub,
            work / f"chunk-out-{j}",
            args,
        )
        chunks.append(row)
    bare_s = sum(
        r["images"] / r["bare_before"] / 2 + r["images"] / r["bare_after"] / 2 for r in chunks
    )
    pipe_s = sum(r["pipeline_s"] for r in chunks)
    result["chunks"] = {
        "chunk": args.chunk,
        "rounds": chunks,
        "median_ratio": statistics.median(r["ratio"] for r in chunks),
        "pooled_ratio": bare_s / pipe_s,
        "pipeline_images_per_s": len(images) / pipe_s,
        "bare_images_per_s": len(images) / bare_s,
    }
    print(
        f"paired chunks of {args.chunk}: median ratio {result['chunks']['median_ratio']:.1%}, "
        f"pooled {result['chunks']['pooled_ratio']:.1%}",
        flush=True,
    )
    result["cpu_ms_per_image"] = {k: statistics.median(v) for k, v in CPU_MS.items() if v}
    return result


def batches_for(batches: list[Any], start: int, count: int, batch_size: int) -> list[Any]:
    """The bare batches holding images start .. start + count (chunks align with batches)."""
    first = start // batch_size
    return batches[first : first + -(-count // batch_size)]


def memory_child(args: argparse.Namespace) -> None:
    """One run_batch over --child-memory images; prints one JSON line."""
    from desktop_app.core.batch import run_batch

    work = Path(tempfile.mkdtemp(prefix="bench-batch-mem-"))
    try:
        images = C.pick_images(args.images, args.child_memory)
        folder = link_folder(images, work / "images")
        engine = _engine(args)
        after_load = rss_mb()
        pipeline_peak = [0.0]
        t0 = time.perf_counter()
        t_last = [0.0]

        def on_progress(p: Any) -> None:
            if p.done == p.total:
                pipeline_peak[0] = peak_rss_mb()
                t_last[0] = time.perf_counter()

        summary = run_batch(
            folder,
            engine,
            work / "out",
            on_progress=on_progress,
            batch_size=args.batch_size,
            decode_workers=args.workers,
        )
        t_end = time.perf_counter()
        print(
            json.dumps(
                {
                    "n": len(images),
                    "ok": summary.ok,
                    "rss_after_engine_load_mb": after_load,
                    "peak_rss_pipeline_mb": pipeline_peak[0],
                    "peak_rss_with_exports_mb": peak_rss_mb(),
                    "pipeline_s": t_last[0] - t0,
                    "exports_s": t_end - t_last[0],
                    "images_per_s": summary.ok / (t_last[0] - t0),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for n in args.memory:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            str(args.model),
            "--images",
            str(args.images),
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
            "--child-memory",
            str(n),
            *(["--no-spin"] if args.no_spin else []),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=C.REPO)
        if proc.returncode != 0:
            raise SystemExit(f"memory child for {n} images failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"memory {n}: peak {row['peak_rss_pipeline_mb']:.0f} MB in the pipeline, "
            f"{row['peak_rss_with_exports_mb']:.0f} MB with the exports "
            f"({row['images_per_s']:.1f} img/s)",
            flush=True,
        )
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=C.REPO / "runs" / "ham-quick" / "model.onnx")
    parser.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=1000, help="images for the throughput test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--memory",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 10000],
        help="image counts for the memory test, comma-separated ('' to skip)",
    )
    parser.add_argument(
        "--chunk", type=int, default=96, help="images per paired run (a multiple of batch size)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="experiment: onnxruntime session with idle spinning off (not what the app does)",
    )
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.chunk % args.batch_size:
        parser.error("--chunk must be a multiple of --batch-size")
    if args.child_memory is not None:
        memory_child(args)
        return

    result: dict[str, Any] = {
        "benchmark": "batch",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine_before": C.machine(),
        "model": str(args.model),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        if not args.skip_throughput:
            result["throughput"] = throughput(args, work)
        if args.memory:
            result["memory"] = memory(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine_after"] = C.machine()
    import onnxruntime

    result["versions"] = {"onnxruntime": onnxruntime.__version__}
    path = C.write_json_atomic(args.out or C.results_path("batch"), result)

    if "throughput" in result:
        t = result["throughput"]
        header = [
            "run",
            "images",
            "bare ORT img/s (before / after)",
            "pipeline img/s",
            "pipeline / bare",
        ]
        rows = [
            [
                f"whole {i + 1}",
                str(r["images"]),
                f"{r['bare_before']:.1f} / {r['bare_after']:.1f}",
                f"{r['images_per_s']:.1f}",
                f"{r['ratio']:.1%}",
            ]
            for i, r in enumerate(t["whole"]["rounds"])
        ]
        ch = t["chunks"]
        ratios = sorted(r["ratio"] for r in ch["rounds"])
        rows.append(
            [
                f"{len(ch['rounds'])} paired chunks",
                str(sum(r["images"] for r in ch["rounds"])),
                f"{ch['bare_images_per_s']:.1f} (pooled)",
                f"{ch['pipeline_images_per_s']:.1f} (pooled)",
                f"pooled {ch['pooled_ratio']:.1%}, median {ch['median_ratio']:.1%} "
                f"(range {ratios[0]:.0%}-{ratios[-1]:.0%})",
            ]
        )
        print()
        print(
            f"Throughput, batch {t['batch_size']}, {t['decode_workers']} decode threads, "
            f"{t['provider']}, onnxruntime spinning {'on' if t['allow_spinning'] else 'off'}:"
        )
        print(C.table(rows, header))
        cpu = t["cpu_ms_per_image"]
        print(
            f"process CPU time per image (median over runs): bare {cpu['bare']:.1f} ms, "
            f"pipeline {cpu['pipeline']:.1f} ms ({cpu['bare'] / cpu['pipeline']:.1%})"
        )
        exports = [r["exports_s"] for r in t["whole"]["rounds"]]
        print(
            f"final exports (results.csv + batch-summary.pdf) of {t['n']} images: "
            f"{statistics.median(exports):.1f} s (median)"
        )
    if "memory" in result:
        rows = [
            [
                str(m["n"]),
                f"{m['rss_after_engine_load_mb']:.0f}",
                f"{m['peak_rss_pipeline_mb']:.0f}",
                f"{m['peak_rss_with_exports_mb']:.0f}",
                f"{m['images_per_s']:.1f}",
                f"{m['exports_s']:.1f}",
            ]
            for m in result["memory"]
        ]
        print()
        print(
            C.table(
                rows,
                [
                    "images",
                    "RSS after load MB",
                    "peak RSS pipeline MB",
                    "peak RSS incl. exports MB",
                    "img/s",
                    "exports s",
                ],
            )
        )
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
