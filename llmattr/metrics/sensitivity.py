"""Max-sensitivity (Yeh et al., 2019) of an explanation, with Captum's names, signatures,
defaults and return shapes.

For each example, the explanation is recomputed at ``n_perturb_samples`` perturbed inputs
(by default uniform noise in ``[-perturb_radius, perturb_radius]``) and the largest relative
change ``||expl(x') - expl(x)|| / ||expl(x)||`` is reported (an explanation with zero norm
divides by 1). A constant explanation has sensitivity 0.

All perturbations are drawn by one ``perturb_func`` call over the ``N * n_perturb_samples``
rows (example-major, as Captum's first chunk) and explained in chunks of
``max_examples_per_batch`` rows by the core's :func:`~llmattr._core.batching.run_in_chunks`,
so the value does not depend on the chunking.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.batching import ChunkSize, check_chunk_size, run_in_chunks
from .._core.errors import InputError, InputTypeError
from .._core.inputs import TensorOrTuple, as_tuple, format_inputs, restore_form
from .infidelity import check_perturbed, check_samples, expand_inputs

__all__ = ["default_perturb_func", "sensitivity_max"]


def default_perturb_func(inputs: TensorOrTuple, perturb_radius: float = 0.02) -> tuple[Tensor, ...]:
    """Add uniform noise in ``[-perturb_radius, perturb_radius]`` to every input element.

    The noise is drawn in each input's dtype, on its device (Captum draws float32 on the CPU
    and copies it).

    Returns:
        A tuple with one perturbed tensor per input (Captum's form, also for a single tensor).
    """
    return tuple(
        x + torch.empty_like(x).uniform_(-perturb_radius, perturb_radius) for x in as_tuple(inputs)
    )


def _takes_radius(perturb_func: Callable[..., Any]) -> bool:
    try:
        return len(inspect.signature(perturb_func).parameters) > 1
    except (TypeError, ValueError):
        return False


def _rows_of(value: Any, batch: int, rows: Tensor) -> Any:
    """Rows of a per-example tensor (dimension 0 of size ``batch > 1``); anything else as is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value[rows.to(value.device)]
    return value


def _kwargs_for_rows(kwargs: dict[str, Any], batch: int, rows: Tensor) -> dict[str, Any]:
    """The explanation's keyword arguments for expanded rows (row ``r`` is example
    ``rows[r]``): per-example targets, extra forward args, baselines and feature masks follow
    their example; everything else passes unchanged. ``kwargs`` itself is not changed."""
    out = dict(kwargs)
    target = kwargs.get("target")
    if isinstance(target, list) and len(target) == batch:
        out["target"] = [target[int(r)] for r in rows]
    elif isinstance(target, Tensor) and target.numel() > 1:
        out["target"] = _rows_of(target, batch, rows)
    args = kwargs.get("additional_forward_args")
    if isinstance(args, tuple):
        out["additional_forward_args"] = tuple(_rows_of(a, batch, rows) for a in args)
    elif args is not None:
        out["additional_forward_args"] = _rows_of(args, batch, rows)
    for name in ("baselines", "feature_mask"):
        value = kwargs.get(name)
        if isinstance(value, tuple):
            out[name] = tuple(_rows_of(v, batch, rows) for v in value)
        elif value is not None:
            out[name] = _rows_of(value, batch, rows)
    return out


def _flat(explanation: Any, rows: int, what: str) -> Tensor:
    """An explanation (tensor or tuple) as ``(rows, n_values)``."""
    parts = as_tuple(explanation)
    if not parts or not all(isinstance(p, Tensor) for p in parts):
        raise TypeError(
            f"explanation_func returned {type(explanation).__name__} for the {what}; it must "
            "return a tensor or a tuple of tensors (e.g. an attribution method's .attribute)."
        )
    if any(p.dim() == 0 or p.shape[0] != rows for p in parts):
        shapes = [tuple(p.shape) for p in parts]
        raise ValueError(
            f"explanation_func returned shapes {shapes} for {rows} rows of {what}; dimension 0 "
            "of an explanation must index the examples."
        )
    return torch.cat([p.reshape(rows, -1) for p in parts], 1)


def sensitivity_max(
    explanation_func: Callable[..., Any],
    inputs: TensorOrTuple,
    perturb_func: Callable[..., Any] = default_perturb_func,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: Any = "fro",
    max_examples_per_batch: ChunkSize = None,
    **kwargs: Any,
) -> Tensor:
    """Max-sensitivity of ``explanation_func`` at ``inputs``.

    Args:
        explanation_func: ``explanation_func(inputs, **kwargs)`` returns the explanation, a
            tensor or tuple with dimension 0 indexing the examples — e.g. the ``attribute`` of
            any llmattr or Captum attribution method.
        inputs: ``(N, ...)`` tensor or tuple of tensors.
        perturb_func: ``perturb_func(inputs, perturb_radius)`` (or ``perturb_func(inputs)``
            when it takes one parameter) returns perturbed inputs of the same shapes, for
            inputs of ``N * n_perturb_samples`` rows (each example repeated, example-major).
        perturb_radius: the radius passed to ``perturb_func`` (at least 0).
        n_perturb_samples: perturbations per example (at least 1).
        norm_ord: the norm of the flattened explanations (``torch.norm``'s ``p``): ``"fro"``
            (default, the 2-norm) or a number (the p-norm, ``float("inf")`` the largest entry).
        max_examples_per_batch: most perturbed rows per ``explanation_func`` call; None
            (default) explains them all at once, ``"auto"`` halves on out-of-memory. The result
            does not depend on it.
        **kwargs: passed to ``explanation_func`` (``target``, ``baselines``,
            ``additional_forward_args``, ``n_steps``, ...); per-example tensors and lists among
            ``target``, ``additional_forward_args``, ``baselines`` and ``feature_mask`` are
            expanded like the inputs. Never modified.

    Returns:
        ``(N,)`` the largest relative change of each example's explanation.

    Raises:
        InputError: before any explanation is computed, for a negative ``perturb_radius``,
            ``n_perturb_samples < 1``, a bad ``max_examples_per_batch``, or a ``perturb_func``
            whose output does not match the inputs.
    """
    tensors, _ = format_inputs(inputs)
    n = check_samples(n_perturb_samples)
    if isinstance(perturb_radius, bool) or not isinstance(perturb_radius, numbers.Real):
        raise InputTypeError(
            f"perturb_radius must be a number, got {type(perturb_radius).__name__}."
        )
    if perturb_radius < 0:
        raise InputError(f"perturb_radius must be at least 0, got {perturb_radius}.")
    check_chunk_size(max_examples_per_batch, "max_examples_per_batch")
    batch = tensors[0].shape[0]
    _check_norm(norm_ord)
    expanded = expand_inputs(tensors, n)
    # Captum's forms: perturb_func gets one input bare; explanation_func gets the inputs as a
    # tuple, and perturbed rows in the form perturb_func returned them
    passed = expanded[0] if len(expanded) == 1 else expanded
    with torch.no_grad():
        out = (
            perturb_func(passed, perturb_radius)
            if _takes_radius(perturb_func)
            else perturb_func(passed)
        )
        perturbed = check_perturbed("perturb_func", out, expanded)
        as_returned = not isinstance(out, Tensor)
        original = _flat(explanation_func(tensors, **kwargs), batch, "the inputs")
        norms = torch.norm(original, p=norm_ord, dim=1)
        norms = torch.where(norms == 0, torch.ones_like(norms), norms)
        rows = torch.arange(batch * n) // n

        def evaluate(start: int, end: int) -> Tensor:
            examples = rows[start:end]
            part = restore_form([p[start:end] for p in perturbed], as_returned)
            expl = explanation_func(part, **_kwargs_for_rows(kwargs, batch, examples))
            flat = _flat(expl, end - start, "the perturbed inputs")
            if flat.shape[1] != original.shape[1]:
                raise ValueError(
                    f"explanation_func returned {flat.shape[1]} values per perturbed example "
                    f"but {original.shape[1]} per example of the inputs."
                )
            at = examples.to(original.device)
            diff = flat.to(original.device) - original[at]
            return torch.norm(diff, p=norm_ord, dim=1) / norms[at]

        values = torch.cat(run_in_chunks(batch * n, max_examples_per_batch, evaluate))
        return values.reshape(batch, n).max(1).values


def _check_norm(norm_ord: Any) -> None:
    """InputError for a ``norm_ord`` torch cannot take as a vector norm's order."""
    if norm_ord == "fro":
        return
    if isinstance(norm_ord, bool) or not isinstance(norm_ord, numbers.Real):
        raise InputError(
            f"norm_ord must be 'fro' or a number (the p of the p-norm), got {norm_ord!r}."
        )
