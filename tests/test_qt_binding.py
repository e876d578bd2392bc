"""The installed Qt binding must survive a long session.

PySide6-Essentials 6.12.0 on Python 3.11 returns ``None`` from every wrapped void method (setText,
setValue, drawRect...) without a new reference, and ``True`` from ``emit()`` likewise: a few
thousand calls, a batch of a few hundred images, abort the interpreter ("none_dealloc").
pyproject.toml excludes that release; this test runs the calls in a child process so that a binding
with the defect fails the test instead of killing the test run.
"""

import subprocess
import sys

CHILD = """
import os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication, QLabel

class Emitter(QObject):
    ping = Signal(int)

app = QApplication([])
label, emitter = QLabel(), Emitter()
emitter.ping.connect(lambda value: None)
none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
for _ in range(20_000):
    label.setText("x")
for i in range(5_000):
    emitter.ping.emit(i)
print(none_before - sys.getrefcount(None), true_before - sys.getrefcount(True))
"""


def test_void_calls_and_emits_do_not_leak_references_to_none_or_true():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"the Qt binding aborted Python: {out.stderr[-500:]}"
    lost_none, lost_true = (int(v) for v in out.stdout.split())
    assert lost_none < 100 and lost_true < 100, (lost_none, lost_true)
