"""Which dtypes optim's parameterizations, transforms and optimization support (the README's
table is this file), optim-wip's ``InputOptimization`` conventions, and ``torch.compile``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from llmattr.optim import (
    CenterCrop,
    ChannelActivation,
    FFTImage,
    GaussianSmoothing,
    InputOptimization,
    LaplacianImage,
    NaturalImage,
    NChannelsToRGB,
    NonFiniteLossError,
    PixelImage,
    RandomCrop,
    RandomRotation,
    RandomScale,
    RandomScaleAffine,
    RandomSpatialJitter,
    SymmetricPadding,
    ToRGB,
    TransformationRobustness,
    n_steps,
)
from llmattr.optim.transforms import RandomSpatialJitter as _Jitter

LOW = (torch.float64, torch.float16, torch.bfloat16)

PARAMS: dict[str, Callable[[], nn.Module]] = {
    "PixelImage": lambda: PixelImage((16, 16)),
    "FFTImage": lambda: FFTImage((16, 16)),
    "FFTImage odd size": lambda: FFTImage((15, 13)),
    "LaplacianImage": lambda: LaplacianImage((16, 16)),
    "NaturalImage": lambda: NaturalImage((16, 16)),
}

TRANSFORMS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "ToRGB": lambda: ToRGB("klt"),
    "ToRGB inverse": lambda: lambda x: ToRGB("klt")(x, inverse=True),
    "RandomScale": lambda: RandomScale([0.9, 1.1]),
    "RandomScaleAffine": lambda: RandomScaleAffine([0.9, 1.1]),
    "RandomSpatialJitter": lambda: RandomSpatialJitter(3),
    "RandomRotation": lambda: RandomRotation([-10.0, 10.0]),
    "SymmetricPadding": lambda: SymmetricPadding(2),
    "GaussianSmoothing": lambda: GaussianSmoothing(3, 3, 1.0),
    "CenterCrop": lambda: CenterCrop(12),
    "RandomCrop": lambda: RandomCrop(12),
    "TransformationRobustness": lambda: TransformationRobustness(),
    "NChannelsToRGB": lambda: NChannelsToRGB(),
}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", list(PARAMS))
def test_every_parameterization_runs_forward_and_backward_in_its_dtype(name, dtype) -> None:
    torch.manual_seed(0)
    param = PARAMS[name]().to(dtype)
    out = param()
    assert out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    out.float().square().sum().backward()
    grads = [p.grad for p in param.parameters()]
    assert grads and all(g is not None and g.dtype == dtype for g in grads)
    assert all(torch.isfinite(g.float()).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_runs_forward_and_backward_in_its_dtype(name, dtype) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16, dtype=dtype, requires_grad=True)
    out = TRANSFORMS[name]()(x)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    out.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_low_precision_fft_image_matches_float32(dtype) -> None:
    """float16 has no CPU FFT and bfloat16 no complex type: both run the FFT in float32."""
    torch.manual_seed(0)
    ref = FFTImage((16, 16))
    low = FFTImage((16, 16)).to(dtype)
    with torch.no_grad():
        low.fourier_coeffs.copy_(ref.fourier_coeffs.to(dtype))
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    expected = FFTImage((16, 16))
    with torch.no_grad():
        expected.fourier_coeffs.copy_(low.fourier_coeffs.float())
    torch.testing.assert_close(
        low().float(), expected(), atol=tol * float(ref().abs().max()), rtol=0
    )
    image = torch.rand(1, 3, 16, 16).to(dtype)  # init round-trips through the float32 FFT
    back = FFTImage(init=image)()
    assert back.dtype == dtype
    torch.testing.assert_close(back.float(), image.float(), atol=tol * 2, rtol=0)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU())


def _render(model_dtype: torch.dtype, param_dtype: torch.dtype, steps: int = 40) -> torch.Tensor:
    model = _net().to(model_dtype)
    torch.manual_seed(1)
    image = NaturalImage((24, 24)).to(param_dtype)
    opt = InputOptimization(model, ChannelActivation(model[2], 2), image, nn.Identity())
    history = opt.optimize(n_steps(steps, show_progress=False), lr=0.05)
    assert image().dtype == param_dtype  # the parameterization keeps its dtype
    return history.float()


def test_float64_bfloat16_and_mixed_precision_render_like_float32() -> None:
    """The objective improves in every supported setup and tracks float32's history."""
    ref = _render(torch.float32, torch.float32)
    assert ref[-1] < ref[0] - 0.01  # the channel's activation grew
    torch.testing.assert_close(_render(torch.float64, torch.float64), ref, atol=1e-5, rtol=0)
    for model_dtype, param_dtype, atol in (
        (torch.float16, torch.float32, 2e-3),  # mixed precision: the input is cast for the forward
        (torch.bfloat16, torch.float32, 1e-2),  # bfloat16 keeps 8 bits of mantissa
        (torch.bfloat16, torch.bfloat16, 1e-2),
    ):
        history = _render(model_dtype, param_dtype)
        assert history[-1] < history[0] - 0.01
        torch.testing.assert_close(history, ref, atol=atol, rtol=0, msg=str(model_dtype))


def test_float16_parameters_get_a_clear_error_naming_the_fix() -> None:
    with pytest.raises(NonFiniteLossError, match=r"float16.*keep the parameterization in float32"):
        _render(torch.float16, torch.float16, steps=5)


def test_optim_wip_conventions() -> None:
    """transform=None means optim-wip's jitter (even with an input given); targets/cleanup."""
    model = _net()
    opt = InputOptimization(model, ChannelActivation(model[2], 0), NaturalImage((40, 40)))
    kinds = [type(m) for m in opt.transform]
    assert kinds == [RandomScale, _Jitter]
    assert opt.targets == [model[2]]
    opt.targets = [model[2], "3"]
    assert opt.targets == [model[2], model[3]]
    opt.cleanup()
    assert len(opt.optimize(n_steps(2, show_progress=False))) == 2


def test_input_parameterization_follows_the_model_dtype_device_only() -> None:
    model = _net().double()
    image = NaturalImage((24, 24))
    opt = InputOptimization(model, ChannelActivation(model[2], 0), image, nn.Identity())
    # moved to the model's device (CPU here), dtype left alone: float32 into a float64 model fails
    assert next(opt.input_param.parameters()).dtype == torch.float32


def test_parameterizations_and_transforms_compile_with_inductor() -> None:
    """torch.compile's default backend: deterministic modules equal eager (forward and grad)."""
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    image = NaturalImage((16, 16))
    smooth = GaussianSmoothing(3, 3, 1.0)
    compiled = torch.compile(lambda: smooth(image()))
    out = compiled()
    ref = smooth(image())
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    (g_c,) = torch.autograd.grad(out.square().sum(), [image.parameterization.fourier_coeffs])
    (g_e,) = torch.autograd.grad(ref.square().sum(), [image.parameterization.fourier_coeffs])
    torch.testing.assert_close(g_c, g_e, atol=1e-5, rtol=1e-5)


def test_natural_image_takes_optim_wip_keyword_names() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8) * 0.8 + 0.1
    same = NaturalImage(init=image, squash_func=torch.sigmoid, decorrelation_module=ToRGB("klt"))
    torch.testing.assert_close(same(), image, atol=1e-5, rtol=0)
    plain = NaturalImage((8, 8), decorrelation_module=None)
    assert plain.decorrelate is None
    # without decorrelate_init the init is not mapped through ToRGB's inverse
    raw = NaturalImage(init=image, decorrelate_init=False)
    expected = torch.sigmoid(ToRGB("klt")(torch.logit(image)))
    torch.testing.assert_close(raw(), expected, atol=1e-5, rtol=0)
