"""Infidelity (Yeh et al., 2019, "On the (In)fidelity and Sensitivity of Explanations"), with
Captum's names, signatures, defaults and return shapes.

For an input ``x``, attributions ``a`` and random perturbations ``I`` (a ``perturb_func``
returns ``I`` and the perturbed input ``x'``), infidelity is the mean over ``I`` of

    (sum(a * I) - (f(x) - f(x')))^2,

how badly the attributions, dotted with a perturbation, predict the change of the output. With
``normalize=True`` the attributions are first rescaled by the least-squares factor
``beta = E[(a.I)(f(x) - f(x'))] / E[(a.I)^2]``, which makes the value invariant to scaling
``a``; without it, infidelity grows with the attributions' scale (doubling ``a`` makes a
perturbation's prediction twice as large), so only compare unnormalized values of attributions
on the same scale.

All ``N * n_perturb_samples`` perturbations are drawn by one ``perturb_func`` call (rows
example-major, ``repeat_interleave`` order, as Captum's first chunk) and evaluated in one
forward (after one of the ``N`` unperturbed inputs), or together with those inputs in chunks of
``max_examples_per_batch`` rows by the core's :func:`~llmattr._core.batching.run_in_chunks`;
the value does not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.batching import ChunkSize, check_chunk_size, run_in_chunks
from .._core.call import Call
from .._core.errors import InputError, InputTypeError
from .._core.forward import run_forward
from .._core.inputs import BaselineType, TensorOrTuple, as_tuple, format_baselines, format_inputs
from .._core.targets import TargetType

__all__ = ["infidelity", "infidelity_perturb_func_decorator"]

PerturbFunc = Callable[..., Any]


def _safe_div(num: Tensor, denom: Tensor) -> Tensor:
    """``num / denom`` with a zero denominator read as 1 (Captum's ``safe_div``)."""
    return num / torch.where(denom != 0, denom, torch.ones_like(denom))


def infidelity_perturb_func_decorator(
    multiply_by_inputs: bool = True,
) -> Callable[[PerturbFunc], Callable[..., tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]]:
    """Turn a ``perturb_func`` that returns only perturbed inputs into one that also returns the
    perturbations, as :func:`infidelity` expects.

    The perturbation of each input is ``(x - x') / (x - baseline)`` (``x - x'`` over ``x``
    without baselines; a zero denominator counts as 1) when ``multiply_by_inputs`` — for
    attributions that factor in the input (integrated gradients, DeepLift, ablation, Shapley
    values) — and ``x - x'`` otherwise (local attributions: saliency, guided backprop, methods
    built with ``multiply_by_inputs=False``).

    Returns:
        A decorator; the decorated function takes ``(inputs, baselines=None)`` and returns
        ``(perturbations, perturbed_inputs)``, both tuples with one tensor per input.
    """

    def decorator(perturb_func: PerturbFunc) -> Callable[..., Any]:
        def perturb(
            inputs: TensorOrTuple, baselines: BaselineType = None
        ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
            perturbed = (
                perturb_func(inputs) if baselines is None else perturb_func(inputs, baselines)
            )
            xs, xps = as_tuple(inputs), as_tuple(perturbed)
            if len(xps) != len(xs):
                raise InputError(
                    f"perturb_func returned {len(xps)} perturbed inputs for {len(xs)} inputs."
                )
            if not multiply_by_inputs:
                return tuple(x - xp for x, xp in zip(xs, xps)), tuple(xps)
            refs = (
                tuple(torch.zeros_like(x) for x in xs)
                if baselines is None
                else format_baselines(baselines, tuple(xs))
            )
            return tuple(_safe_div(x - xp, x - b) for x, xp, b in zip(xs, xps, refs)), tuple(xps)

        perturb.__name__ = getattr(perturb_func, "__name__", "perturb")
        perturb.__doc__ = getattr(perturb_func, "__doc__", None)
        return perturb

    return decorator


def check_samples(n_perturb_samples: Any) -> int:
    """Validate ``n_perturb_samples`` (a positive int)."""
    if isinstance(n_perturb_samples, bool) or not isinstance(n_perturb_samples, int):
        raise InputTypeError(
            f"n_perturb_samples must be an int, got {type(n_perturb_samples).__name__}."
        )
    if n_perturb_samples < 1:
        raise InputError(f"n_perturb_samples must be at least 1, got {n_perturb_samples}.")
    return n_perturb_samples


def expand_inputs(inputs: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
    """``n`` copies of every example, example-major (row ``i * n + k``); always fresh tensors,
    so a ``perturb_func`` that works in place cannot change the caller's inputs."""
    return tuple(x.repeat_interleave(n, dim=0) for x in inputs)


def check_perturbed(
    name: str, perturbed: Any, expected: tuple[Tensor, ...], what: str = "perturbed inputs"
) -> tuple[Tensor, ...]:
    """``perturbed`` as a tuple of tensors of exactly the ``expected`` shapes, or InputError."""
    values = as_tuple(perturbed)
    if len(values) != len(expected) or not all(isinstance(v, Tensor) for v in values):
        raise InputError(
            f"{name} returned {len(values)} {what} ({[type(v).__name__ for v in values]}) for "
            f"{len(expected)} input tensor(s); return one tensor per input (a tuple when the "
            "inputs are a tuple)."
        )
    for i, (v, x) in enumerate(zip(values, expected)):
        if v.shape != x.shape:
            raise InputError(
                f"{name} returned {what} of shape {tuple(v.shape)} for input {i}, whose "
                f"{x.shape[0]} expanded rows have shape {tuple(x.shape)}; keep the shape of "
                "the inputs it is given."
            )
    return values


def _baselines_for_rows(baselines: BaselineType, inputs: tuple[Tensor, ...], n: int) -> Any:
    """Baselines as ``perturb_func`` sees them (Captum's contract): per-example tensors expanded
    like the inputs, shared ones (numbers, one-example tensors) unchanged."""
    format_baselines(baselines, inputs)  # validation only: shapes must broadcast
    batch = inputs[0].shape[0]
    entries = as_tuple(baselines)
    out = tuple(
        b.repeat_interleave(n, dim=0)
        if isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] == batch and batch > 1
        else b
        for b in entries
    )
    return out[0] if len(out) == 1 else out


def infidelity(
    forward_func: Callable[..., Tensor],
    perturb_func: PerturbFunc,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: ChunkSize = None,
    normalize: bool = False,
) -> Tensor:
    """Explanation infidelity of ``attributions`` for ``forward_func`` at ``inputs``.

    Args:
        forward_func: the model or function, ``forward_func(*inputs, *additional_forward_args)``.
        perturb_func: ``perturb_func(inputs)`` (``perturb_func(inputs, baselines)`` when
            baselines are given) returns ``(perturbations, perturbed_inputs)`` — tuples with one
            tensor per input when ``inputs`` is a tuple — for inputs of
            ``N * n_perturb_samples`` rows (each example repeated ``n_perturb_samples`` times,
            example-major). Decorate a function returning only perturbed inputs with
            :func:`infidelity_perturb_func_decorator`.
        inputs: ``(N, ...)`` tensor or tuple of tensors.
        attributions: the attributions, each of its input's shape.
        baselines: passed to ``perturb_func`` (a number, a tensor of the input's shape or of
            one example, or a tuple of those); per-example tensors are expanded like the inputs.
        additional_forward_args: extra forward arguments; tensors with ``N`` rows are expanded
            like the inputs.
        target: the output to explain (Captum's forms: int, tuple, list, tensor, None).
        n_perturb_samples: perturbations per example (at least 1).
        max_examples_per_batch: most rows per forward (the ``N`` inputs and their
            ``N * n_perturb_samples`` perturbations share chunks); None (default) runs two
            forwards, the inputs then every perturbation (no rows copied); ``"auto"`` halves on
            out-of-memory. The result does not depend on it.
        normalize: rescale the attributions by the least-squares factor ``beta`` first, so the
            value is invariant to scaling them.

    Returns:
        ``(N,)`` infidelity per example.

    Raises:
        InputError: before any forward, for attributions whose number or shapes differ from the
            inputs', ``n_perturb_samples < 1``, a bad ``max_examples_per_batch``, or a
            ``perturb_func`` returning something other than a ``(perturbations,
            perturbed_inputs)`` pair of the inputs' shapes.
    """
    call = Call.of(inputs, target, additional_forward_args)
    attrs, _ = format_inputs(attributions, "attributions")
    if len(attrs) != len(call.inputs):
        raise InputError(
            f"Got {len(attrs)} attribution tensors for {len(call.inputs)} inputs; pass one "
            "attribution per input, in the same form (a tuple for tuple inputs)."
        )
    for i, (a, x) in enumerate(zip(attrs, call.inputs)):
        if a.shape != x.shape:
            raise InputError(
                f"attributions[{i}] has shape {tuple(a.shape)} but input {i} has shape "
                f"{tuple(x.shape)}; infidelity needs attributions of the inputs' shapes."
            )
    n = check_samples(n_perturb_samples)
    check_chunk_size(max_examples_per_batch, "max_examples_per_batch")
    batch = call.batch
    expanded = expand_inputs(call.inputs, n)
    passed = expanded[0] if len(expanded) == 1 else expanded  # Captum's form: one input, bare
    with torch.no_grad():
        if baselines is None:
            out = perturb_func(passed)
        else:
            out = perturb_func(passed, _baselines_for_rows(baselines, call.inputs, n))
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise InputError(
                "perturb_func must return a pair (perturbations, perturbed_inputs); decorate a "
                "function that returns only perturbed inputs with "
                "@infidelity_perturb_func_decorator(multiply_by_inputs)."
            )
        perturbations = check_perturbed("perturb_func", out[0], expanded, "perturbations")
        perturbed = check_perturbed("perturb_func", out[1], expanded)
        # rows [0, N) are the inputs, row N + i * n + k perturbation k of example i; chunked,
        # they share forwards (without chunks: two forwards, the rows never copied)
        examples = torch.cat([torch.arange(batch), torch.arange(batch * n) // n])

        def evaluate(start: int, end: int) -> Tensor:
            chunk_target, chunk_args = call.for_rows(examples[start:end])
            part = tuple(
                torch.cat([x[start:end], p[max(start - batch, 0) : max(end - batch, 0)]])
                if start < batch
                else p[start - batch : end - batch]
                for x, p in zip(call.inputs, perturbed)
            )
            return run_forward(forward_func, part, chunk_target, chunk_args)

        if max_examples_per_batch is None:  # no copy of the rows: the inputs, then the rest
            f_x = evaluate(0, batch)
            f_perturbed = _forward_rows(forward_func, call, perturbed, examples, batch)
        else:
            values = torch.cat(run_in_chunks(batch * (n + 1), max_examples_per_batch, evaluate))
            f_x, f_perturbed = values[:batch], values[batch:]
        # (N, n): the attributions' prediction of each perturbation's effect, and the effect
        predicted = sum(
            (p.reshape(batch, n, -1) * a.reshape(batch, 1, -1).to(p.device)).sum(-1)
            for p, a in zip(perturbations, attrs)
        )
        assert isinstance(predicted, Tensor)
        effect = f_x.reshape(batch, 1) - f_perturbed.reshape(batch, n)
        predicted = predicted.to(effect.device)
        if normalize:
            beta = _safe_div((predicted * effect).sum(1), predicted.pow(2).sum(1))
            predicted = beta.unsqueeze(1) * predicted
        return (predicted - effect).pow(2).mean(1)


def _forward_rows(
    forward_func: Callable[..., Tensor],
    call: Call,
    perturbed: tuple[Tensor, ...],
    examples: Tensor,
    batch: int,
) -> Tensor:
    """The forward of every perturbed row at once (rows ``batch:`` of ``examples``)."""
    rows_target, rows_args = call.for_rows(examples[batch:])
    return run_forward(forward_func, perturbed, rows_target, rows_args)
