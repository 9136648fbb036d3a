"""Templates whose filled-in values are the features (Captum's ``TextTemplateInput``).

Absent values become baseline strings and the prompt is re-tokenized, so its length may change.
The baseline is what "absent" means: an empty string deletes the value and often leaves a
broken sentence the model never saw; a neutral replacement of the same kind ("someone" for a
name) keeps the prompt in distribution, and :class:`ProductBaselines` averages over several
plausible replacements (``num_trials``).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .inputs import _presence_rows

__all__ = ["ProductBaselines", "TextTemplateInput"]


class ProductBaselines:
    """Baselines drawn per feature from their own candidate lists (for ``num_trials``).

    Args:
        choices: per feature (by name for a dict, or position for a list) the candidate
            replacement strings; each trial draws one per feature.
        seed: seed of the draws.
    """

    def __init__(
        self, choices: Mapping[str, Sequence[str]] | Sequence[Sequence[str]], seed: int = 0
    ) -> None:
        self.choices = choices
        self.rng = random.Random(seed)

    def sample(self) -> dict[str, str] | list[str]:
        """One draw: a replacement per feature."""
        if isinstance(self.choices, Mapping):
            return {k: self.rng.choice(list(v)) for k, v in self.choices.items()}
        return [self.rng.choice(list(v)) for v in self.choices]


class TextTemplateInput:
    """A template whose filled-in values are the features (Captum's ``TextTemplateInput``).

    Args:
        template: a ``str.format`` template (``"{} lives in {}"`` or ``"{name} lives in {city}"``)
            or a callable building the prompt from the values.
        values: the values (a list for positional, a dict for named fields).
        baselines: replacement strings for absent values: one string for all, one per value
            (list or dict), a :class:`ProductBaselines`, or None (the empty string — often out of
            distribution, see the module docstring). A replacement may have any number of
            tokens: the perturbed prompt is re-tokenized, and prompts of different lengths are
            scored exactly (padding is masked, positions kept).
        mask: groups values into features: one feature id per value (ids ``0..n-1``).

    Raises:
        ValueError: when the values do not fill the template (a field without a value, a named
            value no field uses, or more or fewer positional values than ``{}`` fields).

    :class:`~llmattr.LLMAttribution` sets ``tokenizer`` to the model's.
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: Sequence[str] | Mapping[str, str],
        baselines: str | Sequence[str] | Mapping[str, str] | ProductBaselines | None = None,
        mask: Sequence[int] | Tensor | None = None,
    ) -> None:
        self.template = template
        self.named = isinstance(values, Mapping)
        # field names for named values, positions for positional ones
        self.keys: list[Any] = (
            list(values) if isinstance(values, Mapping) else list(range(len(values)))
        )
        self.value_list = list(values.values()) if isinstance(values, Mapping) else list(values)
        self.baselines = baselines
        if isinstance(template, str):
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            expected = len(self.value_list)
            if self.named:
                used = [re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields]  # "{a.b}" uses a
                missing = [f for f in used if f not in self.keys]
                if missing:
                    raise ValueError(f"The template's fields {missing} have no value.")
                unused = [k for k in self.keys if k not in used]
                if unused:
                    # a value the template never shows would get a zero attribution, silently
                    raise ValueError(
                        f"The values {unused} do not appear in the template; every value must "
                        "fill a field."
                    )
            elif len(fields) != expected or any(
                f not in ("", str(i)) for i, f in enumerate(fields)
            ):
                raise ValueError(
                    f"The template has {len(fields)} fields but {expected} values were given; "
                    "every '{}' needs exactly one value."
                )
        n = len(self.value_list)
        if n == 0:
            raise ValueError("No values were given: the template has no features.")
        if (
            baselines is not None
            and not isinstance(baselines, str | Mapping | ProductBaselines)
            and len(baselines) != n
        ):
            raise ValueError(f"Got {len(baselines)} baselines for {n} values.")
        ids = (
            list(range(n)) if mask is None else [int(m) for m in torch.as_tensor(mask).reshape(-1)]
        )
        if len(ids) != n or sorted(set(ids)) != list(range(max(ids) + 1)):
            raise ValueError(
                f"mask must give each of the {n} values a feature id, ids 0..k-1 with none missing."
            )
        self.mask = ids
        self.names = [
            " ".join(self.value_list[i] for i in range(n) if ids[i] == f)
            for f in range(max(ids) + 1)
        ]
        self.tokenizer: Any = None
        self._drawn: list[str] | None = None

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def values(self) -> list[str]:
        return self.names

    def to_tensor(self) -> Tensor:
        return torch.ones(1, self.n_features)

    def format_tokens(self) -> list[str]:
        return self.names

    def new_trial(self) -> None:
        """Draw fresh baselines when they are a :class:`ProductBaselines`."""
        if isinstance(self.baselines, ProductBaselines):
            drawn = self.baselines.sample()
            if isinstance(drawn, dict):
                missing = [k for k in self.keys if k not in drawn]
                if missing:
                    raise ValueError(f"ProductBaselines has no choices for the values {missing}.")
                self._drawn = [drawn[k] for k in self.keys]
            else:
                if len(drawn) != len(self.value_list):
                    raise ValueError(
                        f"ProductBaselines has choices for {len(drawn)} values; the template "
                        f"has {len(self.value_list)}."
                    )
                self._drawn = list(drawn)

    def _baseline_values(self) -> list[str]:
        b = self.baselines
        if self._drawn is not None:
            return self._drawn
        if b is None or isinstance(b, str):
            return [b or ""] * len(self.value_list)
        if isinstance(b, Mapping):
            return [b.get(k, "") for k in self.keys]
        if isinstance(b, ProductBaselines):
            self.new_trial()
            assert self._drawn is not None
            return self._drawn
        if len(b) != len(self.value_list):
            raise ValueError(f"Got {len(b)} baselines for {len(self.value_list)} values.")
        return list(b)

    def text_for(self, keep: Sequence[bool]) -> str:
        """The prompt with the features in ``keep`` present and the others at their baselines."""
        keep = list(keep)
        if len(keep) != self.n_features:
            raise ValueError(f"keep has {len(keep)} entries for {self.n_features} features.")
        base = self._baseline_values()
        filled = [v if keep[self.mask[i]] else base[i] for i, v in enumerate(self.value_list)]
        if callable(self.template):
            return (
                self.template(*filled)
                if not self.named
                else self.template(**dict(zip(self.keys, filled)))
            )
        if self.named:
            return self.template.format(**dict(zip(self.keys, filled)))
        return self.template.format(*filled)

    def _tokens(self, text: str) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError("TextTemplateInput needs a tokenizer (LLMAttribution sets it).")
        if not text:
            raise ValueError("A perturbed prompt is empty; choose non-empty baselines.")
        return torch.tensor(
            self.tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long
        )

    def prompt_ids(self) -> Tensor:
        text = self.text_for([True] * self.n_features)
        if not text:
            raise ValueError("The prompt is empty: there is nothing to attribute.")
        return self._tokens(text)

    def perturbed_ids(self, present: Tensor) -> list[Tensor]:
        rows = _presence_rows(present, self.n_features)
        return [self._tokens(self.text_for(row.tolist())) for row in rows]
