"""The one way to run background work in the window.

::

    runner = TaskRunner(parent)
    runner.run_in_background("analysis", op, on_success, on_failure, label="Analysing…")

Rules (after Anki's ``QueryOp`` and Orange's concurrent widgets):

* ``op`` is a plain callable that runs on a worker thread of the runner's own ``QThreadPool``. It
  must never touch a widget or a QObject: give it plain values (arrays, paths, an Engine) and let
  it return plain values.
* ``on_success(result)`` / ``on_failure(exception)`` run on the GUI thread, delivered by a queued
  signal. A failure without ``on_failure`` is re-raised on the GUI thread (Qt reports it).
* Each *channel* ("image", "analysis", "model", "report"...) runs one task at a time. A newer
  request supersedes an older one: the channel's generation counter is bumped, a request still
  waiting to start is dropped, and the result of a task that was already running is discarded when
  it arrives. ONNX inference cannot be interrupted, so "cancel" means "ignore"; coalescing keeps a
  slider drag from queueing dozens of runs.
* ``busyChanged(bool)`` / ``activityChanged(str)`` drive the busy indicator in the status bar.
* :meth:`TaskRunner.wait_until_idle` is for shutdown and tests (the tests fail any test that leaves
  a task running).
"""

from __future__ import annotations

import contextlib
import itertools
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QCoreApplication,
    QDeadlineTimer,
    QObject,
    QRunnable,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)

__all__ = ["TaskRunner"]

_ids = itertools.count(1)


@dataclass
class _Task:
    id: int
    channel: str
    generation: int
    op: Callable[[], Any]
    on_success: Callable[[Any], None]
    on_failure: Callable[[BaseException], None] | None
    label: str


class _Runnable(QRunnable):
    """Runs ``op`` on a pool thread and reports through the runner's (queued) signal."""

    def __init__(self, runner: TaskRunner, task: _Task) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._emit = runner._finished.emit
        self._task_id = task.id
        self._op = task.op

    def run(self) -> None:
        try:
            result, error = self._op(), None
        except BaseException as exc:  # handed to the GUI thread, never swallowed
            result, error = None, exc
            if not isinstance(exc, Exception):  # KeyboardInterrupt & co.: still say where
                traceback.print_exception(exc)
        self._op = None  # drop references (images, engines) as soon as possible
        # RuntimeError: the runner was deleted while we worked; nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._emit(self._task_id, result, error)


class ChannelBookkeeping:
    """What every runner here answers the same way: is a channel busy, is everything idle, wait.

    Subclasses keep ``_running`` (channel -> task on a pool thread), ``_pending`` (channel -> task
    waiting for its channel) and ``_pool`` (their QThreadPool)."""

    _running: dict[str, Any]
    _pending: dict[str, Any]
    _pool: QThreadPool
    _activity: str
    _busy: bool
    WAIT_TIMEOUT_MS = 10_000

    def is_idle(self) -> bool:
        """No task running on a pool thread and none waiting (results may still be queued)."""
        return not self._running and not self._pending and self._pool.activeThreadCount() == 0

    def is_busy(self, channel: str | None = None) -> bool:
        if channel is None:
            return not self.is_idle()
        return channel in self._running or channel in self._pending

    @property
    def pool(self) -> QThreadPool:
        return self._pool

    def wait_until_idle(self, timeout_ms: int | None = None) -> bool:
        """Block (processing queued results) until every task has finished and been delivered."""
        deadline = QDeadlineTimer(self.WAIT_TIMEOUT_MS if timeout_ms is None else timeout_ms)
        while not deadline.hasExpired():
            if not self._running and not self._pending:
                return self._pool.waitForDone(max(0, int(deadline.remainingTime())))
            self._pool.waitForDone(20)
            QCoreApplication.processEvents()
        return self.is_idle()

    def _update_state(self) -> None:
        """Emit busyChanged / activityChanged (the subclass's signals) when they change."""
        busy = bool(self._running or self._pending)
        labels = [t.label for t in (*self._pending.values(), *self._running.values()) if t.label]
        activity = labels[0] if labels else ("Working…" if busy else "")
        if activity != self._activity:
            self._activity = activity
            self.activityChanged.emit(activity)  # type: ignore[attr-defined]
        if busy != self._busy:
            self._busy = busy
            self.busyChanged.emit(busy)  # type: ignore[attr-defined]

    @staticmethod
    def _deliver(task: Any, result: Any, error: BaseException | None) -> None:
        """Hand a finished task's outcome to its callbacks (an unhandled error is re-raised)."""
        if error is None:
            task.on_success(result)
        elif task.on_failure is not None:
            task.on_failure(error)
        else:
            raise error


class TaskRunner(ChannelBookkeeping, QObject):
    """Runs callables on a private thread pool; results come back on the GUI thread."""

    busyChanged = Signal(bool)
    activityChanged = Signal(str)
    _finished = Signal(int, object, object)

    def __init__(self, parent: QObject | None = None, max_threads: int = 2) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, int(max_threads)))
        self._generation: dict[str, int] = {}
        self._running: dict[str, _Task] = {}
        self._pending: dict[str, _Task] = {}
        self._busy = False
        self._activity = ""
        self._finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)

    # -- submitting -------------------------------------------------------------------------------
    def run_in_background(
        self,
        channel: str,
        op: Callable[[], Any],
        on_success: Callable[[Any], None],
        on_failure: Callable[[BaseException], None] | None = None,
        *,
        label: str = "",
    ) -> int:
        """Run ``op()`` off the GUI thread; returns the request's generation on its channel."""
        generation = self._generation.get(channel, 0) + 1
        self._generation[channel] = generation
        task = _Task(next(_ids), channel, generation, op, on_success, on_failure, label)
        if channel in self._running:
            self._pending[channel] = task  # an older waiting request is dropped here
        else:
            self._start(task)
        self._update_state()
        return generation

    def cancel(self, channel: str) -> None:
        """Forget the channel's requests: a waiting one is dropped, a running one is ignored."""
        self._generation[channel] = self._generation.get(channel, 0) + 1
        self._pending.pop(channel, None)
        self._update_state()

    def generation(self, channel: str) -> int:
        return self._generation.get(channel, 0)

    # -- state ------------------------------------------------------------------------------------
    # -- internals --------------------------------------------------------------------------------
    def _start(self, task: _Task) -> None:
        self._running[task.channel] = task
        self._pool.start(_Runnable(self, task))

    @Slot(int, object, object)
    def _on_finished(self, task_id: int, result: Any, error: object) -> None:
        task = next((t for t in self._running.values() if t.id == task_id), None)
        if task is None:  # pragma: no cover - every started task is in _running
            return
        del self._running[task.channel]
        waiting = self._pending.pop(task.channel, None)
        if waiting is not None:
            self._start(waiting)
        current = task.generation == self._generation.get(task.channel)
        self._update_state()
        if not current:
            return  # superseded by a newer request: the result is stale
        self._deliver(task, result, error)
