"""Image baselines: constant, mean, blur, seeded noise, harmonic inpainting; tensors and PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llmattr._core.errors import InputError
from llmattr.vision.baselines import (
    BlurBaseline,
    ConstantBaseline,
    InpaintBaseline,
    MeanBaseline,
    NoiseBaseline,
    baseline_from,
    dataset_mean,
    gaussian_blur,
)


def _hole(h: int = 12, w: int = 14) -> torch.Tensor:
    removed = torch.zeros(h, w, dtype=torch.bool)
    removed[3:9, 4:11] = True
    return removed


def _rgb_pil(h: int = 12, w: int = 14, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode)
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def test_constant_tensor_scalar_and_per_channel():
    img = torch.rand(2, 3, 12, 14, dtype=torch.float64)
    keep = img.clone()
    removed = _hole()
    out = ConstantBaseline((0.1, 0.2, 0.3)).fill(img, removed)
    assert torch.equal(img, keep)  # input untouched
    assert torch.equal(out[:, :, ~removed], img[:, :, ~removed])
    expected = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)[None, :, None]
    assert torch.equal(out[:, :, removed], expected.expand(2, 3, int(removed.sum())))
    assert torch.equal(ConstantBaseline(0.5).as_tensor(img[0]), torch.full_like(img[0], 0.5))
    with pytest.raises(InputError, match="3 colour channel"):
        ConstantBaseline((1.0, 2.0)).fill(img, removed)


def test_constant_pil_rgb_rgba_l():
    removed = _hole()
    rgb = _rgb_pil()
    before = np.array(rgb)
    out = ConstantBaseline((255, 0, 10)).fill(rgb, removed)
    assert out.mode == "RGB" and out.size == rgb.size and np.array_equal(np.array(rgb), before)
    arr = np.array(out)
    assert (arr[removed.numpy()] == [255, 0, 10]).all()
    assert np.array_equal(arr[~removed.numpy()], before[~removed.numpy()])
    rgba = _rgb_pil(mode="RGBA")
    out = ConstantBaseline((1, 2, 3)).fill(rgba, removed)
    assert out.mode == "RGBA"
    assert np.array_equal(np.array(out)[..., 3], np.array(rgba)[..., 3])  # alpha kept
    grey = _rgb_pil(mode="L")
    assert (np.array(ConstantBaseline(7).fill(grey, removed))[removed.numpy()] == 7).all()
    for bad in [(255, 255), (255.0, 0.0, 0.0), (0, 0, 256), (1, 2, 3, 4)]:
        with pytest.raises(InputError, match=r"ints in 0-255|3 colour channel"):
            ConstantBaseline(bad).fill(rgb, removed)
    with pytest.raises(InputError, match="convert"):
        ConstantBaseline(0).fill(rgb.convert("P"), removed)


def test_mean_baseline_and_dataset_mean():
    imgs = torch.rand(4, 3, 6, 5, dtype=torch.float64)
    mean = dataset_mean(imgs)
    torch.testing.assert_close(mean, imgs.permute(1, 0, 2, 3).reshape(3, -1).mean(1))
    torch.testing.assert_close(dataset_mean(list(imgs)), mean)
    pils = [_rgb_pil(seed=s) for s in range(3)]
    expected = np.stack([np.array(p) for p in pils]).reshape(-1, 3).mean(0)
    torch.testing.assert_close(dataset_mean(pils), torch.from_numpy(expected))
    full = MeanBaseline(mean).as_tensor(imgs[0])
    torch.testing.assert_close(full, mean[:, None, None].expand(3, 6, 5))
    own = MeanBaseline().as_tensor(imgs[0])
    torch.testing.assert_close(own[:, 0, 0], imgs[0].mean((1, 2)))


def test_gaussian_blur_matches_2d_convolution():
    torch.manual_seed(0)
    img = torch.rand(1, 2, 16, 15, dtype=torch.float64)
    sigma = 1.3
    out = gaussian_blur(img, sigma)
    r = 4
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k2 = torch.outer(k, k) / k.sum() ** 2
    padded = torch.nn.functional.pad(img, (r, r, r, r), mode="reflect")
    ref = torch.nn.functional.conv2d(padded, k2.expand(2, 1, -1, -1), groups=2)
    torch.testing.assert_close(out, ref)
    const = torch.full((1, 3, 5, 4), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 10.0), const)  # radius capped, still exact


def test_blur_fill_keeps_pixels_and_works_on_pil():
    img = torch.rand(3, 12, 14, dtype=torch.float64)
    removed = _hole()
    out = BlurBaseline(2.0).fill(img, removed)
    assert torch.equal(out[:, ~removed], img[:, ~removed])
    torch.testing.assert_close(out[:, removed], gaussian_blur(img[None], 2.0)[0][:, removed])
    pil = BlurBaseline(2.0).fill(_rgb_pil(), removed)
    assert pil.mode == "RGB" and pil.size == (14, 12)


def test_noise_seeded_and_independent_of_global_rng():
    img = torch.rand(3, 12, 14, dtype=torch.float64)
    removed = _hole()
    torch.manual_seed(1)
    a = NoiseBaseline(0.2, seed=5).fill(img, removed)
    torch.manual_seed(2)
    b = NoiseBaseline(0.2, seed=5).fill(img, removed)
    c = NoiseBaseline(0.2, seed=6).fill(img, removed)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, ~removed], img[:, ~removed])
    # a pixel's noise does not depend on which other pixels are removed
    smaller = removed.clone()
    smaller[3] = False
    d = NoiseBaseline(0.2, seed=5).fill(img, smaller)
    assert torch.equal(d[:, smaller], a[:, smaller])
    zero_mean = NoiseBaseline(1.0, seed=0, mean=0.0).as_tensor(torch.zeros(3, 40, 40))
    assert abs(float(zero_mean.mean())) < 0.1 and abs(float(zero_mean.std()) - 1) < 0.1
    flat = Image.new("RGB", (14, 12), (128, 128, 128))
    pil = np.array(NoiseBaseline(0.1, seed=0).fill(flat, removed)).astype(float)
    assert 20 < pil[removed.numpy()].std() < 30  # std 0.1 of the 0-255 range
    assert (pil[~removed.numpy()] == 128).all()


def test_inpaint_reproduces_a_linear_ramp_and_constants():
    h, w = 12, 14
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    ramp = torch.stack([2 * xs - 3 * ys + 1, 0.5 * ys, torch.full_like(xs, 0.25)])
    removed = _hole(h, w)
    painted = ramp.clone()
    painted[:, removed] = 99.0  # what is under the hole must not matter
    out = InpaintBaseline(tol=1e-12).fill(painted, removed)
    torch.testing.assert_close(out, ramp, atol=1e-8, rtol=0)


def test_inpaint_is_discrete_harmonic_and_keeps_pixels():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 12, 14, dtype=torch.float64)
    removed = torch.rand(2, 12, 14) > 0.6  # one mask per image
    removed[1, 0, :] = True  # touches the border: no flux there
    out = InpaintBaseline(tol=1e-12).fill(img, removed)
    assert torch.equal(out[~removed[:, None].expand_as(img)], img[~removed[:, None].expand_as(img)])
    padded = torch.nn.functional.pad(out, (1, 1, 1, 1), mode="replicate")
    lap = (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
        - 4 * out
    )  # replicate padding = zero flux across the border
    assert float(lap[removed[:, None].expand_as(img)].abs().max()) < 1e-8
    # each image of the batch is solved on its own: the batch does not change the result
    loose = InpaintBaseline(tol=1e-4)
    batched = loose.fill(img, removed)
    for i in range(2):
        assert torch.equal(batched[i], loose.fill(img[i], removed[i]))
    everything = InpaintBaseline(fallback=0.5).fill(img[0], torch.ones(12, 14, dtype=torch.bool))
    assert torch.equal(everything, torch.full_like(img[0], 0.5))
    with pytest.raises(InputError, match="depends on which pixels"):
        InpaintBaseline().as_tensor(img[0])


def test_inpaint_pil_constant_image_stays_constant():
    pil = Image.new("RGB", (14, 12), (10, 200, 30))
    out = InpaintBaseline().fill(pil, _hole())
    assert np.array_equal(np.array(out), np.array(pil))


def test_fill_validation():
    img = torch.rand(3, 12, 14)
    with pytest.raises(InputError, match=r"\(6, 7\).*\(12, 14\).*nearest-neighbour"):
        ConstantBaseline(0.0).fill(img, torch.zeros(6, 7, dtype=torch.bool))
    with pytest.raises(InputError, match="boolean"):
        ConstantBaseline(0.0).fill(img, torch.full((12, 14), 2))
    with pytest.raises(InputError, match="float"):
        ConstantBaseline(0.0).fill(torch.zeros(3, 12, 14, dtype=torch.long), _hole())


def test_baseline_from():
    assert isinstance(baseline_from((255, 255, 255)), ConstantBaseline)
    white = baseline_from("white")
    assert float(white.as_tensor(torch.zeros(1, 2, 2)).max()) == 1.0
    assert (np.array(white.fill(_rgb_pil(), _hole())))[_hole().numpy()].min() == 255
    assert float(baseline_from(0.25).as_tensor(torch.zeros(1, 2, 2)).max()) == 0.25
    for name, kind in [
        ("mean", MeanBaseline),
        ("blur", BlurBaseline),
        ("noise", NoiseBaseline),
        ("inpaint", InpaintBaseline),
    ]:
        assert isinstance(baseline_from(name), kind)
    inst = BlurBaseline(1.0)
    assert baseline_from(inst) is inst
    with pytest.raises(InputError, match="Unknown baseline"):
        baseline_from("grey")
    with pytest.raises(InputError, match="Cannot make"):
        baseline_from(None)
