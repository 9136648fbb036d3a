"""Base classes shared by every attribution algorithm (names and behaviour follow Captum's)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.futures import Future

from .batching import ChunkSize, run_in_chunks
from .forward import run_forward
from .inputs import (
    BaselineType,
    TensorOrTuple,
    format_additional_args,
    format_baselines,
    format_inputs,
    per_example_sum,
    select_rows,
)
from .targets import TargetType, normalize_target

__all__ = [
    "Attribution",
    "GradientAttribution",
    "LayerAttribution",
    "NeuronAttribution",
    "PerturbationAttribution",
]


class Attribution:
    """An attribution algorithm explaining ``forward_func``.

    Args:
        forward_func: a ``torch.nn.Module`` or any callable mapping input tensors (and extra
            arguments) to an output tensor whose dimension 0 indexes the examples.
    """

    attribute: Callable[..., Any]

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be a callable (an nn.Module or a function), got "
                f"{type(forward_func).__name__}."
            )
        self.forward_func = forward_func

    @classmethod
    def get_name(cls) -> str:
        """A readable name, as Captum documents it: a space before every character that is not
        lower-case, except the first (``IntegratedGradients`` → ``"Integrated Gradients"``,
        ``LRP`` → ``"L R P"``). Progress bars are titled ``f"{get_name()} attribution"``."""
        name = cls.__name__
        return name[0] + "".join(c if c.islower() else " " + c for c in name[1:])

    def has_convergence_delta(self) -> bool:
        """Whether :meth:`compute_convergence_delta` is available for this algorithm."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether attributions are multiplied by ``inputs - baselines`` (global attribution)."""
        return False

    def compute_convergence_delta(self, attributions: TensorOrTuple, *args: Any) -> Tensor:
        """The per-example approximation error; only algorithms with a delta implement it."""
        raise NotImplementedError(f"{self.get_name()} has no convergence delta.")

    def attribute_future(self, *args: Any, **kwargs: Any) -> Future:
        """Run :meth:`attribute` in a background thread and return a ``torch.futures.Future``.

        ``future.wait()`` returns exactly what ``attribute`` returns with the same arguments, or
        raises the exception it raised. This is llmattr's fallback for methods that Captum gives
        no ``attribute_future`` (Captum raises NotImplementedError there). The methods with
        Captum's futures (FeatureAblation, FeaturePermutation, ShapleyValueSampling,
        ShapleyValues; Occlusion in llmattr) override it: their forward must return a
        ``torch.futures.Future`` and the futures are chained, no thread involved.
        """
        future: Future = Future()

        def work() -> None:
            try:
                result = self.attribute(*args, **kwargs)
            except BaseException as err:  # handed to the waiting caller
                future.set_exception(err)
            else:
                future.set_result(result)

        threading.Thread(target=work, name=f"llmattr-{type(self).__name__}", daemon=True).start()
        return future


class GradientAttribution(Attribution):
    """Base of the gradient-based algorithms; provides the completeness gap."""

    def compute_convergence_delta(  # type: ignore[override]
        self,
        attributions: TensorOrTuple,
        start_point: BaselineType,
        end_point: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        internal_batch_size: ChunkSize = None,
    ) -> Tensor:
        """Completeness gap per example.

        ``delta[i] = sum(attributions[i]) - (f(end_point[i]) - f(start_point[i]))`` where the sum
        runs over every element of every input's attribution.

        Args:
            attributions: tensor or tuple shaped like ``end_point``.
            start_point: the baselines (anything accepted as ``baselines``).
            end_point: the inputs.
            target: the target the attributions were computed for.
            additional_forward_args: extra forward arguments.
            internal_batch_size: examples per forward (None: all; ``"auto"``: halve on
                out-of-memory), so a batch that only fits in memory in pieces fits here too.

        Returns:
            Shape ``(batch,)``.
        """
        ends, _ = format_inputs(end_point, "end_point")
        attrs, _ = format_inputs(attributions, "attributions")
        if len(attrs) != len(ends):
            raise ValueError(
                f"Got {len(attrs)} attribution tensors for {len(ends)} inputs; pass one per input."
            )
        starts = format_baselines(start_point, ends)
        batch = ends[0].shape[0]
        tgt = normalize_target(target, batch)
        args = format_additional_args(additional_forward_args)

        def gap(start: int, end: int) -> Tensor:
            rows = torch.arange(start, end)
            sub_target, sub_args = tgt.rows(rows), select_rows(args, batch, rows)
            with torch.no_grad():
                f_end = run_forward(
                    self.forward_func, tuple(x[start:end] for x in ends), sub_target, sub_args
                )
                f_start = run_forward(
                    self.forward_func, tuple(b[start:end] for b in starts), sub_target, sub_args
                )
            return f_end - f_start

        gaps = torch.cat(run_in_chunks(batch, internal_batch_size, gap))
        return per_example_sum(attrs).to(gaps.dtype) - gaps


class PerturbationAttribution(Attribution):
    """Base of the perturbation-based algorithms (ablation, occlusion, Shapley, Lime, ...)."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class _LayerMixin:
    def _init_layer(self, layer: nn.Module | list[nn.Module], device_ids: list[int] | None) -> None:
        self.layer = layer
        self.device_ids = device_ids


class LayerAttribution(_LayerMixin, Attribution):
    """Attribution to the neurons of one layer (its output, or its input).

    Args:
        forward_func: the model or forward function.
        layer: the module whose activations are attributed.
        device_ids: devices of a ``DataParallel`` model when ``forward_func`` wraps one without
            being it.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        Attribution.__init__(self, forward_func)
        self._init_layer(layer, device_ids)

    @staticmethod
    def interpolate(
        layer_attribution: Tensor,
        interpolate_dims: int | tuple[int, ...],
        interpolate_mode: str = "nearest",
    ) -> Tensor:
        """Resize a ``(batch, channels, *spatial)`` layer attribution to ``interpolate_dims``.

        Args:
            layer_attribution: a 3-, 4- or 5-D tensor.
            interpolate_dims: the new spatial size (an int, or one int per spatial dimension).
            interpolate_mode: any mode of ``torch.nn.functional.interpolate`` ("nearest",
                "linear", "bilinear", "bicubic", "trilinear", "area").

        Returns:
            Shape ``(batch, channels, *interpolate_dims)``.
        """
        if layer_attribution.dim() not in (3, 4, 5):
            raise ValueError(
                f"interpolate expects a 3-, 4- or 5-D (batch, channels, *spatial) attribution, got "
                f"shape {tuple(layer_attribution.shape)}."
            )
        return F.interpolate(layer_attribution, size=interpolate_dims, mode=interpolate_mode)


class NeuronAttribution(_LayerMixin, Attribution):
    """Attribution of one neuron's value (in a given layer) to the inputs.

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: devices of a ``DataParallel`` model when ``forward_func`` wraps one.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        Attribution.__init__(self, forward_func)
        self._init_layer(layer, device_ids)
