"""The charts' braille rasteriser draws the line a reader expects: right dots, right cells,
clipped at the edges, and as connected as a hand-drawn line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_tui.widgets.braille import braille_cells

# Unicode braille dot numbering, written out: dot k of a cell sets bit k-1.
# column 0 holds dots 1, 2, 3, 7 (top to bottom); column 1 holds 4, 5, 6, 8.
DOT_NUMBER = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (0, 3): 7, (1, 0): 4, (1, 1): 5, (1, 2): 6, (1, 3): 8}


def dots_of(cx: np.ndarray, cy: np.ndarray, chars: list[str]) -> set[tuple[int, int]]:
    """Decode the characters back into dot positions on the 2x4-per-cell grid."""
    dots = set()
    for i, j, ch in zip(cx.tolist(), cy.tolist(), chars, strict=True):
        bits = ord(ch) - 0x2800
        assert 0 < bits < 256, ch
        for (col, row), number in DOT_NUMBER.items():
            if bits & (1 << (number - 1)):
                dots.add((2 * i + col, 4 * j + row))
    return dots


def test_a_horizontal_line_fills_the_top_row_of_dots():
    cx, cy, chars = braille_cells(np.array([0.0, 0.99]), np.array([0.0, 0.0]), 4, 2)
    assert list(zip(cx.tolist(), cy.tolist(), chars, strict=True)) == [(0, 0, "⠉")]
    cx, cy, chars = braille_cells(np.array([0.0, 3.99]), np.array([0.0, 0.0]), 4, 2)
    assert chars == ["⠉"] * 4 and cx.tolist() == [0, 1, 2, 3]


def test_a_vertical_line_fills_the_left_column_of_dots():
    cx, cy, chars = braille_cells(np.array([0.0, 0.0]), np.array([0.0, 0.99]), 2, 2)
    assert chars == ["⡇"]  # dots 1, 2, 3, 7
    cx, cy, chars = braille_cells(np.array([1.5, 1.5]), np.array([0.0, 1.99]), 2, 2)
    assert cx.tolist() == [1, 1] and cy.tolist() == [0, 1] and chars == ["⢸", "⢸"]  # dots 4, 5, 6, 8


def test_a_single_point_is_one_dot():
    cx, cy, chars = braille_cells(np.array([2.6]), np.array([1.3]), 4, 3)
    assert dots_of(cx, cy, chars) == {(5, 5)}


def test_parts_outside_the_canvas_are_clipped_without_drawing_there():
    # a segment a million cells long: only the visible part is drawn, cheaply
    cx, cy, chars = braille_cells(np.array([-1e6, 1e6]), np.array([0.5, 0.5]), 5, 2)
    assert cx.tolist() == [0, 1, 2, 3, 4] and set(cy.tolist()) == {0}
    # wholly outside: nothing
    cx, cy, chars = braille_cells(np.array([-5.0, -1.0]), np.array([0.5, 0.5]), 5, 2)
    assert chars == []
    # non-finite points are skipped, not drawn at the edge
    cx, cy, chars = braille_cells(np.array([0.0, np.nan, 1.0]), np.array([0.0, 0.0, np.inf]), 5, 2)
    assert dots_of(cx, cy, chars) == {(0, 0)}


@pytest.mark.parametrize("seed", range(25))
def test_random_polylines_are_connected_and_stay_on_the_line(seed):
    rng = np.random.default_rng(seed)
    width, height = 40, 12
    n = int(rng.integers(2, 40))
    x = np.sort(rng.uniform(0, width - 0.01, n))
    y = rng.uniform(0, height - 0.01, n)
    dots = dots_of(*braille_cells(x, y, width, height))
    hx, hy = x * 2, y * 4
    # every vertex's own dot is drawn
    for px, py in zip(hx, hy, strict=True):
        assert (math.floor(px), math.floor(py)) in dots
    # every dot is within one dot of some segment (distance to the segment, in dots)
    for dx, dy in dots:
        cx, cy = dx + 0.5, dy + 0.5
        best = min(_distance_to_segment(cx, cy, hx[i], hy[i], hx[i + 1], hy[i + 1]) for i in range(n - 1))
        assert best <= 1.5, (dx, dy, best)
    # the drawing is one 8-connected piece, like the line itself
    assert _components(dots) == 1


def _distance_to_segment(px, py, x0, y0, x1, y1) -> float:
    vx, vy = x1 - x0, y1 - y0
    length2 = vx * vx + vy * vy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - x0) * vx + (py - y0) * vy) / length2))
    return math.hypot(px - (x0 + t * vx), py - (y0 + t * vy))


def _components(dots: set[tuple[int, int]]) -> int:
    left, count = set(dots), 0
    while left:
        count += 1
        stack = [left.pop()]
        while stack:
            x, y = stack.pop()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    if (x + dx, y + dy) in left:
                        left.remove((x + dx, y + dy))
                        stack.append((x + dx, y + dy))
    return count
