"""Image feature masks: grids, ViT patches, SLIC superpixels, label maps, mask lists, scatter."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from llmattr import FeatureAblation, KernelShap, Lime, ShapleyValueSampling
from llmattr._core.errors import InputError
from llmattr.vision.layout import PatchLayout
from llmattr.vision.masks import (
    as_feature_mask,
    check_mask,
    check_mask_list,
    grid_mask,
    label_map_mask,
    masks_from_boxes,
    patch_mask,
    scatter_to_pixels,
)
from llmattr.vision.superpixels import connected_components, slic


def _n_components(mask: torch.Tensor, k: int) -> int:
    """Brute-force BFS count of 4-connected components of segment k."""
    m = (mask == k).numpy()
    seen = np.zeros_like(m)
    h, w = m.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(m), strict=True):
        if seen[y0, x0]:
            continue
        count += 1
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and m[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
    return count


def _photo(size: int = 48) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    arr = np.array(load_sample_image("china.jpg"), dtype=np.float32) / 255
    img = torch.from_numpy(arr).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(img, size=(size, size), mode="area")[0]


@pytest.mark.parametrize("h,w,rows,cols", [(8, 8, 2, 2), (7, 10, 3, 4), (5, 5, 5, 1)])
def test_grid_mask_cells_row_major_and_even(h, w, rows, cols):
    m = grid_mask(h, w, rows, cols)
    assert m.shape == (h, w) and m.dtype == torch.long
    assert torch.equal(torch.unique(m), torch.arange(rows * cols))
    # row-major: the cell of (i, j) is row * cols + col and rows/cols are monotone
    assert torch.equal(m[:, 0] // cols, torch.sort(m[:, 0] // cols).values)
    heights = torch.bincount(m[:, 0] // cols)
    widths = torch.bincount(m[0] % cols)
    assert heights.max() - heights.min() <= 1 and widths.max() - widths.min() <= 1
    for k in range(rows * cols):  # every cell is a rectangle
        ys, xs = torch.nonzero(m == k, as_tuple=True)
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert int(area) == int((m == k).sum())


def test_grid_mask_errors():
    with pytest.raises(InputError, match="does not fit"):
        grid_mask(4, 4, 5, 1)
    with pytest.raises(InputError, match="positive int"):
        grid_mask(4, 4, 0, 1)


def test_patch_mask_follows_the_model_token_order():
    from transformers import ViTConfig

    cfg = ViTConfig(image_size=32, patch_size=8)
    m = patch_mask(cfg)
    assert torch.equal(m, PatchLayout.from_config(cfg).pixel_mask())
    assert m.shape == (32, 32) and int(m.max()) == 15
    assert int(m[0, 8]) == 1 and int(m[8, 0]) == 4  # token k: row k // 4, column k % 4
    assert torch.equal(m, grid_mask(32, 32, 4, 4))
    assert patch_mask(cfg, image_size=16).shape == (16, 16)


def test_label_map_mask_contiguous_and_invertible():
    labels = np.array([[5, 5, 100], [7, 7, 100]], dtype=np.int32)
    out = label_map_mask(labels)
    assert out.mask.dtype == torch.long
    assert torch.equal(out.ids, torch.tensor([5, 7, 100]))
    assert torch.equal(out.ids[out.mask], torch.from_numpy(labels).long())
    assert torch.equal(torch.unique(out.mask), torch.arange(3))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(3, 3), "integer ids"),
        (np.zeros((3, 3), dtype=np.float32), "integer ids"),
        (torch.zeros(3, 3, dtype=torch.bool), "integer ids"),
        (torch.tensor([[0, -1], [1, 2]]), "negative"),
        (torch.zeros(2, 3, 3, dtype=torch.long), r"\(H, W\)"),
    ],
)
def test_label_map_mask_refuses(bad, match):
    with pytest.raises(InputError, match=match):
        label_map_mask(bad)


def test_check_mask_size_and_contiguity():
    with pytest.raises(InputError, match=r"\(4, 5\).*\(8, 10\).*nearest-neighbour"):
        check_mask(torch.zeros(4, 5, dtype=torch.long), (8, 10))
    with pytest.raises(InputError, match="contiguous"):
        check_mask(torch.tensor([[0, 2]]))


def test_mask_list_validation():
    with pytest.raises(InputError, match="empty"):
        check_mask_list([])
    with pytest.raises(InputError, match="not boolean"):
        check_mask_list([torch.tensor([[0, 2]])])
    with pytest.raises(InputError, match="nearest-neighbour"):
        check_mask_list([torch.ones(2, 2)], (3, 3))
    assert check_mask_list([torch.tensor([[0, 1]]), torch.tensor([[1.0, 1.0]])]).dtype == torch.bool


def test_masks_from_boxes():
    masks = masks_from_boxes(6, 8, [(0, 0, 4, 3), (2, 1, 100, 6)])
    assert [int(m.sum()) for m in masks] == [12, 30]
    assert bool(masks[0][2, 3]) and not bool(masks[0][3, 0])  # row 2, column 3 inside
    assert int((masks[0] & masks[1]).sum()) == 4
    with pytest.raises(InputError, match="covers no pixel"):
        masks_from_boxes(6, 8, [(10, 10, 12, 12)])


def test_scatter_spread_preserves_segment_sums():
    mask = grid_mask(7, 9, 2, 3)
    attr = torch.randn(2, 6, dtype=torch.float64)
    pix = scatter_to_pixels(attr, mask)
    assert pix.shape == (2, 7, 9)
    sums = torch.stack([pix[:, mask == k].sum(-1) for k in range(6)], -1)
    torch.testing.assert_close(sums, attr)
    rep = scatter_to_pixels(attr, mask, mode="repeat")
    torch.testing.assert_close(rep, attr[:, mask])


def test_scatter_overlapping_list_total_and_captum_repeat():
    from captum.attr._utils.interpretable_input import ImageMaskInput

    masks = masks_from_boxes(6, 8, [(0, 0, 4, 3), (2, 1, 8, 6), (5, 0, 8, 2)])
    attr = torch.randn(1, 3, dtype=torch.float64)
    spread = scatter_to_pixels(attr, masks)
    torch.testing.assert_close(spread.sum(), attr.sum())
    for k, m in enumerate(masks):  # each feature contributes value / its size to its pixels
        only = torch.zeros(1, 3, dtype=torch.float64)
        only[0, k] = attr[0, k]
        torch.testing.assert_close(scatter_to_pixels(only, masks)[0, m].sum(), attr[0, k])
    image = Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8))
    captum = ImageMaskInput(image, mask_list=masks).format_pixel_attr(attr.float())
    ours = scatter_to_pixels(attr, masks, mode="repeat")
    torch.testing.assert_close(ours.float(), captum)
    with pytest.raises(InputError, match="last dimension"):
        scatter_to_pixels(torch.ones(1, 2), masks)


def test_scatter_repeat_matches_captum_label_map():
    from captum.attr._utils.interpretable_input import ImageMaskInput

    labels = torch.tensor([[3, 3, 9], [4, 9, 9]])
    image = Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8))
    attr = torch.tensor([[1.0, -2.0, 5.0]])
    captum = ImageMaskInput(image, mask=labels).format_pixel_attr(attr)
    ours = scatter_to_pixels(attr, label_map_mask(labels).mask, mode="repeat")
    torch.testing.assert_close(ours[None] if ours.dim() == 2 else ours, captum)


class _TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_as_feature_mask_with_llmattr_and_captum_feature_ablation():
    import captum.attr as ca

    torch.manual_seed(0)
    model = _TinyCNN().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 8, 2, 4)
    fm = as_feature_mask(mask, x)
    assert fm.shape == (1, 1, 8, 8)
    ours = FeatureAblation(model).attribute(x, target=1, feature_mask=fm, baselines=0.3)
    ref = ca.FeatureAblation(model).attribute(x, target=1, feature_mask=fm, baselines=0.3)
    torch.testing.assert_close(ours, ref)
    # brute force: ablate segment k in every channel
    with torch.no_grad():
        base = model(x)[:, 1]
        for k in range(8):
            xk = torch.where(mask == k, torch.tensor(0.3, dtype=x.dtype), x)
            expected = base - model(xk)[:, 1]
            torch.testing.assert_close(ours[:, 0][:, mask == k][:, 0], expected)
    for method in (ShapleyValueSampling(model), Lime(model), KernelShap(model)):
        kw = {"n_samples": 20} if not isinstance(method, ShapleyValueSampling) else {}
        out = method.attribute(x[:1], target=0, feature_mask=fm, **kw)
        assert out.shape == x[:1].shape
    assert as_feature_mask(mask, x[0]).shape == (1, 8, 8)
    with pytest.raises(InputError, match="nearest-neighbour"):
        as_feature_mask(grid_mask(4, 4, 2, 2), x)


def test_slic_two_colour_image_split_along_the_edge():
    img = torch.zeros(3, 32, 40)
    img[0, :, :17] = 1.0  # red left, blue right
    img[2, :, 17:] = 1.0
    m = slic(img, n_segments=20)
    left = torch.unique(m[:, :17])
    right = torch.unique(m[:, 17:])
    assert not set(left.tolist()) & set(right.tolist())


def test_slic_connected_contiguous_deterministic():
    img = _photo(48)
    m = slic(img, n_segments=30)
    n = int(m.max()) + 1
    assert m.dtype == torch.long and torch.equal(torch.unique(m), torch.arange(n))
    assert 10 <= n <= 60
    assert all(_n_components(m, k) == 1 for k in range(n))
    assert torch.equal(m, slic(img, n_segments=30))
    loose = slic(img, n_segments=30, enforce_connectivity=False)
    assert torch.equal(torch.unique(loose), torch.arange(int(loose.max()) + 1))


def test_slic_greyscale_pil_and_sigma():
    img = _photo(40)
    grey = img.mean(0)
    m = slic(grey, n_segments=16, sigma=1.0)
    assert m.shape == (40, 40)
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_pil = slic(Image.fromarray(arr), n_segments=16)
    from_tensor = slic(torch.from_numpy(arr).permute(2, 0, 1).float(), n_segments=16)
    assert torch.equal(from_pil, from_tensor)  # PIL and 0-255 tensors give the same segments
    assert slic(Image.fromarray(arr).convert("RGBA"), n_segments=16).shape == (40, 40)
    with pytest.raises(InputError, match="one image"):
        slic(torch.zeros(2, 3, 8, 8))


def test_connected_components_matches_bfs():
    torch.manual_seed(1)
    labels = (torch.rand(15, 17) > 0.5).long()
    comp = connected_components(labels)
    ids = torch.unique(comp)
    assert all(_n_components(comp, int(k)) == 1 for k in ids)
    bfs_total = sum(_n_components(labels, k) for k in (0, 1))
    assert ids.numel() == bfs_total


@pytest.mark.parametrize("seed", range(6))
def test_slic_segments_stay_connected_when_small_pieces_merge_in_chains(seed):
    # noise makes many small pieces, so merges chain (A into B while B merges into C)
    gen = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in torch.randint(12, 48, (2,), generator=gen))
    m = slic(torch.rand(3, h, w, generator=gen), n_segments=20)
    n = int(m.max()) + 1
    assert torch.equal(torch.unique(m), torch.arange(n))
    assert all(_n_components(m, k) == 1 for k in range(n))


def test_slic_refuses_a_channels_last_tensor():
    with pytest.raises(InputError, match="channels-last"):
        slic(torch.rand(20, 30, 3))
