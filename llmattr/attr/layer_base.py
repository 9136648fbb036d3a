"""What every layer method shares: the constructor (layer checks, Captum's fixed
``multiplies_by_inputs``), the cut(s) at the layer(s), and the form of the results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .._core.base import LayerAttribution
from .._core.layers import LayerCut, check_device_ids

__all__ = ["LayerResult"]

LayerResult = Tensor | tuple[Tensor, ...] | list[Any]


def _form(per_layer: Sequence[tuple[Tensor, ...]], many: bool) -> LayerResult:
    """One tensor per layer activation tensor: a tensor, a tuple, or a list over layers."""
    shaped = [a[0] if len(a) == 1 else tuple(a) for a in per_layer]
    return shaped if many else shaped[0]


class _Layer(LayerAttribution):
    """Shared constructor and cut handling of the layer methods."""

    #: whether ``layer`` may be a list of modules (Captum's ``ModuleOrModuleList`` methods)
    _layer_lists = True

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | list[nn.Module],
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        if isinstance(layer, list | tuple) and not self._layer_lists:
            raise TypeError(
                f"{type(self).__name__} takes one layer (an nn.Module), got a "
                f"{type(layer).__name__} of {len(layer)}; attribute each layer in its own call "
                "(LayerActivation, LayerGradientXActivation, LayerIntegratedGradients and "
                "LayerLRP take lists)."
            )
        super().__init__(forward_func, layer, device_ids)  # type: ignore[arg-type]
        self._multiply_by_inputs = multiply_by_inputs
        LayerCut(forward_func, self._layers())  # validates before any work
        check_device_ids(forward_func, self._layers(), device_ids)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def _layers(self) -> list[nn.Module]:
        return list(self.layer) if isinstance(self.layer, list | tuple) else [self.layer]

    def _many(self) -> bool:
        return isinstance(self.layer, list | tuple)

    def _cuts(self, to_input: bool) -> list[LayerCut]:
        return [LayerCut(self.forward_func, [m], to_input) for m in self._layers()]


class _FixedLayer(_Layer):
    """A layer method whose Captum constructor has no ``multiply_by_inputs`` argument;
    ``multiplies_by_inputs`` is then Captum's fixed value for the method."""

    _multiplies = True

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | list[nn.Module],
        device_ids: list[int] | None = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, self._multiplies)
