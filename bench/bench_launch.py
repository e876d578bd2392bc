"""Launch benchmark: process start -> usable window, peak memory, and the engine's import time.

Every measurement is a fresh child process (``QT_QPA_PLATFORM=offscreen``, a fresh settings file in
which the intended-use notice is already acknowledged, i.e. an everyday start, not the first one):

  window    bench/_launch_driver.py --mode window: the real entry point (``lesionlens gui --model
            M``, i.e. ``desktop_app.cli.main`` -> ``desktop_app.app.main``) until the window is
            visible with the model loaded and verified and one more event-loop turn has run.
  analyse   the same, then ``window.open_image`` on 3 real images one after another; each is timed
            from the call until its result AND heatmap overlay are on screen (the first includes
            onnxruntime's first-run allocations; the 2nd/3rd are the steady state).
  import    ``import desktop_app.core.engine`` alone (perf_counter around the import), next to the
            bare interpreter (``python -c pass``) and the whole GUI module
            (``desktop_app.ui.main_window``, which pulls in PySide6).

Reported per run: the child's own clock (perf_counter at the top of the driver, so it excludes the
interpreter's start-up), the parent's wall clock from ``Popen`` to the driver's READY line (includes
it), VmHWM (peak RSS) from the child's /proc/self/status at each milestone, the child's ru_maxrss
from ``os.wait4`` in the parent, and the TensorFlow/Keras/Torch/JAX/onnx modules found in the
child's ``sys.modules`` (there must be none). The three kinds of child are interleaved, in a
rotating order, ``--repeat`` times; one warm-up round is excluded. Medians are reported.

Bytecode: this environment sets PYTHONDONTWRITEBYTECODE=1 and the repository has no __pycache__,
so a plain child would recompile desktop_app on every start, which an installed app never does. By
default the children therefore use a bytecode cache under /tmp (PYTHONPYCACHEPREFIX; nothing is
written into the repository), filled by the warm-up round. ``--bytecode env`` keeps the
environment as it is (recompiling every time).

Usage (from the repository root)::

    .venv/bin/python bench/bench_launch.py --model runs/ham-quick/model.onnx --repeat 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DRIVER = Path(__file__).resolve().parent / "_launch_driver.py"
MARK = "LESIONLENS_BENCH "
MARK_READY = "LESIONLENS_BENCH_READY"
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tensorboard", "torch", "jax", "tf2onnx", "onnx")

IMPORT_SNIPPET = (
    "import time; t = time.perf_counter()\n"
    "{imp}\n"
    "d = time.perf_counter() - t\n"
    "import sys, json\n"
    "h = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
    "s = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
    "print('" + MARK + "' + json.dumps({{'import_s': d, 'heavy_modules': h, "
    "'vmhwm_mb': int(s) / 1024}}), flush=True)\n"
)


BARE_QT = """import time
T0 = time.perf_counter()
import json
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow
app = QApplication([])
w = QMainWindow()
w.setCentralWidget(QLabel("bare"))
w.resize(1200, 800)
w.show()
def done():
    t = time.perf_counter() - T0
    print("{ready}", flush=True)
    s = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    print("{mark}" + json.dumps({{"ok": True, "t_ready_s": t, "vmhwm_mb": int(s) / 1024}}), flush=True)
    app.exit(0)
QTimer.singleShot(0, done)
app.exec()
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=C.REPO / "runs" / "ham-quick" / "model.onnx")
    p.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES, help="folder of real images")
    p.add_argument("--repeat", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument(
        "--entry",
        choices=("cli", "app"),
        default="cli",
        help="start through desktop_app.cli.main (lesionlens gui) or desktop_app.app.main",
    )
    p.add_argument("--bytecode", choices=("cached", "env"), default="cached")
    p.add_argument(
        "--compare-bytecode",
        action="store_true",
        help="also start the window with no bytecode cache (PYTHONDONTWRITEBYTECODE=1, as this "
        "environment is), interleaved with the rest",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per child, seconds")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/)")
    return p.parse_args(argv)


class Runner:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.count = 0
        env = dict(os.environ)
        env["QT_QPA_PLATFORM"] = "offscreen"
        env.pop("PYTHONPATH", None)
        env["PYTHONPATH"] = str(C.REPO)
        if args.bytecode == "cached":
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        self.env = env

    def _settings(self) -> str:
        self.count += 1
        ini = self.tmp / f"settings-{self.count}.ini"
        ini.write_text("[notice]\nintended_use_acknowledged=true\n", encoding="utf-8")
        return str(ini)

    def _child(self, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
        """Run one child; its report line, the parent's wall clock to READY and to exit, and
        ru_maxrss from wait4."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=C.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        report: dict[str, Any] = {}
        wall_ready = None
        deadline = t0 + self.args.timeout + 10
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARK_READY) and wall_ready is None:
                wall_ready = time.perf_counter() - t0
            elif line.startswith(MARK):
                report = json.loads(line[len(MARK) :])
            if time.perf_counter() > deadline:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)
        wall_exit = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        proc.stdout.close()
        report["wall_ready_s"] = wall_ready
        report["wall_exit_s"] = wall_exit
        report["ru_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kB
        report["returncode"] = proc.returncode
        if proc.returncode != 0 or not report.get("ok", "import_s" in report):
            report["stderr_tail"] = stderr[-2000:]
        return report

    def gui(self, mode: str, images: list[Path], no_cache: bool = False) -> dict[str, Any]:
        env = dict(self.env, LESIONLENS_SETTINGS=self._settings())
        if no_cache:  # as this environment is: nothing cached, desktop_app compiled every start
            env.pop("PYTHONPYCACHEPREFIX", None)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        cmd = [
            sys.executable,
            str(DRIVER),
            "--model",
            str(self.args.model),
            "--mode",
            mode,
            "--entry",
            self.args.entry,
            "--timeout",
            str(self.args.timeout),
        ]
        if mode == "analyse":
            cmd += ["--image", *map(str, images)]
        return self._child(cmd, env)

    def imports(self, module: str) -> dict[str, Any]:
        imp = f"import {module}" if module else "pass"
        code = IMPORT_SNIPPET.format(imp=imp, forbidden=FORBIDDEN)
        return self._child([sys.executable, "-c", code], self.env)

    def bare_qt(self) -> dict[str, Any]:
        """The floor of any Qt app here: QApplication + an empty, shown QMainWindow, one
        event-loop turn (no LesionLens code)."""
        code = BARE_QT.format(mark=MARK, ready=MARK_READY)
        return self._child([sys.executable, "-c", code], self.env)

    def importtime_breakdown(self, module: str, runs: int = 3, top: int = 12) -> list[dict]:
        """`python -X importtime -c "import module"`, ``runs`` times: the import time of each
        top-level package (sum of its modules' *self* times, so nothing is counted twice),
        median over the runs, largest first."""
        per_run: list[dict[str, float]] = []
        for _ in range(runs):
            res = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", f"import {module}"],
                cwd=C.REPO,
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            totals: dict[str, float] = {}
            for line in res.stderr.splitlines():
                if not line.startswith("import time:") or "self [us]" in line:
                    continue
                self_us, _cum_us, name = line[len("import time:") :].split("|", 2)
                root = name.strip().split(".")[0]
                if root == "desktop_app":  # our own modules, one by one
                    root = ".".join(name.strip().split(".")[:3])
                totals[root] = totals.get(root, 0.0) + int(self_us) / 1e3
            per_run.append(totals)
        names = {k for t in per_run for k in t}
        rows = [
            {"package": k, "self_ms": statistics.median(t.get(k, 0.0) for t in per_run)}
            for k in names
        ]
        rows.sort(key=lambda r: -r["self_ms"])
        total = statistics.median(sum(t.values()) for t in per_run)
        return [{"package": "(all)", "self_ms": total}, *rows[:top]]


STEP_ORDER = (
    "load_image",
    "_on_image_loaded",
    "analyse_case",
    "_on_analysis_done",
    "render_overlay",
    "_on_overlay_ready",
    "gui_busy_total",
    "total",
)
STEP_LABELS = {
    "load_image": "decode (worker: imaging.load_image)",
    "_on_image_loaded": "show picture (GUI thread callback)",
    "analyse_case": "inference (worker: analyse_case -> Engine.predict_one)",
    "_on_analysis_done": "show result (GUI thread callback)",
    "render_overlay": "heatmap overlay (worker: render_overlay)",
    "_on_overlay_ready": "show overlay (GUI thread callback)",
    "gui_busy_total": "GUI thread busy in all (callbacks + layout/paint, gaps > 5 ms)",
    "total": "open_image -> result and heatmap on screen",
}


def breakdown_of_analyses(reps: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per step, [median start, median duration] in ms: the first image, and images 2..n."""
    groups: dict[str, dict[str, list[list[float]]]] = {"first": {}, "steady": {}}
    for rep in reps:
        for i, a in enumerate(rep.get("analyses") or []):
            g = groups["first" if i == 0 else "steady"]
            seen = set()
            for name, _where, start, dur in a.get("steps", []):
                if name not in seen:  # the first call of each step belongs to this image
                    seen.add(name)
                    g.setdefault(name, []).append([start * 1e3, dur * 1e3])
            busy = sum(d for _s, d in a.get("gui_busy", []))
            g.setdefault("gui_busy_total", []).append([0.0, busy * 1e3])
            g.setdefault("total", []).append([0.0, a["total_s"] * 1e3])
    return {
        k: {
            name: [statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)]
            for name, v in g.items()
        }
        for k, g in groups.items()
    }


def _fmt_step(v: list[float] | None) -> str:
    if v is None:
        return "-"
    return f"{v[1]:.1f}" if v[0] == 0.0 else f"at {v[0]:.0f}: {v[1]:.1f}"


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now()
    if not DRIVER.is_file():
        raise SystemExit(f"missing {DRIVER}")
    # Not imported here: the parent must stay small, because with vfork the children's
    # ru_maxrss (wait4) starts from the parent's own peak RSS.
    if importlib.util.find_spec("desktop_app.ui.main_window") is None:
        raise SystemExit("desktop_app/ui/main_window.py does not exist yet: nothing to measure")
    machine_before = C.machine()
    images = C.pick_images(args.images, 3)

    with tempfile.TemporaryDirectory(prefix="lesionlens-launch-") as tmpdir:
        run = Runner(args, Path(tmpdir))
        kinds = {
            "window": lambda: run.gui("window", images),
            "analyse": lambda: run.gui("analyse", images),
            "import_python": lambda: run.imports(""),
            "import_engine": lambda: run.imports("desktop_app.core.engine"),
            "import_gui": lambda: run.imports("desktop_app.ui.main_window"),
            "bare_qt": run.bare_qt,
        }
        if args.compare_bytecode:
            kinds["window_nocache"] = lambda: run.gui("window", images, no_cache=True)
        t = time.perf_counter()
        warm = {k: f() for k, f in kinds.items()}  # fills the bytecode cache, page cache
        failed = {k: v for k, v in warm.items() if v.get("returncode") != 0}
        if failed:
            for k, v in failed.items():
                print(f"{k} failed in warm-up: {json.dumps(v)[:3000]}", file=sys.stderr)
            raise SystemExit(3)
        breakdown = run.importtime_breakdown("desktop_app.core.engine")
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        keys = list(kinds)
        for r in range(args.repeat):
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                runs[k].append(kinds[k]())
        total_s = time.perf_counter() - t

    def col(kind: str, *path: str) -> list[Any]:
        out = []
        for rep in runs[kind]:
            v: Any = rep
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            out.append(v)
        return out

    def an(i: int, key: str) -> list[Any]:
        return [
            (rep.get("analyses") or [{}] * 3)[i].get(key)
            if len(rep.get("analyses") or []) > i
            else None
            for rep in runs["analyse"]
        ]

    heavy = sorted(
        {m for reps in runs.values() for rep in reps for m in rep.get("heavy_modules", [])}
    )
    gui_heavy = sorted(
        {m for k in ("window", "analyse") for rep in runs[k] for m in rep.get("heavy_modules", [])}
    )
    errors = [rep for reps in runs.values() for rep in reps if rep.get("returncode") != 0]

    summary = {
        # Both kinds of GUI child are identical until "ready": pooled, they give 2 x repeat samples.
        "ready_pooled": {
            "t_ready_s_child_median": med(col("window", "t_ready_s") + col("analyse", "t_ready_s")),
            "t_ready_s_child_min": min(
                (v for v in col("window", "t_ready_s") + col("analyse", "t_ready_s") if v),
                default=None,
            ),
            "wall_ready_s_parent_median": med(
                col("window", "wall_ready_s") + col("analyse", "wall_ready_s")
            ),
            "wall_ready_s_parent_min": min(
                (v for v in col("window", "wall_ready_s") + col("analyse", "wall_ready_s") if v),
                default=None,
            ),
            "model_load_s_median": med(
                [
                    (r.get("t_model_loaded_s") or 0) - (r.get("t_exec_s") or 0)
                    for k in ("window", "analyse")
                    for r in runs[k]
                ]
            ),
            "n": 2 * args.repeat,
        },
        "window_nocache": {
            "t_ready_s_child": med(col("window_nocache", "t_ready_s"))
            if "window_nocache" in runs
            else None,
            "wall_ready_s_parent": med(col("window_nocache", "wall_ready_s"))
            if "window_nocache" in runs
            else None,
        },
        "bare_qt": {
            "t_ready_s_child": med(col("bare_qt", "t_ready_s")),
            "wall_ready_s_parent": med(col("bare_qt", "wall_ready_s")),
            "peak_rss_mb": med(col("bare_qt", "vmhwm_mb")),
        },
        "window": {
            "t_ready_s_child": med(col("window", "t_ready_s")),
            "wall_ready_s_parent": med(col("window", "wall_ready_s")),
            "t_window_visible_s_child": med(col("window", "t_window_visible_s")),
            "t_exec_s_child": med(col("window", "t_exec_s")),
            "peak_rss_mb_ready": med(col("window", "mem_ready", "VmHWM")),
            "ru_maxrss_mb": med(col("window", "ru_maxrss_mb")),
        },
        "analyse": {
            "t_ready_s_child": med(col("analyse", "t_ready_s")),
            "wall_ready_s_parent": med(col("analyse", "wall_ready_s")),
            "first_image_total_s": med(an(0, "total_s")),
            "first_image_shown_s": med(an(0, "image_shown_s")),
            "first_result_shown_s": med(an(0, "result_shown_s")),
            "second_image_total_s": med(an(1, "total_s")),
            "third_image_total_s": med(an(2, "total_s")),
            "t_first_analysed_s_child": med(an(0, "t_since_start_s")),
            "peak_rss_mb_ready": med(col("analyse", "mem_ready", "VmHWM")),
            "peak_rss_mb_after_first": med([m.get("VmHWM") if m else None for m in an(0, "mem")]),
            "peak_rss_mb_after_three": med(col("analyse", "mem_analysed", "VmHWM")),
            "ru_maxrss_mb": med(col("analyse", "ru_maxrss_mb")),
        },
        "imports": {
            k: {
                "import_s_child": med(col(k, "import_s")),
                "wall_s_parent": med(col(k, "wall_exit_s")),
                "ru_maxrss_mb": med(col(k, "ru_maxrss_mb")),
                "peak_rss_mb": med(col(k, "vmhwm_mb")),
            }
            for k in ("import_python", "import_engine", "import_gui")
        },
        "tensorflow_free": not gui_heavy,
        "heavy_modules_in_gui_children": gui_heavy,
        "heavy_modules_any_child": heavy,
        "analysis_breakdown": breakdown_of_analyses(runs["analyse"]),
        "failed_runs": len(errors),
    }
    pooled, bare = summary["ready_pooled"], summary["bare_qt"]
    summary["ready_vs_bare_qt_wall_ratio"] = (
        pooled["wall_ready_s_parent_median"] / bare["wall_ready_s_parent"]
        if pooled["wall_ready_s_parent_median"] and bare["wall_ready_s_parent"]
        else None
    )
    machine_after = C.machine()
    result = {
        "benchmark": "launch",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "images": [str(p) for p in images],
        "machine_before": machine_before,
        "machine_after": machine_after,
        "summary": summary,
        "importtime_engine_top": breakdown,
        "total_s": total_s,
        "runs": runs,
        "warmup": warm,
    }
    out = args.out or C.results_path("launch", started)
    C.write_json_atomic(out, result)

    def f(x: float | None, unit: str = "s", nd: int = 2) -> str:
        if x is None:
            return "-"
        return f"{x * 1e3:.0f} ms" if unit == "ms" else f"{x:.{nd}f} {unit}"

    w, a, imp = summary["window"], summary["analyse"], summary["imports"]
    print(
        f"# Launch benchmark {started:%Y-%m-%d %H:%M}  ({args.repeat} rounds + 1 warm-up, "
        f"entry {args.entry}, bytecode {args.bytecode})"
    )
    print(
        f"model {args.model}; loadavg before {machine_before['loadavg_1_5_15']}, after "
        f"{machine_after['loadavg_1_5_15']}"
    )
    for b in machine_before["busy_processes"]:
        print(f"  background: {b}")
    print()
    rp = summary["ready_pooled"]
    print(
        f"Window usable with the model loaded, all {rp['n']} GUI starts pooled: median "
        f"{f(rp['t_ready_s_child_median'])} (fastest {f(rp['t_ready_s_child_min'])}) on the "
        f"child's clock, {f(rp['wall_ready_s_parent_median'])} (fastest "
        f"{f(rp['wall_ready_s_parent_min'])}) wall from Popen; of which loading + verifying the "
        f"model in the background: {f(rp['model_load_s_median'], 'ms')}"
    )
    bq = summary["bare_qt"]
    ratio = summary["ready_vs_bare_qt_wall_ratio"]
    print(
        f"Floor, an empty Qt window (same interleaved rounds): {f(bq['t_ready_s_child'])} child "
        f"clock, {f(bq['wall_ready_s_parent'])} wall, peak RSS {f(bq['peak_rss_mb'], 'MB', 0)}"
        + (f" -> LesionLens takes {ratio:.1f}x the bare Qt window (wall)" if ratio else "")
    )
    nc = summary["window_nocache"]
    if nc["wall_ready_s_parent"]:
        print(
            f"Same window without a bytecode cache (interleaved): {f(nc['t_ready_s_child'])} child "
            f"clock, {f(nc['wall_ready_s_parent'])} wall (window with cache: "
            f"{f(summary['window']['wall_ready_s_parent'])} wall)"
        )
    print()
    rows = [
        [
            "window usable (model loaded), child clock",
            f(w["t_ready_s_child"]),
            f(a["t_ready_s_child"]),
        ],
        [
            "window usable, parent wall (incl. interpreter start)",
            f(w["wall_ready_s_parent"]),
            f(a["wall_ready_s_parent"]),
        ],
        ["  window first visible (child clock)", f(w["t_window_visible_s_child"]), "-"],
        ["  event loop entered (child clock)", f(w["t_exec_s_child"]), "-"],
        [
            "peak RSS at ready (VmHWM)",
            f(w["peak_rss_mb_ready"], "MB", 0),
            f(a["peak_rss_mb_ready"], "MB", 0),
        ],
        [
            "open + analyse 1st image -> result+heatmap shown",
            "-",
            f(a["first_image_total_s"], "ms"),
        ],
        [
            "  1st image: picture on screen / result on screen",
            "-",
            f"{f(a['first_image_shown_s'], 'ms')} / {f(a['first_result_shown_s'], 'ms')}",
        ],
        [
            "open + analyse 2nd / 3rd image",
            "-",
            f"{f(a['second_image_total_s'], 'ms')} / {f(a['third_image_total_s'], 'ms')}",
        ],
        ["process start -> 1st result (child clock)", "-", f(a["t_first_analysed_s_child"])],
        [
            "peak RSS after 1st / after 3 analyses (VmHWM)",
            "-",
            f"{f(a['peak_rss_mb_after_first'], 'MB', 0)} / {f(a['peak_rss_mb_after_three'], 'MB', 0)}",
        ],
        [
            "peak RSS, parent's wait4 ru_maxrss",
            f(w["ru_maxrss_mb"], "MB", 0),
            f(a["ru_maxrss_mb"], "MB", 0),
        ],
    ]
    print(C.table(rows, ["median of runs", "window", "window + analyse"]))
    bd = summary["analysis_breakdown"]
    if bd:
        print()
        print("Where an analysis in the window goes (ms from open_image; medians over runs):")
        brows = []
        for step in STEP_ORDER:
            a1, a2 = bd["first"].get(step), bd["steady"].get(step)
            if a1 is None and a2 is None:
                continue
            brows.append([STEP_LABELS.get(step, step), _fmt_step(a1), _fmt_step(a2)])
        print(C.table(brows, ["step", "1st image: start + duration", "2nd/3rd image"]))
    print()
    irows = [
        [
            k.replace("import_", ""),
            f(v["import_s_child"], "ms"),
            f(v["wall_s_parent"], "ms"),
            f(v["peak_rss_mb"], "MB", 0),
        ]
        for k, v in imp.items()
    ]
    irows[0][0] = "python -c pass (interpreter only)"
    irows[1][0] = "import desktop_app.core.engine"
    irows[2][0] = "import desktop_app.ui.main_window (GUI)"
    print(
        C.table(
            irows, ["child", "import (child clock)", "process wall (parent)", "peak RSS (VmHWM)"]
        )
    )
    print()
    print(
        "import desktop_app.core.engine by package (-X importtime, self times summed per "
        "package, median of 3 runs):"
    )
    print(", ".join(f"{r['package']} {r['self_ms']:.0f} ms" for r in breakdown))
    print()
    print(
        f"TensorFlow-free GUI process: {'YES' if summary['tensorflow_free'] else 'NO'} "
        f"(forbidden modules found: {gui_heavy or 'none'})"
    )
    if errors:
        print(f"{len(errors)} runs failed; see {out}")
    print(
        f"\nresults: {out.relative_to(C.REPO) if out.is_relative_to(C.REPO) else out} "
        f"(total {total_s:.0f} s)"
    )
    return 0 if not errors else 3


if __name__ == "__main__":
    raise SystemExit(main())
