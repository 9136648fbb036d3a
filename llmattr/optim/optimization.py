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
from .layers import ModuleOutputsHook, resolve_target
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
            ``NaturalImage((224, 224))``, with the transform ``RandomScale((1, 0.975, 1.025, 0.95,
            1.05))`` then ``RandomSpatialJitter(16)`` unless one is given.
        transform: a module applied to the input before the model (default: none, or the one
            above when ``input_param`` is None).
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
            from .images import NaturalImage
            from .transforms import RandomScale, RandomSpatialJitter

            input_param = NaturalImage((224, 224))
            if transform is None:
                transform = nn.Sequential(
                    RandomScale(scale=(1, 0.975, 1.025, 0.95, 1.05)), RandomSpatialJitter(16)
                )
        if isinstance(input_param, Tensor):
            input_param = _TensorInput(input_param)
        if not isinstance(input_param, nn.Module):
            raise InputTypeError(
                f"input_param must be an nn.Module or a tensor, got {type(input_param).__name__}."
            )
        self.model, self.loss_function = model, loss_function
        self.input_param, self.transform = input_param, transform
        self._names = _flat_targets(loss_function.target)
        self._modules = [resolve_target(model, t) for t in self._names]
        self.snapshots: dict[int, Tensor] = {}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the input parameterization."""
        return [p for p in self.input_param.parameters() if p.requires_grad]

    def _loss(self, hook: ModuleOutputsHook, checked: bool = True) -> Tensor:
        image = self.input_param()
        if self.transform is not None:
            image = self.transform(image)
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
                        raise NonFiniteLossError(
                            f"The loss became {float(value.detach())} at step {step} (after {step} "
                            "optimizer steps); lower the learning rate or add a penalty that "
                            "bounds the input."
                        )
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
