import time

T0 = time.perf_counter()  # first thing: everything below counts as launch time

"""Child process of bench_launch.py: start the real window the way ``lesionlens gui`` does and
report, as one JSON line on stdout, when it became usable.

The window is started through the real entry point (``desktop_app.cli.main(["gui", "--model", M])``,
or ``desktop_app.app.main`` with ``--entry app``). Nothing in the app is changed; once the event
loop starts, six functions of ``desktop_app.ui.main_window`` get thin timing wrappers (decode,
inference, overlay rendering and their GUI-thread callbacks) so that the report can say where the
time of an analysis goes. The app has no "exit when ready" hook,
so this driver wraps ``QApplication.exec``: when the event loop starts, a 2 ms QTimer polls the
top-level widgets for the MainWindow and, in the GUI thread:

  ready     the window is visible, ``window.engine`` is set (the model was loaded and verified in
            the background and ``_on_model_loaded`` updated the widgets), the task runner is idle,
            and one more turn of the event loop has run (QTimer.singleShot(0)).
  analysed  (``--mode analyse``) after ``window.open_image(IMAGE)`` (what File > Open and a drop
            call): ``window.analysis`` is set for that image, the heatmap overlay is rendered
            (``current_heatmap()``), the task runner is idle, one more event-loop turn.

At each milestone it records perf_counter() - T0 and VmHWM/VmRSS from /proc/self/status, then
closes the window and leaves the loop (exit code 0). It also lists any TensorFlow/Keras/Torch/JAX
module that ended up in sys.modules (there must be none).
"""

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

MARK = "LESIONLENS_BENCH "
MARK_READY = "LESIONLENS_BENCH_READY"
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tensorboard", "torch", "jax", "tf2onnx", "onnx")


def mem_mb() -> dict[str, float]:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MB
    except OSError:
        pass
    return out


def heavy_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--image", nargs="+", default=None, help="images analysed one after another")
    p.add_argument("--mode", choices=("window", "analyse"), default="window")
    p.add_argument("--entry", choices=("cli", "app"), default="cli")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.mode == "analyse" and not args.image:
        p.error("--mode analyse needs --image")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    report: dict = {"mode": args.mode, "entry": args.entry, "pid": os.getpid()}
    state = {"phase": "launch", "window": None}

    def finish(ok: bool, error: str = "") -> None:
        report["ok"] = ok
        if error:
            report["error"] = error
        report["heavy_modules"] = heavy_modules()
        report["mem_end"] = mem_mb()
        print(MARK + json.dumps(report), flush=True)
        poll.stop()
        w = state["window"]
        if w is not None:
            w.tasks.wait_until_idle(5_000)
            w.close()
        QApplication.instance().exit(0 if ok else 3)

    def find_window():
        from desktop_app.ui.main_window import MainWindow

        for w in QApplication.topLevelWidgets():
            if isinstance(w, MainWindow) and w.isVisible():
                return w
        return None

    def ready() -> None:
        w = state["window"]
        report["t_ready_s"] = time.perf_counter() - T0
        report["mem_ready"] = mem_mb()
        report["model_loaded"] = w.engine is not None
        report["provider"] = getattr(w.engine, "provider", None)
        report["heavy_modules_at_ready"] = heavy_modules()
        print(MARK_READY, flush=True)  # lets the parent take its own wall-clock reading
        if args.mode == "window":
            finish(True)
            return
        report["analyses"] = []
        open_next()

    def open_next() -> None:
        done = len(report["analyses"])
        if done == len(args.image):
            finish(True)
            return
        state["phase"] = "analyse"
        state["current"] = {"image": Path(args.image[done]).name}
        state["t_click"] = time.perf_counter()
        state["last_tick"] = None
        state["window"].open_image(args.image[done])
        poll.start()

    def analysed() -> None:
        w = state["window"]
        now = time.perf_counter()
        cur = state["current"]
        cur["total_s"] = now - state["t_click"]
        cur["t_since_start_s"] = now - T0
        cur["mem"] = mem_mb()
        cur["top_code"] = w.analysis.prediction.top_code
        report["analyses"].append(cur)
        report["t_analysed_s"] = now - T0
        report["mem_analysed"] = cur["mem"]
        open_next()

    def tick() -> None:
        if time.perf_counter() - T0 > args.timeout:
            finish(False, f"timeout in phase {state['phase']}")
            return
        if state["phase"] == "launch":
            w = state["window"] or find_window()
            state["window"] = w
            if w is None:
                return
            if "t_window_visible_s" not in report:
                report["t_window_visible_s"] = time.perf_counter() - T0
            if w.engine is None or not w.tasks.is_idle():
                if w.engine is None and getattr(w, "last_error_box", None) is not None:
                    finish(False, "the model could not be loaded (error box shown)")
                return
            report.setdefault("t_model_loaded_s", time.perf_counter() - T0)
            poll.stop()
            QTimer.singleShot(0, ready)  # one more turn of the event loop (paint, layout)
        elif state["phase"] == "analyse":
            w = state["window"]
            cur = state["current"]
            now_abs = time.perf_counter()
            last = state.get("last_tick")
            state["last_tick"] = now_abs
            if last is not None and now_abs - last > 0.005:  # the GUI thread was busy meanwhile
                cur.setdefault("gui_busy", []).append([last - state["t_click"], now_abs - last])
            want = str(Path(args.image[len(report["analyses"])]))
            if w.image is None or str(w.image.path) != want:
                return
            now = time.perf_counter() - state["t_click"]
            cur.setdefault("image_shown_s", now)  # decoded in the background, on screen
            a = w.analysis
            if a is None or a.image is not w.image:
                return
            cur.setdefault("result_shown_s", now)  # inference done, probabilities on screen
            if w.current_heatmap() is None:
                return
            cur.setdefault("heatmap_shown_s", now)  # overlay rendered
            if not w.tasks.is_idle():
                return
            poll.stop()
            QTimer.singleShot(0, analysed)

    poll = QTimer()
    poll.setInterval(2)
    poll.timeout.connect(tick)

    def instrument() -> None:
        """Timed wrappers (a few microseconds each) around the steps of opening an image, to see
        where the time goes: workers (decode, inference, overlay) and GUI-thread callbacks."""
        mw = sys.modules.get("desktop_app.ui.main_window")
        if mw is None:
            return
        wrapped = []

        def wrap(owner, name: str, where: str) -> None:
            fn = getattr(owner, name, None)
            if fn is None:
                return

            def timed(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    if state["phase"] == "analyse":
                        state["current"].setdefault("steps", []).append(
                            [name, where, t - state["t_click"], time.perf_counter() - t]
                        )

            setattr(owner, name, timed)
            wrapped.append(name)

        for name in ("load_image", "analyse_case", "render_overlay"):
            wrap(mw, name, "worker")
        for name in ("_on_image_loaded", "_on_analysis_done", "_on_overlay_ready"):
            wrap(mw.MainWindow, name, "gui")
        report["instrumented"] = wrapped

    original_exec = QApplication.exec

    def exec_and_watch(*_a, **_kw):  # exec is static in PySide6: app.exec() passes no self
        report["t_exec_s"] = time.perf_counter() - T0
        instrument()
        poll.start()
        return original_exec()

    QApplication.exec = exec_and_watch  # the app calls app.exec(); everything else is untouched

    if args.entry == "cli":
        from desktop_app.cli import main as cli_main

        code = cli_main(["gui", "--model", args.model])
    else:
        from desktop_app.app import main as app_main

        code = app_main([], model_path=args.model)
    if "ok" not in report:  # the loop ended without our report (e.g. main refused to start)
        report["ok"] = False
        report["error"] = f"main returned {code} before the window was ready"
        report["heavy_modules"] = heavy_modules()
        print(MARK + json.dumps(report), flush=True)
    return 0 if report.get("ok") else 3


if __name__ == "__main__":
    raise SystemExit(main())
