"""Image parameterizations and colour transforms: exact inverses, 1/f closed form, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llmattr._core.errors import InputError
from llmattr.optim.colour import ToRGB, i1i2i3_matrix, klt_matrix
from llmattr.optim.images import (
    FFTImage,
    ImageParameterization,
    ImageTensor,
    LaplacianImage,
    NaturalImage,
    PixelImage,
    SharedImage,
    StackImage,
    _linear_weights,
    _upsample,
    fft_frequencies,
)

BASIC = [PixelImage, FFTImage, LaplacianImage]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(batch: int, channels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """An image strictly inside (0, 1), float64."""
    return torch.rand(batch, channels, h, w, generator=_gen(seed), dtype=torch.float64) * 0.9 + 0.05


# --- ToRGB -------------------------------------------------------------------------------------


def test_klt_matrix_columns_normalized_and_i1i2i3_values():
    klt = klt_matrix()
    assert klt.norm(dim=0).max().item() == pytest.approx(1.0, abs=1e-15)
    raw = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    torch.testing.assert_close(klt * raw.double().norm(dim=0).max(), raw.double())
    i = i1i2i3_matrix()
    assert i[0].tolist() == pytest.approx([1 / 3] * 3)
    assert i[1].tolist() == [0.5, 0.0, -0.5]
    assert i[2].tolist() == [-0.25, 0.5, -0.25]


@pytest.mark.parametrize("transform", ["klt", "i1i2i3", "matrix"])
@pytest.mark.parametrize("channels", [3, 4])
def test_to_rgb_exact_inverse_float64(transform, channels):
    if transform == "matrix":
        transform = torch.randn(3, 3, generator=_gen(3), dtype=torch.float64) + 2 * torch.eye(3)
    to_rgb = ToRGB(transform)
    x = torch.randn(2, channels, 5, 6, generator=_gen(1), dtype=torch.float64)
    y = to_rgb(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    torch.testing.assert_close(to_rgb(y, inverse=True), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(to_rgb(to_rgb(x, inverse=True)), x, rtol=0, atol=1e-13)
    # forward is the matrix at every pixel; alpha passes through untouched
    expected = torch.einsum("ij,njhw->nihw", to_rgb.transform, x[:, :3])
    torch.testing.assert_close(y[:, :3], expected, rtol=0, atol=1e-15)
    if channels == 4:
        assert torch.equal(y[:, 3], x[:, 3])


def test_to_rgb_unbatched_float32_and_general_size():
    to_rgb = ToRGB("klt")
    x = torch.rand(3, 4, 4, generator=_gen(2))
    y = to_rgb(x)
    assert y.shape == (3, 4, 4) and y.dtype == torch.float32
    torch.testing.assert_close(to_rgb(y, inverse=True), x, rtol=1e-5, atol=1e-6)
    five = ToRGB(torch.eye(5) * 2)
    torch.testing.assert_close(five(torch.ones(1, 5, 2, 2)), torch.full((1, 5, 2, 2), 2.0))


def test_to_rgb_errors():
    with pytest.raises(InputError, match="unknown"):
        ToRGB("hsv")
    with pytest.raises(InputError, match="singular"):
        ToRGB(torch.ones(3, 3))
    with pytest.raises(InputError, match="square"):
        ToRGB(torch.ones(3, 2))
    with pytest.raises(InputError, match="got 2"):
        ToRGB()(torch.rand(1, 2, 4, 4))
    with pytest.raises(InputError, match="floating"):
        ToRGB()(torch.ones(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        ToRGB()(torch.rand(3, 4))


# --- init round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BASIC)
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_init_round_trip_exact(cls, channels, hw):
    x = _image(2, channels, *hw)
    param = cls(init=x, channels=channels, batch=2)
    assert param.size == hw and param.channels == channels and param.batch == 2
    out = param()
    assert out.shape == (2, channels, *hw) and out.dtype == torch.float64
    torch.testing.assert_close(out, x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("param_cls", BASIC)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_natural_image_init_round_trip(param_cls, channels):
    x = _image(1, channels, 6, 7, seed=5)
    img = NaturalImage(init=x, channels=channels, parameterization=param_cls)
    torch.testing.assert_close(img(), x, rtol=0, atol=1e-12)
    assert (img.decorrelate is not None) == (channels in (3, 4))


def test_init_float32_and_batch_broadcast():
    x = _image(1, 3, 8, 8).float()
    img = NaturalImage(init=x[0], batch=3)
    out = img()
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out, x.expand(3, -1, -1, -1), rtol=1e-4, atol=2e-5)


def test_natural_image_custom_squash_needs_inverse():
    x = _image(1, 3, 4, 4)
    with pytest.raises(InputError, match="squash_inverse"):
        NaturalImage(init=x, squash=torch.tanh)
    img = NaturalImage(init=x, squash=torch.tanh, squash_inverse=torch.atanh)
    torch.testing.assert_close(img(), x, rtol=0, atol=1e-12)
    ident = NaturalImage(init=x, squash=None, decorrelate="i1i2i3")
    torch.testing.assert_close(ident(), x, rtol=0, atol=1e-13)


# --- the 1/f spectrum --------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (7, 5)])
def test_fft_scale_is_one_over_f_closed_form(hw):
    h, w = hw
    param = FFTImage(hw, channels=1).double()
    scale = param.spectrum_scale
    assert scale.shape == (h, w // 2 + 1)
    for ky in range(h):
        for kx in range(w // 2 + 1):
            fy = (ky if ky < (h + 1) // 2 else ky - h) / h  # numpy's fftfreq convention
            f = math.hypot(fy, kx / w)
            expected = max(h, w) if f < 1 / max(h, w) else 1 / f
            assert scale[ky, kx].item() == pytest.approx(expected, rel=1e-12)
    assert scale[0, 0].item() == max(h, w)
    squared = FFTImage(hw, channels=1, decay_power=2.0).double().spectrum_scale
    torch.testing.assert_close(squared, scale**2)


def test_fft_single_coefficient_is_scaled_cosine():
    h, w, kx = 8, 12, 3
    param = FFTImage((h, w), channels=1).double()
    with torch.no_grad():
        param.fourier_coeffs.zero_()
        param.fourier_coeffs[0, 0, 0, kx, 0] = 1.0
    out = param()[0, 0]
    amp = 2 * (w / kx) / math.sqrt(h * w)  # scale 1/f with f = kx / w; ortho irfft2
    cols = torch.arange(w, dtype=torch.float64)
    expected = amp * torch.cos(2 * math.pi * kx * cols / w).expand(h, w)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # the DC coefficient is the mean times sqrt(HW), scaled by max(H, W)
    with torch.no_grad():
        param.fourier_coeffs.zero_()
        param.fourier_coeffs[0, 0, 0, 0, 0] = 1.0
    torch.testing.assert_close(
        param(), torch.full((1, 1, h, w), max(h, w) / math.sqrt(h * w), dtype=torch.float64)
    )


def test_fft_frequencies_match_numpy():
    f = fft_frequencies(6, 9).numpy()
    fy, fx = np.fft.fftfreq(6)[:, None], np.fft.rfftfreq(9)[None, :]
    np.testing.assert_allclose(f, np.sqrt(fy**2 + fx**2), rtol=0, atol=1e-15)


# --- gradients, dtypes, seeds ------------------------------------------------------------------


def _all_kinds(channels: int = 3, batch: int = 2) -> list[ImageParameterization]:
    g = _gen(7)
    kinds: list[ImageParameterization] = [
        cls(8, channels=channels, batch=batch, generator=g) for cls in BASIC
    ]
    kinds.append(NaturalImage(8, channels=channels, batch=batch, generator=g))
    kinds.append(NaturalImage(8, channels, batch, parameterization=LaplacianImage, generator=g))
    kinds.append(SharedImage([(2, 2), (1, channels, 3, 3)], FFTImage(8, channels, batch)))
    kinds.append(StackImage([PixelImage(8, channels), FFTImage(8, channels, batch - 1)]))
    return kinds


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_reach_every_parameter(channels, dtype):
    for param in _all_kinds(channels):
        param = param.to(dtype)
        out = param()
        assert out.shape == (2, channels, 8, 8) and out.dtype == dtype
        weights = torch.randn(out.shape, generator=_gen(9)).to(dtype)
        (out * weights).sum().backward()
        for name, p in param.named_parameters():
            assert p.grad is not None, (type(param).__name__, name)
            assert torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0, (type(param).__name__, name)


def test_natural_image_in_unit_range_and_alpha_not_mixed():
    img = NaturalImage(8, channels=4, generator=_gen(1)).double()
    out = img()
    assert ((out > 0) & (out < 1)).all()
    raw = img.parameterization()
    torch.testing.assert_close(out[:, 3], torch.sigmoid(raw[:, 3]))
    torch.testing.assert_close(out[:, :3], torch.sigmoid(img.decorrelate(raw)[:, :3]))


def test_seeded_random_start():
    a = NaturalImage(8, generator=_gen(4))
    b = NaturalImage(8, generator=_gen(4))
    c = NaturalImage(8, generator=_gen(5))
    assert torch.equal(a(), b())
    assert not torch.equal(a(), c())


def test_optimizing_reaches_a_target():
    target = _image(1, 3, 8, 8).float()
    img = NaturalImage(8, generator=_gen(0))
    opt = torch.optim.Adam(img.parameters(), lr=0.1)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = ((img() - target) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


# --- SharedImage / StackImage ------------------------------------------------------------------


def test_shared_image_is_shared_across_batch():
    base = PixelImage(init=torch.zeros(3, 3, 6, 6, dtype=torch.float64), batch=3)
    shared = SharedImage([(1, 1), (3, 3)], base, generator=_gen(2))
    out = shared()
    assert out.shape == (3, 3, 6, 6)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.equal(out[:, 0], out[:, 1])  # channel dim 1 broadcasts
    with torch.no_grad():
        shared.shared[1].zero_()
    torch.testing.assert_close(out.new_full(out.shape, shared.shared[0].item()), shared())
    with pytest.raises(InputError, match="batch must be 1 or 3"):
        SharedImage([(2, 3, 4, 4)], base)
    with pytest.raises(InputError, match="channels 1 or 3"):
        SharedImage([(2, 4, 4)], base)


def test_stack_image_concatenates_and_checks():
    a = PixelImage(init=_image(1, 3, 5, 5, seed=1))
    b = FFTImage(init=_image(2, 3, 5, 5, seed=2), batch=2)
    stack = StackImage([a, b])
    assert stack.batch == 3
    torch.testing.assert_close(stack(), torch.cat([a(), b()]))
    with pytest.raises(InputError, match="parameterization 1"):
        StackImage([a, PixelImage(5, channels=1)])
    with pytest.raises(InputError, match="parameterization 1"):
        StackImage([a, PixelImage(6)])


# --- ImageTensor -------------------------------------------------------------------------------


def test_image_tensor_is_a_tensor_and_draws():
    x = ImageTensor(_image(2, 3, 4, 5))
    assert isinstance(x * 2, ImageTensor) and isinstance(x, torch.Tensor)
    fig, ax = x.show()
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    drawn = ax.get_images()[0].get_array()
    assert drawn.shape == (4, 10, 3)  # batch side by side
    fig, ax = ImageTensor(torch.rand(1, 4, 4)).show()
    assert ax.get_images()[0].get_cmap().name == "gray"
    with pytest.raises(InputError, match="got 2"):
        ImageTensor(torch.rand(2, 4, 4)).show()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_export_png_round_trip(tmp_path, channels):
    x = _image(2, channels, 4, 5)
    path = ImageTensor(x).export(tmp_path / "img.png")
    back = ImageTensor.open(path)
    assert back.shape == (1, channels, 4, 10)
    expected = torch.cat(list(x), dim=2).unsqueeze(0)
    torch.testing.assert_close(back.double(), torch.round(expected * 255) / 255, rtol=0, atol=1e-7)


def test_parameterization_image_returns_detached_image_tensor():
    img = NaturalImage(8, generator=_gen(0))
    shown = img.image()
    assert isinstance(shown, ImageTensor) and not shown.requires_grad


# --- bad input ---------------------------------------------------------------------------------


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="size"):
        PixelImage()
    with pytest.raises(InputError, match="height, width"):
        FFTImage((4, 0))
    with pytest.raises(InputError, match="channels"):
        FFTImage(4, channels=0)
    with pytest.raises(InputError, match="init has 3 channels"):
        FFTImage(init=torch.rand(1, 3, 4, 4), channels=1)
    with pytest.raises(InputError, match="init has size"):
        PixelImage(5, init=torch.rand(3, 4, 4))
    with pytest.raises(InputError, match="NaN"):
        LaplacianImage(init=torch.full((3, 4, 4), float("nan")))
    with pytest.raises(InputError, match="batch 2"):
        PixelImage(init=torch.rand(2, 3, 4, 4), batch=3)
    with pytest.raises(InputError, match="2x2 ToRGB"):
        NaturalImage(4, channels=4, decorrelate=ToRGB(torch.eye(2)))


# --- resizing and torch.compile ----------------------------------------------------------------


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (16, 9)])
def test_upsample_matches_bilinear_interpolate(hw):
    x = torch.randn(2, 3, 3, 5, generator=_gen(6), dtype=torch.float64)
    ours = _upsample(x, _linear_weights(hw[0], 3), _linear_weights(hw[1], 5))
    ref = torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)


def test_parameterizations_trace_under_torch_compile():
    for param in _all_kinds(3):
        compiled = torch.compile(param, backend="aot_eager", fullgraph=True)
        out = compiled()
        torch.testing.assert_close(out, param())
        out.sum().backward()
        assert all(p.grad is not None for p in param.parameters())
