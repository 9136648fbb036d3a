"""llmattr.optim.transforms: closed forms, identities, seeded reproducibility, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from llmattr._core.errors import InputError
from llmattr.optim.pixel_transforms import (
    BlendAlpha,
    GaussianSmoothing,
    IgnoreAlpha,
    NChannelsToRGB,
    RGBToBGR,
    ScaleInputRange,
    nchannels_to_rgb,
)
from llmattr.optim.transforms import (
    CenterCrop,
    RandomCrop,
    RandomRotation,
    RandomScale,
    RandomScaleAffine,
    RandomSpatialJitter,
    SymmetricPadding,
    TransformationRobustness,
    center_crop,
    symmetric_pad,
)


def _img(n: int = 2, c: int = 3, h: int = 10, w: int = 10, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, c, h, w, dtype=dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all_random(g: torch.Generator | None) -> list[nn.Module]:
    return [
        BlendAlpha(generator=g),
        RandomCrop(6, generator=g),
        RandomScale([0.5, 0.8, 1.2], generator=g),
        RandomScaleAffine([0.8, 0.9, 1.1], generator=g),
        RandomSpatialJitter(3, generator=g),
        RandomRotation([-30.0, -10.0, 15.0, 40.0], generator=g),
        TransformationRobustness(generator=g),
        TransformationRobustness(
            scale=torch.distributions.Uniform(0.9, 1.1),
            degrees=torch.distributions.Normal(0.0, 10.0),
            generator=g,
        ),
    ]


def _in(m: nn.Module, dtype=torch.float32) -> torch.Tensor:
    return _img(c=4 if isinstance(m, BlendAlpha) else 3, h=16, w=16, dtype=dtype)


@pytest.mark.parametrize("i", range(8))
def test_seeded_reproducibility_and_randomness(i: int) -> None:
    x = _in(_all_random(None)[i])
    a = [_all_random(_gen(3))[i](x) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    m = _all_random(_gen(3))[i]
    draws = [m(x) for _ in range(8)]  # one generator, consecutive calls differ
    assert any(d.shape != draws[0].shape or not torch.equal(d, draws[0]) for d in draws[1:])
    torch.manual_seed(5)
    b = _all_random(None)[i](x)
    torch.manual_seed(5)
    assert torch.equal(b, _all_random(None)[i](x))


@pytest.mark.parametrize("i", range(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_flow_and_dtype(i: int, dtype: torch.dtype) -> None:
    m = _all_random(_gen(1))[i]
    x = _in(m, dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype and y.dim() == 4
    (y * torch.rand_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_identities_are_exact() -> None:
    x = _img(dtype=torch.float64)
    assert torch.equal(RandomScale([1.0])(x), x)
    assert torch.equal(RandomScaleAffine([1.0])(x), x)
    assert torch.equal(RandomRotation([0.0, 360.0])(x), x)
    assert torch.equal(RandomSpatialJitter(0)(x), x)
    assert torch.equal(RandomCrop(10)(x), x)
    assert torch.equal(ScaleInputRange(1.0)(x), x)
    assert torch.equal(center_crop(x, 10), x)
    # the grid-sample path at a tiny angle / scale is the input up to interpolation error
    torch.testing.assert_close(RandomRotation([1e-9])(x), x)
    torch.testing.assert_close(RandomScaleAffine([1 + 1e-12])(x), x)
    torch.testing.assert_close(
        TransformationRobustness(None, None, None, None, None)(x), x, rtol=0, atol=0
    )


@pytest.mark.parametrize("hw", [(9, 9), (10, 10), (8, 12), (11, 7)])
def test_rotation_by_90_is_rot90(hw: tuple[int, int]) -> None:
    h, w = hw
    x = _img(h=h, w=w, dtype=torch.float64)
    y = RandomRotation([90.0]).rotate(x, 90.0)
    s = min(h, w)
    t, left = (h - s) // 2, (w - s) // 2
    sq = x[..., t : t + s, left : left + s]
    out = y[..., t : t + s, left : left + s]
    # positive angles turn the content counterclockwise on screen, like torch.rot90(k=1)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.rot90(sq, 1, (2, 3))[..., 1:-1, 1:-1])
    y2 = RandomRotation([-90.0])(x)
    torch.testing.assert_close(
        y2[..., t + 1 : t + s - 1, left + 1 : left + s - 1],
        torch.rot90(sq, -1, (2, 3))[..., 1:-1, 1:-1],
    )


def test_jitter_shift_closed_form_and_range() -> None:
    x = _img(h=8, w=9, dtype=torch.float64)
    j = RandomSpatialJitter(3)
    y = j.shift(x, 2, -1)
    torch.testing.assert_close(y[..., 2:, :-1], x[..., :-2, 1:], rtol=0, atol=0)
    assert torch.equal(y[..., 0, :-1], x[..., 2, 1:])  # reflected (edge not repeated)
    g = _gen(0)
    j = RandomSpatialJitter(2, generator=g)
    ref = RandomSpatialJitter(2)
    table = {(dy, dx): ref.shift(x, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = set()
    for _ in range(150):
        y = j(x)
        found = [k for k, v in table.items() if torch.equal(y, v)]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) == 25  # symmetric: every shift in [-2, 2]^2 occurs


def test_center_crop_closed_forms() -> None:
    x = torch.arange(2 * 3 * 10 * 9, dtype=torch.float32).reshape(2, 3, 10, 9)
    assert torch.equal(center_crop(x, 4), x[..., 3:7, 2:6])
    assert torch.equal(center_crop(x, (5, 4)), x[..., 2:7, 2:6])
    assert torch.equal(center_crop(x, (5, 4), offset_left=True), x[..., 3:8, 3:7])
    assert torch.equal(CenterCrop((4, 3))(x), x[..., 3:7, 3:6])
    # pixels_from_edges: crop that many pixels away in total (optim-wip's formula)
    assert torch.equal(CenterCrop(2, pixels_from_edges=True)(x), x[..., 1:9, 1:8])
    assert torch.equal(CenterCrop((3, 4), pixels_from_edges=True)(x), x[..., 2:9, 2:7])
    # larger than the input: pad (ceil on the top/left), here with a constant
    y = CenterCrop((13, 9), padding_value=-1.0)(x)
    assert y.shape == (2, 3, 13, 9)
    assert torch.equal(y[..., 2:12, :], x) and (y[..., :2, :] == -1).all()
    assert (y[..., 12:, :] == -1).all()
    assert torch.equal(center_crop(x[0], 4), x[0, :, 3:7, 2:6])  # CHW works
    with pytest.raises(InputError):
        center_crop(x, (1, 2, 3))


@pytest.mark.parametrize(
    "pad", [[(0, 0), (1, 0), (2, 3), (4, 1)], [(0, 0), (0, 0), (9, 12), (1, 1)]]
)
def test_symmetric_padding_matches_numpy_with_exact_gradient(pad) -> None:
    x = _img(h=5, w=4, dtype=torch.float64).requires_grad_()
    y = SymmetricPadding(pad)(x)
    ref = np.pad(x.detach().numpy(), pad, mode="symmetric")
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    y.sum().backward()
    idx = np.arange(x.numel()).reshape(x.shape)
    counts = np.bincount(np.pad(idx, pad, mode="symmetric").ravel(), minlength=x.numel())
    np.testing.assert_array_equal(x.grad.numpy().ravel(), counts)  # optim-wip only cropped


def test_symmetric_padding_int_and_pair_forms() -> None:
    x = _img(h=6, w=5)
    ref = np.pad(x.numpy(), [(0, 0), (0, 0), (2, 2), (2, 2)], mode="symmetric")
    np.testing.assert_array_equal(SymmetricPadding(2)(x).numpy(), ref)
    ref = np.pad(x.numpy(), [(0, 0), (0, 0), (1, 1), (3, 3)], mode="symmetric")
    np.testing.assert_array_equal(SymmetricPadding((1, 3))(x).numpy(), ref)
    with pytest.raises(InputError):
        symmetric_pad(x, [(1, 1)])


@pytest.mark.parametrize("padding", [None, "symmetric", "reflect", "replicate", "circular"])
def test_gaussian_smoothing_constant_and_shape(padding) -> None:
    x = torch.full((2, 3, 12, 11), 0.7, dtype=torch.float64)
    g = GaussianSmoothing(3, 5, 1.5, padding=padding)
    y = g(x)
    assert y.shape == ((2, 3, 8, 7) if padding is None else x.shape)
    torch.testing.assert_close(y, x[..., : y.shape[2], : y.shape[3]])


@pytest.mark.parametrize("padding", ["symmetric", "circular"])
def test_gaussian_smoothing_conserves_sum_and_kernel(padding) -> None:
    x = _img(h=12, w=11, dtype=torch.float64)
    g = GaussianSmoothing(3, (5, 3), (1.5, 0.8), padding=padding)
    torch.testing.assert_close(g(x).sum((2, 3)), x.sum((2, 3)))
    k = g.weight[0, 0].double()
    t = torch.arange(5.0, dtype=torch.float64) - 2
    u = torch.arange(3.0, dtype=torch.float64) - 1
    ref = torch.exp(-(t[:, None] ** 2) / (2 * 1.5**2) - u[None] ** 2 / (2 * 0.8**2))
    torch.testing.assert_close(k, ref / ref.sum(), rtol=1e-6, atol=0)  # separable Gaussian
    one = torch.zeros(1, 3, 12, 11, dtype=torch.float64)
    one[..., 6, 5] = 1.0  # an impulse away from borders gives back the kernel
    torch.testing.assert_close(g(one)[0, 0, 4:9, 4:7], k, rtol=1e-6, atol=0)


def test_gaussian_smoothing_1d_3d_and_errors() -> None:
    x1 = torch.rand(2, 4, 20, dtype=torch.float64)
    torch.testing.assert_close(
        GaussianSmoothing(4, 7, 2.0, dim=1, padding="symmetric")(x1).sum(-1), x1.sum(-1)
    )
    x3 = torch.rand(1, 2, 6, 6, 6)
    assert GaussianSmoothing(2, 3, 1.0, dim=3)(x3).shape == (1, 2, 4, 4, 4)
    with pytest.raises(InputError):
        GaussianSmoothing(3, 3, 1.0)(torch.rand(1, 2, 5, 5))
    with pytest.raises(InputError):
        GaussianSmoothing(3, 3, 1.0, dim=4)


def test_alpha_transforms() -> None:
    x = _img(c=4, dtype=torch.float64)
    bg = torch.rand(1, 3, 1, 1, dtype=torch.float64)
    out = BlendAlpha(bg)(x)
    torch.testing.assert_close(out, x[:, 3:] * x[:, :3] + (1 - x[:, 3:]) * bg)
    opaque = x.clone()
    opaque[:, 3] = 1.0
    assert torch.equal(BlendAlpha(generator=_gen())(opaque), opaque[:, :3])
    assert torch.equal(IgnoreAlpha()(x), x[:, :3])
    with pytest.raises(InputError, match="4 channels"):
        BlendAlpha()(x[:, :3])
    with pytest.raises(InputError):
        IgnoreAlpha()(x[:, :3])


def test_bgr_and_scale_input_range() -> None:
    x = _img()
    assert torch.equal(RGBToBGR()(x), x.flip(1))
    assert torch.equal(RGBToBGR()(RGBToBGR()(x)), x)
    x4 = _img(c=4)
    assert torch.equal(RGBToBGR()(x4)[:, 3], x4[:, 3])
    assert torch.equal(ScaleInputRange(255.0)(x), x * 255.0)
    with pytest.raises(InputError):
        RGBToBGR()(_img(c=2))


def test_nchannels_to_rgb_closed_forms() -> None:
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = 2.0  # channel 0 -> red, norm kept
    x[0, 1, 0, 1] = 1.0  # channel 1 of 3 -> hue 120 -> green
    x[0, :, 1, 0] = 1.0  # all channels equal -> grey with the same norm
    y = NChannelsToRGB()(x)
    assert y.shape == (1, 3, 2, 2)
    torch.testing.assert_close(
        y[0, :, 0, 0], torch.tensor([2.0, 0, 0], dtype=torch.float64), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        y[0, :, 0, 1], torch.tensor([0, 1.0, 0], dtype=torch.float64), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(y[0, :, 1, 0], torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)
    assert torch.equal(y[0, :, 1, 1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-3, rtol=0)
    z = torch.randn(2, 5, 4, 4, requires_grad=True)  # negatives: pos/neg split, still RGB
    out = nchannels_to_rgb(z, warp=True)
    assert out.shape == (2, 3, 4, 4) and (out >= 0).all()
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_random_crop_and_scale_shapes() -> None:
    x = _img(h=12, w=9)
    assert RandomCrop((6, 5), generator=_gen())(x).shape == (2, 3, 6, 5)
    with pytest.raises(InputError):
        RandomCrop(13)(x)
    y = RandomScale([0.5])(x)
    assert y.shape == (2, 3, 6, 4)
    torch.testing.assert_close(
        y, torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
    )
    with pytest.raises(InputError):
        RandomScale([])
    with pytest.raises(InputError):
        RandomScale([0.0, 1.0])


def test_scale_affine_zoom_convention() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[..., 2:6, 2:6] = 1.0
    out = RandomScaleAffine([2.0])(x)  # m > 1: the content shrinks to half
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum(), x.sum() / 4)


def test_transformation_robustness_pipeline() -> None:
    x = _img(h=20, w=20)
    tr = TransformationRobustness(generator=_gen(2))
    assert isinstance(tr.padding_transform, nn.ConstantPad2d)
    assert TransformationRobustness().padding_transform is not tr.padding_transform
    assert len(tr.jitter_transforms) == 10
    y = TransformationRobustness(crop_or_pad_output=True, generator=_gen(2))(x)
    assert y.shape == x.shape
    only_pad = TransformationRobustness(None, None, None, None, None, crop_or_pad_output=True)
    assert torch.equal(only_pad(x), x)
    padded = TransformationRobustness(
        translate=None, scale=None, degrees=None, final_translate=None
    )
    assert torch.equal(padded(x), nn.functional.pad(x, [2, 2, 2, 2], value=0.5))
    with pytest.raises(InputError):
        tr(x[0])
    with pytest.raises(InputError):
        TransformationRobustness(padding_transform="zeros")


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        RandomSpatialJitter(-1)
    with pytest.raises(InputError):
        RandomSpatialJitter(5)(_img(h=4, w=4))
    with pytest.raises(InputError):
        RandomSpatialJitter(2).shift(_img(), 3, 0)
    with pytest.raises(InputError):
        RandomRotation(torch.zeros(2, 2))
    with pytest.raises(InputError):
        RandomScale(torch.distributions.Uniform(torch.zeros(2), torch.ones(2)))


def test_center_crop_reflect_padding_mode() -> None:
    x = _img(h=6, w=6, dtype=torch.float64)
    y = center_crop(x, 8, padding_mode="reflect")
    assert torch.equal(y, nn.functional.pad(x, [1, 1, 1, 1], mode="reflect"))


def test_under_torch_compile() -> None:
    x = _img(h=16, w=16)
    for m in [
        GaussianSmoothing(3, 3, 1.0, padding="symmetric"),
        CenterCrop(8),
        SymmetricPadding(2),
        NChannelsToRGB(),
        RandomRotation([30.0]),
        RandomScaleAffine([1.2]),
    ]:
        torch.testing.assert_close(torch.compile(m, backend="eager")(x), m(x))
