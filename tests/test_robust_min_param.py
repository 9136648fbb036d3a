"""MinParamPerturbation: closed forms, Captum 0.9's semantics (linear and binary), grouped
forwards, raw (text) inputs, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Counting

from llmattr._core.errors import InputError
from llmattr.robust import MinParamPerturbation

captum_robust = pytest.importorskip("captum.robust")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models

W = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def two_class(x):
    """Logits ``[x . w, 0]``: class 0 while ``x . w >= 0`` (argmax takes the first on a tie)."""
    return torch.stack([x @ W, torch.zeros(x.shape[0], dtype=torch.float64)], 1)


def push(x, amount):
    """Lowers ``x . w`` by exactly ``amount``."""
    return x - amount * W / W.dot(W)


def example(margin: float) -> torch.Tensor:
    return (margin * W / W.dot(W)).reshape(1, -1)


def expected(margin, lo, hi, step):
    """The first value of ``lo, lo + step, ...`` (below ``hi``) that is above ``margin``."""
    k = max(0, math.floor((margin - lo) / step) + 1)
    value = lo + k * step
    return value if value < hi else None


@pytest.mark.parametrize("mode", ["linear", "binary"])
@pytest.mark.parametrize("margin", [0.0, 0.35, 2.05, 3.0, 9.5])
@pytest.mark.parametrize("ppe", [1, 4])
def test_closed_form_and_captum(mode, margin, ppe):
    lo, hi, step = 0, 10, 1
    x = example(margin)
    args = (two_class, push, "amount", lo, hi, step)
    ours = MinParamPerturbation(*args, mode=mode)
    theirs = captum_robust.MinParamPerturbation(*args, mode=mode)
    inp, value = ours.evaluate(x, target=0, perturbations_per_eval=ppe)
    c_inp, c_value = theirs.evaluate(x, target=0, perturbations_per_eval=ppe)
    assert value == c_value == expected(margin, lo, hi, step)
    if value is None:
        assert inp is None and c_inp is None
    else:
        assert torch.equal(inp, c_inp) and torch.equal(inp, push(x, value))


@pytest.mark.parametrize("mode", ["linear", "binary"])
def test_float_grid_values_are_captums(mode):
    x = example(0.731)
    args = (two_class, push, "amount", 0.1, 2.0, 0.07)
    ours = MinParamPerturbation(*args, mode=mode).evaluate(x, target=0)
    theirs = captum_robust.MinParamPerturbation(*args, mode=mode).evaluate(x, target=0)
    assert ours[1] == theirs[1] and torch.equal(ours[0], theirs[0])
    assert 0.731 < ours[1] < 0.731 + 0.07 + 1e-12


@pytest.mark.parametrize("ppe", [1, 2, 5])
@pytest.mark.parametrize("mode", ["linear", "binary"])
def test_random_attack_attempts_match_captum(ppe, mode):
    def noisy_push(x, amount):
        return push(x, amount) + 0.6 * torch.randn_like(x)

    x = example(1.3).repeat(3, 1)
    args = (two_class, noisy_push, "amount", 0.0, 3.0, 0.25)
    kw = dict(mode=mode, num_attempts=4, apply_before_preproc=True, preproc_fn=lambda v: v * 1.0)
    torch.manual_seed(5)
    ours = MinParamPerturbation(*args, **kw).evaluate(
        x, target=[0, 0, 0], perturbations_per_eval=ppe
    )
    torch.manual_seed(5)
    theirs = captum_robust.MinParamPerturbation(*args, **kw).evaluate(
        x, target=[0, 0, 0], perturbations_per_eval=ppe
    )
    assert ours[1] == theirs[1] and torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("ppe", [1, 3, 11])
def test_grouped_forwards(ppe):
    """Linear search over 10 values, failing at the 8th: ceil(8 / ppe) forwards at most."""
    f = Counting(two_class)
    _, value = MinParamPerturbation(f, push, "amount", 0, 10, 1).evaluate(
        example(6.5), target=0, perturbations_per_eval=ppe
    )
    assert value == 7
    assert f.calls == math.ceil(8 / ppe)


def test_extra_args_correct_fn_and_preproc():
    def scaled(x, scale):
        return two_class(x) * scale.reshape(-1, 1)

    def still_class(out, target, label):
        return bool((out.argmax(1) == target).all()) and label == "class0"

    x, scale = example(2.5).repeat(2, 1), torch.tensor([1.0, 2.0], dtype=torch.float64)
    mp = MinParamPerturbation(
        scaled, push, "amount", 0, 5, 0.5, preproc_fn=lambda v: v + 0.0, correct_fn=still_class
    )
    results = [
        mp.evaluate(x, (scale,), 0, ppe, correct_fn_kwargs={"label": "class0"}) for ppe in (1, 3)
    ]
    assert results[0][1] == results[1][1] == 3.0
    assert torch.equal(results[0][0], results[1][0])


def test_text_edits_with_preproc_and_grouping():
    """A raw-text attack (remove the first k words): any input type works, through preproc_fn
    (whose tensors are then grouped) or by a model reading text (one forward per text when
    perturbations_per_eval > 1, where Captum fails)."""
    weights = {"great": 2.0, "good": 1.0, "bad": -1.5}

    def encode(text):
        return torch.tensor([[sum(weights.get(w, 0.0) for w in text.split()), 0.0]])

    def drop_words(text, k):
        return " ".join(text.split()[k:])

    for ppe in (1, 3):
        on_tensors, on_text = Counting(lambda t: t), Counting(encode)
        mp = MinParamPerturbation(
            on_tensors, drop_words, "k", 0, 4, 1, preproc_fn=encode, apply_before_preproc=True
        )
        assert mp.evaluate("good great bad film", target=0, perturbations_per_eval=ppe) == (
            "bad film",
            2,
        )
        assert on_tensors.calls == math.ceil(3 / ppe)
        mp = MinParamPerturbation(on_text, drop_words, "k", 0, 4, 1)
        assert mp.evaluate("good great bad film", target=0, perturbations_per_eval=ppe) == (
            "bad film",
            2,
        )
        assert on_text.calls == 3


def test_success_never_reached():
    out = MinParamPerturbation(two_class, push, "amount", 0, 1, 0.25, mode="binary").evaluate(
        example(5.0), target=0
    )
    assert out == (None, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arg_min=5, arg_max=1), "arg_min"),
        (dict(arg_min=1, arg_max=1), "arg_min"),
        (dict(arg_step=0), "arg_step"),
        (dict(arg_step=-1), "arg_step"),
        (dict(mode="ternary"), "mode"),
        (dict(num_attempts=0), "num_attempts"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(arg_name="amount", arg_min=0, arg_max=5, arg_step=1)
    with pytest.raises(InputError, match=match):
        MinParamPerturbation(two_class, push, **{**base, **kwargs})


def test_bad_evaluate_input_before_any_forward():
    f = Counting(two_class)
    mp = MinParamPerturbation(f, push, "amount", 0, 5, 1)
    with pytest.raises(InputError, match="target"):
        mp.evaluate(example(1.0))
    with pytest.raises(InputError, match="perturbations_per_eval"):
        mp.evaluate(example(1.0), target=0, perturbations_per_eval=0)
    assert f.calls == 0
    flat = MinParamPerturbation(lambda x: x @ W, push, "amount", 0, 5, 1)
    with pytest.raises(InputError, match="2-D"):
        flat.evaluate(example(1.0), target=0)


def test_a_single_step_range_is_allowed():
    """Captum refuses arg_max <= arg_min + arg_step (a range of one value); we search it."""
    with pytest.raises(AssertionError):
        captum_robust.MinParamPerturbation(two_class, push, "amount", 1, 2, 1)
    for mode in ("linear", "binary"):
        mp = MinParamPerturbation(two_class, push, "amount", 1, 2, 1, mode=mode)
        assert mp.evaluate(example(0.5), target=0)[1] == 1
        assert mp.evaluate(example(1.5), target=0) == (None, None)


def test_inputs_of_different_lengths_run_one_at_a_time():
    """An attack that shortens a sequence (drop the last k tokens): grouped values cannot be
    concatenated, so each runs alone (Captum's torch.cat fails)."""

    def score(ids):
        return torch.stack([ids.double().sum(1), torch.full((ids.shape[0],), 4.5)], 1)

    def truncate(ids, k):
        return ids[:, : ids.shape[1] - k]

    f = Counting(score)
    mp = MinParamPerturbation(f, truncate, "k", 0, 5, 1)
    ids = torch.tensor([[1, 2, 3, 4]])
    out, k = mp.evaluate(ids, target=0, perturbations_per_eval=3)
    assert k == 2 and torch.equal(out, torch.tensor([[1, 2]]))
    assert f.calls == 3
    with pytest.raises(RuntimeError):
        captum_robust.MinParamPerturbation(score, truncate, "k", 0, 5, 1).evaluate(
            ids, target=0, perturbations_per_eval=3
        )


def test_mode_is_captums_enum():
    from captum.robust._core.metrics.min_param_perturbation import (
        MinParamPerturbationMode as CaptumMode,
    )

    from llmattr.robust.min_param import MinParamPerturbationMode

    for mode in ("linear", "binary"):
        ours = MinParamPerturbation(lambda x: x, lambda x, s: x, "s", 0, 1, 0.5, mode=mode)
        assert isinstance(ours.mode, MinParamPerturbationMode)
        assert ours.mode.name == CaptumMode[mode.upper()].name
        assert ours.mode.value == CaptumMode[mode.upper()].value
