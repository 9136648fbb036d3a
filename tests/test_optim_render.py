"""render_channels (batched channel renders), image_grid and PNG saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from llmattr._core.errors import InputError
from llmattr.optim.images import FFTImage, NaturalImage, PixelImage
from llmattr.optim.render import image_grid, render_channels, save_grid, save_png
from llmattr.optim.transforms import RandomSpatialJitter


def _cnn(in_ch: int = 3, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU()
    )
    return model.to(dtype).eval()


def _act(model: nn.Module, images: torch.Tensor, chans: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model[:3](images)  # the conv "2", before its ReLU
    return out[torch.arange(len(chans)), torch.tensor(chans)].mean((1, 2))


@pytest.mark.parametrize("param", [NaturalImage, FFTImage, PixelImage])
def test_batched_render_equals_each_channel_alone_float64(param: type) -> None:
    model = _cnn(dtype=torch.float64)
    chans = [4, 0, 2]
    kw = dict(size=(12, 10), n_steps=15, lr=0.05, parameterization=param, seed=3)
    batched = render_channels(model, "2", chans, **kw)
    assert batched.shape == (3, 3, 12, 10) and batched.dtype == torch.float64
    for i, c in enumerate(chans):
        alone = render_channels(model, model[2], [c], **kw)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-10)


def test_batched_equals_alone_with_a_reseeded_random_transform() -> None:
    model = _cnn(dtype=torch.float64)

    def jitter() -> nn.Module:
        return RandomSpatialJitter(2, generator=torch.Generator().manual_seed(7))

    kw = dict(size=12, n_steps=10, lr=0.05, seed=1)
    batched = render_channels(model, "2", [1, 3], transform=jitter(), **kw)
    alone = render_channels(model, "2", [3], transform=jitter(), **kw)
    torch.testing.assert_close(batched[1:], alone, rtol=0, atol=1e-10)


def test_each_channel_activation_rises_and_hooks_are_removed() -> None:
    model = _cnn()
    chans = [0, 1, 2, 3, 4]
    start = torch.cat(
        [NaturalImage((16, 16), generator=torch.Generator().manual_seed(0))().detach()] * 5
    )
    before = _act(model, start, chans)
    images, acts = render_channels(
        model, "2", chans, size=16, n_steps=40, lr=0.05, return_activations=True
    )
    after = _act(model, images, chans)
    torch.testing.assert_close(acts, after)
    assert bool((after > before + 1e-3).all()), (before, after)
    assert images.min() >= 0 and images.max() <= 1
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_restarts_keep_the_best_seed_per_channel() -> None:
    model = _cnn(dtype=torch.float64)
    kw = dict(size=10, n_steps=8, lr=0.05)
    best, best_acts = render_channels(model, "2", [0, 3], seed=5, restarts=3,
                                      return_activations=True, **kw)  # fmt: skip
    runs = [render_channels(model, "2", [0, 3], seed=5 + r, return_activations=True, **kw)
            for r in range(3)]  # fmt: skip
    acts = torch.stack([a for _, a in runs])  # (restarts, channels)
    for i in range(2):
        r = int(acts[:, i].argmax())
        torch.testing.assert_close(best_acts[i], acts[r, i], rtol=0, atol=1e-10)
        torch.testing.assert_close(best[i], runs[r][0][i], rtol=0, atol=1e-10)


def test_greyscale_model_renders() -> None:
    model = _cnn(in_ch=1)
    images = render_channels(model, "0", [0, 5], size=8, n_steps=5, input_channels=1)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_render_bad_input() -> None:
    model = _cnn()
    with pytest.raises(InputError, match="5 channels"):
        render_channels(model, "2", [5], size=8, n_steps=2)
    with pytest.raises(InputError, match=r"valid|names"):
        render_channels(model, "nope", [0], size=8, n_steps=2)
    with pytest.raises(InputError):
        render_channels(model, "2", [], size=8)
    with pytest.raises(InputError):
        render_channels(model, "2", [0], size=8, restarts=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_image_grid_layout_closed_form() -> None:
    n, c, h, w, pad, ncols = 5, 3, 4, 3, 2, 2
    images = torch.arange(1, n + 1, dtype=torch.float64).view(n, 1, 1, 1) / 10
    images = images.expand(n, c, h, w).clone()
    grid = image_grid(images, ncols=ncols, padding=pad, pad_value=-1.0)
    rows = 3
    assert grid.shape == (c, rows * (h + pad) + pad, ncols * (w + pad) + pad)
    expected = torch.full_like(grid, -1.0)
    for k in range(n):
        top, left = pad + (k // ncols) * (h + pad), pad + (k % ncols) * (w + pad)
        expected[:, top : top + h, left : left + w] = (k + 1) / 10
    torch.testing.assert_close(grid, expected, rtol=0, atol=0)
    assert grid[0, pad + 2 * (h + pad), pad + (w + pad)] == -1.0  # the empty 6th cell
    assert image_grid(images).shape == (c, 2 * (h + 2) + 2, 3 * (w + 2) + 2)  # ceil(sqrt(5))
    assert image_grid(images, ncols=9, padding=0).shape == (c, h, n * w)  # ncols capped at n


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_png_round_trip_exact_8bit(tmp_path, channels: int, mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(channels, 7, 9, generator=g, dtype=torch.float64) * 1.2 - 0.1
    path = save_png(image, tmp_path / "x.png")
    with Image.open(path) as img:
        assert img.mode == mode
        back = np.asarray(img)
    expected = np.round(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, expected[:, :, 0] if channels == 1 else expected)


def test_save_grid_writes_the_grid(tmp_path) -> None:
    images = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    path = save_grid(images, tmp_path / "g.png", ncols=3, padding=1)
    with Image.open(path) as img:
        back = np.asarray(img)
    grid = image_grid(images, ncols=3, padding=1)
    assert back.shape == (7, 19, 3)
    expected = np.round(grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, expected)
    with pytest.raises(InputError):
        save_png(torch.full((3, 2, 2), float("nan")), tmp_path / "bad.png")
    with pytest.raises(InputError):
        image_grid(images, ncols=0)


def test_linear_layer_logits_render_and_rise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    images, acts = render_channels(
        model, "3", [0, 1, 2], size=8, n_steps=30, input_channels=1, return_activations=True
    )
    with torch.no_grad():
        start = NaturalImage((8, 8), channels=1, generator=torch.Generator().manual_seed(0))()
        before, after = model(start)[0], model(images)
    torch.testing.assert_close(acts, after.diagonal())
    assert bool((acts > before + 0.1).all()), (before, acts)


def test_max_batch_chunks_equal_one_run_float64() -> None:
    """Channels rendered in chunks of at most max_batch images equal one batched run."""
    model = _cnn(dtype=torch.float64)
    chans = [4, 0, 2, 1, 3]
    kw = dict(size=10, n_steps=8, lr=0.05, seed=2, restarts=2, return_activations=True)
    whole, acts = render_channels(model, "2", chans, **kw)
    for max_batch in (1, 3, 4):
        parts, part_acts = render_channels(model, "2", chans, max_batch=max_batch, **kw)
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-10)
        torch.testing.assert_close(part_acts, acts, rtol=0, atol=1e-10)
    with pytest.raises(InputError, match="max_batch"):
        render_channels(model, "2", chans, max_batch=0)
