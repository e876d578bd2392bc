"""Long background work with progress and cancellation: the batch run, thumbnails, exports.

::

    runner = ProgressRunner(parent)
    cancel = runner.start(
        "batch",
        op,                       # op(report, cancel) -> result, on a pool thread
        on_success,               # (result) on the GUI thread
        on_failure,               # (exception) on the GUI thread
        on_progress=on_progress,  # (value) on the GUI thread, in order, once per report(value)
        label="Batch review…",
    )
    runner.cancel("batch")        # sets ``cancel``: the op stops at its next check and returns

The rules of :class:`~desktop_app.ui.workers.TaskRunner` hold (Anki's ``QueryOp``, Orange's
concurrent widgets): ``op`` runs on the runner's own thread pool and never touches a widget or a
QObject; it gets plain values and returns plain values. What it passes to ``report`` and what it
returns reach the GUI thread through queued signals, so the window stays responsive however fast
the op reports. What is new here:

* ``report(value)``: each call is delivered, in order, to ``on_progress`` on the GUI thread (every
  call: a batch's progress carries the result that just finished, and a live table needs them all).
* ``cancel``: a :class:`threading.Event` handed to the op. :meth:`ProgressRunner.cancel` sets it;
  the op decides where it can stop cleanly (the batch lets the images in flight finish), returns
  normally, and its ``on_success`` is still delivered (a stopped batch returns its summary).
* One task per channel. Starting a channel that is busy cancels the running task, drops its later
  progress and result (superseded), and starts the new task once the old one has returned: two
  tasks of one channel never run at the same time (two batch runs must not share one database).

``_running``, ``_pending`` and ``pool`` mirror TaskRunner's, so the tests' check that no test leaves
work running (``tests/conftest_qt.assert_no_background_work``) applies to this runner too.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import (
    QObject,
    QRunnable,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)

from desktop_app.ui.workers import ChannelBookkeeping

__all__ = ["ProgressOp", "ProgressRunner"]

ProgressOp = Callable[[Callable[[Any], None], threading.Event], Any]

_ids = itertools.count(1)


@dataclass
class _Task:
    id: int
    channel: str
    op: ProgressOp
    on_success: Callable[[Any], None]
    on_failure: Callable[[BaseException], None] | None
    on_progress: Callable[[Any], None] | None
    label: str
    cancel: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False


class _Runnable(QRunnable):
    """Runs ``op(report, cancel)`` on a pool thread; reports through the runner's queued signals."""

    def __init__(self, runner: ProgressRunner, task: _Task) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._emit_progress = runner._progress.emit
        self._emit_finished = runner._finished.emit
        self._task_id = task.id
        self._op: ProgressOp | None = task.op
        self._cancel = task.cancel

    def _report(self, value: Any) -> None:
        # RuntimeError: the runner was deleted while we worked; nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._emit_progress(self._task_id, value)

    def run(self) -> None:
        op = self._op
        assert op is not None
        try:
            result, error = op(self._report, self._cancel), None
        except BaseException as exc:  # handed to the GUI thread, never swallowed
            result, error = None, exc
            if not isinstance(exc, Exception):
                traceback.print_exception(exc)
        self._op = op = None  # drop references (engines, images) as soon as possible
        with contextlib.suppress(RuntimeError):
            self._emit_finished(self._task_id, result, error)


class ProgressRunner(ChannelBookkeeping, QObject):
    """Runs cancellable callables with progress on a private pool; everything comes back on the
    GUI thread. See the module docstring."""

    busyChanged = Signal(bool)
    activityChanged = Signal(str)
    _progress = Signal(int, object)
    _finished = Signal(int, object, object)
    WAIT_TIMEOUT_MS = 30_000  # a batch delivers many progress events before it returns

    def __init__(self, parent: QObject | None = None, max_threads: int = 3) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, int(max_threads)))
        self._running: dict[str, _Task] = {}
        self._pending: dict[str, _Task] = {}
        self._by_id: dict[int, _Task] = {}
        self._busy = False
        self._activity = ""
        self._progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self._finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)

    # -- submitting -------------------------------------------------------------------------------
    def start(
        self,
        channel: str,
        op: ProgressOp,
        on_success: Callable[[Any], None],
        on_failure: Callable[[BaseException], None] | None = None,
        *,
        on_progress: Callable[[Any], None] | None = None,
        label: str = "",
    ) -> threading.Event:
        """Run ``op(report, cancel)`` off the GUI thread; returns its cancel event.

        A task already running on ``channel`` is cancelled and superseded; the new one starts when
        it has returned (a task still waiting to start is dropped)."""
        task = _Task(next(_ids), channel, op, on_success, on_failure, on_progress, label)
        running = self._running.get(channel)
        if running is not None:
            running.superseded = True
            running.cancel.set()
            self._pending[channel] = task
        else:
            self._start(task)
        self._update_state()
        return task.cancel

    def cancel(self, channel: str, *, forget: bool = False) -> None:
        """Ask the channel's running task to stop (its result is still delivered, unless
        ``forget``); a task waiting to start is dropped."""
        self._pending.pop(channel, None)
        running = self._running.get(channel)
        if running is not None:
            running.cancel.set()
            if forget:
                running.superseded = True
        self._update_state()

    def cancel_all(self) -> None:
        """Stop everything and ignore what it returns (closing the window)."""
        for channel in list({*self._running, *self._pending}):
            self.cancel(channel, forget=True)

    # -- state ------------------------------------------------------------------------------------
    def is_cancelling(self, channel: str) -> bool:
        task = self._running.get(channel)
        return task is not None and task.cancel.is_set()

    # -- internals --------------------------------------------------------------------------------
    def _start(self, task: _Task) -> None:
        self._running[task.channel] = task
        self._by_id[task.id] = task
        self._pool.start(_Runnable(self, task))

    @Slot(int, object)
    def _on_progress(self, task_id: int, value: Any) -> None:
        task = self._by_id.get(task_id)
        if task is None or task.superseded or task.on_progress is None:
            return
        task.on_progress(value)

    @Slot(int, object, object)
    def _on_finished(self, task_id: int, result: Any, error: object) -> None:
        task = self._by_id.pop(task_id, None)
        if task is None:  # pragma: no cover - every started task is registered
            return
        if self._running.get(task.channel) is task:
            del self._running[task.channel]
        waiting = self._pending.pop(task.channel, None)
        if waiting is not None:
            self._start(waiting)
        self._update_state()
        if task.superseded:
            return
        self._deliver(task, result, error)
