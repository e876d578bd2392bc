"""TaskRunner: the one way the window runs background work."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest_qt import assert_no_background_work

pytest.importorskip("pytestqt")

from desktop_app.ui.workers import TaskRunner


@pytest.fixture
def runner(qtbot):
    r = TaskRunner()
    yield r
    assert_no_background_work([r])
    r.deleteLater()


def _wait_idle(qtbot, runner):
    qtbot.waitUntil(runner.is_idle, timeout=5000)


def test_op_runs_off_the_gui_thread_and_results_come_back_on_it(qtbot, runner):
    gui = threading.get_ident()
    seen = {}

    def op():
        seen["op"] = threading.get_ident()
        return 42

    def ok(value):
        seen["callback"] = threading.get_ident()
        seen["value"] = value

    runner.run_in_background("x", op, ok)
    _wait_idle(qtbot, runner)
    qtbot.waitUntil(lambda: "value" in seen, timeout=2000)
    assert seen["value"] == 42
    assert seen["op"] != gui
    assert seen["callback"] == gui


def test_failures_reach_on_failure_with_the_exception(qtbot, runner):
    errors = []

    def op():
        raise ValueError("broken")

    runner.run_in_background("x", op, lambda v: pytest.fail("no success expected"), errors.append)
    _wait_idle(qtbot, runner)
    qtbot.waitUntil(lambda: bool(errors), timeout=2000)
    assert isinstance(errors[0], ValueError) and str(errors[0]) == "broken"


def test_a_newer_request_supersedes_older_ones(qtbot, runner):
    """One task per channel runs; a waiting request is replaced; stale results are dropped."""
    started, results = [], []
    release = threading.Event()

    def op(n):
        started.append(n)
        if n == 1:
            release.wait(5)
        return n

    for n in (1, 2, 3):
        runner.run_in_background("analysis", lambda n=n: op(n), results.append)
    time.sleep(0.05)
    assert started == [1]  # 2 and 3 wait; 3 replaced 2
    release.set()
    _wait_idle(qtbot, runner)
    qtbot.waitUntil(lambda: results == [3], timeout=2000)
    assert started == [1, 3]
    assert results == [3]  # the result of 1 arrived after 3 was asked for: dropped


def test_channels_are_independent_and_cancel_ignores_results(qtbot, runner):
    results = []
    runner.run_in_background("a", lambda: "a", results.append)
    runner.run_in_background("b", lambda: (time.sleep(0.05), "b")[1], results.append)
    runner.cancel("b")
    _wait_idle(qtbot, runner)
    qtbot.wait(20)
    assert results == ["a"]


def test_busy_signal_brackets_the_work(qtbot, runner):
    states = []
    runner.busyChanged.connect(states.append)
    with qtbot.waitSignal(runner.busyChanged, timeout=2000):
        runner.run_in_background("x", lambda: time.sleep(0.02), lambda _v: None, label="Working")
    assert runner.is_busy("x")
    _wait_idle(qtbot, runner)
    qtbot.waitUntil(lambda: states == [True, False], timeout=2000)
