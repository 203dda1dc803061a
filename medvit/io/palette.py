"""The colours medvit shows label values in: palette PNG masks, previews and RTSTRUCT ROIs agree.

Label 0 (background) is black. Labels 1-20 take a fixed table of colours that stay apart on screen and on
grey images; higher labels step round the hue circle by the golden angle, so neighbouring values differ.
"""

from __future__ import annotations

import colorsys

# hand-picked: saturated, distinct from each other and from grey, none close to black or white
_TABLE = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
    (220, 190, 255),  # lavender
    (170, 110, 40),  # brown
    (255, 250, 200),  # cream
    (128, 0, 0),  # maroon
    (170, 255, 195),  # mint
    (128, 128, 0),  # olive
    (255, 215, 180),  # apricot
    (0, 0, 128),  # navy
    (255, 99, 71),  # tomato
)
_GOLDEN = 0.381966  # 1 - 1/phi: hue step that keeps consecutive labels apart


def label_colour(value: int) -> tuple[int, int, int]:
    """The RGB colour (0-255) of label ``value``; 0 is black."""
    value = int(value)
    if value <= 0:
        return (0, 0, 0)
    if value <= len(_TABLE):
        return _TABLE[value - 1]
    n = value - len(_TABLE)
    hue = (0.07 + n * _GOLDEN) % 1.0
    saturation = (0.95, 0.7, 0.85)[n % 3]
    brightness = (0.95, 0.8, 0.65)[(n // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, brightness)
    return (round(r * 255), round(g * 255), round(b * 255))


def png_palette() -> list[int]:
    """A 256-entry PIL palette (``[r, g, b] * 256``) indexed by label value."""
    return [channel for value in range(256) for channel in label_colour(value)]
