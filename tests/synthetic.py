"""Synthetic dermoscopy-like data sets, made on the fly for tests.

Each class draws a lesion of its own colour and shape on a skin-coloured background, with noise, so a
tiny model can learn it in one epoch; metadata is correlated with the class (older patients for AK/BCC)
but not decisive. Several images share one ``lesion_id``, as in HAM10000, so grouping can be tested.
Written in the real HAM10000 layout: ``HAM10000_metadata.csv`` + ``images/ISIC_*.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# RGB lesion colour per class, and the site/age typical of it.
_STYLE = {
    "akiec": ((200, 80, 60), "face", 72),
    "bcc": ((230, 170, 190), "back", 66),
    "bkl": ((150, 110, 60), "trunk", 60),
    "df": ((120, 70, 90), "lower extremity", 40),
    "mel": ((40, 30, 30), "back", 55),
    "nv": ((120, 80, 50), "trunk", 35),
    "vasc": ((170, 20, 40), "abdomen", 45),
}
_SHAPES = {"akiec": 0, "bcc": 1, "bkl": 2, "df": 3, "mel": 4, "nv": 0, "vasc": 1}


def draw_lesion(
    dx: str, rng: np.random.Generator, size: tuple[int, int] = (200, 150)
) -> np.ndarray:
    """An RGB uint8 image (height, width) = (size[1], size[0]) showing a class-typical lesion."""
    w, h = size
    skin = np.array([225, 180, 150]) + rng.integers(-15, 15, 3)
    img = np.ones((h, w, 3), np.float32) * skin
    colour, _, _ = _STYLE[dx]
    cx, cy = w // 2 + rng.integers(-w // 10, w // 10), h // 2 + rng.integers(-h // 10, h // 10)
    r = int(min(w, h) * rng.uniform(0.2, 0.35))
    shape = _SHAPES[dx]
    c = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-10, 10, 3), 0, 255))
    if shape == 0:
        cv2.circle(img, (int(cx), int(cy)), r, c, -1)
    elif shape == 1:
        cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), c, -1)
    elif shape == 2:
        cv2.ellipse(img, (int(cx), int(cy)), (r, r // 2), 30, 0, 360, c, -1)
    elif shape == 3:
        cv2.circle(img, (int(cx), int(cy)), r, c, 6)
    else:
        pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], c)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_ham10000(
    root: Path,
    per_class: int = 12,
    images_per_lesion: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (200, 150),
) -> Path:
    """Write a small data set in the HAM10000 layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for dx in HAM_DX:
        _, loc, mean_age = _STYLE[dx]
        for k in range(per_class):
            lesion = f"HAM_{dx}_{k // images_per_lesion:04d}"
            image_id = f"ISIC_{9000000 + n:07d}"
            n += 1
            rgb = draw_lesion(dx, rng, size)
            cv2.imwrite(str(images / f"{image_id}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            age = float(np.clip(round(rng.normal(mean_age, 8) / 5) * 5, 5, 85))
            rows.append(
                {
                    "lesion_id": lesion,
                    "image_id": image_id,
                    "dx": dx,
                    "dx_type": "histo",
                    "age": age if k % 9 else np.nan,
                    "sex": ("male", "female")[k % 2] if k % 11 else "unknown",
                    "localization": loc if k % 7 else "unknown",
                }
            )
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root
