"""Faithfulness curves for images: deletion, insertion, pixel flipping and ROAD."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from torch import nn

from llmattr._core.errors import InputError
from llmattr.metrics import (
    CurveResult,
    NoisyLinearImputer,
    deletion_curve,
    insertion_curve,
    pixel_flipping,
    road,
)
from llmattr.metrics.flipping import uniform_noise

matplotlib.use("Agg")
D = torch.float64


class Linear(nn.Module):
    """f(x) = <w, x> per example; counts its forward calls and rows."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(1, *shape, generator=g, dtype=D))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (x * self.w).flatten(1).sum(1)


def _data(n: int = 3, shape: tuple[int, ...] = (2, 4, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    model = Linear(shape, seed)
    x = torch.rand(n, *shape, generator=g, dtype=D)
    b = torch.rand(n, *shape, generator=g, dtype=D)
    return model, x, b


def _rand_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)


def test_exact_attribution_beats_random_on_linear_model() -> None:
    model, x, b = _data()
    exact = (model.w * (x - b)).detach()
    mask = (torch.arange(16) // 2).reshape(1, 1, 4, 4)  # 8 features shared by both channels
    for fm in (None, mask):
        d = deletion_curve(model, x, exact, feature_mask=fm, baselines=b)
        i = insertion_curve(model, x, exact, feature_mask=fm, baselines=b)
        for seed in range(20):
            r = _rand_like(x, seed)
            dr = deletion_curve(model, x, r, feature_mask=fm, baselines=b)
            ir = insertion_curve(model, x, r, feature_mask=fm, baselines=b)
            # greedy order is optimal at every point for a linear model
            assert (d.scores <= dr.scores + 1e-12).all() and (i.scores >= ir.scores - 1e-12).all()
            assert (d.auc <= dr.auc + 1e-12).all() and (i.auc >= ir.auc - 1e-12).all()
            assert (d.auc < dr.auc).any() and (i.auc > ir.auc).any()


def test_endpoints_fractions_and_auc() -> None:
    model, x, b = _data()
    a = _rand_like(x, 5)
    with torch.no_grad():
        fx, fb = model(x), model(b)
    d = deletion_curve(model, x, a, baselines=b, n_steps=8)
    i = insertion_curve(model, x, a, baselines=b, n_steps=8)
    assert isinstance(d, CurveResult) and d.scores.shape == (3, 9) and d.order.shape == (3, 32)
    torch.testing.assert_close(d.fractions, torch.arange(9, dtype=D) / 8)
    torch.testing.assert_close(d.scores[:, 0], fx)
    torch.testing.assert_close(d.scores[:, -1], fb)
    torch.testing.assert_close(i.scores[:, 0], fb)
    torch.testing.assert_close(i.scores[:, -1], fx)
    s, f = d.scores, d.fractions
    manual = ((s[:, 1:] + s[:, :-1]) / 2 * f.diff()).sum(1)
    torch.testing.assert_close(d.auc, manual)
    # normalized: deletion 1 -> 0, insertion 0 -> 1, independent of the output's scale and shift
    d2 = deletion_curve(lambda z: 7 * model(z) - 3, x, a, baselines=b, n_steps=8)
    torch.testing.assert_close(d2.normalized_auc, d.normalized_auc)
    torch.testing.assert_close(d2.auc, 7 * d.auc - 3)


def test_deletion_matches_brute_force_on_cnn_with_target_per_example() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5), nn.Softmax(-1),
    ).double()  # fmt: skip
    x = torch.rand(2, 3, 6, 6, dtype=D)
    mask = (torch.arange(6)[:, None] // 2 * 3 + torch.arange(6)[None] // 2)[None, None]  # 9 cells
    attr = _rand_like(x, 3)
    target = [1, 4]
    base = torch.tensor([0.5, 0.2, 0.1], dtype=D).view(3, 1, 1)
    res = deletion_curve(cnn, x, attr, feature_mask=mask, baselines=base, target=target)
    assert res.scores.shape == (2, 10)
    for n in range(2):
        per_feature = torch.stack([attr[n][:, mask[0, 0] == k].sum() for k in range(9)])
        ranking = torch.argsort(per_feature, descending=True, stable=True)
        for j in range(10):
            img = x[n].clone()
            for k in ranking[:j].tolist():
                img[:, mask[0, 0] == k] = base.expand(3, 6, 6)[:, mask[0, 0] == k]
            with torch.no_grad():
                want = cnn(img[None])[0, target[n]]
            torch.testing.assert_close(res.scores[n, j], want)


def test_batch_size_invariance_and_chunking() -> None:
    model, x, b = _data()
    a = _rand_like(x, 1)
    full = insertion_curve(model, x, a, baselines=b, n_steps=5)
    model.calls = 0
    one = insertion_curve(model, x, a, baselines=b, n_steps=5, batch_size=1)
    assert model.calls == 3 * 6
    torch.testing.assert_close(one.scores, full.scores, rtol=0, atol=1e-12)
    four = insertion_curve(model, x, a, baselines=b, n_steps=5, batch_size=4)
    torch.testing.assert_close(four.scores, full.scores, rtol=0, atol=1e-12)


def test_per_pixel_and_per_feature_attributions_agree() -> None:
    model, x, b = _data()
    mask = torch.randint(0, 5, (1, 2, 4, 4), generator=torch.Generator().manual_seed(2))
    a = _rand_like(x, 9)
    per_feature = torch.stack([a.flatten(1)[:, mask.flatten() == k].sum(1) for k in range(5)], 1)
    one = deletion_curve(model, x, a, feature_mask=mask, baselines=b)
    two = deletion_curve(model, x, per_feature, feature_mask=mask, baselines=b)
    torch.testing.assert_close(one.scores, two.scores)
    assert torch.equal(one.order, two.order)
    # a channel-summed map (N, 1, H, W) with a (1, 1, H, W) mask = the summed full map
    m2 = torch.arange(16).reshape(1, 1, 4, 4)
    three = deletion_curve(model, x, a.sum(1, keepdim=True), feature_mask=m2, baselines=b)
    four = deletion_curve(model, x, a, feature_mask=m2, baselines=b)
    torch.testing.assert_close(three.scores, four.scores)


def test_additional_args_follow_their_example() -> None:
    model, x, b = _data()
    scale = torch.tensor([1.0, -2.0, 3.0], dtype=D)
    a = _rand_like(x, 4)
    res = deletion_curve(lambda z, s: model(z) * s, x, a, baselines=b, n_steps=4,
                         additional_forward_args=(scale,), batch_size=5)  # fmt: skip
    ref = deletion_curve(model, x, a, baselines=b, n_steps=4)
    torch.testing.assert_close(res.scores, ref.scores * scale[:, None])


def test_fill_baseline_duck_typed_and_inputs_untouched() -> None:
    model, x, _ = _data(shape=(3, 4, 4))
    seen = []

    class MeanColour:
        def fill(self, image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
            seen.append((tuple(image.shape), removed.dtype, tuple(removed.shape)))
            return image.mean((1, 2), keepdim=True).expand_as(image) + 0 * removed

    mask = torch.arange(16).reshape(1, 1, 4, 4) // 4
    a, x0 = _rand_like(x, 2), x.clone()
    res = deletion_curve(model, x, a, feature_mask=mask, baselines=MeanColour())
    assert seen[0] == ((3, 4, 4), torch.bool, (4, 4)) and torch.equal(x, x0)
    with torch.no_grad():
        torch.testing.assert_close(res.scores[:, -1], model(x.mean((2, 3), keepdim=True) + 0 * x))
    model.calls = 0
    with pytest.raises(InputError, match="differs across channels"):
        deletion_curve(model, x, a, baselines=MeanColour())
    assert model.calls == 0


def test_pixel_flipping_aopc_and_seeded_noise() -> None:
    model, x, _ = _data()
    exact = (model.w * (x - uniform_noise(x, seed=3))).detach()  # exact for the flipped values
    pf = pixel_flipping(model, x, exact, n_steps=8, seed=3)
    torch.testing.assert_close(pf.aopc, (pf.scores[:, :1] - pf.scores).mean(1))
    again = pixel_flipping(model, x, exact, n_steps=8, seed=3)
    assert torch.equal(pf.scores, again.scores)
    other = pixel_flipping(model, x, exact, n_steps=8, seed=4)
    assert not torch.equal(pf.scores, other.scores)
    with torch.no_grad():
        assert torch.allclose(pf.scores[:, 0], model(x))
    # fully flipped: each element is uniform noise in the example's [min, max] (mean lies inside)
    lo, hi = x.flatten(1).min(1).values, x.flatten(1).max(1).values
    mean = pixel_flipping(lambda z: z.flatten(1).mean(1), x, exact, n_steps=2, seed=3)
    assert ((mean.scores[:, -1] > lo) & (mean.scores[:, -1] < hi)).all()
    assert not torch.allclose(mean.scores[:, -1], mean.scores[:, 0])
    randoms = [pixel_flipping(model, x, _rand_like(x, s), n_steps=8, seed=3).aopc for s in range(5)]
    assert (pf.aopc >= torch.stack(randoms).max(0).values - 1e-9).all()


def test_bad_input_is_refused_before_any_forward() -> None:
    model, x, _ = _data()
    a = _rand_like(x, 0)
    bad = [
        (dict(feature_mask=torch.zeros(1, 1, 5, 4, dtype=torch.long)), "does not fit"),
        (dict(feature_mask=torch.zeros(1, 1, 4, 4)), "integer"),
        (dict(feature_mask=-torch.ones(1, 1, 4, 4, dtype=torch.long)), "non-negative"),
        (dict(baselines=torch.zeros(5)), "broadcast"),
        (dict(baselines="grey"), "baselines"),
        (dict(steps=[0.2, 1.0]), "steps"),
        (dict(n_steps=0), "n_steps"),
        (dict(target=[0, 1]), "target"),
        (dict(batch_size=0), "batch_size"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(InputError, match=msg):
            deletion_curve(model, x, a, **kwargs)
    for attr, msg in [(torch.zeros(3, 7), "fit neither"), (a * torch.nan, "NaN")]:
        with pytest.raises(InputError, match=msg):
            insertion_curve(model, x, attr)
    with pytest.raises(InputError, match="order"):
        road(model, x, a, order="best")
    assert model.calls == 0


def test_plot_draws_curves() -> None:
    model, x, b = _data()
    d = deletion_curve(model, x, _rand_like(x, 0), baselines=b, n_steps=4)
    ax = d.plot(label="random")
    d.plot(ax=ax, normalized=True)
    assert len(ax.lines) == 2 and ax.get_xlabel() == "fraction of features removed"


# ---- ROAD -----------------------------------------------------------------------------------


def test_imputer_reconstructs_linear_ramp_and_keeps_pixels() -> None:
    i, j = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
    ramp = torch.stack([2 * i + 3 * j + 1, 0.5 * j - i]).double()
    removed = torch.zeros(7, 9, dtype=torch.bool)
    removed[1:-1, 1:-1] = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) < 0.7
    out = NoisyLinearImputer(noise=0, tol=1e-12).fill(ramp, removed)
    torch.testing.assert_close(out, ramp, rtol=0, atol=1e-9)
    noisy = NoisyLinearImputer(noise=0.5, seed=1).fill(ramp, removed)
    assert torch.equal(noisy[:, ~removed], ramp[:, ~removed])
    assert (noisy[:, removed] - ramp[:, removed]).abs().max() > 0.05


def test_imputer_constant_surround_and_dense_solution() -> None:
    img = torch.full((3, 5, 5), 0.3, dtype=D)
    img[:, 2, 2] = 9.0
    removed = torch.zeros(5, 5, dtype=torch.bool)
    removed[2, 2] = True
    out = NoisyLinearImputer(noise=0, tol=1e-12).fill(img, removed)
    torch.testing.assert_close(out[:, 2, 2], torch.full((3,), 0.3, dtype=D))
    # random mask touching the border: equals the dense solve of the paper's linear system
    h, w = 6, 7
    x = torch.rand(2, h, w, generator=torch.Generator().manual_seed(1), dtype=D)
    rem = torch.rand(h, w, generator=torch.Generator().manual_seed(2)) < 0.6
    idx = rem.flatten().nonzero().flatten().tolist()
    pos = {k: n for n, k in enumerate(idx)}
    A, b = torch.zeros(len(idx), len(idx), dtype=D), torch.zeros(2, len(idx), dtype=D)
    for n, k in enumerate(idx):
        r, c = divmod(k, w)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < h and 0 <= cc < w):
                    continue
                wt = 1 / 12 if dr and dc else 1 / 6
                A[n, n] += wt
                if rr * w + cc in pos:
                    A[n, pos[rr * w + cc]] -= wt
                else:
                    b[:, n] += wt * x[:, rr, cc]
    want = torch.linalg.solve(A, b.T).T
    got = NoisyLinearImputer(noise=0, tol=1e-12).fill(x, rem).flatten(1)[:, idx]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    with pytest.raises(InputError, match="same size"):
        NoisyLinearImputer().fill(x, rem[:5])
    # a batch with one map per image equals the images filled one by one (noise included)
    imgs = torch.rand(3, 2, h, w, generator=torch.Generator().manual_seed(3), dtype=D)
    maps = torch.rand(3, h, w, generator=torch.Generator().manual_seed(4)) < 0.5
    maps[2] = True  # nothing kept: zeros plus noise
    imp = NoisyLinearImputer(noise=0.1, seed=7, tol=1e-12)
    one_by_one = torch.stack([imp.fill(i, m) for i, m in zip(imgs, maps, strict=True)])
    torch.testing.assert_close(imp.fill(imgs, maps), one_by_one, rtol=0, atol=1e-12)
    noise = torch.randn((2, h, w), generator=torch.Generator().manual_seed(7), dtype=D)
    torch.testing.assert_close(one_by_one[2], 0.1 * noise)


def test_road_morf_drops_faster_than_lerf_and_matches_brute_force() -> None:
    model, x, _ = _data(n=2, shape=(1, 8, 8), seed=3)
    attr = (model.w * (x - x.mean())).detach()
    imp = NoisyLinearImputer(noise=0.01, seed=5, tol=1e-12)
    morf = road(model, x, attr, imputer=imp, order="morf")
    lerf = road(model, x, attr, imputer=imp, order="lerf")
    assert morf.kind == "road-morf" and morf.normalized_auc is None
    assert (morf.scores < lerf.scores).all() and (morf.auc < lerf.auc).all()
    # point 3 (30 %): remove the round(0.3 * 64) most relevant pixels, impute, evaluate
    for n in range(2):
        top = torch.argsort(attr[n].flatten(), descending=True, stable=True)[:19]
        rem = torch.zeros(64, dtype=torch.bool)
        rem[top] = True
        img = imp.fill(x[n], rem.view(8, 8))
        with torch.no_grad():
            torch.testing.assert_close(morf.scores[n, 2], model(img[None])[0])
    torch.testing.assert_close(
        morf.fractions, torch.tensor([6, 13, 19, 26, 32, 38, 45, 51, 58], dtype=D) / 64
    )
    small = road(model, x, attr, imputer=imp, batch_size=3)
    torch.testing.assert_close(small.scores, morf.scores, rtol=0, atol=1e-12)


def test_vision_image_baselines_plug_in() -> None:
    vb = pytest.importorskip("llmattr.vision.baselines")
    model, x, _ = _data(n=2, shape=(3, 6, 6))
    mask = (torch.arange(36) // 4).reshape(1, 1, 6, 6)
    a = _rand_like(x, 1)

    class PerRow:  # hides region_dependent/as_tensor: forces one fill call per curve point
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def fill(self, image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
            return self.inner.fill(image, removed)

    for base in (vb.BlurBaseline(2.0), vb.NoiseBaseline(seed=1), vb.InpaintBaseline()):
        fast = deletion_curve(model, x, a, feature_mask=mask, baselines=base, n_steps=4)
        slow = deletion_curve(model, x, a, feature_mask=mask, baselines=PerRow(base), n_steps=4)
        torch.testing.assert_close(fast.scores, slow.scores)
        with torch.no_grad():
            full = torch.stack([base.fill(img, torch.ones(6, 6, dtype=torch.bool)) for img in x])
            torch.testing.assert_close(fast.scores[:, -1], model(full))
