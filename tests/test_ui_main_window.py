"""The single-case window, driven through the same methods its menus call (file dialogs bypassed).

Models: the hand-made ONNX models of tests/model_factory.py (``synthetic_onnx``: no TensorFlow,
instant) for most tests, and the session's tiny exported MobileNetV2 (``shared_export``: real
Grad-CAM per class) for one end-to-end test. Images are drawn on the fly. Every test must wait for
its background work: the ``no_leftover_work`` fixture fails a test that leaves a task running.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest_qt import (
    assert_no_background_work,
    isolated_settings,
    lesion_rgb,
    wait_idle,
    write_lesion,
)

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication

from desktop_app import cli
from desktop_app.core.engine import Engine
from desktop_app.core.errors import ImageError
from desktop_app.core.imaging import load_image
from desktop_app.core.metadata import PatientMetadata
from desktop_app.ui.main_window import DISPLAY_MAX_SIDE, MainWindow, default_report_name
from tests import model_factory as mf
from tests.image_factory import encode, solid

SYNTH_SIZE = 64


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui_models")


@pytest.fixture(scope="module")
def dual_model(model_dir) -> Path:
    path = model_dir / "dual.onnx"
    path.write_bytes(mf.synthetic_onnx(image_size=SYNTH_SIZE))
    return path


@pytest.fixture(scope="module")
def image_only_model(model_dir) -> Path:
    path = model_dir / "image_only.onnx"
    path.write_bytes(mf.synthetic_onnx(image_size=SYNTH_SIZE, metadata=False))
    return path


@pytest.fixture
def make_window(qtbot, tmp_path):
    """MainWindow factory with isolated settings; fails the test if work is left running."""
    windows: list[MainWindow] = []

    def make(
        model: Path | None = None, settings_name: str = "settings.ini", **kwargs
    ) -> MainWindow:
        w = MainWindow(
            isolated_settings(tmp_path, settings_name),
            model_path=model,
            load_default_model=False,
            **kwargs,
        )
        qtbot.addWidget(w)
        w.resize(1280, 860)
        w.show()
        windows.append(w)
        if model is not None:
            qtbot.waitUntil(lambda: w.engine is not None, timeout=20_000)
        return w

    yield make
    assert_no_background_work([w.tasks for w in windows])


@pytest.fixture
def window(make_window, dual_model) -> MainWindow:
    return make_window(dual_model)


@pytest.fixture
def lesion(tmp_path) -> Path:
    return write_lesion(tmp_path / "lesion.jpg", size=192, seed=3)


def open_and_wait(qtbot, w: MainWindow, path: Path) -> None:
    w.open_image(path)
    qtbot.waitUntil(lambda: w.image is not None and w.image.path == Path(path), timeout=20_000)
    qtbot.waitUntil(lambda: w.engine is None or w.analysis is not None, timeout=20_000)
    wait_idle(qtbot, w)


def overlay_copy(w: MainWindow) -> np.ndarray:
    image = w.overlay_image()
    assert image is not None
    return image.copy()


# --------------------------------------------------------------------------------------------------
# The main road: image + metadata -> result -> heatmap -> report
# --------------------------------------------------------------------------------------------------


def test_open_image_fill_metadata_and_read_the_result(qtbot, window, lesion):
    open_and_wait(qtbot, window, lesion)
    assert window.view.original.has_image()
    card = window.engine.card

    window.metadata_form.set_values(54, "female", "posterior torso")
    wanted = PatientMetadata(age=54, sex="female", site="posterior torso")
    qtbot.waitUntil(lambda: window.analysis.metadata == wanted, timeout=10_000)
    wait_idle(qtbot, window)

    shown = window.results.chart.displayed()
    assert [code for code, _, _ in shown] != []
    assert {name for _, name, _ in shown} == {c.name for c in card.classes}  # full names
    values = [float(p.rstrip("%").lstrip("<")) for _, _, p in shown]
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(100.0, abs=0.5)
    pred = window.analysis.prediction
    assert shown[0][0] == pred.top_code
    assert pred.top_name in window.results.top_label.text()
    risk = window.results.risk_label.text()
    assert card.threshold_description in risk and f"{pred.threshold:.0%}" in risk
    assert ("above" if pred.above_threshold else "below") in risk
    assert "Uncertainty" in window.results.uncertainty_label.text()
    assert "calibrated" in window.results.calibration_label.text()
    assert "age 54" in window.results.used_label.text()
    # The flags banner follows the prediction's flags.
    assert window.results.flags_shown() == bool(pred.flags)
    # The same answer as the engine gives directly for the same pixels and metadata.
    direct = window.engine.predict_one(window.image.rgb, wanted)
    np.testing.assert_allclose(direct.probabilities, pred.probabilities, atol=1e-6)


def test_metadata_edits_are_debounced_into_one_analysis(qtbot, window, lesion, monkeypatch):
    open_and_wait(qtbot, window, lesion)
    from desktop_app.ui import main_window as mw

    calls = []
    real = mw.analyse_case

    def counting(engine, image, meta):
        calls.append(meta)
        return real(engine, image, meta)

    monkeypatch.setattr(mw, "analyse_case", counting)
    for text in ("6", "61", "6", "62"):
        window.metadata_form.age_edit.setText(text)
    qtbot.waitUntil(lambda: window.analysis.metadata.age == 62, timeout=10_000)
    wait_idle(qtbot, window)
    assert len(calls) == 1 and calls[0].age == 62


def test_flags_are_shown_when_present_and_hidden_when_absent(qtbot, window, lesion):
    from desktop_app.core.uncertainty import Flag

    open_and_wait(qtbot, window, lesion)
    pred = window.analysis.prediction
    card = window.engine.card
    flagged = dataclasses.replace(
        pred,
        flags=(
            Flag("low_confidence", "Low confidence", "The model is torn between two classes."),
            Flag("unusual_image", "Unusual image", "This image is unlike the training images."),
        ),
    )
    window.results.set_result(flagged, card)
    assert window.results.flags_shown()
    text = window.results.banner.text()
    for phrase in ("Low confidence", "torn between two classes", "Unusual image", "Caution"):
        assert phrase in text
    # Above the answer, not below it.
    assert (
        window.results.banner.y()
        < window.results.top_label.mapTo(
            window.results, window.results.top_label.rect().topLeft()
        ).y()
    )
    window.results.set_result(dataclasses.replace(pred, flags=()), card)
    assert not window.results.flags_shown()


def test_heatmap_toggle_opacity_and_class(qtbot, window, lesion):
    open_and_wait(qtbot, window, lesion)
    first = overlay_copy(window)
    assert first.shape == window.image.rgb.shape

    window.opacity_slider.setValue(95)
    qtbot.waitUntil(lambda: not np.array_equal(window.overlay_image(), first), timeout=10_000)
    wait_idle(qtbot, window)
    assert "95%" in window.view.overlay_title.text()

    window.opacity_slider.setValue(0)  # no tint: the original pixels come back
    qtbot.waitUntil(
        lambda: np.array_equal(window.overlay_image(), window.image.rgb), timeout=10_000
    )
    wait_idle(qtbot, window)

    other = next(c for c in window.engine.card.codes if c != window.analysis.prediction.top_code)
    window.set_heatmap_class(other)
    wait_idle(qtbot, window)
    assert window.selected_class() == other
    assert f"({other})" in window.view.overlay_title.text()

    window.show_heatmap_action.trigger()  # H
    assert not window.view.overlay_visible() and window.overlay_image() is None
    assert not window.heatmap_check.isChecked()
    window.heatmap_check.setChecked(True)
    assert window.view.overlay_visible() and window.show_heatmap_action.isChecked()
    wait_idle(qtbot, window)
    assert window.overlay_image() is not None


def test_zoom_and_pan_stay_in_step(qtbot, window, lesion):
    open_and_wait(qtbot, window, lesion)
    view = window.view
    assert view.is_fit()
    before = view.zoom()
    window.zoom_in_action.trigger()
    window.zoom_in_action.trigger()
    assert view.zoom() == pytest.approx(before * 1.25**2, rel=1e-6)
    assert view.overlay.transform().m11() == pytest.approx(view.zoom())
    view.original.horizontalScrollBar().setValue(view.original.horizontalScrollBar().maximum())
    assert view.overlay.horizontalScrollBar().value() == view.original.horizontalScrollBar().value()
    window.fit_action.trigger()
    assert view.is_fit() and view.zoom() == pytest.approx(before, rel=1e-3)


@pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) not installed"
)
def test_export_pdf_report(qtbot, window, lesion, tmp_path):
    open_and_wait(qtbot, window, lesion)
    window.metadata_form.set_values(71, "male", "head/neck")
    window.case_form.case_id_edit.setText("CASE-0042")
    window.case_form.clinician_edit.setText("Dr Example")
    window.case_form.notes_edit.setPlainText("Irregular border, follow up in 3 months.")
    target = tmp_path / default_report_name("CASE-0042")
    window.export_report(target)  # waits for the debounced analysis, then writes
    qtbot.waitUntil(lambda: window.last_report == target, timeout=30_000)
    wait_idle(qtbot, window)
    assert "Report saved" in window.statusBar().currentMessage()
    text = subprocess.run(
        ["pdftotext", "-layout", str(target), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = re.sub(r"\s+", " ", text)
    joined = re.sub(r"\s+", "", text)
    for c in window.engine.card.classes:
        assert c.name in flat
    assert window.engine.sha256 in joined
    assert "not a diagnosis" in flat.lower()
    assert "CASE-0042" in flat
    assert "Irregular border" in flat


def test_save_heatmap_png(qtbot, window, lesion, tmp_path):
    open_and_wait(qtbot, window, lesion)
    target = tmp_path / "heat.png"
    window.save_heatmap_png(target)
    qtbot.waitUntil(target.exists, timeout=10_000)
    wait_idle(qtbot, window)
    saved = load_image(target).rgb
    np.testing.assert_array_equal(saved, window.overlay_image())
    assert not list(tmp_path.glob(".heat.png*"))  # no temporary file left behind


def test_the_exported_model_end_to_end(qtbot, make_window, tmp_path_factory, tmp_path):
    """The tiny exported MobileNetV2 (in-graph Grad-CAM): each class has its own heatmap, and the
    window shows the one chosen."""
    exported = mf.shared_export(tmp_path_factory, metadata=True)
    w = make_window(exported.path)
    open_and_wait(qtbot, w, write_lesion(tmp_path / "l.png", size=160, seed=5, fmt="PNG"))
    w.metadata_form.set_values(40, "female", "lower extremity")
    qtbot.waitUntil(lambda: w.analysis.metadata.age == 40, timeout=10_000)
    wait_idle(qtbot, w)
    pred = w.analysis.prediction
    heats = {}
    for code in w.engine.card.codes:
        w.set_heatmap_class(code)
        wait_idle(qtbot, w)
        shown_code, heat = w.current_heatmap()
        assert shown_code == code and heat.shape == w.image.rgb.shape[:2]
        heats[code] = heat
        # What is shown is the prediction's own map for that class, resized onto the image.
        small = pred.heatmap(code)
        assert float(heat.max()) == pytest.approx(float(small.max()), rel=0.05, abs=1e-6)
    maps = list(heats.values())
    assert any(not np.array_equal(maps[0], m) for m in maps[1:]), "all classes share one heatmap"


# --------------------------------------------------------------------------------------------------
# Bad inputs: the window says what is wrong, keeps the previous image and result
# --------------------------------------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, Path]:
    jpeg = encode(lesion_rgb(96), "JPEG")
    png = encode(lesion_rgb(96), "PNG")
    files = {
        "corrupt_jpeg": jpeg[:20] + bytes(range(256)) * 8,
        "zero_bytes": b"",
        "text_named_jpg": b"Patient list\nthis is not an image\n" * 20,
        "truncated_png": png[: len(png) // 2],
        "tiny_4x4": encode(solid(4, 4), "PNG"),
        "unsupported_gif": encode(solid(64, 64), "GIF"),
    }
    names = {"truncated_png": "cut.png", "tiny_4x4": "tiny.png", "unsupported_gif": "anim.gif"}
    out = {}
    for key, data in files.items():
        path = folder / names.get(key, f"{key}.jpg")
        path.write_bytes(data)
        out[key] = path
    return out


@pytest.mark.parametrize(
    "kind",
    [
        "corrupt_jpeg",
        "zero_bytes",
        "text_named_jpg",
        "truncated_png",
        "tiny_4x4",
        "unsupported_gif",
    ],
)
def test_bad_images_are_explained_and_the_previous_case_stays(
    qtbot, window, lesion, tmp_path, kind
):
    open_and_wait(qtbot, window, lesion)
    image, analysis = window.image, window.analysis
    bad = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as expected:
        load_image(bad)
    window.open_image(bad)
    qtbot.waitUntil(window.banner.is_shown, timeout=10_000)
    wait_idle(qtbot, window)
    assert str(expected.value) in window.banner.text()
    assert window.banner.level() == "error"
    assert window.image is image and window.analysis is analysis
    assert window.results.has_result() and window.view.original.has_image()
    # Still usable: the next good image opens and clears the message.
    open_and_wait(qtbot, window, write_lesion(tmp_path / "next.jpg", seed=9))
    assert not window.banner.is_shown() and window.analysis is not analysis


def test_a_large_image_opens_without_freezing_the_window(qtbot, window, tmp_path):
    width, height = 6000, 4000
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (xx * 255 // width).astype(np.uint8)
    rgb[..., 1] = (yy * 255 // height).astype(np.uint8)
    rgb[..., 2] = 128
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(rgb, "JPEG", quality=70))
    del rgb, yy, xx

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    start = time.perf_counter()
    window.open_image(big)
    assert time.perf_counter() - start < 0.2, "open_image must return at once"
    qtbot.waitUntil(lambda: window.analysis is not None, timeout=30_000)
    wait_idle(qtbot, window)
    timer.stop()
    assert len(ticks) >= 3, "the event loop kept running while the image was decoded"
    assert window.image.loaded.original_size == (width, height)
    assert max(window.image.rgb.shape[:2]) == DISPLAY_MAX_SIDE
    assert "Reduced from 6000 x 4000" in window.results.used_label.text()


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def _tampered(model_dir: Path) -> Path:
    path = model_dir / "tampered.onnx"
    path.write_bytes(
        mf.synthetic_onnx(
            image_size=SYNTH_SIZE, card_edit=lambda c: c["integrity"].update(graph_sha256="0" * 64)
        )
    )
    return path


@pytest.mark.parametrize("kind", ["random_bytes", "tampered", "missing"])
def test_a_bad_model_is_refused_and_the_previous_model_stays(qtbot, window, lesion, tmp_path, kind):
    open_and_wait(qtbot, window, lesion)
    engine, analysis = window.engine, window.analysis
    if kind == "random_bytes":
        bad = tmp_path / "random.onnx"
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "tampered":
        bad = _tampered(tmp_path)
    else:
        bad = tmp_path / "nowhere.onnx"
    with pytest.raises(Exception) as expected:
        Engine.load(bad)
    window.open_model(bad)
    qtbot.waitUntil(lambda: window.last_error_box is not None, timeout=20_000)
    wait_idle(qtbot, window)
    box = window.last_error_box
    assert box.isVisible()
    assert str(expected.value) in box.text()
    assert "previous model" in box.text()
    assert window.engine is engine and window.analysis is analysis
    box.accept()


def test_image_only_model_disables_the_metadata_fields(
    qtbot, make_window, image_only_model, lesion
):
    w = make_window(image_only_model)
    form = w.metadata_form
    assert not form.age_edit.isEnabled()
    assert not form.sex_combo.isEnabled() and not form.site_combo.isEnabled()
    assert form.note.isVisibleTo(w) and "does not use age, sex or site" in form.note.text()
    open_and_wait(qtbot, w, lesion)
    assert w.analysis.metadata.is_unknown
    assert "image only" in w.results.used_label.text()


def test_switching_models_rebuilds_the_form(qtbot, window, image_only_model, dual_model, lesion):
    open_and_wait(qtbot, window, lesion)
    window.open_model(image_only_model)
    qtbot.waitUntil(lambda: not window.engine.card.uses_metadata, timeout=20_000)
    wait_idle(qtbot, window)
    assert not window.metadata_form.age_edit.isEnabled()
    window.open_model(dual_model)
    qtbot.waitUntil(lambda: window.engine.card.uses_metadata, timeout=20_000)
    wait_idle(qtbot, window)
    assert window.metadata_form.age_edit.isEnabled()
    sites = [
        window.metadata_form.site_combo.itemData(i)
        for i in range(window.metadata_form.site_combo.count())
    ]
    assert set(sites) == set(window.engine.card.metadata_encoding.site_choices())


def test_no_model_is_an_empty_state_and_images_still_open(qtbot, make_window, lesion, dual_model):
    w = make_window(None)
    assert "No model loaded — File > Open model…" in w.results.state_label.text()
    assert w.model_label.text() == "No model loaded"
    assert not w.model_info_action.isEnabled()
    open_and_wait(qtbot, w, lesion)
    assert w.view.original.has_image() and w.analysis is None
    assert "No model loaded" in w.results.state_label.text()
    w.open_model(dual_model)  # the image waiting is analysed as soon as a model arrives
    qtbot.waitUntil(lambda: w.analysis is not None, timeout=20_000)
    wait_idle(qtbot, w)


def test_model_information_dialog_comes_from_the_card(qtbot, window):
    dialog = window.show_model_info()
    qtbot.addWidget(dialog)
    text = dialog.browser.toPlainText()
    card = window.engine.card
    for expected in (
        card.name,
        card.version,
        window.engine.sha256,
        card.threshold_description,
        card.raw["licence"],
        card.raw["limitations"][0],
        "MobileNetV2",
        f"{card.temperature:.3f}",
    ):
        assert expected in text
    for c in card.classes:
        assert c.name in text and c.code in text
    dialog.close()


def test_provider_setting_is_stored_and_applied(qtbot, window):
    window.set_provider("cpu")
    qtbot.waitUntil(lambda: window._engine_provider == "cpu", timeout=20_000)
    wait_idle(qtbot, window)
    assert window.settings.provider == "cpu" and window.engine.provider == "CPU"
    assert window.provider_actions["cpu"].isChecked()
    assert "CPU" in window.provider_label.text()
    engine = window.engine
    window.set_provider("cuda")
    qtbot.waitUntil(
        lambda: window._engine_provider == "cuda" or window.last_error_box is not None,
        timeout=20_000,
    )
    wait_idle(qtbot, window)
    if window.last_error_box is not None:  # no usable GPU here: refused, the CPU model stays
        assert "CUDA" in window.last_error_box.text() or "GPU" in window.last_error_box.text()
        assert window.engine is engine and window.settings.provider == "cpu"
        assert window.provider_actions["cpu"].isChecked()
        window.last_error_box.accept()
    else:
        assert window.engine.provider == "CUDA"


# --------------------------------------------------------------------------------------------------
# Form, settings, first run, drops, entry points
# --------------------------------------------------------------------------------------------------


def test_invalid_age_is_marked_in_the_form_not_raised(qtbot, window, lesion):
    open_and_wait(qtbot, window, lesion)
    form = window.metadata_form
    form.age_edit.setText("45")
    qtbot.waitUntil(lambda: window.analysis.metadata.age == 45, timeout=10_000)
    wait_idle(qtbot, window)
    form.age_edit.setText("200")
    assert "age" in form.errors()
    assert form.age_error.isVisibleTo(window) and "between 0 and 120" in form.age_error.text()
    assert "border" in form.age_edit.styleSheet() and "120" in form.age_edit.toolTip()
    assert form.metadata().age == 45  # the last valid value is used
    form.age_edit.setText("abc")
    assert "number" in form.errors()["age"]
    wait_idle(qtbot, window)
    assert window.analysis.metadata.age == 45
    form.age_edit.setText("")  # empty = unknown, valid
    assert form.is_valid() and not form.age_error.isVisibleTo(window)
    assert form.age_edit.styleSheet() == ""
    qtbot.waitUntil(lambda: window.analysis.metadata.age is None, timeout=10_000)
    wait_idle(qtbot, window)


def test_report_export_is_refused_while_the_form_is_invalid(qtbot, window, lesion, tmp_path):
    open_and_wait(qtbot, window, lesion)
    window.metadata_form.age_edit.setText("300")
    window.export_report(tmp_path / "r.pdf")
    assert window.banner.is_shown() and "marked" in window.banner.text()
    assert not (tmp_path / "r.pdf").exists()
    window.metadata_form.age_edit.setText("")
    wait_idle(qtbot, window)


def test_first_run_notice_appears_once(qtbot, make_window):
    w = make_window(None)
    dialog = w.show_first_run_notice()
    assert dialog is not None and dialog.isVisible()
    ok = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    assert not ok.isEnabled()  # must be acknowledged
    assert "not a diagnosis" in dialog.findChild(type(dialog.checkbox)).text()
    dialog.acknowledge()
    assert w.settings.intended_use_acknowledged
    again = make_window(None)  # same settings file: a later start
    assert again.show_first_run_notice() is None
    other = make_window(None, settings_name="other.ini")  # another user's settings: shown
    other_dialog = other.show_first_run_notice()
    assert other_dialog is not None
    other_dialog.acknowledge()


def test_recent_files_keep_ten_and_drop_missing_ones(qtbot, make_window, tmp_path):
    w = make_window(None)
    files = [write_lesion(tmp_path / f"r{i}.jpg", size=48, seed=i) for i in range(12)]
    for f in files:
        w.settings.add_recent_file(f)
    recent = w.settings.recent_files()
    assert len(recent) == 10 and Path(recent[0]).name == "r11.jpg"
    files[11].unlink()
    files[10].unlink()
    w._rebuild_recent_menu()
    labels = [a.text() for a in w.recent_menu.actions() if a.text()]
    assert not any("r11.jpg" in t or "r10.jpg" in t for t in labels)
    assert any("r9.jpg" in t for t in labels)


def test_dropping_a_file_opens_it(qtbot, window, lesion):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(lesion))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    qtbot.waitUntil(lambda: window.analysis is not None, timeout=20_000)
    wait_idle(qtbot, window)
    assert window.image.path == lesion


def test_shortcuts_are_set(window):
    expected = {
        "actionOpenImage": "Ctrl+O",
        "actionExportReport": "Ctrl+E",
        "actionSaveHeatmap": "Ctrl+Shift+S",
        "actionQuit": "Ctrl+Q",
        "actionShowHeatmap": "H",
        "actionZoomIn": "Ctrl+=",
        "actionZoomOut": "Ctrl+-",
        "actionFit": "Ctrl+0",
        "actionModelInfo": "F1",
    }
    from PySide6.QtGui import QAction

    for name, keys in expected.items():
        action = window.findChild(QAction, name)
        assert action is not None, name
        assert keys in [s.toString() for s in action.shortcuts()], name
    assert "not a diagnosis" in window.reminder.text()  # the always-visible reminder


def test_cli_opens_the_window_without_a_command_or_with_an_image(monkeypatch):
    calls = []
    import desktop_app.app as app_module

    monkeypatch.setattr(
        app_module,
        "main",
        lambda argv, model_path=None, image_path=None: calls.append((model_path, image_path)) or 0,
    )
    assert cli.main([]) == 0
    assert cli.main(["lesion.jpg"]) == 0
    assert cli.main(["gui", "--model", "m.onnx", "x.png"]) == 0
    assert calls == [
        (None, None),
        (None, Path("lesion.jpg")),
        (Path("m.onnx"), Path("x.png")),
    ]


def test_app_main_shows_the_window_and_returns_the_exit_code(
    qtbot, tmp_path, monkeypatch, dual_model
):
    """``app.main`` wiring: settings from LESIONLENS_SETTINGS, the window shown with the model,
    the first-run notice, exec's code returned. The event loop is replaced by one that drives the
    window: a real ``exec`` + ``quit`` would leave the shared test QApplication quitting."""
    from PySide6.QtCore import QSettings

    from desktop_app import app as app_module
    from desktop_app.ui.dialogs import IntendedUseDialog

    monkeypatch.setenv(app_module.SETTINGS_ENV, str(tmp_path / "app.ini"))
    seen = {}

    def fake_exec():
        windows = [
            w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()
        ]
        seen["windows"] = len(windows)
        w = windows[0]
        qtbot.addWidget(w)
        qtbot.waitUntil(lambda: w.engine is not None, timeout=20_000)
        wait_idle(qtbot, w)
        notice = w.findChild(IntendedUseDialog)
        seen["notice"] = notice is not None and notice.isVisible()
        notice.acknowledge()
        seen["engine"] = w.engine.path == dual_model
        w.close()
        return 7

    monkeypatch.setattr(QApplication.instance(), "exec", fake_exec)
    assert app_module.main([], model_path=dual_model) == 7
    assert seen == {"windows": 1, "notice": True, "engine": True}
    stored = QSettings(str(tmp_path / "app.ini"), QSettings.Format.IniFormat)
    assert stored.value("notice/intended_use_acknowledged") in (True, "true")
