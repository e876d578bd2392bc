"""Heatmap drawing: colour map, blend, side by side, legend, and mapping back onto the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from desktop_app.core.heatmap import (
    DEFAULT_COLORMAP,
    colorbar,
    colorize,
    heatmap_on_image,
    overlay,
    side_by_side,
)
from desktop_app.core.imaging import PreprocessSpec


def _photo(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- colorize ---------------------------------------------------------------------------------


def test_colorize_gives_rgb_uint8_of_the_same_size():
    out = colorize(np.random.default_rng(1).random((7, 9)))
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8


def test_default_colormap_is_turbo_and_in_rgb_order():
    # Turbo runs from dark blue to dark red: in RGB the hot end has R >> B (BGR would flip it).
    assert DEFAULT_COLORMAP == cv2.COLORMAP_TURBO
    cold, hot = colorize(np.array([[0.0, 1.0]]))[0]
    assert hot[0] > 100 and hot[2] < 20
    assert cold[2] > cold[0]


def test_default_colormap_hue_runs_monotonically_from_blue_to_red():
    ramp = colorize(np.linspace(0, 1, 256)[None, :])
    hue = cv2.cvtColor(cv2.cvtColor(ramp, cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2HSV_FULL)[0, :, 0]
    hue = hue.astype(int)
    assert np.all(np.diff(hue) <= 2), "hue must never turn back towards blue"
    assert hue[0] - hue[-1] > 150  # from blue-violet all the way round to red


def test_inferno_is_monotone_in_lightness():
    ramp = colorize(np.linspace(0, 1, 256)[None, :], cv2.COLORMAP_INFERNO)
    lightness = cv2.cvtColor(ramp, cv2.COLOR_RGB2LAB)[0, :, 0].astype(int)
    assert np.all(np.diff(lightness) >= 0)
    assert lightness[-1] - lightness[0] > 200


def test_colorize_clips_and_treats_nan_as_cold():
    weird = np.array([[np.nan, -3.0, 0.0, 1.0, 7.0, np.inf]])
    out = colorize(weird)
    np.testing.assert_array_equal(out[0, 0], out[0, 2])
    np.testing.assert_array_equal(out[0, 1], out[0, 2])
    np.testing.assert_array_equal(out[0, 4], out[0, 3])
    np.testing.assert_array_equal(out[0, 5], out[0, 3])


def test_colorize_refuses_non_2d():
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        colorize(np.zeros((0, 4)))


# -- overlay ----------------------------------------------------------------------------------


def test_overlay_upsamples_any_heatmap_to_the_image():
    rgb = _photo(60, 80)
    out = overlay(rgb, np.random.default_rng(2).random((3, 3)).astype(np.float32), 0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out is not rgb


def test_opacity_zero_returns_the_original_exactly():
    rgb = _photo()
    out = overlay(rgb, np.ones((5, 5)), 0.0)
    np.testing.assert_array_equal(out, rgb)
    out[0, 0] = 0  # a copy, never the caller's array
    assert not np.shares_memory(out, rgb)


def test_full_opacity_and_full_heat_is_the_colour_map():
    rgb = _photo()
    heat = np.ones((4, 4))
    np.testing.assert_array_equal(overlay(rgb, heat, 1.0), colorize(np.ones((60, 80))))
    inferno = overlay(rgb, heat, 1.0, cv2.COLORMAP_INFERNO)
    np.testing.assert_array_equal(inferno, colorize(np.ones((60, 80)), cv2.COLORMAP_INFERNO))


def test_cold_areas_keep_the_image_and_hot_areas_are_tinted():
    rgb = _photo(40, 40)
    heat = np.zeros((40, 40), np.float32)
    heat[:, 20:] = 1.0
    out = overlay(rgb, heat, 0.6)
    np.testing.assert_array_equal(out[:, :19], rgb[:, :19])
    hot = colorize(np.ones((1, 1)))[0, 0].astype(float)
    expected = np.round(rgb[:, 21:].astype(float) * 0.4 + hot * 0.6)
    np.testing.assert_allclose(out[:, 21:], expected, atol=1)


def test_more_opacity_moves_further_towards_the_colour_map():
    rgb = _photo()
    heat = np.full((60, 80), 0.8, np.float32)
    target = colorize(heat).astype(float)
    dist = [np.abs(overlay(rgb, heat, a).astype(float) - target).mean() for a in (0.2, 0.5, 0.9)]
    assert dist[0] > dist[1] > dist[2]


def test_overlay_refuses_bad_arguments():
    with pytest.raises(ValueError, match="opacity"):
        overlay(_photo(), np.ones((2, 2)), 1.5)
    with pytest.raises(ValueError):
        overlay(_photo().astype(np.float32), np.ones((2, 2)))
    with pytest.raises(ValueError):
        overlay(_photo()[..., 0], np.ones((2, 2)))


# -- side by side, colour bar -------------------------------------------------------------------


def test_side_by_side_width_gap_and_heights():
    a, b = _photo(60, 80, 1), _photo(40, 50, 2)
    out = side_by_side(a, b, gap=8)
    assert out.shape == (60, 80 + 8 + 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:60, :80], a)
    np.testing.assert_array_equal(out[:40, 88:], b)
    assert (out[:, 80:88] == 255).all()  # the gap
    assert (out[40:, 88:] == 255).all()  # below the shorter one
    assert side_by_side(a, a, gap=0).shape == (60, 160, 3)
    with pytest.raises(ValueError):
        side_by_side(a, b, gap=-1)


def test_colorbar_runs_low_to_high():
    bar = colorbar(10, 200)
    assert bar.shape == (10, 200, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0, 0], colorize(np.zeros((1, 1)))[0, 0])
    np.testing.assert_array_equal(bar[-1, -1], colorize(np.ones((1, 1)))[0, 0])
    upright = colorbar(200, 10)  # vertical: high at the top, like a chart axis
    np.testing.assert_array_equal(upright[0, 0], colorize(np.ones((1, 1)))[0, 0])
    np.testing.assert_array_equal(upright[-1, 0], colorize(np.zeros((1, 1)))[0, 0])
    with pytest.raises(ValueError):
        colorbar(0, 10)


# -- back onto the image --------------------------------------------------------------------------


def test_stretch_heatmap_covers_the_whole_image():
    heat = np.random.default_rng(3).random((5, 5)).astype(np.float32)
    out = heatmap_on_image(heat, (200, 150), PreprocessSpec(160, 160, "stretch"))
    assert out.shape == (150, 200) and out.dtype == np.float32
    expected = cv2.resize(heat, (200, 150), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-6)


def test_center_crop_heatmap_stays_inside_the_crop():
    # A 200x100 image seen through a square centre crop: the model saw x in [50, 150).
    out = heatmap_on_image(np.ones((4, 4)), (200, 100), PreprocessSpec(96, 96, "center_crop"))
    assert out.shape == (100, 200)
    assert (out[:, :50] == 0).all() and (out[:, 150:] == 0).all()
    assert (out[:, 50:150] == 1).all()
    tall = heatmap_on_image(np.ones((4, 4)), (100, 200), PreprocessSpec(96, 96, "center_crop"))
    assert (tall[:50] == 0).all() and (tall[150:] == 0).all() and (tall[50:150] == 1).all()


def test_pad_heatmap_drops_the_letterbox_bands():
    # A 200x100 image letterboxed into 100x100: rows 0-24 and 75-99 of the input are padding.
    heat = np.full((100, 100), 0.5, np.float32)
    heat[:25] = 1.0
    heat[75:] = 1.0
    out = heatmap_on_image(heat, (200, 100), PreprocessSpec(100, 100, "pad"))
    assert out.shape == (100, 200)
    assert np.abs(out[2:-2] - 0.5).max() < 1e-5  # the bands are gone (bar the interpolated edge)
    tall = np.full((100, 100), 0.5, np.float32)
    tall[:, :25] = 1.0
    tall[:, 75:] = 1.0
    out = heatmap_on_image(tall, (100, 200), PreprocessSpec(100, 100, "pad"))
    assert out.shape == (200, 100)
    assert np.abs(out[:, 2:-2] - 0.5).max() < 1e-5
