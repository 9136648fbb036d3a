"""Running statistics over a stream of tensors (Captum's ``Stat`` family).

Each statistic is updated with one tensor at a time and answers elementwise (the value has the
shape of one update). Statistics may depend on others (the variance needs the count and the sum of
squared deviations); a :class:`~llmattr.attr.summarizer.Summarizer` adds the dependencies a list
of statistics needs, updates them in dependency order and hands every statistic its dependencies
through :meth:`Stat._get_stat`.

The mean and variance use Welford's single-pass updates, which stay accurate when the mean is
large compared with the spread (the naive ``E[x²] - E[x]²`` loses every digit there).

Two statistics are *equal* when they have the same class and parameters (``Var(order=1)`` twice is
one statistic); the optional ``name`` is only the key in the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import torch
from torch import Tensor

from .._core.errors import InputError

if TYPE_CHECKING:
    from .summarizer import SummarizerSingleTensor

__all__ = [
    "MSE",
    "CommonStats",
    "Count",
    "GeneralAccumFn",
    "Max",
    "Mean",
    "Min",
    "Stat",
    "StatValue",
    "StdDev",
    "Sum",
    "Var",
]

StatValue: TypeAlias = Tensor | int | float
_S = TypeVar("_S", bound="Stat")


class Stat:
    """A statistic updated one tensor at a time and read at any point.

    Subclasses implement :meth:`update` and :meth:`get`; a statistic that needs another one looks
    it up in :meth:`init` with ``self._get_stat(Other())`` (the summarizer guarantees it exists
    when it is one of the built-in dependencies).

    Args:
        name: the key of this statistic in a summary (default: the class name in lower case,
            followed by the parameters when there are any).
        **kwargs: the statistic's parameters; they define its identity (equality and hash).
    """

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        self.params: dict[str, Any] = kwargs
        self._name = name
        self._other_stats: SummarizerSingleTensor | None = None

    def init(self) -> None:
        """Look up dependencies; called once the statistic belongs to a summarizer."""

    def _get_stat(self, stat: _S) -> _S | None:
        """The summarizer's statistic equal to ``stat`` (None when it has none)."""
        if self._other_stats is None:
            raise InputError(
                f"{type(self).__name__} looks up other statistics, so it must be used through a "
                "Summarizer (Summarizer([...]).update(x)), not on its own."
            )
        return self._other_stats.get(stat)

    def update(self, x: Tensor) -> None:
        """Add one tensor to the statistic."""
        raise NotImplementedError

    def get(self) -> StatValue | None:
        """The current value (None before the first update)."""
        raise NotImplementedError

    def __hash__(self) -> int:
        return hash((self.__class__, frozenset(self.params.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stat):
            return False
        same_params = frozenset(self.params.items()) == frozenset(other.params.items())
        return self.__class__ == other.__class__ and same_params

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    @property
    def name(self) -> str:
        """The key of this statistic in a summary."""
        if self._name is not None:
            return self._name
        default = type(self).__name__.lower()
        return f"{default}({self.params})" if self.params else default


class Count(Stat):
    """The number of updates."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.n: int | None = None

    def get(self) -> int | None:
        return self.n

    def update(self, x: Tensor) -> None:
        self.n = (self.n or 0) + 1


class Mean(Stat):
    """The elementwise mean of the updates (Welford's running mean; integer updates give a
    float64 mean)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.rolling_mean: Tensor | None = None
        self.n: Count | None = None

    def init(self) -> None:
        self.n = self._get_stat(Count())

    def get(self) -> Tensor | None:
        return self.rolling_mean

    def update(self, x: Tensor) -> None:
        count = self.n.get() if self.n is not None else None
        if count is None:
            raise InputError("Mean needs a Count updated before it; use it through a Summarizer.")
        if self.rolling_mean is None:
            # a copy, so later in-place changes of the caller's tensor do not leak in
            self.rolling_mean = x.clone() if x.is_floating_point() else x.double()
        else:
            # m_n = m_{n-1} + (x - m_{n-1}) / n: no large running sum to lose precision in
            self.rolling_mean = self.rolling_mean + (x - self.rolling_mean) / count


class MSE(Stat):
    """The elementwise sum of squared deviations from the mean, ``Σ (x - mean)²`` (Welford's
    ``M2``; zeros after a single update)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.prev_mean: Tensor | None = None
        self.mse: Tensor | None = None
        self.mean: Mean | None = None

    def init(self) -> None:
        self.mean = self._get_stat(Mean())

    def get(self) -> Tensor | None:
        if self.mse is None and self.prev_mean is not None:
            return torch.zeros_like(self.prev_mean)
        return self.mse

    def update(self, x: Tensor) -> None:
        mean = self.mean.get() if self.mean is not None else None
        if mean is not None and self.prev_mean is not None:
            # M2_n = M2_{n-1} + (x - m_{n-1}) (x - m_n), the mean already updated with x
            step = (x - self.prev_mean) * (x - mean)
            self.mse = step if self.mse is None else self.mse + step
        if mean is not None:
            self.prev_mean = mean.clone()


def _var_name(order: int) -> str:
    return {0: "variance", 1: "sample_variance"}.get(order, f"variance({order})")


def _std_name(order: int) -> str:
    # Captum spells the general key "std_dev{order})" (one parenthesis); kept so that code
    # reading Captum's summaries finds the same key
    return {0: "std_dev", 1: "sample_std_dev"}.get(order, f"std_dev{order})")


class Var(Stat):
    """The elementwise variance ``Σ (x - mean)² / (n - order)`` in float64: ``order=0`` the
    population variance (key ``"variance"``), ``order=1`` the sample variance
    (``"sample_variance"``). Zeros while ``n <= order``."""

    def __init__(self, name: str | None = None, order: int = 0) -> None:
        super().__init__(name=_var_name(order) if name is None else name, order=order)
        self.order = order
        self.mse_stat: MSE | None = None
        self.n_stat: Count | None = None

    def init(self) -> None:
        self.mse_stat = self._get_stat(MSE())
        self.n_stat = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        pass  # computed from MSE and Count when read

    def get(self) -> Tensor | None:
        if self.mse_stat is None or self.n_stat is None:
            raise InputError("Var needs MSE and Count; use it through a Summarizer.")
        mse = self.mse_stat.get()
        if mse is None:
            return None
        n = self.n_stat.get()
        if n is None or n <= self.order:
            return torch.zeros_like(mse)
        return mse.to(torch.float64) / (n - self.order)


class StdDev(Stat):
    """The elementwise standard deviation, the square root of :class:`Var` of the same
    ``order`` (keys ``"std_dev"`` and ``"sample_std_dev"`` for orders 0 and 1)."""

    def __init__(self, name: str | None = None, order: int = 0) -> None:
        super().__init__(name=_std_name(order) if name is None else name, order=order)
        self.order = order
        self.var_stat: Var | None = None

    def init(self) -> None:
        self.var_stat = self._get_stat(Var(order=self.order))

    def update(self, x: Tensor) -> None:
        pass  # computed from Var when read

    def get(self) -> Tensor | None:
        if self.var_stat is None:
            raise InputError("StdDev needs Var; use it through a Summarizer.")
        var = self.var_stat.get()
        return None if var is None else torch.pow(var, 0.5)


class GeneralAccumFn(Stat):
    """Folds the updates with ``fn``: the first update, then ``fn(result, x)`` for each next one.

    Args:
        fn: a binary elementwise function (e.g. ``torch.max``).
        name: the key in the summary.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str | None = None) -> None:
        super().__init__(name=name)
        self.result: Tensor | None = None
        self.fn = fn

    def get(self) -> Tensor | None:
        return self.result

    def update(self, x: Tensor) -> None:
        # clone the first update so the caller's tensor is never aliased by the result
        self.result = x.clone() if self.result is None else self.fn(self.result, x)


class Min(GeneralAccumFn):
    """The elementwise minimum of the updates."""

    def __init__(
        self, name: str | None = None, min_fn: Callable[[Tensor, Tensor], Tensor] = torch.min
    ) -> None:
        super().__init__(name=name, fn=min_fn)


class Max(GeneralAccumFn):
    """The elementwise maximum of the updates."""

    def __init__(
        self, name: str | None = None, max_fn: Callable[[Tensor, Tensor], Tensor] = torch.max
    ) -> None:
        super().__init__(name=name, fn=max_fn)


class Sum(GeneralAccumFn):
    """The elementwise sum of the updates."""

    def __init__(
        self, name: str | None = None, add_fn: Callable[[Tensor, Tensor], Tensor] = torch.add
    ) -> None:
        super().__init__(name=name, fn=add_fn)


def CommonStats() -> list[Stat]:
    """The usual summary: mean, sample variance, sample standard deviation, min and max."""
    return [Mean(), Var(order=1), StdDev(order=1), Min(), Max()]
