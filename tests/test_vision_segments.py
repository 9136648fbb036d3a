"""ImageSegments: perturbation methods on a presence vector, overlapping masks, inpainting."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmattr import FeatureAblation, KernelShap, ShapleyValues
from llmattr._core.errors import InputError
from llmattr.vision.baselines import ConstantBaseline, InpaintBaseline
from llmattr.vision.masks import as_feature_mask, grid_mask, masks_from_boxes
from llmattr.vision.segments import ImageSegments


def _linear(seed: int = 0, shape=(3, 8, 10)):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=g, dtype=torch.float64)
    w = torch.randn((2, *shape), generator=g, dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,ochw->no", x, w)

    return image, w, model


@pytest.mark.parametrize("ppe", [1, 3, 10])
def test_feature_ablation_equals_feature_mask_route_and_closed_form(ppe):
    import captum.attr as ca

    image, w, model = _linear()
    colour = (0.2, 0.5, 0.9)
    mask = grid_mask(8, 10, 2, 3)
    seg = ImageSegments(image, mask=mask, baseline=colour)
    attr = FeatureAblation(seg.forward(model, target=1)).attribute(
        seg.presence(), perturbations_per_eval=ppe
    )
    assert attr.shape == (1, 6)
    x = image[None]
    base = torch.tensor(colour, dtype=torch.float64)[None, :, None, None].expand_as(x)
    fm = as_feature_mask(mask, x)
    direct = FeatureAblation(model).attribute(x, target=1, feature_mask=fm, baselines=base)
    captum = ca.FeatureAblation(model).attribute(x, target=1, feature_mask=fm, baselines=base)
    closed = torch.stack([(w[1] * (image - base[0]))[:, mask == k].sum() for k in range(6)])
    torch.testing.assert_close(attr[0], closed)
    per_feature = torch.stack([direct[0, 0][mask == k][0] for k in range(6)])
    torch.testing.assert_close(attr[0], per_feature)
    torch.testing.assert_close(direct, captum)


def test_overlapping_masks_on_a_linear_model():
    image, w, model = _linear(1)
    masks = masks_from_boxes(8, 10, [(0, 0, 6, 5), (3, 2, 10, 8), (7, 0, 10, 3)])
    seg = ImageSegments(image, mask_list=masks, baseline=0.0)
    contrib = w[0] * image  # pixel contributions to output 0, baseline 0
    fa = FeatureAblation(seg.forward(model, target=0)).attribute(seg.presence())
    expected = torch.stack([contrib[:, m].sum() for m in masks])
    torch.testing.assert_close(fa[0], expected)  # ablating one feature removes all its pixels
    # Exact Shapley: a pixel is removed when ANY feature covering it is absent, so its
    # contribution is a unanimity game over its covering features, split equally among them.
    sv = ShapleyValues(seg.forward(model, target=0)).attribute(seg.presence())
    cover = torch.stack(masks).sum(0).to(torch.float64)
    shares = torch.where(cover > 0, contrib.sum(0) / cover.clamp_min(1), 0.0)
    torch.testing.assert_close(sv[0], torch.stack([shares[m].sum() for m in masks]))
    # brute force over every presence vector agrees with paint()
    for bits in itertools.product([0.0, 1.0], repeat=3):
        p = torch.tensor([bits], dtype=torch.float64)
        removed = torch.zeros(8, 10, dtype=torch.bool)
        for b, m in zip(bits, masks, strict=True):
            removed |= m & (b == 0)
        torch.testing.assert_close(seg.paint(p)[0], torch.where(removed, 0.0, image))


def test_batch_size_invariance_with_inpainting():
    image, _, model = _linear(2)
    mask = grid_mask(8, 10, 2, 2)
    seg = ImageSegments(image, mask=mask, baseline=InpaintBaseline(tol=1e-12))
    fwd = seg.forward(model, target=0)
    one = FeatureAblation(fwd).attribute(seg.presence(), perturbations_per_eval=1)
    many = FeatureAblation(fwd).attribute(seg.presence(), perturbations_per_eval=4)
    torch.testing.assert_close(one, many)
    # painting k rows at once equals painting each row alone (inpainting is per row)
    rows = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.float64)
    together = seg.paint(rows)
    for i in range(3):
        torch.testing.assert_close(together[i], seg.paint(rows[i : i + 1])[0])
    torch.testing.assert_close(together[2], image)
    ks = KernelShap(fwd)
    a = ks.attribute(seg.presence(), n_samples=30, perturbations_per_eval=1, generator=0)
    b = ks.attribute(seg.presence(), n_samples=30, perturbations_per_eval=8, generator=0)
    torch.testing.assert_close(a, b)


def test_to_pixels_preserves_segment_sums():
    image, _, model = _linear(3)
    mask = grid_mask(8, 10, 3, 2)
    seg = ImageSegments(image, mask=mask, baseline=ConstantBaseline(0.5))
    attr = FeatureAblation(seg.forward(model, target=0)).attribute(seg.presence())
    pix = seg.to_pixels(attr)
    assert pix.shape == (1, 8, 10)
    torch.testing.assert_close(torch.stack([pix[0, mask == k].sum() for k in range(6)]), attr[0])


def test_segments_validation_and_no_mutation():
    image, _, _ = _linear()
    keep = image.clone()
    with pytest.raises(InputError, match="exactly one"):
        ImageSegments(image)
    with pytest.raises(InputError, match="nearest-neighbour"):
        ImageSegments(image, mask=grid_mask(4, 5, 2, 2))
    with pytest.raises(InputError, match="3 colour channel"):
        ImageSegments(image, mask=grid_mask(8, 10, 2, 2), baseline=(1.0, 2.0))
    seg = ImageSegments(image, mask=grid_mask(8, 10, 2, 2))
    assert seg.n_features == 4
    with pytest.raises(InputError, match="0 \\(absent\\) and 1"):
        seg.paint(torch.full((1, 4), 0.5, dtype=torch.float64))
    with pytest.raises(InputError, match="shape \\(k, 4\\)"):
        seg.paint(torch.ones(1, 3))
    seg.paint(torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(image, keep)
