"""Input optimization: change an input parameterization so that a loss on the model's activations
grows (optim-wip's ``InputOptimization``, after Lucid; Olah et al., 2017).

Each step renders the input (``input_param()``), transforms it, runs the model with hooks on the
loss's targets, summarizes the loss to a scalar (default ``-mean``) and takes an optimizer step on
the parameterization's parameters only (the model's ``.grad`` is never touched). Hooks live only
inside :meth:`InputOptimization.optimize` / :meth:`InputOptimization.loss` and are removed
however they end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from .checks import checked_forward
from .layers import ModuleOutputsHook, Target, resolve_target
from .loss import Loss, _flat_targets, default_loss_summarize

__all__ = ["InputOptimization", "NonFiniteLossError", "StopCriteria", "early_stopping", "n_steps"]

StopCriteria = Callable[[int, Any, Sequence[Tensor], torch.optim.Optimizer], bool]


class NonFiniteLossError(FloatingPointError):
    """The summarized loss became NaN or infinite; the message names the step."""


class _TensorInput(nn.Module):
    """Wraps a leaf tensor (e.g. an ``nn.Parameter`` image) as a parameterization."""

    def __init__(self, image: Tensor) -> None:
        super().__init__()
        self.image = image if isinstance(image, nn.Parameter) else nn.Parameter(image)

    def forward(self) -> Tensor:
        return self.image


class InputOptimization:
    """Optimizes an input so that ``loss_function`` of the model's activations is maximized.

    Args:
        model: the model; its loss targets are hooked during each forward.
        loss_function: a :class:`~llmattr.optim.loss.Loss`; its targets (modules or dotted names)
            are resolved now, and an unknown name is refused with the list of valid names.
        input_param: a module whose ``forward()`` returns the model input (e.g. ``(N, C, H, W)``),
            or a tensor/``nn.Parameter`` used as the input itself. Default (optim-wip's): a
            ``NaturalImage((224, 224))``. A module is moved to the device of the model's
            parameters (as optim-wip does); a tensor is used where it is.
        transform: a module (or callable) applied to the input before the model. ``None`` means
            optim-wip's default, ``RandomScale((1, 0.975, 1.025, 0.95, 1.05))`` then
            ``RandomSpatialJitter(16)``; pass ``nn.Identity()`` for no transform.

    Mixed precision: when the model's parameters are float16/bfloat16 and the input comes out
    float32/float64, it is cast to the model's dtype just before the forward, so a float32
    parameterization (and float32 Adam state) can drive a half-precision model — the setup that
    works for float16 (Adam's ``eps`` underflows in float16 parameters).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Loss,
        input_param: nn.Module | Tensor | None = None,
        transform: nn.Module | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if not isinstance(loss_function, Loss):
            raise InputTypeError(
                f"loss_function must be an llmattr.optim Loss, got {type(loss_function).__name__}."
            )
        if input_param is None:  # optim-wip's defaults: a 224x224 natural image, jittered
            from .natural_image import NaturalImage

            input_param = NaturalImage((224, 224))
        if transform is None:
            from .transforms import RandomScale, RandomSpatialJitter

            transform = nn.Sequential(
                RandomScale(scale=(1, 0.975, 1.025, 0.95, 1.05)), RandomSpatialJitter(16)
            )
        if isinstance(input_param, Tensor):
            input_param = _TensorInput(input_param)
        elif isinstance(input_param, nn.Module):
            first = next(iter(model.parameters()), None)
            if first is not None:
                input_param = input_param.to(first.device)
        if not isinstance(input_param, nn.Module):
            raise InputTypeError(
                f"input_param must be an nn.Module or a tensor, got {type(input_param).__name__}."
            )
        self._model_dtype = _half_dtype(model)
        self.model, self.loss_function = model, loss_function
        self.input_param, self.transform = input_param, transform
        self._names = _flat_targets(loss_function.target)
        self._modules = [resolve_target(model, t) for t in self._names]
        self.snapshots: dict[int, Tensor] = {}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the input parameterization."""
        return [p for p in self.input_param.parameters() if p.requires_grad]

    @property
    def targets(self) -> list[nn.Module]:
        """The hooked modules (optim-wip's property), resolved from the loss's targets."""
        return list(self._modules)

    @targets.setter
    def targets(self, value: Target | Sequence[Target]) -> None:
        names = list(value) if isinstance(value, list | tuple) else [value]
        self._names = names
        self._modules = [resolve_target(self.model, t) for t in names]

    def cleanup(self) -> None:
        """optim-wip's hook clean-up; a no-op here: hooks only exist inside a call."""

    def _loss(self, hook: ModuleOutputsHook, checked: bool = True) -> Tensor:
        image = self.input_param()
        if self.transform is not None:
            image = self.transform(image)
        if (
            self._model_dtype is not None
            and image.is_floating_point()
            and image.dtype in (torch.float32, torch.float64)
        ):
            image = image.to(self._model_dtype)
        if checked:  # the first forward: bad setups become a clear InputError
            checked_forward(self.model, image, self._modules, self._names)
        else:
            self.model(image)
        by_module = hook.consume_outputs()
        values: dict[Any, Tensor] = {}
        for name, module in zip(self._names, self._modules, strict=True):
            values[name] = values[module] = by_module[module]
        return self.loss_function(values)

    def loss(self) -> Tensor:
        """The loss tensor for the current input (one forward, hooks removed after)."""
        with ModuleOutputsHook(self._modules) as hook:
            return self._loss(hook)

    def optimize(
        self,
        stop_criteria: StopCriteria | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_summarize_fn: Callable[[Tensor], Tensor] | None = None,
        lr: float = 0.025,
        snapshot_steps: Iterable[int] = (),
    ) -> Tensor:
        """Run the optimization.

        Args:
            stop_criteria: ``f(step, self, history, optimizer) -> bool``, called before each step
                (continue while True). Default: ``n_steps(512)`` (with a progress bar).
            optimizer: an optimizer over (some of) :meth:`parameters`. Default: Adam with ``lr``.
            loss_summarize_fn: the loss tensor → the scalar to minimize. Default: ``-mean``.
            lr: Adam's learning rate when no optimizer is given.
            snapshot_steps: after how many steps to keep a copy of ``input_param()`` in
                :attr:`snapshots` (``{step: detached tensor}``; 0 is the starting input).

        Returns:
            The summarized loss of every step, shape ``(steps,)`` (detached).

        Raises:
            InputError: at the first forward, before any step, a setup the model cannot run
                (see :func:`~llmattr.optim.checks.checked_forward`).
            NonFiniteLossError: the summarized loss is NaN/inf (message gives the step).
        """
        stop_criteria = stop_criteria or n_steps(512)
        if optimizer is None:
            params = self.parameters()
            if not params:
                raise InputError("The input parameterization has no trainable parameters.")
            optimizer = torch.optim.Adam(params, lr=lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputTypeError(f"optimizer must be a torch Optimizer, got {type(optimizer)}.")
        summarize = loss_summarize_fn or default_loss_summarize
        wanted = {int(s) for s in snapshot_steps}
        self.snapshots = {}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        history: list[Tensor] = []
        step = 0
        try:
            with ModuleOutputsHook(self._modules) as hook:
                while True:
                    if step in wanted:
                        self._snapshot(step)
                    if not stop_criteria(step, self, history, optimizer):
                        break
                    value = summarize(self._loss(hook, checked=step == 0))
                    if value.numel() != 1:
                        shape = tuple(value.shape)
                        raise InputError(f"loss_summarize_fn must return a scalar, got {shape}.")
                    if not math.isfinite(float(value.detach())):
                        raise NonFiniteLossError(_non_finite_message(value, step, params))
                    history.append(value.detach().clone().reshape(()))
                    grads = torch.autograd.grad(value, params, allow_unused=True)
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    optimizer.step()
                    step += 1
        finally:
            close = getattr(stop_criteria, "close", None)
            if callable(close):
                close()
        if not history:
            return torch.zeros(0)
        return torch.stack(history)

    def _snapshot(self, step: int) -> None:
        with torch.no_grad():
            self.snapshots[step] = self.input_param().detach().clone()


def n_steps(n: int, show_progress: bool = True) -> StopCriteria:
    """Stop after ``n`` steps, optionally with a tqdm bar showing the latest objective."""
    if n < 0:
        raise InputError(f"n_steps needs n >= 0, got {n}.")
    bar: list[Any] = []

    def continue_while(step: int, obj: Any, history: Sequence[Tensor], opt: Any) -> bool:
        if show_progress and not bar:
            from tqdm.auto import tqdm

            bar.append(tqdm(total=n, unit=" step"))
        if bar and history:
            bar[0].set_postfix({"Objective": f"{float(history[-1].mean()):.1f}"}, refresh=False)
        if step < n:
            if bar:
                bar[0].update()
            return True
        close()
        return False

    def close() -> None:
        if bar:
            bar.pop().close()

    continue_while.close = close  # type: ignore[attr-defined]
    return continue_while


def early_stopping(n: int, patience: int = 20, min_delta: float = 0.0) -> StopCriteria:
    """Stop after ``n`` steps, or earlier once the summarized loss has not gone below its best
    by more than ``min_delta`` for ``patience`` consecutive steps."""
    if n < 0 or patience < 1:
        raise InputError(f"early_stopping needs n >= 0 and patience >= 1, got {n}, {patience}.")

    def continue_while(step: int, obj: Any, history: Sequence[Tensor], opt: Any) -> bool:
        if step >= n:
            return False
        if len(history) <= patience:
            return True
        values = [float(h) for h in history]
        best_before = min(values[:-patience])
        return min(values[-patience:]) < best_before - min_delta

    return continue_while


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (torch's default without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _half_dtype(model: nn.Module) -> torch.dtype | None:
    """float16/bfloat16 when the model computes in it, else None."""
    dtype = model_dtype(model)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _non_finite_message(value: Tensor, step: int, params: Sequence[Tensor]) -> str:
    """The NaN/inf error, with the float16 hint when the parameters are float16."""
    msg = (
        f"The loss became {float(value.detach())} at step {step} (after {step} optimizer "
        "steps); lower the learning rate or add a penalty that bounds the input."
    )
    if any(p.dtype == torch.float16 for p in params):
        msg += (
            " The input's parameters are float16, where Adam's eps (1e-8) underflows to 0: keep "
            "the parameterization in float32 (the model may stay float16; the input is cast to "
            "the model's dtype before each forward)."
        )
    return msg
