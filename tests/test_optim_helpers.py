"""llmattr.optim helpers: RedirectedReLU / replace_layers, ChannelReducer (torch NMF), posneg,
atlas grid helpers and expanded weights (circuits)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmattr._core.errors import InputError
from llmattr.optim.atlas import (
    calc_grid_indices,
    compute_avg_cell_samples,
    create_atlas,
    create_atlas_vectors,
    normalize_grid,
)
from llmattr.optim.circuits import center_crop_weights, extract_expanded_weights, max2avg_pool2d
from llmattr.optim.models import (
    MaxPool2dRelaxed,
    RedirectedReLU,
    SkipLayer,
    replace_layers,
    skip_layers,
)
from llmattr.optim.reducer import ChannelReducer, TorchNMF, posneg


@pytest.fixture(autouse=True)
def _one_thread():
    """The NMF loops are thousands of tiny matmuls: threads only add overhead (and contention on
    shared CI cores). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- RedirectedReLU


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_redirected_relu_forward_is_relu(dtype: torch.dtype) -> None:
    x = torch.randn(4, 3, 5, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    y = RedirectedReLU()(x)
    assert y.dtype == dtype
    assert torch.equal(y, torch.relu(x))


def test_redirected_relu_gradient_per_sample() -> None:
    # sample 0: all inputs negative (ReLU's gradient is all zero) -> the gradient passes unchanged;
    # sample 1: some inputs positive -> exactly ReLU's gradient.
    x = torch.tensor([[-1.0, -2.0, -0.5], [1.0, -2.0, 3.0]], dtype=torch.float64)
    g = torch.tensor([[0.3, -0.7, 1.1], [0.5, 0.6, -0.2]], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    RedirectedReLU()(xr).backward(g)
    assert torch.equal(xr.grad[0], g[0])
    xs = x.clone().requires_grad_(True)
    torch.relu(xs).backward(g)
    assert torch.equal(xs.grad[0], torch.zeros(3, dtype=torch.float64))  # ReLU is blocked
    assert torch.equal(xr.grad[1], xs.grad[1])  # live sample: ReLU's own gradient


def _dead_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every hidden unit is dead for small inputs
    return model


def test_replace_layers_unblocks_gradient_and_restores() -> None:
    model = _dead_mlp()
    old_relu = model[1]
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    model(x)[0, 0].backward()
    assert torch.count_nonzero(x.grad) == 0  # blank render: nothing to optimize

    handle = replace_layers(model, nn.ReLU, RedirectedReLU)
    assert len(handle) == 1 and isinstance(model[1], RedirectedReLU)
    x.grad = None
    out = model(x)
    out[0, 0].backward()
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0
    assert torch.equal(out, _dead_mlp()(x))  # forward unchanged
    handle.restore()
    assert model[1] is old_relu


def test_redirected_relu_lets_an_optimization_leave_the_dead_region() -> None:
    def render(model: nn.Module) -> float:
        x = torch.zeros(1, 4, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.5)
        for _ in range(40):
            opt.zero_grad()
            (-model(x)[0, 0]).backward()
            opt.step()
        return float(model(x)[0, 0].detach())

    model = _dead_mlp()
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
    dead_value = float(model(torch.zeros(1, 4))[0, 0].detach())  # = last bias: nothing is alive
    assert render(model) == pytest.approx(dead_value)  # plain ReLU: stuck, a blank render
    with replace_layers(model):
        escaped = render(model)
    assert escaped > dead_value + 1.0


def test_replace_layers_context_manager_restores_on_error() -> None:
    model = nn.Sequential(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), nn.ReLU())
    originals = [model[0][0], model[1]]
    with pytest.raises(RuntimeError, match="boom"), replace_layers(model):
        assert isinstance(model[0][0], RedirectedReLU) and isinstance(model[1], RedirectedReLU)
        raise RuntimeError("boom")
    assert [model[0][0], model[1]] == originals


def test_replace_layers_transfer_vars_and_copy() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    untouched = copy.deepcopy(model)
    replace_layers(untouched, nn.MaxPool2d, nn.AvgPool2d, transfer_vars=True)
    new = untouched[1]
    assert isinstance(new, nn.AvgPool2d)
    assert (new.kernel_size, new.stride, new.padding) == (3, 2, 1)
    assert isinstance(model[1], nn.MaxPool2d)  # the deepcopy left the original alone
    with pytest.raises(InputError):
        replace_layers(model, nn.ReLU, "RedirectedReLU")  # type: ignore[arg-type]


def test_skip_layers_linearizes() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    with skip_layers(model, [nn.ReLU]):
        assert isinstance(model[1], SkipLayer)
        assert torch.allclose(model(x), model[2](model[0](x)))
    assert isinstance(model[1], nn.ReLU)


def test_maxpool_relaxed_forward_max_backward_avg() -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    g = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    xr = x.clone().requires_grad_(True)
    y = MaxPool2dRelaxed(2)(xr)
    assert torch.allclose(y, nn.MaxPool2d(2)(x), rtol=0, atol=1e-12)  # up to rounding
    y.backward(g)
    xa = x.clone().requires_grad_(True)
    nn.AvgPool2d(2)(xa).backward(g)
    assert torch.allclose(xr.grad, xa.grad)  # every window position gets g / 4


def test_max2avg_pool2d() -> None:
    model = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1))
    x = torch.randn(1, 2, 7, 7, generator=torch.Generator().manual_seed(12))
    with max2avg_pool2d(model):
        assert torch.equal(model(x), nn.AvgPool2d(3, stride=2, padding=1)(x))
    assert isinstance(model[0], nn.MaxPool2d)


# --------------------------------------------------------------------------- NMF / reducer


def _planted(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    w0 = torch.rand(300, 3, generator=gen, dtype=dtype)
    h0 = torch.rand(3, 10, generator=gen, dtype=dtype)
    return w0 @ h0, w0, h0


def test_nmf_reconstructs_planted_low_rank() -> None:
    x, _, _ = _planted()
    nmf = TorchNMF(3, max_iter=2000, tol=1e-9)
    w = nmf.fit_transform(x)
    assert w.shape == (300, 3) and nmf.components_.shape == (3, 10)
    assert (w >= 0).all() and (nmf.components_ >= 0).all()
    rel = ((x - w @ nmf.components_).norm() / x.norm()).item()
    assert rel < 1e-2, rel
    # rank 1 cannot fit a rank-3 matrix: the error test is able to fail
    one = TorchNMF(1, max_iter=500)
    w1 = one.fit_transform(x)
    assert ((x - w1 @ one.components_).norm() / x.norm()).item() > 0.05


def test_nmf_seeded_reproducible() -> None:
    x, _, _ = _planted(torch.float32)
    a = TorchNMF(3, max_iter=50, seed=7).fit_transform(x)
    b = TorchNMF(3, max_iter=50, seed=7).fit_transform(x)
    c = TorchNMF(3, max_iter=50, seed=8).fit_transform(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_reducer_nchw(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    coeff = torch.rand(2, 2, 6, 5, generator=gen, dtype=dtype)  # (N, k, H, W)
    comps = torch.rand(2, 8, generator=gen, dtype=dtype)  # (k, C)
    acts = torch.einsum("nkhw,kc->nchw", coeff, comps)  # (N, C, H, W), rank 2 over channels
    reducer = ChannelReducer(2, "NMF", max_iter=3000, tol=1e-10)
    out = reducer.fit_transform(acts)
    assert out.shape == (2, 2, 6, 5) and out.dtype == dtype
    assert reducer.components.shape == (2, 8)
    recon = torch.einsum("nkhw,kc->nchw", out, reducer.components)
    assert ((recon - acts).norm() / acts.norm()).item() < 2e-2
    # (C, H, W) and (N, C) layouts
    assert ChannelReducer(2).fit_transform(acts[0]).shape == (2, 6, 5)
    assert ChannelReducer(2).fit_transform(acts[:, :, 0, 0]).shape == (2, 2)


def test_nmf_transform_and_custom_algorithm() -> None:
    x, _, _ = _planted()
    nmf = TorchNMF(3, max_iter=2000, tol=1e-9)
    nmf.fit_transform(x)
    w = nmf.transform(x[:20])
    assert ((x[:20] - w @ nmf.components_).norm() / x[:20].norm()).item() < 2e-2

    class FirstChannels:  # any object with fit_transform works; numpy results become tensors
        def __init__(self, n_components: int) -> None:
            self.k = n_components

        def fit_transform(self, a):
            self.components_ = a[: self.k]
            return a[:, : self.k]

    acts = torch.rand(2, 5, 3, 3, generator=torch.Generator().manual_seed(9))
    red = ChannelReducer(2, FirstChannels)
    out = red.fit_transform(acts)
    assert torch.equal(out, acts[:, :2])
    assert isinstance(red.components, torch.Tensor) and red.components.shape == (2, 5)


def test_channel_reducer_errors() -> None:
    with pytest.raises(InputError, match="posneg"):
        ChannelReducer(2).fit_transform(-torch.ones(1, 3, 2, 2))
    with pytest.raises(InputError, match="Unknown reduction_alg"):
        ChannelReducer(2, "NotAnAlgorithm")
    with pytest.raises(AttributeError):
        ChannelReducer(2).components  # noqa: B018 (not fitted yet)


def test_posneg_closed_form() -> None:
    x = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert torch.equal(posneg(x, 0), torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(posneg(x, 1), torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]]))
    y = posneg(x, 1)
    assert torch.equal(y[:, :2] - y[:, 2:], x)  # the split is exact


# --------------------------------------------------------------------------- atlas

_POINTS = torch.tensor(
    [
        [0.1, 0.1],  # cell (0, 0)
        [0.9, 0.2],  # cell (1, 0)
        [0.2, 0.8],  # cell (0, 1)
        [0.5, 0.3],  # on the inner x edge -> (1, 0) only (half-open cells)
        [1.0, 1.0],  # the upper corner -> (1, 1)
        [0.7, 0.9],  # cell (1, 1)
        [1.5, 0.5],  # outside the extent -> no cell
    ]
)


def test_calc_grid_indices_hand_made() -> None:
    idx = calc_grid_indices(_POINTS, (2, 2))
    as_lists = [[t.tolist() for t in col] for col in idx]
    assert as_lists == [[[0], [2]], [[1, 3], [4, 5]]]
    # 3 x 1 grid over x only
    idx3 = calc_grid_indices(_POINTS, (3, 1))
    assert [col[0].tolist() for col in idx3] == [[0, 2], [3], [1, 4, 5]]


def test_normalize_grid_and_atlas_vectors() -> None:
    pts = torch.tensor([[2.0, 10.0], [4.0, 30.0], [6.0, 20.0]])
    got = normalize_grid(pts, 0.0, 1.0, 0.0)
    assert torch.allclose(got, torch.tensor([[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]]))
    acts = torch.arange(14.0).reshape(7, 2)
    vecs, coords = compute_avg_cell_samples(calc_grid_indices(_POINTS, (2, 2)), acts, (2, 2), 2)
    assert coords == [(1, 0, 2), (1, 1, 2)]
    assert torch.equal(vecs, torch.stack([acts[[1, 3]].mean(0), acts[[4, 5]].mean(0)]))
    v2, c2 = create_atlas_vectors(_POINTS, acts, (2, 2), min_density=2, normalize=False)
    assert torch.equal(v2, vecs) and c2 == coords
    with pytest.raises(InputError, match="min_density"):
        compute_avg_cell_samples(calc_grid_indices(_POINTS, (2, 2)), acts, (2, 2), 5)


def test_create_atlas_places_cells() -> None:
    cells = torch.stack([torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 5.0)])  # (2, 1, 2, 3)
    cells[1, 0, 0, 0] = 7.0  # a marker: cells are not flipped
    atlas = create_atlas(cells, [(0, 0, 9), (2, 1, 9)], (3, 2), base_tensor=torch.zeros)
    assert atlas.shape == (1, 1, 4, 9)
    expect = torch.zeros(1, 1, 4, 9)
    expect[..., 2:4, 0:3] = 2.0  # (x=0, y=0): bottom-left
    expect[..., 0:2, 6:9] = 5.0  # (x=2, y=1): top-right
    expect[..., 0, 6] = 7.0
    assert torch.equal(atlas, expect)
    with pytest.raises(InputError, match="outside the grid"):
        create_atlas(cells, [(0, 0), (3, 0)], (3, 2))


# --------------------------------------------------------------------------- circuits


def _compose(w_top: torch.Tensor, w_low: torch.Tensor) -> torch.Tensor:
    """Kernel of cross-correlation with ``w_low`` then ``w_top``: (C3, C1, k1 + k2 - 1, ...)."""
    c3, _, ka, _ = w_top.shape
    _, c1, kb, _ = w_low.shape
    out = torch.zeros(c3, c1, ka + kb - 1, ka + kb - 1, dtype=w_top.dtype)
    for a in range(ka):
        for b in range(ka):
            for u in range(kb):
                for v in range(kb):
                    out[:, :, a + u, b + v] += w_top[:, :, a, b] @ w_low[:, :, u, v]
    return out


def _convs() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    ).double()


def test_expanded_weights_adjacent_equal_kernel() -> None:
    model = _convs()
    x = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    with skip_layers(model, nn.ReLU):
        w = extract_expanded_weights(model, model[1], model[3], crop_shape=3, model_input=x)
    assert w.shape == (2, 4, 3, 3)
    assert torch.allclose(w, model[3].weight)


def test_expanded_weights_two_linear_convs_composed_kernel() -> None:
    model = _convs()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with skip_layers(model, nn.ReLU):
        full = extract_expanded_weights(model, "0", "3", model_input=x)
        cropped = extract_expanded_weights(model, "0", "3", crop_shape=5, model_input=x)
    assert full.shape == (2, 3, 9, 9)
    expect = _compose(model[3].weight.detach(), model[1].weight.detach())
    assert torch.allclose(cropped, expect, atol=1e-12)
    assert torch.equal(center_crop_weights(full, 5), cropped)
    outside = full.clone()
    outside[..., 2:7, 2:7] = 0
    assert torch.count_nonzero(outside) == 0  # nothing outside the joint receptive field
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_expanded_weights_through_inplace_relu() -> None:
    # zero input: conv1's output is its bias, so the ReLU passes channel c iff bias[c] > 0
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3))
    model = model.double()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, -0.5, 0.2, -0.1]))
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    w = extract_expanded_weights(model, model[0], model[2], model_input=x)
    assert w.shape == (2, 4, 5, 5)
    alive = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64).view(1, 4, 1, 1)
    assert torch.allclose(center_crop_weights(w, 3), model[2].weight * alive)


def test_expanded_weights_linear_layers() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)).requires_grad_(False)  # frozen
    w = extract_expanded_weights(model, model[0], model[1], model_input=torch.zeros(1, 5))
    assert torch.allclose(w, model[1].weight)


def test_expanded_weights_errors() -> None:
    model = _convs()
    x = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    with pytest.raises(InputError, match="valid: '0', '1'"):
        extract_expanded_weights(model, "9", "3", model_input=x)
    with pytest.raises(InputError, match="did not run before"):
        extract_expanded_weights(model, model[3], model[0], model_input=x)
    with pytest.raises(InputError, match="batch size 1"):
        extract_expanded_weights(model, model[0], model[3], model_input=x.repeat(2, 1, 1, 1))
    with pytest.raises(InputError, match="larger"):
        extract_expanded_weights(model, model[0], model[3], crop_shape=11, model_input=x)
    assert not any(m._forward_hooks for m in model.modules())
