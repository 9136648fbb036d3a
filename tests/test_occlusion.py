"""Occlusion: the mean-over-covering-windows closed form on linear models, window and stride forms
(shared, per input, int, tuple, clipped at the edge), a brute-force sliding-window loop on a CNN,
stacking invariance, multi-output forwards and validation before any forward."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from conftest import Counting, SmallCNN, close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.futures import Future

from llmattr import Occlusion

F64 = torch.float64


# --- an independent reference ---------------------------------------------------------------------


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Starts ``0, s, 2s, ...`` until a window reaches the end (that last one clipped)."""
    starts = [0]
    while starts[-1] + window < size:
        starts.append(starts[-1] + stride)
    return [s for s in starts if s < size]


def windows(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]):
    """Bool masks of shape ``shape``, one per window, every combination of per-dimension starts."""
    per_dim = [window_starts(n, w, s) for n, w, s in zip(shape, window, strides)]
    for starts in itertools.product(*per_dim):
        m = torch.zeros(shape, dtype=torch.bool)
        m[tuple(slice(a, a + w) for a, w in zip(starts, window))] = True
        yield m


def brute_occlusion(
    g: Callable[[Tensor], Tensor],
    x: Tensor,
    b: Tensor,
    window: tuple[int, ...],
    strides: tuple[int, ...],
) -> Tensor:
    """Per element the mean over covering windows of ``g(x) - g(x with the window at b)``.

    ``g`` maps ``(batch, ...)`` inputs to ``(batch, *out)``; returns ``(batch, *out, *x[0].shape)``.
    """
    with torch.no_grad():
        y = g(x)
        sums = torch.zeros(*y.shape, *x.shape[1:], dtype=F64)
        counts = torch.zeros(x.shape[1:], dtype=F64)
        for m in windows(tuple(x.shape[1:]), window, strides):
            drop = (y - g(torch.where(m, b, x))).double()
            sums += drop.reshape(*drop.shape, *([1] * m.dim())) * m
            counts += m
    return sums / counts


def linear_window_closed_form(
    contrib: Tensor, window: tuple[int, ...], strides: tuple[int, ...]
) -> Tensor:
    """Linear model: a window's drop is the sum of ``w_j (x_j - b_j)`` over it.

    Elements between windows (a stride longer than its window) get 0.
    """
    sums = torch.zeros_like(contrib, dtype=F64)
    counts = torch.zeros(contrib.shape[1:], dtype=F64)
    for m in windows(tuple(contrib.shape[1:]), window, strides):
        drop = (contrib * m).flatten(1).sum(1).double()
        sums += drop.reshape(-1, *([1] * m.dim())) * m
        counts += m
    if all(s <= w for s, w in zip(strides, window)):
        assert bool((counts > 0).all()), "every element must be covered"
    return sums / counts.clamp(min=1)


# --- the reference's own window rule --------------------------------------------------------------


def test_reference_windows_are_clipped_at_the_edge() -> None:
    assert window_starts(5, 2, 2) == [0, 2, 4]
    assert window_starts(5, 3, 2) == [0, 2]
    assert window_starts(5, 5, 1) == [0]
    assert window_starts(8, 3, 3) == [0, 3, 6]


# --- closed forms on linear models ----------------------------------------------------------------


def test_clipped_last_window_1d(dtype: torch.dtype, device: str) -> None:
    """Size 5, window 2, stride 2: windows {0, 1}, {2, 3}, {4} — each element in exactly one."""
    w = torch.randn(5, dtype=dtype, device=device)
    x = torch.randn(3, 5, dtype=dtype, device=device)
    b = torch.randn(5, dtype=dtype, device=device)
    attr = Occlusion(lambda z: z @ w).attribute(
        x, sliding_window_shapes=(2,), strides=2, baselines=b
    )
    assert attr.dtype == dtype and attr.device.type == device
    c = (w * (x - b)).cpu()
    expected = torch.stack([c[:, 0] + c[:, 1]] * 2 + [c[:, 2] + c[:, 3]] * 2 + [c[:, 4]], 1)
    assert close(attr, expected, dtype, 10)


def test_overlapping_windows_average_their_drops() -> None:
    """Size 5, window 3, stride 1: windows at 0, 1, 2; element 2 is in all three."""
    w = torch.randn(5, dtype=F64)
    x = torch.randn(2, 5, dtype=F64)
    attr = Occlusion(lambda z: z @ w + 3.0).attribute(x, sliding_window_shapes=(3,))
    c = w * x
    s = [c[:, a : a + 3].sum(1) for a in range(3)]
    expected = torch.stack(
        [s[0], (s[0] + s[1]) / 2, (s[0] + s[1] + s[2]) / 3, (s[1] + s[2]) / 2, s[2]], 1
    )
    assert close(attr, expected)


def test_window_covering_everything_gives_the_total_drop() -> None:
    w = torch.randn(2, 3, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    attr = Occlusion(lambda z: (z * w).flatten(1).sum(1)).attribute(
        x, sliding_window_shapes=(2, 3), baselines=1.0
    )
    total = (w * (x - 1.0)).flatten(1).sum(1)
    assert close(attr, total.reshape(4, 1, 1).expand(4, 2, 3))


@pytest.mark.parametrize(
    ("window", "strides"),
    [
        ((1, 2, 3), None),
        ((2, 2, 3), 2),
        ((1, 2, 3), (1, 2, 3)),
        ((2, 3, 2), (1, 1, 2)),
        ((1, 3, 3), (1, 2, 2)),
        ((1, 1, 1), 1),
    ],
)
def test_linear_closed_form_on_3d_inputs(window: tuple[int, ...], strides: object) -> None:
    w = torch.randn(2, 5, 6, dtype=F64)
    x = torch.randn(2, 2, 5, 6, dtype=F64)
    b = torch.randn(5, 6, dtype=F64)  # broadcast over channels and examples
    attr = Occlusion(lambda z: (z * w).flatten(1).sum(1)).attribute(
        x, sliding_window_shapes=window, strides=strides, baselines=b
    )
    s = (1, 1, 1) if strides is None else (strides,) * 3 if isinstance(strides, int) else strides
    assert close(attr, linear_window_closed_form(w * (x - b), window, s), F64, 10)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 9),
    data=st.data(),
)
def test_every_element_is_covered_for_any_window_and_stride(size: int, data) -> None:
    window = data.draw(st.integers(1, size))
    stride = data.draw(st.integers(1, window))
    ppe = data.draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    w = torch.randn(size, dtype=F64, generator=gen)
    x = torch.randn(2, size, dtype=F64, generator=gen)
    attr = Occlusion(lambda z: z @ w).attribute(
        x, sliding_window_shapes=(window,), strides=stride, perturbations_per_eval=ppe
    )
    assert close(attr, linear_window_closed_form(w * x, (window,), (stride,)), F64, 10)


def test_stride_longer_than_window_is_refused_as_in_captum() -> None:
    """Size 6, window 2, stride 3 would never occlude elements 2 and 5: Captum asserts, so this
    raises InputError (an AssertionError) before any forward. A stride longer than a window that
    spans its whole dimension is fine (there is one window)."""
    w = torch.randn(6, dtype=F64)
    x = torch.randn(2, 6, dtype=F64)
    counted = Counting(lambda z: z @ w)
    with pytest.raises(AssertionError, match="exceed the sliding window"):
        Occlusion(counted).attribute(x, sliding_window_shapes=(2,), strides=3)
    assert counted.calls == 0
    attr = Occlusion(counted).attribute(x, sliding_window_shapes=(6,), strides=7)
    assert close(attr, (w * x).sum(1, keepdim=True).expand(2, 6))


def test_two_inputs_with_a_window_and_stride_per_input() -> None:
    w1, w2 = torch.randn(6, dtype=F64), torch.randn(2, 4, dtype=F64)
    x1, x2 = torch.randn(3, 6, dtype=F64), torch.randn(3, 2, 4, dtype=F64)

    def f(a: Tensor, b: Tensor) -> Tensor:
        return a @ w1 + (b * w2).flatten(1).sum(1)

    c1, c2 = w1 * (x1 - 0.5), w2 * (x2 + 1.0)
    occ = Occlusion(f)
    for strides, s1, s2 in [
        (((2,), (1, 2)), (2,), (1, 2)),
        ((1, 2), (1,), (2, 2)),  # one int per input, as in Captum
        ((3, (2, 1)), (3,), (2, 1)),
        (None, (1,), (1, 1)),
        (2, (2,), (2, 2)),
    ]:
        a1, a2 = occ.attribute(
            (x1, x2),
            sliding_window_shapes=((3,), (2, 3)),
            strides=strides,
            baselines=(0.5, -1.0),
            perturbations_per_eval=4,
        )
        assert close(a1, linear_window_closed_form(c1, (3,), s1)), strides
        assert close(a2, linear_window_closed_form(c2, (2, 3), s2)), strides


# --- nonlinear: the brute-force loop --------------------------------------------------------------


@pytest.mark.parametrize(("window", "strides"), [((1, 3, 3), (1, 2, 2)), ((1, 4, 2), (1, 3, 1))])
def test_cnn_matches_brute_force(window: tuple[int, ...], strides: tuple[int, ...]) -> None:
    model = SmallCNN().double()
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    b = torch.randn(1, 1, 8, 8, dtype=F64)
    target = [1, 3]
    attr = Occlusion(model).attribute(
        x, sliding_window_shapes=window, strides=strides, baselines=b, target=target
    )
    expected = brute_occlusion(
        lambda z: model(z)[torch.arange(2), target], x, b.expand_as(x), window, strides
    )
    assert close(attr, expected)
    assert attr.abs().sum() > 0


@pytest.mark.parametrize("ppe", [1, 2, 3, 7, 100])
def test_results_do_not_depend_on_perturbations_per_eval(ppe: int) -> None:
    model = SmallCNN().double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    counted = Counting(model)
    attr = Occlusion(counted).attribute(
        x, sliding_window_shapes=(1, 3, 3), strides=(1, 3, 3), target=2, perturbations_per_eval=ppe
    )
    expected = brute_occlusion(
        lambda z: model(z)[:, 2], x, torch.zeros_like(x), (1, 3, 3), (1, 3, 3)
    )
    assert close(attr, expected)
    assert counted.calls == 1 + -(-9 // ppe)  # starts 0, 3, 6 in each of two dimensions


def test_multi_output_forward_stacks_per_target_runs() -> None:
    model = SmallCNN().double()
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    occ = Occlusion(model)
    kwargs = {"sliding_window_shapes": (1, 4, 4), "strides": (1, 2, 2), "baselines": 0.5}
    attr = occ.attribute(x, perturbations_per_eval=5, per_example_outputs=True, **kwargs)
    assert attr.shape == (2, 4, 1, 8, 8)
    # Captum's layout (the default): one row per output element, example-major
    assert torch.equal(
        occ.attribute(x, perturbations_per_eval=5, **kwargs), attr.reshape(8, 1, 8, 8)
    )
    per_target = [occ.attribute(x, target=t, **kwargs) for t in range(4)]
    assert close(attr, torch.stack(per_target, 1))
    expected = brute_occlusion(model, x, torch.full_like(x, 0.5), (1, 4, 4), (1, 2, 2))
    assert close(attr, expected)


def test_aggregate_forward() -> None:
    model = SmallCNN().double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return model(z).square().mean()

    attr = Occlusion(loss).attribute(x, sliding_window_shapes=(1, 3, 3), strides=(1, 3, 3))
    assert attr.shape == (1, 1, 8, 8)
    expected = brute_occlusion(
        lambda z: loss(z).reshape(1), x, torch.zeros_like(x), (1, 3, 3), (1, 3, 3)
    )
    assert close(attr, expected)
    with pytest.raises(ValueError, match="aggregate"):
        Occlusion(loss).attribute(x, sliding_window_shapes=(1, 3, 3), perturbations_per_eval=2)


def test_show_progress_and_future(capsys: pytest.CaptureFixture[str]) -> None:
    model = SmallCNN().double()
    x = torch.randn(1, 1, 8, 8, dtype=F64)
    occ = Occlusion(model)
    kwargs = {"sliding_window_shapes": (1, 4, 4), "strides": (1, 4, 4), "target": 0}
    quiet = occ.attribute(x, **kwargs)
    assert capsys.readouterr().err == ""
    loud = occ.attribute(x, show_progress=True, **kwargs)
    err = capsys.readouterr().err
    assert "Occlusion attribution" in err and "5/5" in err  # the unperturbed forward too
    assert torch.equal(loud, quiet)

    def later(z: Tensor) -> Future:
        future: Future = Future()
        future.set_result(model(z))
        return future

    assert torch.equal(Occlusion(later).attribute_future(x, **kwargs).wait(), quiet)


# --- validation before any forward ----------------------------------------------------------------


BAD = {
    "window larger than input": ((1, 9, 2), None, "larger than"),
    "too few window dims": ((3, 3), None, "one positive int per dimension"),
    "too many window dims": ((1, 3, 3, 1), None, "one positive int per dimension"),
    "zero window": ((1, 0, 2), None, "one positive int per dimension"),
    "zero stride": ((1, 2, 2), 0, "strides"),
    "zero stride in tuple": ((1, 2, 2), (1, 0, 1), "strides"),
    "negative stride": ((1, 2, 2), (1, -1, 1), "strides"),
    "stride dims": ((1, 2, 2), (1, 1), "strides"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_windows_and_strides_fail_before_any_forward(case: str) -> None:
    window, strides, msg = BAD[case]
    counted = Counting(SmallCNN())
    with pytest.raises(ValueError, match=msg):
        Occlusion(counted).attribute(
            torch.randn(2, 1, 8, 8), sliding_window_shapes=window, strides=strides, target=0
        )
    assert counted.calls == 0


def test_bad_per_input_forms_fail_before_any_forward() -> None:
    counted = Counting(lambda a, b: a.sum(1) + b.sum(1))
    x = (torch.randn(2, 4), torch.randn(2, 3))
    occ = Occlusion(counted)
    with pytest.raises(ValueError, match="one per input"):
        occ.attribute(x, sliding_window_shapes=(2,))  # one tuple of ints for two inputs
    with pytest.raises(ValueError, match="one per input"):
        occ.attribute(x, sliding_window_shapes=((2,), (2,), (2,)))
    with pytest.raises(ValueError, match="one per input"):
        occ.attribute(x, sliding_window_shapes=((2,), (2,)), strides=(1, 1, 1))
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        occ.attribute(x, sliding_window_shapes=((2,), (2,)), perturbations_per_eval=0)
    assert counted.calls == 0
