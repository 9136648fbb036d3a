"""``NaturalImage``: optim-wip's default image, ``squash(ToRGB(parameterization()))``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from llmattr._core.errors import InputError, InputTypeError
from llmattr.optim.colour import ToRGB
from llmattr.optim.images import FFTImage, ImageParameterization, Size, _prepare

__all__ = ["NaturalImage"]


def _logit(x: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(x.dtype).eps
    return torch.logit(x.clamp(eps, 1.0 - eps))


class NaturalImage(ImageParameterization):
    """The default feature-visualization image: ``squash(ToRGB(parameterization()))``.

    Args:
        size, channels, batch, init: as for the other parameterizations; ``init`` is an image in
            ``[0, 1]`` mapped back through the squash's inverse and ``ToRGB``'s inverse.
        parameterization: a class (built with ``size, channels, batch, init, generator``;
            default :class:`FFTImage`) or a built instance (then its size/channels/batch are used
            and ``init`` must be None).
        decorrelate: ``True`` applies ``ToRGB("klt")`` for 3 or 4 (RGBA) channels and nothing for
            other channel counts; ``False`` never; a ``ToRGB`` or a transform name uses that.
        squash: maps the result to the valid range; default ``torch.sigmoid``; ``None`` = identity.
        squash_inverse: the squash's inverse for ``init``; needed only for a custom squash.
        squash_func, decorrelation_module, decorrelate_init: optim-wip's keyword names (the
            squash; a ``ToRGB`` or None for no decorrelation; whether ``init`` is mapped through
            the decorrelation's inverse — True, so ``init`` round-trips).

    Output: ``(batch, channels, H, W)``, in ``(0, 1)`` with the sigmoid.
    """

    def __init__(
        self,
        size: Size = None,
        channels: int = 3,
        batch: int = 1,
        init: torch.Tensor | None = None,
        parameterization: type[ImageParameterization] | ImageParameterization = FFTImage,
        decorrelate: bool | str | ToRGB = True,
        squash: Callable[[torch.Tensor], torch.Tensor] | None = torch.sigmoid,
        squash_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        *,
        squash_func: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decorrelation_module: ToRGB | None | Literal["unset"] = "unset",
        decorrelate_init: bool = True,
    ) -> None:
        super().__init__()
        if squash_func is not None:  # optim-wip's names
            squash = squash_func
        if not isinstance(decorrelation_module, str):
            decorrelate = False if decorrelation_module is None else decorrelation_module
        self._decorrelate_init = bool(decorrelate_init)
        if isinstance(parameterization, ImageParameterization):
            if init is not None:
                raise InputError("give init to the parameterization instance, not NaturalImage")
            channels = parameterization.channels
        else:
            hw, init = _prepare(size, channels, batch, init)
            size = hw
        if isinstance(decorrelate, ToRGB):
            self.decorrelate: ToRGB | None = decorrelate
        elif isinstance(decorrelate, str):
            self.decorrelate = ToRGB(decorrelate)
        elif decorrelate is True:
            self.decorrelate = ToRGB("klt") if channels in (3, 4) else None
        elif decorrelate is False:
            self.decorrelate = None
        else:
            raise InputTypeError(f"decorrelate must be a bool, a name or a ToRGB: {decorrelate!r}")
        if self.decorrelate is not None and channels not in (
            self.decorrelate.n_colours,
            self.decorrelate.n_colours + 1,
        ):
            k = self.decorrelate.n_colours
            raise InputError(f"a {k}x{k} ToRGB needs {k} or {k + 1} channels, got {channels}")
        if squash is not None and not callable(squash):
            raise InputTypeError(f"squash must be callable or None, got {squash!r}")
        self.squash = squash
        if squash_inverse is None:
            if squash is None:
                squash_inverse = _identity
            elif squash is torch.sigmoid:
                squash_inverse = _logit
        self.squash_inverse = squash_inverse
        if isinstance(parameterization, ImageParameterization):
            self.parameterization = parameterization
        else:
            if not (
                isinstance(parameterization, type)
                and issubclass(parameterization, ImageParameterization)
            ):
                raise InputTypeError("parameterization must be an ImageParameterization class")
            if init is not None:
                if self.squash_inverse is None:
                    raise InputError("an init image with a custom squash needs squash_inverse")
                init = self.squash_inverse(init)
                if self.decorrelate is not None and self._decorrelate_init:
                    init = self.decorrelate(init, inverse=True)
            self.parameterization = parameterization(
                size=size, channels=channels, batch=batch, init=init, generator=generator
            )
        p = self.parameterization
        self.size, self.channels, self.batch = p.size, p.channels, p.batch

    def forward(self) -> torch.Tensor:
        x = self.parameterization()
        if self.decorrelate is not None:
            x = self.decorrelate(x)
        return x if self.squash is None else self.squash(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
