"""One large perturbation attribution split across the processes of a ``torch.distributed`` group.

A long prompt explained with KernelShap or Shapley value sampling at thousands of evaluations is
one attribution, but its perturbed prompts are independent: every process of the group (one per
GPU, or CPU processes; ``torchrun`` / ``accelerate launch`` set it up) runs the same call, draws
the same perturbations (same seed), scores only its share of them — perturbed prompt ``i`` of the
call on rank ``i % world`` — and the scores are gathered after every forward, so each process
folds exactly the outputs one process would have computed, in the same order: the result is the
one-process result, on every rank.

Gathering the per-perturbation outputs (``(k, 1 + n_target_tokens)`` numbers per forward) rather
than per-feature partial sums keeps the order of every floating-point addition, so the result is
equal, not merely close, and KernelShap and Lime, whose regressions need every output, split the
same way as the Shapley sums.

Every rank checks that the others were called with the same arguments (before any forward) and
drew the same perturbations (at every forward); an error in one rank's share is sent to every
rank, which raises it (:class:`SplitError` on the others), so no process waits for a rank that
failed. A rank that dies outright is noticed by the launcher (``torchrun`` stops the others) or
by the process group's timeout (``init_process_group(timeout=...)``).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from .._core.base import Attribution
from .._core.errors import InputError, InputTypeError
from ..attr.ablation import FeatureAblation
from ..attr.lime import KernelShap, Lime
from ..attr.shapley import ShapleyValues, ShapleyValueSampling
from ..text.llm_attr import LLMAttribution

__all__ = ["SplitAttribution", "SplitError", "split_attribute"]

_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)


class SplitError(RuntimeError):
    """Another process of the group failed (its error is in the message), or the processes'
    results disagree; raised on every process that did not fail itself."""


def _digest(value: Any) -> str:
    """A canonical fingerprint of an argument: tensors and generators by content, text inputs
    by their features, containers element-wise, other objects by type."""
    h = hashlib.blake2b(digest_size=16)

    def feed(v: Any) -> None:
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, torch.Generator):
            feed(v.get_state())
        elif isinstance(v, str | int | float | bool | type(None)):
            h.update(f"{type(v).__name__}:{v!r};".encode())
        elif isinstance(v, dict):
            h.update(b"{")
            for key in sorted(v, key=repr):
                feed(key)
                feed(v[key])
            h.update(b"}")
        elif isinstance(v, list | tuple):
            h.update(b"[")
            for item in v:
                feed(item)
            h.update(b"]")
        elif callable(getattr(v, "to_tensor", None)) and hasattr(v, "values"):
            h.update(type(v).__qualname__.encode())  # a text or image input: its features
            feed(list(v.values))
            feed(v.to_tensor())
            baselines = getattr(v, "baselines", None)
            rng = getattr(baselines, "rng", None)  # ProductBaselines: its draws to come
            if rng is not None:
                feed([getattr(baselines, "baseline_values", None), rng.getstate()])
            elif not callable(baselines):
                feed(baselines)
        else:
            h.update(type(v).__qualname__.encode())

    feed(value)
    return h.hexdigest()


class SplitAttribution:
    """Runs an attribution with its perturbations divided between the processes of a group.

    Without an initialized process group, or in a group of one process, :meth:`attribute` is
    the plain call.

    Args:
        attr: an :class:`~llmattr.LLMAttribution` (any of its perturbation methods), or one of
            FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap on a forward
            that returns one output row per example.
        group: the process group (default: the default group).

    Attributes:
        rows_evaluated: perturbed inputs this process scored in the last :meth:`attribute`
            (the unperturbed one included).
        rows_total: perturbed inputs of the whole call, over every process.
    """

    def __init__(self, attr: Attribution, group: Any = None) -> None:
        if not isinstance(attr, (LLMAttribution, *_METHODS)):
            raise InputTypeError(
                "SplitAttribution takes an LLMAttribution or a FeatureAblation, "
                "ShapleyValueSampling, ShapleyValues, Lime or KernelShap, got "
                f"{type(attr).__name__}; gradient methods have no perturbations to divide."
            )
        self.attr = attr
        self.group = group
        self.rows_evaluated = 0
        self.rows_total = 0
        self._told: BaseException | None = None  # an error every rank has heard of

    @property
    def world(self) -> int:
        """Processes in the group (1 without an initialized group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return int(dist.get_world_size(self.group))

    def attribute(self, inp: Any, target: Any = None, **kwargs: Any) -> Any:
        """The attribution of ``attr.attribute(inp, target, **kwargs)``, computed together by
        every process of the group; every process must make this call with equal arguments
        and returns the same result.

        For the sampling methods pass ``generator=<int seed>`` (or seed torch's global
        generator equally on every process); ``show_progress`` shows one bar, on rank 0.

        Args:
            inp: what ``attr.attribute`` explains (a text input, or input tensors).
            target: the target (``LLMAttribution``: the continuation; else Captum's target).
            **kwargs: the other arguments of ``attr.attribute``.

        Returns:
            What ``attr.attribute`` returns (an ``LLMAttributionResult`` for LLMAttribution).
        """
        self.rows_evaluated = self.rows_total = 0
        self._told = None
        world = self.world
        if world == 1:
            return self.attr.attribute(inp, target=target, **kwargs)
        rank = int(dist.get_rank(self.group))
        if rank != 0 and "show_progress" in kwargs:
            kwargs = {**kwargs, "show_progress": False}
        try:
            self._agree(inp, target, kwargs)
            result = self._split_call(rank, world).attribute(inp, target=target, **kwargs)
            self._check_results(result)
        except Exception as err:
            if err is not self._told:  # tell the others before leaving, so none waits for us
                self._gather({"kind": "error", "error": f"{type(err).__name__}: {err}"})
            raise
        return result

    # ---- collectives ---------------------------------------------------------------------

    def _gather(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's payload; an error payload from another rank raises :class:`SplitError`
        here (an own error payload returns, for the caller to raise its error)."""
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, payload, group=self.group)
        rank = dist.get_rank(self.group)
        failed = [
            f"rank {r}: {p['error']}"
            for r, p in enumerate(gathered)
            if p["kind"] == "error" and r != rank
        ]
        if failed and payload["kind"] != "error":
            self._raise(SplitError(
                "Another process of the split attribution failed, so this one stops too: "
                + "; ".join(failed)
            ))  # fmt: skip
        return gathered

    def _raise(self, err: Exception) -> NoReturn:
        """Raise an error that every rank raises at this same point (or has been told of)."""
        self._told = err
        raise err

    def _agree(self, inp: Any, target: Any, kwargs: dict[str, Any]) -> None:
        """Refuse (on every rank, before any forward) arguments that differ between ranks."""
        method = self.attr.attr_method if isinstance(self.attr, LLMAttribution) else self.attr
        parts = {
            "method": _digest([type(method).__qualname__, getattr(self.attr, "attr_target", "")]),
            "inp": _digest(inp),
            "target": _digest(target),
            "arguments": _digest({k: v for k, v in kwargs.items() if k != "show_progress"}),
        }
        takes_generator = "generator" in inspect.signature(method.attribute).parameters
        if takes_generator and kwargs.get("generator") is None:
            parts["torch's global random state"] = _digest(torch.get_rng_state())
        gathered = self._gather({"kind": "agree", "parts": parts})
        keys = {k for p in gathered for k in p["parts"]}
        differ = sorted(k for k in keys if any(p["parts"].get(k) != parts.get(k) for p in gathered))
        if differ:
            hint = (
                " Pass generator=<int seed> (the same on every process) or seed torch equally."
                if "torch's global random state" in differ
                else ""
            )
            self._raise(InputError(
                f"The processes of the split attribution disagree on: {', '.join(differ)}. "
                "Every process must make the same call (same prompt, target and arguments) "
                f"for their shares to add up to one attribution.{hint}"
            ))  # fmt: skip

    def _check_results(self, result: Any) -> None:
        """Every rank computed its unperturbed output and target itself: they must agree
        (different model weights on one rank show here)."""
        mine = _digest(_result_parts(result))
        gathered = self._gather({"kind": "done", "result": mine})
        if any(p["result"] != mine for p in gathered):
            self._raise(SplitError(
                "The processes' results differ although they drew the same perturbations: "
                "their models (weights, dtype or device numerics) are not the same."
            ))  # fmt: skip

    # ---- the split forward ---------------------------------------------------------------

    def _split_call(self, rank: int, world: int) -> Attribution:
        """A copy of ``attr`` whose perturbation method evaluates only this rank's rows."""

        def wrap(forward: Callable[..., Any]) -> Callable[..., Any]:
            return _SplitForward(self, forward, rank, world)

        if isinstance(self.attr, LLMAttribution):  # run_attribution wraps its forward with it
            clone = copy.copy(self.attr)
            clone._wrap_forward = wrap  # type: ignore[attr-defined]
            return clone
        plain = copy.copy(self.attr)
        plain.forward_func = wrap(self.attr.forward_func)
        return plain


def _result_parts(result: Any) -> Any:
    if hasattr(result, "output_probs"):
        return [result.output_probs, result.output_tokens, result.info.get("target_ids")]
    return result


class _SplitForward:
    """A row-wise forward evaluated by the group together: of each call's ``k`` rows, row
    ``i`` (counted over the whole attribution) is evaluated on rank ``i % world``; the rows'
    outputs are gathered and returned in order, ``(k, ...)``, on every rank."""

    def __init__(
        self, owner: SplitAttribution, forward: Callable[..., Any], rank: int, world: int
    ) -> None:
        self.owner, self.forward, self.rank, self.world = owner, forward, rank, world

    def __call__(self, *args: Any) -> Tensor:
        if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
            raise InputTypeError("A split forward needs a batch tensor as its first input.")
        k = args[0].shape[0]
        start = self.owner.rows_total
        owner_of = (torch.arange(start, start + k) % self.world).tolist()
        mine = [i for i in range(k) if owner_of[i] == self.rank]
        output, error = None, None
        try:
            if mine:
                index = torch.tensor(mine)
                local = self.forward(*(_rows(a, index, k) for a in args))
                if not isinstance(local, Tensor) or local.dim() == 0 or len(local) != len(mine):
                    got = tuple(local.shape) if isinstance(local, Tensor) else type(local)
                    raise InputError(
                        f"A split attribution needs a forward that returns one output row per "
                        f"example: {len(mine)} examples gave {got}."
                    )
                output = local.detach().cpu()
        except Exception as err:
            error = err
        payload: dict[str, Any] = {"kind": "rows", "rows": _digest(args), "output": output}
        if error is not None:
            payload = {"kind": "error", "error": f"{type(error).__name__}: {error}"}
        gathered = self.owner._gather(payload)
        if error is not None:
            self.owner._raise(error)
        if any(p["rows"] != payload["rows"] for p in gathered):
            self.owner._raise(InputError(
                "The processes drew different perturbations: pass generator=<int seed> (the "
                "same on every process) or seed torch's global generator equally."
            ))  # fmt: skip
        self.owner.rows_evaluated += len(mine)
        self.owner.rows_total += k
        outputs = [p["output"] for p in gathered]
        first = next(o for o in outputs if o is not None)
        result = torch.empty((k, *first.shape[1:]), dtype=first.dtype)
        for r, o in enumerate(outputs):
            if o is not None:
                result[[i for i in range(k) if owner_of[i] == r]] = o.to(first.dtype)
        return result


def _rows(arg: Any, index: Tensor, k: int) -> Any:
    """The rows ``index`` of a batch-following argument; other arguments as they are."""
    if isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == k:
        return arg[index.to(arg.device)]
    return arg


def split_attribute(attr: Attribution, inp: Any, target: Any = None, **kwargs: Any) -> Any:
    """``attr.attribute(inp, target, **kwargs)`` with its perturbations divided between the
    processes of the default ``torch.distributed`` group (the plain call without one).

    Every process calls it with the same arguments and gets the one-process result; see
    :class:`SplitAttribution`.
    """
    return SplitAttribution(attr).attribute(inp, target, **kwargs)
