"""The Qt face of LesionLens: widgets and windows only.

Everything a result depends on (decoding, inference, heatmaps, reports) lives in
:mod:`desktop_app.core` and is called from here; nothing in ``core`` imports Qt. Long work (image
decoding, model loading, inference, overlays, PDF writing) never runs on the GUI thread: it goes
through :class:`desktop_app.ui.workers.TaskRunner`, the one way to run background work.

Modules:

* :mod:`~desktop_app.ui.workers` - ``TaskRunner.run_in_background(channel, op, on_success,
  on_failure)``: a thread pool, queued signals, and a generation counter per channel so that a
  newer request supersedes an older one.
* :mod:`~desktop_app.ui.image_view` - the original and the Grad-CAM overlay side by side, zoom and
  pan kept in step.
* :mod:`~desktop_app.ui.forms` - patient metadata form built from the model card; case details.
* :mod:`~desktop_app.ui.results` - probabilities bar chart, risk, uncertainty, warning banner.
* :mod:`~desktop_app.ui.dialogs` - model information, intended use (first run), about.
* :mod:`~desktop_app.ui.settings` - the typed view of QSettings (recent files, provider...).
* :mod:`~desktop_app.ui.main_window` - :class:`MainWindow`, which ties them together.
"""
