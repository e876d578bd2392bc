"""Drawing a Grad-CAM heatmap over the image it explains: colour, blend, legend. numpy + OpenCV only.

Pure functions on uint8 RGB arrays, shared by the single-case view, the batch review and the PDF
report, so a heatmap looks the same on screen and on paper.

Choices, and why:

* Colour map: **turbo** by default (:data:`DEFAULT_COLORMAP`), chosen by looking at overlays on
  HAM10000 images. Its hue runs steadily from blue through green and yellow to red, the order
  clinicians know from Grad-CAM figures, and on pink/brown skin those hues stay distinct from the
  skin itself; its hot end is a dark red, so the lesion stays visible under the hottest region.
  Inferno (perceptually uniform, lightness monotone, safest for colour-vision deficiency and
  greyscale print) was tried first: its hot end is near white and washed the lesion out exactly
  where the model looked, and its warm middle merged with skin tones. JET, the Grad-CAM classic,
  has false bands (bright cyan and yellow) that look like structure. Any OpenCV map can be passed
  as ``colormap=`` (inferno for a greyscale print).
* Blend: weighted by opacity *and* by heat, ``out = rgb * (1 - a*h) + colour(h) * (a*h)``. Cold
  regions keep the original pixels, so the clinician still sees the lesion under the map, and only
  the places the model relied on are tinted. With ``opacity = 1`` and full heat the pixel is the
  colour map exactly; with ``opacity = 0`` the image comes back unchanged.
* Geometry: the model's heatmap covers the model's *input*. :func:`heatmap_on_image` maps it back
  onto the whole image for each of the card's resize modes (stretch, centre crop, letterbox pad),
  so a heatmap is never drawn over the wrong part of the picture.
"""

from __future__ import annotations

import cv2
import numpy as np

from desktop_app.core.imaging import PreprocessSpec

__all__ = [
    "DEFAULT_COLORMAP",
    "DEFAULT_OPACITY",
    "colorbar",
    "colorize",
    "heatmap_on_image",
    "overlay",
    "side_by_side",
]

DEFAULT_COLORMAP: int = cv2.COLORMAP_TURBO
DEFAULT_OPACITY = 0.5


def _as_unit_float(heatmap: np.ndarray) -> np.ndarray:
    """float32 2-D array in [0, 1]; NaN and infinities become 0 (no evidence), not garbage."""
    arr = np.asarray(heatmap)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected a non-empty (h, w) heatmap, got shape {arr.shape}")
    arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(arr, 0.0, 1.0)


def _check_rgb(rgb: np.ndarray, what: str = "image") -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"the {what} must be a uint8 numpy array")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"the {what} must be a non-empty H x W x 3 RGB array, got {rgb.shape}")


def colorize(heatmap01: np.ndarray, colormap: int = DEFAULT_COLORMAP) -> np.ndarray:
    """(H, W) heat in [0, 1] -> (H, W, 3) uint8 **RGB** through an OpenCV colour map.

    Values outside [0, 1] are clipped and NaN counts as 0. OpenCV's colour maps return BGR; this
    returns RGB like every other image in LesionLens.
    """
    heat = _as_unit_float(heatmap01)
    levels = np.round(heat * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, colormap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _resize_heat(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    if heat.shape == (height, width):
        return heat
    big = cv2.resize(np.ascontiguousarray(heat), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(big, 0.0, 1.0)


def heatmap_on_image(
    heatmap: np.ndarray, image_size: tuple[int, int], spec: PreprocessSpec
) -> np.ndarray:
    """Map a heatmap that covers the model's input back onto the whole image.

    ``image_size`` is (width, height) of the image it will be drawn on (any scale of the original:
    the display copy works). For ``stretch`` the input *is* the whole image; for ``center_crop``
    the heat fills the central crop box and is 0 outside it (the model never saw those pixels);
    for ``pad`` the letterbox bands are cut away. Same box arithmetic as
    :func:`desktop_app.core.imaging.resize_uint8`, up to rounding at display scale. Returns float32
    (height, width) in [0, 1], bilinear.
    """
    width, height = (int(v) for v in image_size)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {image_size!r}")
    heat = _as_unit_float(heatmap)
    in_w, in_h = spec.width, spec.height
    if spec.resize == "stretch":
        return _resize_heat(heat, width, height)
    if spec.resize == "center_crop":
        out = np.zeros((height, width), np.float32)
        if width * in_h > in_w * height:  # wider than the input: the crop drops left and right
            crop_w = max(1, min(width, round(height * in_w / in_h)))
            x0 = (width - crop_w) // 2
            out[:, x0 : x0 + crop_w] = _resize_heat(heat, crop_w, height)
        else:
            crop_h = max(1, min(height, round(width * in_h / in_w)))
            y0 = (height - crop_h) // 2
            out[y0 : y0 + crop_h] = _resize_heat(heat, width, crop_h)
        return out
    # "pad": the image sits inside the input canvas; map the canvas up, keep the image's box.
    if width * in_h >= in_w * height:  # wider: bands top and bottom
        canvas_w, canvas_h = width, max(height, round(width * in_h / in_w))
    else:
        canvas_w, canvas_h = max(width, round(height * in_w / in_h)), height
    canvas = _resize_heat(heat, canvas_w, canvas_h)
    y0 = (canvas_h - height) // 2
    x0 = (canvas_w - width) // 2
    return np.ascontiguousarray(canvas[y0 : y0 + height, x0 : x0 + width])


def overlay(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    opacity: float = DEFAULT_OPACITY,
    colormap: int = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Tint ``rgb`` (uint8 H x W x 3) with ``heatmap`` ((h, w) in [0, 1], any size).

    The heatmap is resized bilinearly to the image (it must already cover the whole image: see
    :func:`heatmap_on_image`). Each pixel is ``rgb * (1 - a*h) + colour(h) * (a*h)`` with
    ``a = opacity``: cold areas keep the original image, hot areas take the colour map. Returns a
    new uint8 RGB array; ``opacity = 0`` returns an exact copy of ``rgb``.
    """
    _check_rgb(rgb)
    a = float(opacity)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity!r}")
    if a == 0.0:
        return np.array(rgb, dtype=np.uint8, order="C", copy=True)
    height, width = rgb.shape[:2]
    heat = _resize_heat(_as_unit_float(heatmap), width, height)
    colour = colorize(heat, colormap).astype(np.float32)
    weight = (a * heat)[..., None]
    out = rgb.astype(np.float32) * (1.0 - weight) + colour * weight
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def side_by_side(
    rgb: np.ndarray, overlay_rgb: np.ndarray, gap: int = 8, background: int = 255
) -> np.ndarray:
    """The image and its overlay next to each other, ``gap`` pixels of ``background`` between.

    Images of different heights are top-aligned on the background colour, so a caller can pair a
    photo with an overlay drawn at another scale without distorting either. Width is
    ``w1 + gap + w2``.
    """
    _check_rgb(rgb)
    _check_rgb(overlay_rgb, "overlay")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    h1, w1 = rgb.shape[:2]
    h2, w2 = overlay_rgb.shape[:2]
    out = np.full((max(h1, h2), w1 + gap + w2, 3), int(background), dtype=np.uint8)
    out[:h1, :w1] = rgb
    out[:h2, w1 + gap :] = overlay_rgb
    return out


def colorbar(height: int, width: int, colormap: int = DEFAULT_COLORMAP) -> np.ndarray:
    """A legend strip of the colour map, uint8 RGB (height, width, 3), from low to high heat.

    Horizontal (low at the left) when ``width >= height``, vertical (low at the bottom, as on a
    chart axis) otherwise.
    """
    if height < 1 or width < 1:
        raise ValueError(f"a colour bar needs a positive size, got {height} x {width}")
    if width >= height:
        ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        heat = np.repeat(ramp, height, axis=0)
    else:
        ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None]
        heat = np.repeat(ramp, width, axis=1)
    return colorize(heat, colormap)
