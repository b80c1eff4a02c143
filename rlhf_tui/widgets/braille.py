"""Vectorised braille rasterisation of a polyline (what the charts spend their frames on).

textual-plot draws a line point by point in Python (a Bresenham loop, a NumPy array per
character cell and a widget refresh per cell): 10-15 ms for one 240-point curve on this
machine, which is what a key press waited behind. The same picture computed with NumPy
array operations takes well under a millisecond.

Coordinates are in character cells with fractions (textual-plot's "hires pixel"
coordinates); a cell holds a 2 x 4 grid of braille dots.
"""

from __future__ import annotations

import numpy as np

# Unicode braille: dot (column, row) -> bit of the code point offset from U+2800
_DOT_BITS = np.array(
    [
        [0x01, 0x08],
        [0x02, 0x10],
        [0x04, 0x20],
        [0x40, 0x80],
    ],
    dtype=np.int64,
)  # indexed [row, column]


def clip_segments(
    x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, xmax: float, ymax: float
):
    """Liang-Barsky clipping of segments to [0, xmax] x [0, ymax], all at once.

    Returns the clipped end points and a mask of the segments that stay visible.
    """
    dx, dy = x1 - x0, y1 - y0
    t0 = np.zeros_like(x0)
    t1 = np.ones_like(x0)
    visible = np.ones(x0.shape, dtype=bool)
    for p, q in ((-dx, x0), (dx, xmax - x0), (-dy, y0), (dy, ymax - y0)):
        parallel = p == 0
        visible &= ~(parallel & (q < 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(parallel, 0.0, q / np.where(parallel, 1.0, p))
        entering = (p < 0) & ~parallel
        leaving = (p > 0) & ~parallel
        t0 = np.where(entering, np.maximum(t0, r), t0)
        t1 = np.where(leaving, np.minimum(t1, r), t1)
    visible &= t0 <= t1
    return x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy, visible


def braille_cells(
    x: np.ndarray, y: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The cells a polyline through (x, y) passes in a ``width`` x ``height`` canvas.

    Returns (cell x, cell y, braille character) for every touched cell; consecutive points
    are joined by straight dot lines, parts outside the canvas are clipped away.
    """
    x = np.asarray(x, dtype=float) * 2.0
    y = np.asarray(y, dtype=float) * 4.0
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if width <= 0 or height <= 0 or len(x) == 0:
        return np.zeros(0, int), np.zeros(0, int), []
    xmax, ymax = 2 * width - 1e-9, 4 * height - 1e-9
    if len(x) == 1:
        x0 = x1 = x
        y0 = y1 = y
        visible = (x >= 0) & (x <= xmax) & (y >= 0) & (y <= ymax)
    else:
        x0, y0, x1, y1, visible = clip_segments(x[:-1], y[:-1], x[1:], y[1:], xmax, ymax)
    hx0, hy0 = np.floor(x0[visible]).astype(np.int64), np.floor(y0[visible]).astype(np.int64)
    hx1, hy1 = np.floor(x1[visible]).astype(np.int64), np.floor(y1[visible]).astype(np.int64)
    if len(hx0) == 0:
        return np.zeros(0, int), np.zeros(0, int), []
    dx, dy = hx1 - hx0, hy1 - hy0
    steps = np.maximum(np.abs(dx), np.abs(dy))
    counts = steps + 1
    seg = np.repeat(np.arange(len(hx0)), counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    t = k / np.maximum(steps[seg], 1)
    px = hx0[seg] + np.rint(t * dx[seg]).astype(np.int64)
    py = hy0[seg] + np.rint(t * dy[seg]).astype(np.int64)
    np.clip(px, 0, 2 * width - 1, out=px)
    np.clip(py, 0, 4 * height - 1, out=py)
    cell = (py >> 2) * width + (px >> 1)
    cells, inverse = np.unique(cell, return_inverse=True)
    bits = np.zeros(len(cells), dtype=np.int64)
    np.bitwise_or.at(bits, inverse, _DOT_BITS[py & 3, px & 1])
    chars = [chr(0x2800 + int(b)) for b in bits]
    return cells % width, cells // width, chars
