"""End-to-end single-image speed: the app's Engine against bare onnxruntime and Keras/TensorFlow.

Per image, END TO END (JPEG file on disk -> decode -> preprocess -> infer -> Grad-CAM heatmaps of
every class), batch 1, CPU. Contenders, all run on the same images and the same patient metadata
(the image's own HAM10000 row when the CSV is found next to the images, else "unknown"):

  engine        Engine.predict_file(path, metadata): imaging.load_image + imaging.preprocess +
                metadata encoding + session.run + temperature + risk + flags (+ unusual-image check);
                the heatmaps come out of the ONNX graph.
  ort_decode    (b') bare onnxruntime INCLUDING the same decode + preprocess + metadata encoding
                (load_image, preprocess, encode, session.run): what the engine does, minus its
                own Python bookkeeping. The FAIR floor for the engine, which must decode too.
  ort_bare      (b) bare onnxruntime on an already preprocessed array: session.run only (no
                decode, no preprocess). The absolute floor.
  tf_function   (d) a compiled tf.function (fixed input_signature, no retracing) calling the Keras
                inference model of trainer.gradcam.build_inference_model (the same four outputs:
                logits, probabilities, all-class heatmaps, features), incl. decode + preprocess.
  keras_predict (c) model.predict(...) of that same inference model, incl. decode + preprocess.
  keras_eager   (e) model(inputs, training=False) eagerly, incl. decode + preprocess.

The machine may be shared with background work (a training job, at lower priority), so the contenders
are interleaved PER IMAGE: each image goes through every contender ``--repeats`` times (default 3),
each round in a fresh random order (no contender always follows the same neighbour), and the result
is read as RATIOS. Two summaries are reported: the median of ALL calls (N x R samples, what the goals
literally ask for) and the median over images of the BEST of the R calls per image (the background
job slows calls down in bursts; a burst rarely hits all R calls of one image, so this is the
noise-filtered estimate), plus the median of the per-image paired ratios (best). ``--gap-ms``
(default 5 ms, untimed) idles before every call, as an interactive app idles between clicks: the
previous contender's worker threads (TensorFlow's and onnxruntime's pools spin for a while after
a call) go to sleep and every call starts from the same state. Warm-up images (different files)
are excluded.

A second, smaller table breaks the engine down ("where the time goes"), measured in the same loop:
decode, preprocess, the engine's Python work without inference (predict_one with session.run
replaced by that image's cached outputs) and session.run itself (= ort_bare).

Usage (from the repository root)::

    .venv/bin/python bench/bench_engine.py --model-dir runs/ham-quick \
        --images ../shared/data/ham10000/images --n 100

Writes bench/results/engine-<date>-<time>.json (atomically) and prints Markdown tables.
TensorFlow is imported here: this is a benchmark, not the app.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

GOAL_VS_PREDICT = 5.0  # engine at least 5x faster than model.predict
GOAL_VS_ORT = 1.3  # engine within 1.3x of bare onnxruntime

LABELS = {
    "engine": "(a) Engine.predict_file",
    "ort_decode": "(b') bare onnxruntime + decode/preprocess",
    "ort_bare": "(b) bare onnxruntime, preprocessed input",
    "tf_function": "(d) compiled tf.function + decode/preprocess",
    "keras_predict": "(c) Keras model.predict + decode/preprocess",
    "keras_eager": "(e) Keras eager call + decode/preprocess",
}
STAGE_LABELS = {
    "stage_decode": "decode JPEG (imaging.load_image)",
    "stage_preprocess": "preprocess (imaging.preprocess)",
    "stage_engine_python": "engine Python work, no inference (preprocess+encode+post)",
    "ort_bare": "session.run alone (= (b))",
    "engine_inner_run": "engine: its own session.run (timed inside the engine call)",
    "engine_rest": "engine: everything but its session.run (per call)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model-dir",
        type=Path,
        default=C.REPO / "runs" / "ham-quick",
        help="run folder holding model.keras and its exported model.onnx",
    )
    p.add_argument(
        "--onnx", type=Path, default=None, help="ONNX file (default MODEL_DIR/model.onnx)"
    )
    p.add_argument(
        "--keras", type=Path, default=None, help="Keras file (default MODEL_DIR/model.keras)"
    )
    p.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES, help="folder of real images")
    p.add_argument("--n", type=int, default=100, help="measured images (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up images, not measured (default 5)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads for onnxruntime AND TensorFlow (0 = library defaults, "
        "which is what the app uses)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="calls per contender per image (default 3), each round in a fresh random order",
    )
    p.add_argument(
        "--gap-ms",
        type=float,
        default=5.0,
        help="idle pause before each timed call, not timed (default 5 ms)",
    )
    p.add_argument(
        "--compare-threads",
        type=int,
        default=0,
        metavar="T",
        help="also run the Engine on a second session with T intra-op threads (contender "
        "engine_tT), interleaved with the rest",
    )
    p.add_argument(
        "--upscale-to",
        type=int,
        default=0,
        metavar="PX",
        help="side experiment: decode cost at camera resolution. Re-encode the chosen images "
        "(JPEG q95, bicubic) with this longest side into a temporary folder and use those",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image call order")
    p.add_argument(
        "--skip", default="", help="comma-separated contenders to leave out (e.g. keras_eager)"
    )
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/)")
    return p.parse_args(argv)


def upscaled_copies(files: list[Path], longest: int, folder: Path) -> list[Path]:
    """JPEG copies of ``files`` resized to ``longest`` px on the longest side (same names)."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
            scale = longest / max(w, h)
            big = im.convert("RGB").resize(
                (round(w * scale), round(h * scale)), Image.Resampling.BICUBIC
            )
        target = folder / f.name
        big.save(target, quality=95)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lesionlens-bench-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmpdir: Path) -> int:
    onnx_path = args.onnx or args.model_dir / "model.onnx"
    keras_path = args.keras or args.model_dir / "model.keras"
    started = datetime.now()
    machine_before = C.machine()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    # ---- the app side (no TensorFlow yet) ---------------------------------------------------
    import onnxruntime as ort

    from desktop_app.core import imaging
    from desktop_app.core.engine import Engine
    from desktop_app.core.imaging import preprocess

    # Decode exactly as Engine.predict_file does (it caps the decoded size at ANALYSIS_MAX_SIDE
    # where that constant exists), so that (b') and the TF contenders decode the same pixels.
    max_side = getattr(imaging, "ANALYSIS_MAX_SIDE", None)

    def load_image(path):
        return imaging.load_image(path, max_side=max_side)

    from desktop_app.core.metadata import UNKNOWN_METADATA, metadata_from_row

    engine = Engine.load(onnx_path, providers="cpu")
    if args.threads > 0:  # same model, same card; only the session's thread count differs
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        engine = Engine(
            session, engine.card, path=engine.path, sha256=engine.sha256, provider="CPU"
        )
    card = engine.card
    spec = card.preprocess
    encoding = card.metadata_encoding
    session = engine.session
    out_names = [o.name for o in session.get_outputs()]
    img_in = card.image_input
    meta_in = card.metadata_input

    files = C.pick_images(args.images, args.n + args.warmup)
    if len(files) < args.n + args.warmup:
        raise SystemExit(f"only {len(files)} images in {args.images}")
    rows = C.ham_metadata(args.images)
    if args.upscale_to:
        files = upscaled_copies(files, args.upscale_to, tmpdir)
    metas = [metadata_from_row(rows[f.stem]) if f.stem in rows else UNKNOWN_METADATA for f in files]

    def encode(meta):
        return None if encoding is None else encoding.encode_many([meta])

    def feed_for(x, m):
        feed = {img_in: x}
        if meta_in is not None:
            feed[meta_in] = m
        return feed

    # Preprocessed inputs and cached outputs for (b) and for the engine breakdown.
    pre_x = [preprocess(load_image(f).rgb, spec)[None] for f in files]
    pre_m = [encode(m) for m in metas]
    cached = [
        dict(zip(out_names, session.run(out_names, feed_for(x, m)), strict=True))
        for x, m in zip(pre_x, pre_m, strict=True)
    ]

    # ---- the TensorFlow side ----------------------------------------------------------------
    tf_wanted = {"tf_function", "keras_predict", "keras_eager"} - skip
    tf_load_s = 0.0
    tf_version = keras_version = "not loaded"
    if tf_wanted:
        t = time.perf_counter()
        import keras
        import tensorflow as tf

        if args.threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        from trainer.evaluate import load_model
        from trainer.gradcam import build_inference_model

        core = load_model(keras_path)
        inference = build_inference_model(core)
        tf_load_s = time.perf_counter() - t
        tf_version, keras_version = tf.__version__, keras.__version__
        names = [t_.name.split(":")[0] for t_ in inference.inputs]
        meta_pos = next((i for i, n in enumerate(names) if "metadata" in n), None)

        def ordered(x, m):
            if meta_pos is None:
                return [x]
            items = [None] * 2
            items[meta_pos], items[1 - meta_pos] = m, x
            return items

        img_shape = tuple(inference.inputs[1 - meta_pos if meta_pos is not None else 0].shape[1:])
        if meta_pos is None:

            @tf.function(
                input_signature=[tf.TensorSpec((None, *img_shape), tf.float32)],
                reduce_retracing=True,
            )
            def compiled(images):
                return inference([images], training=False)

            def call_compiled(x, _m):
                return compiled(x)
        else:
            meta_shape = tuple(inference.inputs[meta_pos].shape[1:])

            @tf.function(
                input_signature=[
                    tf.TensorSpec((None, *img_shape), tf.float32),
                    tf.TensorSpec((None, *meta_shape), tf.float32),
                ],
                reduce_retracing=True,
            )
            def compiled(images, metadata):
                return inference(ordered(images, metadata), training=False)

            def call_compiled(x, m):
                return compiled(x, m)

    def to_np(outputs: dict) -> tuple[np.ndarray, np.ndarray]:
        arrays = {k: np.asarray(v) for k, v in outputs.items()}  # all four outputs fetched
        return arrays["probabilities"], arrays["heatmaps"]

    # ---- contenders: f(i) -> (probabilities (1,K), heatmaps (1,h,w,K)) ------------------------
    def decode_prep(i):
        return preprocess(load_image(files[i]).rgb, spec)[None], encode(metas[i])

    class TimedSession:
        """The engine's own session, with each ``run`` timed (about a microsecond of overhead)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.last = 0.0

        def run(self, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.inner.run(*a, **kw)
            finally:
                self.last = time.perf_counter() - t0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    timed_session = TimedSession(session)
    engine.session = timed_session  # Engine.run_arrays calls self.session.run

    def c_engine(i):
        pred = engine.predict_file(files[i], metas[i])
        return pred.raw_probabilities[None], pred.heatmaps[None]

    def engine_variant() -> dict[str, Callable[[int], Any]]:
        if args.compare_threads <= 0:
            return {}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = args.compare_threads
        sess_t = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        eng_t = Engine(sess_t, card, path=engine.path, sha256=engine.sha256, provider="CPU")
        name = f"engine_t{args.compare_threads}"
        LABELS[name] = (
            f"(a{args.compare_threads}) Engine.predict_file, {args.compare_threads} thread(s)"
        )

        def c_engine_t(i):
            pred = eng_t.predict_file(files[i], metas[i])
            return pred.raw_probabilities[None], pred.heatmaps[None]

        return {name: c_engine_t}

    def c_ort_decode(i):
        x, m = decode_prep(i)
        res = dict(zip(out_names, session.run(out_names, feed_for(x, m)), strict=True))
        return res["probabilities"], res["heatmaps"]

    def c_ort_bare(i):
        res = dict(
            zip(out_names, session.run(out_names, feed_for(pre_x[i], pre_m[i])), strict=True)
        )
        return res["probabilities"], res["heatmaps"]

    def c_tf_function(i):
        x, m = decode_prep(i)
        return to_np(call_compiled(x, m))

    def c_keras_predict(i):
        x, m = decode_prep(i)
        return to_np(inference.predict(ordered(x, m), batch_size=1, verbose=0))

    def c_keras_eager(i):
        x, m = decode_prep(i)
        return to_np(inference(ordered(x, m), training=False))

    stub = Engine(session, card, path=None, sha256=engine.sha256, provider=engine.provider)
    stub_index = [0]
    stub.run_arrays = lambda images, metadata=None: cached[stub_index[0]]  # no inference
    rgbs = [load_image(f).rgb for f in files]

    def s_decode(i):
        load_image(files[i])

    def s_preprocess(i):
        preprocess(rgbs[i], spec)

    def s_engine_python(i):
        stub_index[0] = i
        stub.predict_one(rgbs[i], metas[i])

    contenders: dict[str, Callable[[int], Any]] = {
        "engine": c_engine,
        **engine_variant(),
        "ort_decode": c_ort_decode,
        "ort_bare": c_ort_bare,
        "tf_function": c_tf_function,
        "keras_predict": c_keras_predict,
        "keras_eager": c_keras_eager,
    }
    for name in skip:
        if name in ("engine", "ort_decode", "ort_bare"):
            raise SystemExit(f"{name} cannot be skipped: the goals are measured against it")
        contenders.pop(name, None)
    stages = {
        "stage_decode": s_decode,
        "stage_preprocess": s_preprocess,
        "stage_engine_python": s_engine_python,
    }
    items = {**contenders, **stages}
    keys = list(items)

    # ---- warm-up (first args.warmup files, not measured) --------------------------------------
    t = time.perf_counter()
    for i in range(args.warmup):
        for k in keys:
            items[k](i)
    warmup_s = time.perf_counter() - t

    # ---- measured loop: every item on every image, R times, in a fresh random order each time --
    rng = np.random.default_rng(args.seed)
    gap = max(0.0, args.gap_ms) / 1e3
    reps = max(1, args.repeats)
    times = {k: np.zeros((args.n, reps)) for k in [*keys, "engine_inner_run", "engine_rest"]}
    max_diff = {"probabilities": 0.0, "heatmaps": 0.0}
    t_loop = time.perf_counter()
    for j in range(args.n):
        i = args.warmup + j
        for r in range(reps):
            outs = {}
            for k in (keys[o] for o in rng.permutation(len(keys))):
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter()
                res = items[k](i)
                times[k][j, r] = time.perf_counter() - t0
                if k == "engine":
                    times["engine_inner_run"][j, r] = timed_session.last
                    times["engine_rest"][j, r] = times[k][j, r] - timed_session.last
                if k in contenders and r == 0:
                    outs[k] = res
            ref_p, ref_h = outs.get("engine", (None, None))
            for p_, h_ in (v for kk, v in outs.items() if kk != "engine"):
                for key, a, b in (("probabilities", p_, ref_p), ("heatmaps", h_, ref_h)):
                    diff = float(np.abs(np.asarray(a) - b).max())
                    max_diff[key] = max(max_diff[key], diff)
        if j % 10 == 0:
            gc.collect()  # outside any timed call; keeps collections from landing at random
    loop_s = time.perf_counter() - t_loop

    # ---- results --------------------------------------------------------------------------------
    # raw: every call (N x R samples); best: per image, the fastest of its R calls (N samples),
    # which filters out calls that were slowed down by the background job.
    raw = {k: C.stats_ms(v.ravel()) for k, v in times.items()}
    best_s = {k: v.min(axis=1) for k, v in times.items()}
    best = {k: C.stats_ms(v) for k, v in best_s.items()}

    def paired(k: str, ref: str = "engine") -> float:  # median over images of k_i / ref_i (best)
        return float(np.median(best_s[k] / best_s[ref]))

    ratio_rows = []
    summary = {}
    for k in contenders:
        summary[k] = {
            "label": LABELS[k],
            "raw": raw[k],
            "best_of_repeats": best[k],
            "ratio_vs_engine_raw_medians": raw[k]["median"] / raw["engine"]["median"],
            "ratio_vs_engine_best_medians": best[k]["median"] / best["engine"]["median"],
            "paired_median_ratio_vs_engine_best": paired(k),
        }
        ratio_rows.append(
            [
                LABELS[k],
                f"{raw[k]['median']:.2f}",
                f"{raw[k]['p90']:.2f}",
                f"{best[k]['median']:.2f}",
                f"{summary[k]['ratio_vs_engine_raw_medians']:.2f}x",
                f"{summary[k]['ratio_vs_engine_best_medians']:.2f}x",
                f"{summary[k]['paired_median_ratio_vs_engine_best']:.2f}x",
            ]
        )
    stage_rows = [
        [
            STAGE_LABELS[k],
            f"{raw[k]['median']:.3f}",
            f"{best[k]['median']:.3f}",
            f"{100 * best[k]['median'] / best['engine']['median']:.0f}%",
        ]
        for k in STAGE_LABELS
    ]
    stage_rows.append(
        [
            LABELS["engine"],
            f"{raw['engine']['median']:.3f}",
            f"{best['engine']['median']:.3f}",
            "100%",
        ]
    )

    goals = {}
    if "keras_predict" in contenders:
        r_raw = raw["keras_predict"]["median"] / raw["engine"]["median"]
        r_best = best["keras_predict"]["median"] / best["engine"]["median"]
        goals["engine_5x_faster_than_model_predict"] = {
            "ratio_raw_medians": r_raw,
            "ratio_best_medians": r_best,
            "paired_median_ratio_best": paired("keras_predict"),
            "goal": GOAL_VS_PREDICT,
            "met_raw": bool(r_raw >= GOAL_VS_PREDICT),
            "met_best": bool(r_best >= GOAL_VS_PREDICT),
        }
    for k, label in (("ort_decode", "fair: (b') incl. decode"), ("ort_bare", "floor: (b)")):
        r_raw = raw["engine"]["median"] / raw[k]["median"]
        r_best = best["engine"]["median"] / best[k]["median"]
        goals[f"engine_within_1.3x_of_{k}"] = {
            "compared_with": label,
            "ratio_raw_medians": r_raw,
            "ratio_best_medians": r_best,
            "paired_median_ratio_best": paired("engine", k),
            "goal": GOAL_VS_ORT,
            "met_raw": bool(r_raw <= GOAL_VS_ORT),
            "met_best": bool(r_best <= GOAL_VS_ORT),
        }

    machine_after = C.machine()
    result = {
        "benchmark": "engine",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "model": {
            "onnx": str(onnx_path),
            "keras": str(keras_path),
            "name": card.name,
            "version": card.version,
            "sha256": engine.sha256,
            "input": [spec.height, spec.width, 3],
            "classes": list(card.codes),
            "metadata_input": meta_in,
            "ort_providers": session.get_providers(),
        },
        "images": {
            "folder": str(args.images),
            "upscaled_to": args.upscale_to or None,
            "decode_max_side": max_side,
            "n": args.n,
            "warmup": args.warmup,
            "size_px_first": list(rgbs[0].shape[:2][::-1]),
            "with_ham_metadata": sum(f.stem in rows for f in files),
        },
        "versions": C.versions("numpy", "onnxruntime", "cv2", "tensorflow", "keras"),
        "timing": {"tf_model_load_s": tf_load_s, "warmup_s": warmup_s, "loop_s": loop_s},
        "machine_before": machine_before,
        "machine_after": machine_after,
        "contenders": summary,
        "stages": {
            k: {"label": STAGE_LABELS[k], "raw": raw[k], "best_of_repeats": best[k]}
            for k in STAGE_LABELS
        },
        "goals": goals,
        "max_abs_diff_vs_engine": max_diff,
        "raw_ms_per_image_and_repeat": {k: np.round(v * 1e3, 4).tolist() for k, v in times.items()},
    }
    out = args.out or C.results_path("engine", started)
    C.write_json_atomic(out, result)

    # ---- report -------------------------------------------------------------------------------
    print(
        f"# Engine benchmark {started:%Y-%m-%d %H:%M}  ({args.n} images x {reps} calls each, "
        f"{args.warmup} warm-up images; gap {args.gap_ms:g} ms)"
    )
    print(
        f"model {card.name} {card.version}, input {spec.width}x{spec.height}, "
        f"ORT {ort.__version__} {session.get_providers()[0]}, TF {tf_version}, "
        f"Keras {keras_version}, threads {'default' if not args.threads else args.threads}"
    )
    print(
        f"images: {args.images} (first is {rgbs[0].shape[1]}x{rgbs[0].shape[0]} px), "
        f"loadavg before {machine_before['loadavg_1_5_15']}, after "
        f"{machine_after['loadavg_1_5_15']}"
    )
    for b in machine_before["busy_processes"]:
        print(f"  background: {b}")
    print()
    print(
        C.table(
            ratio_rows,
            [
                "contender",
                "median ms (all calls)",
                "p90 ms (all calls)",
                f"median ms (best of {reps} per image)",
                "ratio vs engine (all calls)",
                f"ratio vs engine (best of {reps})",
                "paired median ratio (best)",
            ],
        )
    )
    print()
    print("Where the engine's time goes (same loop):")
    print(
        C.table(
            stage_rows,
            ["stage", "median ms (all calls)", f"median ms (best of {reps})", "share (best)"],
        )
    )
    print()
    print(
        f"max |diff| vs engine: probabilities {max_diff['probabilities']:.2e}, "
        f"heatmaps {max_diff['heatmaps']:.2e}"
    )
    print()
    print("Goals (ratio of medians: all calls | best of repeats | paired median ratio):")

    def verdict(g: dict) -> str:
        if g["met_raw"] and g["met_best"]:
            return "MET"
        if not g["met_raw"] and not g["met_best"]:
            return "NOT MET"
        return f"MIXED (all calls {'met' if g['met_raw'] else 'not met'}, best {'met' if g['met_best'] else 'not met'})"

    for name, g in goals.items():
        nums = (
            f"{g['ratio_raw_medians']:.2f}x | {g['ratio_best_medians']:.2f}x | "
            f"{g['paired_median_ratio_best']:.2f}x"
        )
        if name.startswith("engine_5x"):
            print(f"  engine >= {g['goal']:g}x faster than model.predict: {nums} -> {verdict(g)}")
        else:
            print(
                f"  engine within {g['goal']:g}x of bare onnxruntime [{g['compared_with']}]: "
                f"{nums} -> {verdict(g)}"
            )
    print(f"\nresults: {out.relative_to(C.REPO) if out.is_relative_to(C.REPO) else out}")
    print(f"(TF model load {tf_load_s:.1f} s, warm-up {warmup_s:.1f} s, loop {loop_s:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
