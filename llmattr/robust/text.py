"""How robust is a language model's answer: the fewest top-ranked prompt features whose removal
changes it.

:func:`answer_robustness` ranks the prompt's features by an attribution (``seq_attr``, most
positive first), removes the top ``k`` — "removed" means what absence means for the input: the
baseline token of :class:`~llmattr.TextTokenInput` and the span inputs (``words()``, ...), the
baseline strings of :class:`~llmattr.TextTemplateInput` — and finds the smallest ``k`` for which
the answer is no longer the model's greedy continuation. The search is Captum's
:class:`~llmattr.robust.MinParamPerturbation` over ``k`` (``arg_name="k"``): the attack removes
the top-``k`` features, the correctness check asks whether the answer is still preferred.

One criterion serves both uses. The answer (generated greedily when ``target`` is None, else the
given target) is *still preferred* when, teacher-forced after the perturbed prompt, each of its
tokens is the model's top choice (its logit above every other token's). For a generated answer
that is exactly "greedy generation from the perturbed prompt reproduces the answer" (same
tokens, same end of sequence), checked with one forward instead of a generation; for a given
target it is "the model no longer prefers the target": at some position another token's
probability rises above the target token's.

Search modes (Captum's): ``"linear"`` tries ``k = k_min, k_min + 1, ...`` and is exact.
``"binary"`` needs about ``log2(n)`` evaluations but assumes the answer, once changed, stays
changed for every larger ``k`` (monotonicity). That usually holds and is not guaranteed: removing
more words can bring the answer back. Without it, binary search still returns a ``k`` that
changes the answer, though maybe not the smallest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from ..text.inputs import _TokenFeatures
from ..text.llm_attr import _target_ids
from ..text.result import LLMAttributionResult
from ..text.scorer import check_context, model_device
from ..text.templates import TextTemplateInput
from .min_param import MinParamPerturbation

__all__ = ["AnswerRobustness", "answer_robustness", "feature_ranking"]

MODES = ("linear", "binary")


@dataclass(frozen=True)
class AnswerRobustness:
    """How many top-ranked features must go before the answer changes.

    Attributes:
        n_removed: the smallest number of top-ranked features whose removal changes the answer
            (0 when the full prompt already does not prefer a given target), or None when no
            tried ``k`` changes it.
        removed_indices: the removed features' indices (into the input's interpretable
            features), most important first; empty when ``n_removed`` is None.
        removed_words: their names (tokens, words, sentences, template values).
        answer: the answer as text (special tokens left out).
        new_answer: the greedy continuation after the removal (as many tokens as the answer
            when the target was given, else up to ``max_new_tokens``), or None.
        n_features: the number of features of the prompt.
        ranking: every ranked feature index, most important first.
        mode: the search used, ``"linear"`` or ``"binary"``.
        target_given: whether the answer was a given target (else generated greedily).
        k_max: the largest ``k`` the search could try.
    """

    n_removed: int | None
    removed_indices: list[int]
    removed_words: list[str]
    answer: str
    new_answer: str | None
    n_features: int
    ranking: list[int] = field(default_factory=list)
    mode: str = "linear"
    target_given: bool = False
    k_max: int = 0

    @property
    def fraction(self) -> float | None:
        """``n_removed / n_features`` (None when no ``k`` changes the answer)."""
        return None if self.n_removed is None else self.n_removed / self.n_features

    @property
    def changed(self) -> bool:
        """Whether some tried ``k`` changes the answer."""
        return self.n_removed is not None

    def describe(self, noun: str = "feature", names: Sequence[str] | None = None) -> str:
        """One line: ``"answer changes after removing 2 of 9 words: 'Paris', 'capital'"``.

        Args:
            noun: what a feature is (``"word"``, ``"token"``, ...); pluralized with ``s``.
            names: display names of all features (default: ``removed_words``' own).
        """
        many = f"{noun}s" if self.n_features != 1 else noun
        if self.n_removed is None:
            what = "target stays preferred" if self.target_given else "answer never changes"
            if self.k_max == self.n_features:
                return f"{what}, even after removing all {self.n_features} {many}"
            return f"{what}, even after removing the top {self.k_max} of {self.n_features} {many}"
        if self.n_removed == 0:
            return "the model does not prefer the target even with nothing removed"
        what = "target is no longer preferred" if self.target_given else "answer changes"
        shown = [names[i] for i in self.removed_indices] if names else self.removed_words
        words = ", ".join(repr(w) for w in shown)
        return f"{what} after removing {self.n_removed} of {self.n_features} {many}: {words}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what :func:`llmattr.viz.html_report` reads from a result's
        ``info["robustness"]``)."""
        return {**asdict(self), "fraction": self.fraction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerRobustness:
        """Inverse of :meth:`to_dict`."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_input(inp: Any) -> None:
    if isinstance(inp, str):
        raise InputTypeError(
            "Wrap the prompt in a text input: TextTokenInput(prompt, tokenizer), "
            "words(prompt, tokenizer), TextTemplateInput(template, values), ..."
        )
    if not isinstance(inp, _TokenFeatures | TextTemplateInput):
        raise InputTypeError(
            "answer_robustness takes a text input (TextTokenInput, words(), sentences(), "
            f"chat_turns(), TextSpanInput, TextTemplateInput), got {type(inp).__name__}."
        )
    if inp.n_itp_features < 1:
        raise InputError("The input has no features: there is nothing to remove.")


def _itp_scores(inp: Any, seq_attr: Tensor) -> Tensor:
    """``(n_itp_features,)`` scores from ``(n_features,)`` attributions: a grouped template
    feature gets its values' (shared) attribution."""
    mask = getattr(inp, "formatted_mask", None)
    if mask is None or inp.n_itp_features == len(seq_attr):
        return seq_attr
    first = {g: i for i, g in reversed(list(enumerate(mask)))}
    return seq_attr[[first[g] for g in range(inp.n_itp_features)]]


def feature_ranking(inp: Any, result: LLMAttributionResult) -> list[int]:
    """The input's interpretable features ordered by ``result.seq_attr``, largest first (ties
    by position; NaN last).

    Args:
        inp: the text input that was attributed.
        result: its attribution; ``seq_attr`` ``(n_features,)``.
    """
    seq = torch.as_tensor(result.seq_attr, dtype=torch.float64).reshape(-1).cpu()
    n_values = len(inp.values)
    if seq.numel() != n_values:
        raise InputError(
            f"The result has {seq.numel()} features but the input has {n_values}; pass the "
            "input that was attributed."
        )
    scores = _itp_scores(inp, seq).tolist()
    key = [(s != s, -s if s == s else 0.0, i) for i, s in enumerate(scores)]  # NaN last
    return [i for *_, i in sorted(key)]


def _check_ranking(ranking: Sequence[int], n: int) -> list[int]:
    if isinstance(ranking, str | bytes) or not isinstance(ranking, Sequence | Tensor):
        raise InputTypeError(
            f"ranking must be a sequence of feature indices, got {type(ranking).__name__}."
        )
    items = ranking.reshape(-1).tolist() if isinstance(ranking, Tensor) else list(ranking)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise InputTypeError(
            "ranking holds feature indices (ints), most important first; to rank by "
            "attribution scores pass result= (an LLMAttributionResult) instead."
        )
    order = [int(i) for i in items]
    if not order:
        raise InputError("ranking is empty: give the features in order of importance.")
    bad = [i for i in order if not 0 <= i < n]
    if bad:
        raise InputError(f"ranking has indices {bad} outside 0..{n - 1} (the input's features).")
    if len(set(order)) != len(order):
        raise InputError("ranking repeats a feature index; each feature may appear once.")
    return order


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and at most {high}"
        raise InputError(f"{name} must be at least {low}{top}, got {value}.")
    return value


@torch.no_grad()
def preference_margins(model: nn.Module, prompts: Tensor, answer: Tensor) -> Tensor:
    """How strongly each prompt makes the model prefer ``answer``, token by token.

    ``margin[b, t] = logit(answer[t]) - max over other tokens v of logit(v)``, teacher-forced
    after ``prompts[b]``: positive at every ``t`` exactly when greedy decoding from that prompt
    reproduces the answer.

    Args:
        model: a causal LM (or encoder-decoder) returning ``.logits``.
        prompts: ``(B, L)`` token ids.
        answer: ``(K,)`` token ids.

    Returns:
        ``(B, K)`` float margins, on the CPU.
    """
    device = model_device(model)
    prompts, answer = prompts.to(device), answer.to(device)
    B, K = prompts.shape[0], answer.numel()
    config = getattr(model, "config", None)
    if bool(getattr(config, "is_encoder_decoder", False)):
        start = getattr(config, "decoder_start_token_id", None)
        start = getattr(config, "pad_token_id", 0) if start is None else start
        decoder = torch.cat([answer.new_tensor([int(start or 0)]), answer[:-1]])
        logits = model(input_ids=prompts, decoder_input_ids=decoder.expand(B, K)).logits
    else:
        full = torch.cat([prompts, answer[:-1].expand(B, K - 1)], 1)
        logits = model(input_ids=full, attention_mask=torch.ones_like(full)).logits
    logits = logits[:, -K:].float()
    index = answer.expand(B, K).unsqueeze(-1)
    chosen = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf")).amax(-1)
    return (chosen - others).cpu()


def _still_preferred(margins: Tensor) -> bool:
    return bool((margins > 0).all())


def _generate(model: nn.Module, tokenizer: Any, prompt: Tensor, n_tokens: int) -> Tensor:
    return _target_ids(model, tokenizer, prompt, None, {"max_new_tokens": n_tokens}, None)


def _text(tokenizer: Any, ids: Tensor) -> str:
    try:
        return str(tokenizer.decode(ids.tolist(), skip_special_tokens=True)).strip()
    except (TypeError, ValueError, AttributeError):
        return " ".join(tokenizer.convert_ids_to_tokens(ids.tolist()))


def answer_robustness(
    model: nn.Module,
    tokenizer: Any,
    inp: Any,
    result: LLMAttributionResult | None = None,
    target: str | Tensor | Sequence[int] | None = None,
    ranking: Sequence[int] | Tensor | None = None,
    mode: str = "linear",
    max_new_tokens: int = 25,
    *,
    k_min: int = 1,
    k_max: int | None = None,
    perturbations_per_eval: int = 1,
) -> AnswerRobustness:
    """The fewest top-ranked features of ``inp`` whose removal changes the model's answer.

    Everything is checked before the model runs. The model's train/eval mode is left as it
    is (evaluate in eval mode for deterministic answers).

    Args:
        model: a ``transformers`` causal LM (or encoder-decoder).
        tokenizer: its tokenizer.
        inp: the prompt's features: ``TextTokenInput``, ``words()``, ``sentences()``,
            ``chat_turns()``, ``TextSpanInput`` or ``TextTemplateInput``; their baselines say
            what a removed feature becomes.
        result: an attribution of ``inp`` whose ``seq_attr`` ranks the features (largest
            first). When neither it nor ``ranking`` is given, ``FeatureAblation`` of the
            answer ranks them.
        target: None to use the model's greedy answer (``max_new_tokens`` tokens at most, up
            to its end of sequence), or a fixed target (a string or token ids): then the
            question is when the model stops preferring it.
        ranking: the features' order of importance (indices, most important first), instead
            of ``result``'s; it may list only some features.
        mode: ``"linear"`` (exact: every ``k`` in order) or ``"binary"`` (fewer evaluations;
            exact when removing more features never brings the answer back).
        max_new_tokens: length limit of the generated answer (and of ``new_answer``).
        k_min: the smallest ``k`` tried (at least 1).
        k_max: the largest ``k`` tried (default: every ranked feature).
        perturbations_per_eval: prompts evaluated in one forward (token and span inputs; a
            template's prompts are re-tokenized to different lengths and go one at a time).
            The answer does not depend on it.

    Returns:
        An :class:`AnswerRobustness`.
    """
    _check_input(inp)
    if mode not in MODES:
        raise InputError(f"mode must be 'linear' or 'binary', got {mode!r}.")
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("perturbations_per_eval", perturbations_per_eval, 1)
    if result is not None and not isinstance(result, LLMAttributionResult):
        raise InputTypeError(
            f"result must be an LLMAttributionResult, got {type(result).__name__}."
        )
    if isinstance(inp, TextTemplateInput) and inp.tokenizer is None:
        inp.tokenizer = tokenizer  # what LLMAttribution does: a template encodes with it
    n = inp.n_itp_features
    if ranking is not None:
        order = _check_ranking(ranking, n)
    elif result is not None:
        order = feature_ranking(inp, result)
    else:
        order = list(range(n))  # checked for now; FeatureAblation ranks below
    k_max = len(order) if k_max is None else k_max
    _check_int("k_max", k_max, 1, len(order))
    _check_int("k_min", k_min, 1, k_max)

    prompt = inp.prompt_ids()
    if target is None:
        answer = _generate(model, tokenizer, prompt, max_new_tokens)
    else:
        answer = _target_ids(model, tokenizer, prompt, target, None, None)
    check_context(model, prompt.numel(), answer.numel())
    if ranking is None and result is None:
        from ..attr.ablation import FeatureAblation
        from ..text.llm_attr import LLMAttribution

        attr = LLMAttribution(FeatureAblation(model), tokenizer)
        order = feature_ranking(inp, attr.attribute(inp, target=answer))

    def remove_top(inputs: Tensor, k: int) -> Tensor:
        """The prompt's ids ``(1, L')`` with the top ``k`` features absent."""
        presence = torch.ones(1, n)
        presence[0, order[:k]] = 0.0
        return inp.perturbed_ids(presence)[0].unsqueeze(0)

    seen: dict[tuple[int, ...], Tensor] = {}

    def margins(prompts: Tensor) -> Tensor:
        # binary search may ask for a k twice; each prompt is evaluated once
        rows = [tuple(r) for r in prompts.tolist()]
        todo = [i for i, r in enumerate(rows) if r not in seen]
        if todo:
            fresh = preference_margins(model, prompts[todo], answer)
            seen.update({rows[i]: m for i, m in zip(todo, fresh)})
        return torch.stack([seen[r] for r in rows])

    flip: int | None
    if not _still_preferred(margins(prompt.unsqueeze(0))):
        flip = 0  # a given target the model does not prefer (or an exact tie) to begin with
    else:
        search = MinParamPerturbation(
            margins, remove_top, arg_name="k", arg_min=k_min, arg_max=k_max + 1, arg_step=1,
            mode=mode, correct_fn=_still_preferred,
        )  # fmt: skip
        # token and span inputs keep the prompt's length, so their prompts stack into one
        # forward; a template's are re-tokenized to different lengths and go one at a time
        same_length = isinstance(inp, _TokenFeatures)
        _, found = search.evaluate(
            prompt.unsqueeze(0),
            perturbations_per_eval=perturbations_per_eval if same_length else 1,
        )
        flip = None if found is None else int(found)

    new_answer = None
    if flip is not None:
        new_prompt = remove_top(prompt, flip)[0]
        length = answer.numel() if target is not None else max_new_tokens
        new_answer = _text(tokenizer, _generate(model, tokenizer, new_prompt, length))
    removed = order[:flip] if flip else []
    return AnswerRobustness(
        n_removed=flip,
        removed_indices=list(removed),
        removed_words=[str(inp.names[i]) for i in removed],
        answer=_text(tokenizer, answer),
        new_answer=new_answer,
        n_features=n,
        ranking=list(order),
        mode=mode,
        target_given=target is not None,
        k_max=k_max,
    )
