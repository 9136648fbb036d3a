"""Activation atlas helpers (Carter et al., "Activation Atlas", Distill 2019).

A 2-D layout of activation samples (e.g. from UMAP or t-SNE, shape ``(n_points, 2)``) is cut into
a grid; the samples in each well-filled cell are averaged into one direction vector; the image
rendered for each vector is then placed at its cell in one atlas image.

Grid convention (optim-wip's): ``grid_size = (width, height)``, cell ``(x, y)`` with ``x`` the
column from the left and ``y`` the row from the **bottom**; indices are ``indices[x][y]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._core.errors import InputError

__all__ = [
    "calc_grid_indices",
    "compute_avg_cell_samples",
    "compute_avg_cell_vectors",
    "create_atlas",
    "create_atlas_vectors",
    "normalize_grid",
]


def _check_xy(xy_grid: Tensor) -> None:
    if not isinstance(xy_grid, Tensor) or xy_grid.dim() != 2 or xy_grid.shape[1] != 2:
        shape = tuple(xy_grid.shape) if isinstance(xy_grid, Tensor) else type(xy_grid).__name__
        raise InputError(f"xy_grid must have shape (n_points, 2), got {shape}.")


def _check_grid_size(grid_size: Sequence[int]) -> tuple[int, int]:
    if len(grid_size) != 2 or any(int(g) != g or g < 1 for g in grid_size):
        raise InputError(f"grid_size must be two positive ints (width, height), got {grid_size}.")
    return int(grid_size[0]), int(grid_size[1])


def normalize_grid(
    xy_grid: Tensor,
    min_percentile: float = 0.01,
    max_percentile: float = 0.99,
    relative_margin: float = 0.1,
) -> Tensor:
    """Clamp outliers of an ``(n_points, n_axes)`` layout and rescale each axis to ``[0, 1]``.

    Each axis is clamped to ``[q_lo - m, q_hi + m]`` with ``q`` its percentiles and
    ``m = relative_margin * (q_hi - q_lo)``, then shifted and divided so that it spans ``[0, 1]``
    (an axis with a single value maps to 0).
    """
    if not isinstance(xy_grid, Tensor) or xy_grid.dim() != 2:
        raise InputError("xy_grid must be a 2-D tensor (n_points, n_axes).")
    if not 0.0 <= min_percentile < max_percentile <= 1.0:
        raise InputError("Need 0 <= min_percentile < max_percentile <= 1.")
    x = xy_grid if xy_grid.is_floating_point() else xy_grid.float()
    lo = torch.quantile(x, min_percentile, dim=0)
    hi = torch.quantile(x, max_percentile, dim=0)
    margin = relative_margin * (hi - lo)
    x = torch.maximum(torch.minimum(x, hi + margin), lo - margin)
    x = x - x.min(dim=0).values
    span = x.max(dim=0).values
    return x / torch.where(span > 0, span, torch.ones_like(span))


def calc_grid_indices(
    xy_grid: Tensor,
    grid_size: Sequence[int],
    x_extent: tuple[float, float] = (0.0, 1.0),
    y_extent: tuple[float, float] = (0.0, 1.0),
) -> list[list[Tensor]]:
    """Group the points of an ``(n_points, 2)`` layout by the grid cell they fall in.

    The extents are cut into ``grid_size = (width, height)`` equal cells; returns ``indices`` with
    ``indices[x][y]`` a 1-D int64 tensor of the points in cell ``(x, y)`` (possibly empty).
    Cells are half-open ``[lo, hi)`` except the last, which includes the upper extent, so every
    point inside the extents is in exactly one cell (optim-wip closes both ends and counts a
    point on an inner edge in two cells); points outside the extents are in none.
    """
    _check_xy(xy_grid)
    gw, gh = _check_grid_size(grid_size)
    if x_extent[1] <= x_extent[0] or y_extent[1] <= y_extent[0]:
        raise InputError("Each extent must be (low, high) with low < high.")
    fx = (xy_grid[:, 0] - x_extent[0]) / (x_extent[1] - x_extent[0]) * gw
    fy = (xy_grid[:, 1] - y_extent[0]) / (y_extent[1] - y_extent[0]) * gh
    inside = (fx >= 0) & (fx <= gw) & (fy >= 0) & (fy <= gh)
    ix = fx.floor().long().clamp(max=gw - 1)
    iy = fy.floor().long().clamp(max=gh - 1)
    cell = torch.where(inside, ix * gh + iy, torch.full_like(ix, -1))
    return [[torch.nonzero(cell == x * gh + y).flatten() for y in range(gh)] for x in range(gw)]


def compute_avg_cell_samples(
    grid_indices: list[list[Tensor]],
    raw_samples: Tensor,
    grid_size: Sequence[int],
    min_density: int = 8,
) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """Average the samples of each cell that holds at least ``min_density`` points.

    Args:
        grid_indices: ``indices[x][y]`` from :func:`calc_grid_indices`.
        raw_samples: activations or attributions, shape ``(n_points, C)``.
        grid_size: ``(width, height)``.
        min_density: cells with fewer points are skipped.

    Returns:
        ``(vectors, coords)``: vectors of shape ``(n_cells, C)`` in x-major order, and for each
        the tuple ``(x, y, number_of_points)``.
    """
    gw, gh = _check_grid_size(grid_size)
    if not isinstance(raw_samples, Tensor) or raw_samples.dim() != 2:
        raise InputError("raw_samples must have shape (n_points, n_channels).")
    if len(grid_indices) != gw or any(len(col) != gh for col in grid_indices):
        raise InputError(f"grid_indices does not match grid_size {(gw, gh)}.")
    vectors: list[Tensor] = []
    coords: list[tuple[int, int, int]] = []
    for x in range(gw):
        for y in range(gh):
            idx = grid_indices[x][y]
            if len(idx) >= min_density and len(idx) > 0:
                vectors.append(raw_samples[idx].mean(dim=0))
                coords.append((x, y, len(idx)))
    if not vectors:
        raise InputError(
            f"No grid cell holds min_density={min_density} points; lower min_density or grid_size."
        )
    return torch.stack(vectors), coords


compute_avg_cell_vectors = compute_avg_cell_samples


def create_atlas_vectors(
    xy_grid: Tensor,
    raw_activations: Tensor,
    grid_size: Sequence[int],
    min_density: int = 8,
    normalize: bool = True,
    x_extent: tuple[float, float] = (0.0, 1.0),
    y_extent: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """Direction vectors of an atlas: :func:`normalize_grid` (if ``normalize``), then
    :func:`calc_grid_indices` and :func:`compute_avg_cell_samples`.

    Shapes: ``xy_grid`` ``(n_points, 2)``, ``raw_activations`` ``(n_points, C)``; returns vectors
    ``(n_cells, C)`` and their ``(x, y, count)``.
    """
    _check_xy(xy_grid)
    if not isinstance(raw_activations, Tensor) or raw_activations.dim() != 2:
        raise InputError("raw_activations must have shape (n_points, n_channels).")
    if raw_activations.shape[0] != xy_grid.shape[0]:
        raise InputError(
            f"xy_grid has {xy_grid.shape[0]} points but raw_activations has "
            f"{raw_activations.shape[0]} rows."
        )
    if normalize:
        xy_grid = normalize_grid(xy_grid)
    indices = calc_grid_indices(xy_grid, grid_size, x_extent, y_extent)
    return compute_avg_cell_samples(indices, raw_activations, grid_size, min_density)


def create_atlas(
    cells: Tensor | Sequence[Tensor],
    coords: Sequence[Sequence[int]],
    grid_size: Sequence[int],
    base_tensor: Callable[..., Tensor] = torch.ones,
) -> Tensor:
    """Place one image per cell into an atlas image.

    Args:
        cells: ``(n_cells, C, h, w)`` (one image each), or a list of ``(B, C, h, w)`` tensors.
        coords: for each cell ``(x, y, ...)``; extra entries (the count) are ignored.
        grid_size: ``(width, height)`` in cells.
        base_tensor: fills the empty cells (``torch.ones``: white; ``torch.zeros``: black).

    Returns:
        ``(B, C, h * height, w * width)``; cell ``(x, y)`` covers rows
        ``(height - 1 - y) * h : (height - y) * h`` and columns ``x * w : (x + 1) * w``.
    """
    gw, gh = _check_grid_size(grid_size)
    if isinstance(cells, Tensor):
        if cells.dim() != 4:
            raise InputError(f"cells must be (n_cells, C, h, w), got {tuple(cells.shape)}.")
        cells = [c.unsqueeze(0) for c in cells]
    cells = list(cells)
    if len(cells) != len(coords):
        raise InputError(f"{len(cells)} cells but {len(coords)} coords.")
    if not cells:
        raise InputError("create_atlas needs at least one cell.")
    first = cells[0]
    if first.dim() != 4 or any(c.shape != first.shape for c in cells):
        raise InputError("All cells must be 4-D (B, C, h, w) tensors of the same shape.")
    b, c, h, w = first.shape
    canvas = base_tensor(b, c, h * gh, w * gw, device=first.device, dtype=first.dtype)
    for img, coord in zip(cells, coords, strict=True):
        x, y = int(coord[0]), int(coord[1])
        if not (0 <= x < gw and 0 <= y < gh):
            raise InputError(f"Cell coordinate {(x, y)} is outside the grid {(gw, gh)}.")
        top = (gh - 1 - y) * h
        canvas[..., top : top + h, x * w : (x + 1) * w] = img.to(canvas.device)
    return canvas
