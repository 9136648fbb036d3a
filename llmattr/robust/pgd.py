"""PGD: repeated FGSM steps projected onto a ball around the inputs (Madry et al.,
https://arxiv.org/abs/1706.06083).

``x_0 = x`` (or a uniform random point of the ball), then
``x_{t+1} = bound(project_r(x_t ± step_size * sign(dL(x_t)/dx)))``, where ``project_r`` clips the
perturbation ``x_{t+1} - x`` to the L-inf ball (elementwise clamp) or the L2 ball (rescaling each
example's perturbation to norm ``<= r``) of radius ``r``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .._core.inputs import TensorOrTuple, restore_form
from .fgsm import FGSM
from .perturbation import Perturbation, attack_inputs, check_amount, format_masks

__all__ = ["PGD", "check_pgd_args", "project", "random_point"]

NORMS = ("Linf", "L2")


def check_pgd_args(radius: Any, step_size: Any, step_num: Any, norm: Any) -> tuple[float, float]:
    """``(radius, step_size)`` as floats, after checking all four of PGD's search arguments."""
    radius = check_amount(radius, "radius")
    step_size = check_amount(step_size, "step_size")
    if not isinstance(step_num, int) or isinstance(step_num, bool):
        raise InputTypeError(f"step_num must be an int, got {type(step_num).__name__}.")
    if step_num < 1:
        raise InputError(f"step_num must be >= 1, got {step_num}.")
    if norm not in NORMS:
        raise InputError(f"norm must be 'Linf' or 'L2', got {norm!r}.")
    return radius, step_size


def project(center: Tensor, point: Tensor, radius: float, norm: str) -> Tensor:
    """``point`` moved into the ``norm`` ball of ``radius`` around ``center`` (per example for
    L2: each ``point[i] - center[i]`` is rescaled to norm ``<= radius``). Shape of ``center``."""
    diff = point - center
    if norm == "Linf":
        return center + torch.clamp(diff, -radius, radius)
    return center + torch.renorm(diff, 2, 0, radius)


def random_point(center: Tensor, radius: float, norm: str, mask: Tensor | float) -> Tensor:
    """A uniform random point of the ``norm`` ball of ``radius`` around each example of
    ``center`` ``(N, ...)``, its offset multiplied by ``mask``. Draws from torch's global
    generator in Captum's order, so a seed gives Captum's point."""
    if norm == "L2":
        u = torch.randn_like(center)
        unit = F.normalize(u.reshape(u.shape[0], -1)).reshape(u.shape)
        d = center[0].numel()
        # radius * U^(1/d) makes the point uniform in the ball; one radius per example, shaped
        # (N, 1, ...) to scale that example's direction
        r = (torch.rand(u.shape[0]) ** (1.0 / d)) * radius
        r = r.to(device=center.device, dtype=center.dtype).reshape(-1, *([1] * (center.dim() - 1)))
        return center + (r * unit) * mask
    return center + (torch.rand_like(center) * radius * 2 - radius) * mask


class PGD(Perturbation):
    """Projected Gradient Descent, with Captum's arguments.

    Args:
        forward_func: the model, or any function of the inputs (and extra args).
        loss_func: ``loss_func(outputs, target)`` giving the loss per example (or its sum);
            None uses ``-log(outputs[target])``, i.e. the model returns probabilities.
        lower_bound: smallest value an input element may take.
        upper_bound: largest value an input element may take.

    Attributes:
        bound: function clamping perturbed inputs to the bounds (may be replaced).
        fgsm: the unbounded :class:`FGSM` taking each step (its ``zero_thresh`` applies).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        loss_func: Callable[..., Tensor] | None = None,
        lower_bound: float = float("-inf"),
        upper_bound: float = float("inf"),
    ) -> None:
        super().__init__()
        self.forward_func = forward_func
        self.fgsm = FGSM(forward_func, loss_func)
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.bound: Callable[[Tensor], Tensor] = self._clamp

    def _clamp(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=self.lower_bound, max=self.upper_bound)

    def perturb(
        self,
        inputs: TensorOrTuple,
        radius: float,
        step_size: float,
        step_num: int,
        target: Any,
        additional_forward_args: Any = None,
        targeted: bool = False,
        random_start: bool = False,
        norm: str = "Linf",
        mask: TensorOrTuple | None = None,
    ) -> TensorOrTuple:
        """Search the ball of ``radius`` around ``inputs`` for an adversarial input.

        Args:
            inputs: a floating-point tensor ``(N, ...)`` or a tuple of them (same ``N``).
            radius: radius of the ball (>= 0) in ``norm``; the perturbation stays inside it.
            step_size: size of each signed-gradient step (>= 0).
            step_num: number of steps (>= 1); one forward and one backward each.
            target: the true labels (untargeted) or the wanted ones (targeted), as for
                :meth:`FGSM.perturb`.
            additional_forward_args: extra arguments passed to ``forward_func`` after the inputs.
            targeted: step towards ``target`` instead of away from it.
            random_start: start from a uniform random point of the ball (torch's global
                generator; seed it with ``torch.manual_seed`` to repeat a run).
            norm: ``"Linf"`` or ``"L2"`` (L2 measured per example over all its elements).
            mask: a tensor (or tuple, one per input) multiplying every step and the random
                start: 0 freezes an element. Same shape as its input, or broadcastable to it.

        Returns:
            The perturbed inputs, in the form and shapes of ``inputs`` (detached).

        Raises:
            InputError: negative radius or step size, ``step_num < 1``, an unknown norm, integer
                inputs (token ids: attack the embeddings), a mask that does not fit its input.
        """
        radius, step_size = check_pgd_args(radius, step_size, step_num, norm)
        originals, was_tuple = attack_inputs(inputs, type(self).__name__)
        masks = format_masks(mask, originals)
        current = tuple(x.detach() for x in originals)
        if random_start:
            current = tuple(
                self.bound(random_point(x, radius, norm, m)) for x, m in zip(originals, masks)
            )
        for _ in range(step_num):
            stepped = self.fgsm._step(
                current, step_size, target, additional_forward_args, targeted, masks
            )
            stepped = tuple(self.fgsm.bound(s) for s in stepped)  # FGSM's own bounds, as Captum
            current = tuple(
                self.bound(project(x, s, radius, norm)).detach() for x, s in zip(originals, stepped)
            )
        return restore_form(current, was_tuple)
