"""Comprehensiveness and sufficiency (DeYoung et al., 2020, "ERASER") of an LLM attribution.

Both ask whether the features an attribution ranks highest really carry the model's answer:

* **comprehensiveness@k** = ``p(target | prompt) - p(target | prompt without the top-k)``: high
  when removing the top features destroys the answer;
* **sufficiency@k** = ``p(target | prompt) - p(target | only the top-k)``: low (near 0, or
  negative) when the top features alone keep the answer.

``p(target | ...)`` is the probability of the whole target sequence. "Without" means what absence
means for the text input — its features replaced by the input's baselines (for
``TextTokenInput`` and the span inputs: the baseline token, so positions never shift) — the same
perturbation the perturbation methods evaluate, scored by the same exact
:class:`~llmattr.text.scorer.Scorer`.

:func:`completeness` checks a different property: whether attributions of ``log p(target)``
sum to its change from the baseline prompt (every feature absent) to the prompt, which Shapley
values and integrated gradients promise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..text.llm_attr import _pad_id
from ..text.result import LLMAttributionResult
from ..text.scorer import Scorer

__all__ = ["Completeness", "Faithfulness", "completeness", "faithfulness", "top_features"]


def top_features(result: LLMAttributionResult, k: int) -> list[int]:
    """Indices of the ``k`` features with the largest ``seq_attr`` (most positive first; ties
    broken by position)."""
    scores = torch.as_tensor(result.seq_attr, dtype=torch.float64).reshape(-1)
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be between 1 and the number of features ({scores.numel()}).")
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return order[:k]


@dataclass(frozen=True)
class Faithfulness:
    """Comprehensiveness and sufficiency of one attribution, per ``k``.

    Attributes:
        prob: ``p(target | prompt)``.
        comprehensiveness: ``{k: p(target | prompt) - p(target | prompt without top-k)}``.
        sufficiency: ``{k: p(target | prompt) - p(target | only top-k)}``.
    """

    prob: float
    comprehensiveness: dict[int, float]
    sufficiency: dict[int, float]


def _scorer(model: nn.Module, tokenizer: Any, inp: Any, result: LLMAttributionResult) -> Any:
    """``(n_features, scorer of result's target after inp's prompt)``, the result checked to
    belong to the input."""
    n = int(inp.to_tensor().shape[-1])
    if len(result.seq_attr) != n:
        raise ValueError(
            f"The result has {len(result.seq_attr)} features but the input has {n}; pass the "
            "input that was attributed."
        )
    ids = result.info.get("target_ids")
    if ids is None:  # a result made elsewhere: its output tokens must be the tokenizer's pieces
        ids = tokenizer.convert_tokens_to_ids(list(result.output_tokens))
    target = torch.tensor([int(i) for i in ids], dtype=torch.long)
    return n, Scorer(model, inp.prompt_ids(), target, _pad_id(tokenizer))


@dataclass(frozen=True)
class Completeness:
    """How far an attribution is from accounting for the whole change of the target's
    log-probability between the baseline prompt (every feature absent) and the prompt.

    Attributes:
        total: the sum of the attributions (``seq_attr``).
        expected: ``log p(target | prompt) - log p(target | baseline prompt)``.
        gap: ``total - expected``; 0 for exact Shapley values and every ShapleyValueSampling /
            KernelShap estimate (by construction), small for integrated gradients with enough
            steps. Feature ablation and Lime do not aim at it.
    """

    total: float
    expected: float

    @property
    def gap(self) -> float:
        return self.total - self.expected


def completeness(
    model: nn.Module, tokenizer: Any, inp: Any, result: LLMAttributionResult
) -> Completeness:
    """Check the completeness of a log-probability attribution ``result`` of ``inp``.

    Args:
        model: the ``transformers`` model the attribution explains.
        tokenizer: its tokenizer.
        inp: the text input that was attributed (its baselines define the baseline prompt).
        result: an attribution of ``log p(target)`` (``attr_target="log_prob"``, the default).

    Returns:
        A :class:`Completeness`: the attributions' sum, the change they should sum to, and the
        gap between them.
    """
    n, scorer = _scorer(model, tokenizer, inp, result)
    (baseline,) = inp.perturbed_ids(torch.zeros(1, n))
    absent = float(scorer.score([baseline]).double().sum())
    total = float(torch.as_tensor(result.seq_attr, dtype=torch.float64).sum())
    return Completeness(total, float(scorer.original.double().sum()) - absent)


def faithfulness(
    model: nn.Module,
    tokenizer: Any,
    inp: Any,
    result: LLMAttributionResult,
    ks: Sequence[int] = (1, 3),
) -> Faithfulness:
    """Score how faithful ``result``'s feature ranking is to ``model``.

    Args:
        model: the ``transformers`` model the attribution explains.
        tokenizer: its tokenizer.
        inp: the text input that was attributed (its features and baselines define removal).
        result: the attribution: ``seq_attr`` ranks the features, ``output_tokens`` is the target.
        ks: the numbers of top features to remove / keep (each at most the number of features).

    Returns:
        A :class:`Faithfulness` with one comprehensiveness and sufficiency value per ``k``.
    """
    n, scorer = _scorer(model, tokenizer, inp, result)
    presences = []
    for k in ks:
        keep = torch.zeros(n, dtype=torch.bool)
        keep[top_features(result, k)] = True
        presences += [~keep, keep]
    rows = inp.perturbed_ids(torch.stack(presences).float())
    probs = scorer.score(rows).sum(1).exp().tolist()
    full = float(scorer.original.sum().exp())
    return Faithfulness(
        full,
        {k: full - probs[2 * i] for i, k in enumerate(ks)},
        {k: full - probs[2 * i + 1] for i, k in enumerate(ks)},
    )
