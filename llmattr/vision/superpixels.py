"""SLIC superpixels written with torch (Achanta et al., 2012), as a ``feature_mask`` label map.

k-means in (colour, y, x) space from a regular grid of seeds; each pixel compares itself only to
the seeds of its own and the 8 neighbouring grid cells that lie within a ``2S x 2S`` window
(``S`` = the seed spacing), all pixels at once. Colour is CIE Lab for 3-channel images (RGB in
0-1 or 0-255), otherwise the raw values scaled to 0-100 (Lab's lightness range), so
``compactness`` means the same for both. With ``enforce_connectivity`` every segment is one
4-connected component: disconnected pieces become segments of their own and pieces smaller
than half the expected segment size are merged into their largest neighbour.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .baselines import _is_pil, gaussian_blur, pil_to_tensor

__all__ = ["connected_components", "slic"]


def _as_image(image: Any) -> Tensor:
    """``(C, H, W)`` float64 from a tensor ``(C, H, W)`` / ``(H, W)`` or a PIL image."""
    if _is_pil(image):
        return pil_to_tensor(image if image.mode in ("L", "RGB") else image.convert("RGB"))[0]
    if not isinstance(image, Tensor):
        raise InputTypeError(
            f"slic expects a (C, H, W) or (H, W) tensor or a PIL image, got {type(image).__name__}."
        )
    if image.dim() == 2:
        image = image[None]
    if image.dim() == 3 and image.shape[-1] in (3, 4) and image.shape[0] not in (1, 3, 4):
        raise InputError(
            f"slic expects channels first (C, H, W), got shape {tuple(image.shape)}, which looks "
            "channels-last (H, W, C): pass image.permute(2, 0, 1)."
        )
    if image.dim() != 3:
        raise InputError(
            f"slic expects one image (C, H, W) or (H, W), got shape {tuple(image.shape)}; "
            "for a batch, call it once per image."
        )
    return image.detach().double().cpu()


def _rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB ``(3, H, W)`` in 0-1 -> CIE Lab (D65)."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ],
        dtype=rgb.dtype,
    )
    xyz = torch.einsum("ij,jhw->ihw", m, lin)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=rgb.dtype)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _colour_space(image: Tensor) -> Tensor:
    top = float(image.max()) if image.numel() else 0.0
    unit = image / 255.0 if top > 1.0 else image
    if image.shape[0] == 3:
        return _rgb_to_lab(unit.clamp(0, 1))
    return unit * 100.0


def _run_ids(labels: Tensor) -> Tensor:
    """Id of each pixel's horizontal run of equal labels (row-major ``(H, W)``)."""
    start = torch.ones_like(labels, dtype=torch.long)
    start[:, 1:] = (labels[:, 1:] != labels[:, :-1]).long()
    return start.flatten().cumsum(0).reshape(labels.shape) - 1


def connected_components(labels: Tensor) -> Tensor:
    """4-connected components of an ``(H, W)`` label map: each pixel gets the flat index of the
    first pixel (raster order) of its component.

    Alternates a min over every horizontal and every vertical run of equal labels with pointer
    jumping, so a compact segment settles in a few rounds (not one round per pixel of its
    diameter). Values only decrease and always name a pixel of the same component, so the
    fixed point is each component's smallest index."""
    h, w = labels.shape
    rows_run = _run_ids(labels).flatten()
    cols_run = _run_ids(labels.T.contiguous()).T.flatten()  # pixel (y, x) in its column run
    comp = torch.arange(h * w)
    while True:
        new = comp
        for run in (rows_run, cols_run):
            n_runs = int(run.max()) + 1
            low = torch.full((n_runs,), h * w, dtype=torch.long)
            new = low.scatter_reduce(0, run, new, reduce="amin")[run]
            new = new[new][new]  # pointer jumping
        if torch.equal(new, comp):
            return comp.reshape(h, w)
        comp = new


def _merge_small(comp: Tensor, min_size: int) -> Tensor:
    """Merge components smaller than ``min_size`` into their largest 4-neighbour component."""
    h, w = comp.shape
    n = h * w
    while True:
        sizes = torch.bincount(comp.flatten(), minlength=n)
        key = sizes * n + torch.arange(n)  # larger segment first, ties by id: a strict order
        a = torch.cat([comp[1:, :].flatten(), comp[:, 1:].flatten()])
        b = torch.cat([comp[:-1, :].flatten(), comp[:, :-1].flatten()])
        diff = a != b
        src = torch.cat([a[diff], b[diff]])
        dst = torch.cat([b[diff], a[diff]])
        best = torch.full((n,), -1, dtype=torch.long).scatter_reduce(
            0, src, key[dst], reduce="amax"
        )
        small = (sizes > 0) & (sizes < min_size) & (best > key)
        if not bool(small.any()):
            return comp
        target = torch.arange(n)
        target[small] = best[small] % n
        # follow chains (A into B while B merges into C) to their end, or A would keep B's id
        # while B's own pixels move to C and A is cut off; keys grow along a chain: no cycles
        while True:
            nxt = target[target]
            if torch.equal(nxt, target):
                break
            target = nxt
        comp = target[comp]


def slic(
    image: Any,
    n_segments: int = 100,
    compactness: float = 10.0,
    max_iter: int = 10,
    sigma: float = 0.0,
    enforce_connectivity: bool = True,
) -> Tensor:
    """SLIC superpixels of one image.

    Args:
        image: ``(C, H, W)`` tensor, ``(H, W)`` greyscale tensor, or a PIL image; values in
            0-1 or 0-255 (segment the image *before* mean/std normalization).
        n_segments: about how many segments (the seed grid has about this many cells).
        compactness: weight of space against colour; larger gives squarer segments.
        max_iter: k-means iterations.
        sigma: Gaussian smoothing of the image before clustering (pixels; 0 = none).
        enforce_connectivity: make every segment one 4-connected component.

    Returns:
        ``(H, W)`` long label map with contiguous ids ``0..n-1`` (raster order of first pixel).
    """
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise InputError(f"n_segments must be a positive int, got {n_segments!r}.")
    if not compactness > 0:
        raise InputError(f"compactness must be > 0, got {compactness!r}.")
    img = _as_image(image)
    _, h, w = img.shape
    if sigma > 0:
        img = gaussian_blur(img[None], sigma)[0]
    colour = _colour_space(img).float()  # float32 is ample for clustering, and twice as fast
    step = math.sqrt(h * w / n_segments)
    rows = min(h, max(1, round(h / step)))
    cols = min(w, max(1, round(n_segments / rows)))  # rows * cols ~ n_segments, thin images too
    step = math.sqrt(h * w / (rows * cols))
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    feats = torch.cat([colour, ys[None], xs[None]]).reshape(colour.shape[0] + 2, -1).T  # (P, D)
    # seeds at the centres of a rows x cols grid; pixel -> its grid cell
    cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * h / rows
    cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * w / cols
    cell_r = (torch.arange(h) * rows // h)[:, None].expand(h, w).flatten()
    cell_c = (torch.arange(w) * cols // w)[None, :].expand(h, w).flatten()
    seed_pix = cy.long().clamp(max=h - 1)[:, None] * w + cx.long().clamp(max=w - 1)[None, :]
    centres = feats[seed_pix.flatten()].clone()
    centres[:, -2] = cy[:, None].expand(rows, cols).flatten()
    centres[:, -1] = cx[None, :].expand(rows, cols).flatten()
    # candidate seeds: own and 8 neighbouring cells (clamped; duplicates are harmless)
    off = torch.tensor([-1, 0, 1])
    cand_r = (cell_r[:, None, None] + off[None, :, None]).clamp(0, rows - 1)
    cand_c = (cell_c[:, None, None] + off[None, None, :]).clamp(0, cols - 1)
    cand = (cand_r * cols + cand_c).reshape(h * w, 9)
    # scale x, y so that the SLIC distance d_lab^2 + (m / S)^2 d_xy^2 is a plain squared norm
    scale = compactness / step
    n_colour = colour.shape[0]
    feats[:, n_colour:] *= scale
    centres[:, n_colour:] *= scale
    window = (step * scale) ** 2  # a seed's 2S x 2S window, in scaled squared units
    labels = cand[:, 4]
    new = labels
    for _ in range(max(1, max_iter)):
        sq = (centres[cand] - feats[:, None]).square_()  # (P, 9, D)
        dist = sq.sum(-1)
        outside = (sq[..., n_colour:] > window).any(-1)
        dist = dist.masked_fill_(outside, float("inf"))
        # a pixel outside every window (seeds drifted away) takes its nearest candidate
        lost = torch.isinf(dist).all(-1)
        if bool(lost.any()):
            dist[lost] = sq[lost].sum(-1)
        new = cand.gather(1, dist.argmin(1, keepdim=True))[:, 0]
        sums = torch.zeros_like(centres).index_add_(0, new, feats)
        counts = torch.bincount(new, minlength=centres.shape[0]).to(feats.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if torch.equal(new, labels):
            break
        labels = new
    labels = new.reshape(h, w)
    if enforce_connectivity:
        comp = connected_components(labels)
        labels = _merge_small(comp, max(1, int(0.5 * h * w / (rows * cols))))
    return torch.unique(labels.flatten(), return_inverse=True)[1].reshape(h, w)
