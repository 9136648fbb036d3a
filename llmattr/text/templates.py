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

from .._core.errors import InputError
from .inputs import _presence_rows

__all__ = ["ProductBaselines", "TextTemplateInput"]


class ProductBaselines:
    """Baselines sampled from the Cartesian product of per-value candidates (Captum's).

    Calling the object (or :meth:`sample`) returns one sampled baseline per value: a list for
    a list of candidate lists, a dict for a dict. A dict key may be a tuple of value names whose
    baselines go together (``{("name", "pronoun"): [("Sarah", "Her"), ("John", "His")]}``):
    each candidate is then a tuple, and the sample splits it into one entry per name.

    Args:
        baseline_values: candidate baselines per value (a list of lists, or a dict of lists
            keyed by value name or tuple of names).
        seed: seed of this object's own random draws (reproducible); None draws from Python's
            global ``random``, as Captum does.
    """

    def __init__(
        self,
        baseline_values: Mapping[str | tuple[str, ...], Sequence[Any]] | Sequence[Sequence[Any]],
        seed: int | None = 0,
    ) -> None:
        if isinstance(baseline_values, Mapping):
            self.dict_keys: list[Any] = list(baseline_values)
            lists = [list(baseline_values[k]) for k in self.dict_keys]
        elif isinstance(baseline_values, Sequence) and not isinstance(baseline_values, str):
            self.dict_keys = []
            lists = [list(v) for v in baseline_values]
        else:
            raise InputError(
                "baseline_values must be a list of candidate lists or a dict of them, got "
                f"{type(baseline_values).__name__}."
            )
        for i, candidates in enumerate(lists):
            key = self.dict_keys[i] if self.dict_keys else i
            if not candidates:
                raise InputError(f"ProductBaselines has no candidates for {key!r}.")
            if isinstance(key, tuple):
                bad = [c for c in candidates if not isinstance(c, tuple) or len(c) != len(key)]
                if bad:
                    raise InputError(
                        f"The key {key!r} groups {len(key)} values, so each of its candidates "
                        f"must be a tuple of {len(key)}; got {bad[0]!r}."
                    )
        self.baseline_values = lists
        self.choices = baseline_values  # as given
        self.rng: Any = random if seed is None else random.Random(seed)

    def sample(self) -> list[Any] | dict[str, Any]:
        """One draw: a baseline per value (a tuple key's draw split over its names)."""
        drawn = [self.rng.choice(candidates) for candidates in self.baseline_values]
        if not self.dict_keys:
            return drawn
        out: dict[str, Any] = {}
        for key, value in zip(self.dict_keys, drawn):
            if isinstance(key, tuple):
                out.update(zip(key, value))
            else:
                out[key] = value
        return out

    def __call__(self) -> list[Any] | dict[str, Any]:
        return self.sample()


Baselines = str | Sequence[str] | Mapping[str, str] | Callable[[], Any] | None


class TextTemplateInput:
    """A template whose filled-in values are the features (Captum's ``TextTemplateInput``).

    Attributions come back one per value (``values``, ``n_features``); values that share a mask
    id form one interpretable feature (``n_itp_features``), perturbed together, and each gets
    the group's attribution.

    Args:
        template: a ``str.format`` template (``"{} lives in {}"`` or ``"{name} lives in {city}"``)
            or a callable building the prompt from the values.
        values: the values (a list for positional fields, a dict for named ones).
        baselines: replacement strings for absent values: a list (one per value), a dict (by
            name; a missing name means ``""``), one string for all, a callable returning a list
            or dict (e.g. :class:`ProductBaselines`), or None (the empty string — often out of
            distribution, see the module docstring). A replacement may have any number of
            tokens: the perturbed prompt is re-tokenized.
        mask: groups values into interpretable features: one id per value, in the format of
            ``values`` (a list, or a dict by name). Ids may be any hashable values; the
            interpretable features are ordered by sorted id.

    Raises:
        InputError: when the values do not fill the template (a field without a value, a named
            value no field uses, or more or fewer positional values than ``{}`` fields), or the
            baselines or mask do not match the values.

    :class:`~llmattr.LLMAttribution` sets ``tokenizer`` to the model's. A callable baseline is
    drawn afresh by every :meth:`to_model_input` call (Captum's); ``LLMAttribution`` draws it
    once per trial (:meth:`new_trial`), so all prompts of a trial share one baseline draw.
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: Sequence[str] | Mapping[str, str],
        baselines: Baselines = None,
        mask: Sequence[Any] | Mapping[str, Any] | Tensor | None = None,
    ) -> None:
        if isinstance(values, str) or not isinstance(values, Sequence | Mapping):
            raise InputError(
                f"values must be a list or a dict of strings, got {type(values).__name__}."
            )
        if not (isinstance(template, str) or callable(template)):
            raise InputError(
                f"template must be a str or a callable, got {type(template).__name__}."
            )
        self.template = template
        self.format_fn: Callable[..., str] = (
            template.format if isinstance(template, str) else template
        )
        self.named = isinstance(values, Mapping)
        self.dict_keys: list[str] = list(values) if isinstance(values, Mapping) else []
        # field names for named values, positions for positional ones
        self.keys: list[Any] = self.dict_keys or list(range(len(values)))
        self.values: list[str] = (
            [values[k] for k in self.dict_keys] if isinstance(values, Mapping) else list(values)
        )
        n = len(self.values)
        if n == 0:
            raise InputError("No values were given: the template has no features.")
        if isinstance(template, str):
            self._check_fields(template)
        self.baselines: list[str] | Callable[[], Any] = self._baseline_list(baselines)
        self.mask: list[Any] | None = None if mask is None else self._mask_list(mask)
        ids = list(range(n)) if self.mask is None else self.mask
        order = _ordered_unique(ids)
        index = {mid: i for i, mid in enumerate(order)}
        self.formatted_mask: list[int] = [index[m] for m in ids]
        self.n_features = n
        self.n_itp_features = len(order)
        self.tokenizer: Any = None
        self._drawn: list[str] | None = None

    # ---- validation --------------------------------------------------------------------------

    def _check_fields(self, template: str) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        if self.named:
            used = [re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields]  # "{a.b}" uses a
            missing = [f for f in used if f not in self.keys]
            if missing:
                raise InputError(f"The template's fields {missing} have no value.")
            unused = [k for k in self.keys if k not in used]
            if unused:
                # a value the template never shows would get a zero attribution, silently
                raise InputError(
                    f"The values {unused} do not appear in the template; every value must "
                    "fill a field."
                )
        elif len(fields) != len(self.values) or any(
            f not in ("", str(i)) for i, f in enumerate(fields)
        ):
            raise InputError(
                f"The template has {len(fields)} fields but {len(self.values)} values were "
                "given; every '{}' needs exactly one value."
            )

    def _baseline_list(self, baselines: Baselines) -> list[str] | Callable[[], Any]:
        n = len(self.values)
        if baselines is None or isinstance(baselines, str):
            return [baselines or ""] * n
        if callable(baselines):
            return baselines
        if isinstance(baselines, Mapping):
            unknown = [k for k in baselines if k not in self.keys]
            if unknown:
                raise InputError(f"baselines name {unknown}, which are not values.")
            return [baselines.get(k, "") for k in self.keys]
        baselines = list(baselines)
        if len(baselines) != n:
            raise InputError(f"Got {len(baselines)} baselines for {n} values.")
        return baselines

    def _mask_list(self, mask: Sequence[Any] | Mapping[str, Any] | Tensor) -> list[Any]:
        n = len(self.values)
        if isinstance(mask, Mapping):
            if not self.named:
                raise InputError("mask is a dict but values are a list; give a list of ids.")
            missing = [k for k in self.keys if k not in mask]
            if missing:
                raise InputError(f"mask gives no id to the values {missing}.")
            return [mask[k] for k in self.keys]
        ids = mask.reshape(-1).tolist() if isinstance(mask, Tensor) else list(mask)
        if len(ids) != n:
            raise InputError(f"mask must give each of the {n} values an id; got {len(ids)} ids.")
        return ids

    # ---- Captum's interface ------------------------------------------------------------------

    def to_tensor(self) -> Tensor:
        """``(1, n_itp_features)`` ones: every interpretable feature present."""
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> str:
        """The prompt text; with ``perturbed_tensor`` ``(1, n_itp_features)``, the values of
        the features whose entry is 0 are replaced by their baselines (a callable baseline is
        drawn afresh)."""
        if perturbed_tensor is None:
            return self._fill(self.values)
        row = torch.as_tensor(perturbed_tensor).reshape(-1, self.n_itp_features)[0]
        return self._fill(self._with_baselines(row.tolist(), self._draw()))

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """``(..., n_itp_features)`` attributions → ``(..., n_features)``: each value gets its
        group's attribution."""
        if self.mask is None:
            return itp_attr
        index = torch.tensor(self.formatted_mask, device=itp_attr.device)
        return itp_attr.index_select(-1, index)

    # ---- llmattr's engine ----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """A name per interpretable feature: its values joined by spaces."""
        return [
            " ".join(str(v) for v, g in zip(self.values, self.formatted_mask) if g == f)
            for f in range(self.n_itp_features)
        ]

    def format_tokens(self) -> list[str]:
        """The result's input tokens: the values (one attribution each)."""
        return list(self.values)

    def new_trial(self) -> None:
        """Draw fresh baselines when they are a callable (e.g. :class:`ProductBaselines`)."""
        if callable(self.baselines):
            self._drawn = self._draw()

    def _draw(self) -> list[str]:
        b = self.baselines
        if not callable(b):
            return list(b)
        drawn = b()
        if isinstance(drawn, Mapping):
            missing = [k for k in self.keys if k not in drawn]
            if missing or not self.named:
                what = f"no choices for the values {missing}" if missing else "a dict"
                raise InputError(
                    f"The baselines callable returned {what}; it must return a "
                    f"{'dict with every value name' if self.named else 'list'}."
                )
            return [drawn[k] for k in self.keys]
        drawn = list(drawn)
        if len(drawn) != len(self.values):
            raise InputError(
                f"The baselines callable returned {len(drawn)} values; the template has "
                f"{len(self.values)}."
            )
        return drawn

    def _baseline_values(self) -> list[str]:
        if not callable(self.baselines):
            return list(self.baselines)
        if self._drawn is None:
            self.new_trial()
        assert self._drawn is not None
        return self._drawn

    def _with_baselines(self, keep: Sequence[Any], base: Sequence[str]) -> list[str]:
        return [v if keep[self.formatted_mask[i]] else base[i] for i, v in enumerate(self.values)]

    def _fill(self, filled: Sequence[str]) -> str:
        if self.named:
            return self.format_fn(**dict(zip(self.keys, filled)))
        return self.format_fn(*filled)

    def text_for(self, keep: Sequence[bool]) -> str:
        """The prompt with the interpretable features in ``keep`` present and the others at
        this trial's baselines."""
        keep = list(keep)
        if len(keep) != self.n_itp_features:
            raise InputError(f"keep has {len(keep)} entries for {self.n_itp_features} features.")
        return self._fill(self._with_baselines(keep, self._baseline_values()))

    def _tokens(self, text: str) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError("TextTemplateInput needs a tokenizer (LLMAttribution sets it).")
        if not text:
            raise InputError("A perturbed prompt is empty; choose non-empty baselines.")
        return torch.as_tensor(self.tokenizer.encode(text), dtype=torch.long).reshape(-1)

    def prompt_ids(self) -> Tensor:
        """Token ids of the prompt, encoded as Captum does (``tokenizer.encode``)."""
        text = self.to_model_input()
        if not text:
            raise InputError("The prompt is empty: there is nothing to attribute.")
        return self._tokens(text)

    def perturbed_ids(self, present: Tensor) -> list[Tensor]:
        """Token ids of the prompt for each presence row ``(k, n_itp_features)``."""
        rows = _presence_rows(present, self.n_itp_features)
        return [self._tokens(self.text_for(row.tolist())) for row in rows]


def _ordered_unique(ids: Sequence[Any]) -> list[Any]:
    """The distinct mask ids, sorted when they are comparable (else in order of appearance)."""
    unique = list(dict.fromkeys(ids))
    try:
        return sorted(unique)
    except TypeError:
        return unique
