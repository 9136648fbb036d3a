"""LLM attribution: which parts of a prompt made a Hugging Face model produce its answer.

``LLMAttribution`` runs a perturbation method (FeatureAblation, ShapleyValueSampling,
ShapleyValues, Lime, KernelShap) over the prompt's features, scoring the target under every
perturbed prompt with the :class:`~llmattr.text.scorer.Scorer` (one teacher-forced forward for all
target tokens, the shared prefix's key/value cache reused). ``LLMGradientAttribution`` runs
integrated gradients, gradient × activation or GradientShap in the embedding space, with one
forward per evaluation point shared by every target token.

Both size their work from memory, so long prompts run in chunks rather than out of memory:
perturbed prompts per forward (``perturbations_per_eval``) and path points per forward
(``internal_batch_size``) default to what fits (see :func:`~llmattr.text.scorer.rows_that_fit`),
and a forward that still runs out of memory is retried with half as many rows. Logits are only
computed at the target positions, and the backward passes of the target tokens run one after
another over one shared forward, so memory holds one forward's graph at a time.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._core.base import Attribution
from .._core.errors import InputError
from ..attr.ablation import FeatureAblation
from ..attr.lime import KernelShap, Lime
from ..attr.shapley import ShapleyValues, ShapleyValueSampling
from .inputs import _skip_token_id, _TokenFeatures, unknown_text
from .result import LLMAttributionResult
from .scorer import Scorer, check_context, model_device
from .templates import TextTemplateInput

__all__ = ["LLMAttribution"]

TextInput = _TokenFeatures | TextTemplateInput
_PERTURBATION = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
# the methods that credit every target token separately (Captum's list): Lime and KernelShap
# fit one surrogate, to the whole target's score, and leave token_attr None
_PER_TOKEN = (FeatureAblation, ShapleyValueSampling, ShapleyValues)
# arguments of the wrapped method that LLMAttribution sets itself
_SET_BY_US = frozenset({"target", "baselines", "feature_mask", "additional_forward_args"})
PROMPTS_PER_CALL = 256  # perturbed prompts handed to the scorer at once when sized automatically


class UnsupportedError(InputError, TypeError):
    """A method or input LLMAttribution does not take: a ``TypeError`` (the Python convention)
    that is also the ``AssertionError`` Captum's ``assert`` raises there."""


def output_token_texts(tokenizer: Any, ids: Tensor | Sequence[int]) -> list[str]:
    """Each target token as readable text (Captum's ``output_tokens``): the text its id adds to
    the decoded target (``"Ġworld"`` → ``"world"``), with line breaks written ``\\n`` and
    surrounding spaces stripped. Falls back to the raw tokens if the tokenizer cannot decode."""
    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
    try:
        texts, before = [], ""
        for k in range(len(ids)):
            # decoding in context: a token's spelling (a leading space, a byte of a character)
            # depends on the tokens before it
            now = str(tokenizer.decode(ids[: k + 1]))
            common = 0
            for a, b in zip(before, now):
                if a != b:
                    break
                common += 1
            texts.append(now[common:].replace("\n", "\\n").strip())
            before = now
        return texts
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return list(tokenizer.convert_ids_to_tokens(ids))


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # pads are masked out, so any valid id works


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller of this function point at
    the first frame outside llmattr: the user's line, however deep inside llmattr it was."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1  # the function that warns is stacklevel 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def target_info(tokenizer: Any, target_ids: Tensor) -> dict[str, Any]:
    """What a result records beside Captum's fields: the target's token ids (``"target_ids"``,
    so metrics re-score exactly the attributed tokens) and the target as text (``decode`` of its
    ids, special tokens kept), which views use as its readable form."""
    ids = [int(i) for i in target_ids.reshape(-1).tolist()]
    try:
        text = tokenizer.decode(ids, skip_special_tokens=False)
    except (TypeError, ValueError, AttributeError):
        return {"target_ids": ids}
    return {"target_ids": ids, "target_text": str(text)}


def _target_ids(
    model: nn.Module,
    tokenizer: Any,
    prompt: Tensor,
    target: str | Tensor | Sequence[int] | None,
    gen_args: dict[str, Any] | None,
    skip_tokens: Sequence[int | str] | None,
) -> Tensor:
    """The target's token ids: encoded without special tokens when a string, generated greedily
    when None (``gen_args`` go to ``generate``); ``skip_tokens`` are dropped from it.

    Skip tokens and the generation length are checked before anything runs."""
    skip = {_skip_token_id(tokenizer, s) for s in skip_tokens or ()}
    if target is None:
        args = {"max_new_tokens": 25, "do_sample": False, **(gen_args or {})}
        args.setdefault("pad_token_id", _pad_id(tokenizer))
        new = args.get("max_new_tokens")
        if isinstance(new, int):
            check_context(model, prompt.numel(), new, what="max_new_tokens")
        device = model_device(model)
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                prompt.unsqueeze(0).to(device),
                attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long, device=device),
                **args,
            )
        is_ed = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        ids = out[0, 1:] if is_ed else out[0, prompt.numel() :]
    elif isinstance(target, str):
        # No BOS/EOS: the target is exactly the continuation written. A special token written
        # out in the string (e.g. "</s>") is kept as that token, so an EOS can be explained.
        ids = torch.tensor(tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
        if unknown_text(tokenizer, target, ids.tolist()):
            shown = tokenizer.convert_ids_to_tokens(ids.tolist())
            warnings.warn(
                f"The target {target!r} has words this tokenizer's vocabulary lacks: it is "
                f"encoded as {shown}, so the attributions explain the unknown token.",
                UserWarning,
                stacklevel=_caller_level(),
            )
    else:
        ids = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if skip:
        ids = ids[torch.tensor([int(i) not in skip for i in ids.tolist()], dtype=torch.bool)]
    if ids.numel() == 0:
        raise ValueError("The target is empty (after skipping tokens); nothing to explain.")
    return ids.cpu()


def _is_image_input(inp: Any) -> bool:
    """An input of a vision-language model (ImageMaskInput, MultimodalInput): its features are
    image regions (and words), and it builds the processor's output for each perturbation."""
    return callable(getattr(inp, "perturbed_model_inputs", None))


def _check_kwargs(method: Any, kwargs: dict[str, Any], ours: set[str]) -> None:
    accepted = set(inspect.signature(method.attribute).parameters) - {"inputs", "self"}
    unknown = sorted(set(kwargs) - accepted - ours)
    if unknown:
        raise TypeError(
            f"{type(method).__name__} does not accept {unknown}; it takes "
            f"{sorted(accepted - _SET_BY_US)}."
        )


class LLMAttribution(Attribution):
    """Perturbation-based attribution of a language model's output to its prompt's features.

    Args:
        attr_method: a FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime or KernelShap
            built on the ``transformers`` model (``FeatureAblation(model)``).
        tokenizer: the model's tokenizer.
        attr_target: ``"log_prob"`` (attribute log-probabilities, default) or ``"prob"``.
    """

    def __init__(
        self, attr_method: Attribution, tokenizer: Any, attr_target: str = "log_prob"
    ) -> None:
        if not isinstance(attr_method, _PERTURBATION):
            raise UnsupportedError(
                "LLMAttribution takes FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime "
                f"or KernelShap, got {type(attr_method).__name__}; for gradient methods use "
                "LLMGradientAttribution."
            )
        if attr_target not in ("log_prob", "prob"):
            raise InputError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}.")
        model = attr_method.forward_func
        if not isinstance(model, nn.Module):
            raise TypeError("The attribution method must be built on the model (an nn.Module).")
        super().__init__(model)
        self.model = model
        self.attr_method = attr_method
        self.tokenizer = tokenizer
        self.attr_target = attr_target
        self.include_per_token_attr = isinstance(attr_method, _PER_TOKEN)

    def attribute(
        self,
        inp: TextInput | Sequence[TextInput],
        target: str | Tensor | Sequence[int] | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        use_cached_outputs: bool = True,
        *,
        forward_in_tokens: bool = True,
        skip_tokens: Sequence[int | str] | None = None,
        foil: str | Tensor | Sequence[int] | None = None,
        perturbations_per_eval: int | str | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult | list[LLMAttributionResult]:
        """Attribute the target (generated when None) to the features of ``inp``.

        The positional order is Captum's. Every argument is checked, and the prompt, target and
        context length validated, before the model runs.

        Args:
            inp: a text input (``TextTokenInput``, ``TextTemplateInput``, ``words(...)``, ...),
                an image input of a vision-language model (``ImageMaskInput``,
                ``MultimodalInput``), or a list of them (one result each).
            target: the continuation to explain: a string, token ids, or None to generate
                greedily with ``gen_args``. A string is tokenized without special tokens (no
                BOS/EOS is added, so the target is exactly the text written); a special token
                written out in it (``"</s>"``) stays, to explain an end of sequence.
            skip_tokens: target tokens to leave out: ids, or token strings of the vocabulary
                (as ``tokenizer.tokenize`` spells them; any other string is an error).
            num_trials: repeat with fresh baselines (``ProductBaselines``) and average.
            gen_args: arguments of ``model.generate`` when ``target`` is None (default: 25
                new tokens, greedy); giving it with a target is an error, as in Captum.
            use_cached_outputs: accepted for Captum compatibility; changes nothing.
            forward_in_tokens: accepted for Captum compatibility; changes nothing. Captum's two
                modes (token by token, or one teacher-forced forward) should agree but do not
                under transformers 5; the scorer gives the token-by-token numbers, fast.
            foil: a contrastive alternative: attribute ``log p(target) - log p(foil)``.
            perturbations_per_eval: most perturbed prompts scored in one model forward. None or
                ``"auto"`` (default): chosen from memory — on CUDA from the free memory and the
                model's per-row cost, on the CPU at most 8 — and halved on out-of-memory.
                Results do not depend on it.
            **kwargs: other arguments of the wrapped method (``n_samples``,
                ``show_progress``, ``generator``, ...); a name it does not take is an error.

        Returns:
            An :class:`LLMAttributionResult` (a list for a list of inputs): ``seq_attr``
            ``(n_values,)``, ``token_attr`` ``(n_target_tokens, n_values)`` (None for Lime and
            KernelShap), ``input_tokens`` the input's ``values`` (tokens, words, template
            values — a grouped template value gets its group's attribution), ``output_tokens``
            the target tokens as text, ``output_probs``, and ``inp``.
        """
        if isinstance(inp, str):
            raise UnsupportedError(
                "Wrap the prompt in a text input: TextTokenInput(prompt, tokenizer), "
                "words(prompt, tokenizer), TextTemplateInput(template, values), ..."
            )
        del use_cached_outputs, forward_in_tokens  # the scorer is exact and cached in any case
        args = (target, skip_tokens, num_trials, gen_args, foil, perturbations_per_eval, kwargs)
        if not isinstance(inp, _TokenFeatures | TextTemplateInput) and not _is_image_input(inp):
            return [self._attribute_one(i, *args) for i in inp]
        return self._attribute_one(cast(TextInput, inp), *args)

    def _attribute_one(
        self,
        inp: TextInput,
        target: str | Tensor | Sequence[int] | None,
        skip_tokens: Sequence[int | str] | None,
        num_trials: int,
        gen_args: dict[str, Any] | None,
        foil: str | Tensor | Sequence[int] | None,
        perturbations_per_eval: int | str | None,
        kwargs: dict[str, Any],
    ) -> LLMAttributionResult:
        image = _is_image_input(inp)
        if not image and not isinstance(inp, _TokenFeatures | TextTemplateInput):
            raise UnsupportedError(
                "LLMAttribution takes TextTokenInput, TextTemplateInput, TextSpanInput (words(), "
                "sentences(), chat_turns()), ImageMaskInput, MultimodalInput or a list of them, "
                f"got {type(inp).__name__}."
            )
        if target is not None and gen_args is not None:
            raise InputError(
                "gen_args is only used to generate the target when target is None; drop "
                "gen_args or target."
            )
        _check_kwargs(self.attr_method, kwargs, set())
        for bad in sorted(_SET_BY_US):
            if bad in kwargs:
                raise TypeError(f"{bad} is set by LLMAttribution; do not pass it.")
        if perturbations_per_eval in (None, "auto"):
            # the scorer sizes each forward from memory; it regroups what it is handed by
            # shared prefix, so handing it many prompts at once costs nothing
            rows_per_forward = None
            prompts_per_call = PROMPTS_PER_CALL
        else:
            ppe = perturbations_per_eval
            if isinstance(ppe, bool) or not isinstance(ppe, int) or ppe < 1:
                raise ValueError(
                    f"perturbations_per_eval must be a positive int, None or 'auto', got {ppe!r}."
                )
            rows_per_forward = prompts_per_call = ppe
        if image:  # a vision-language model: its own scorer (llmattr.vision.vlm_scorer)
            from ..vision.vlm_scorer import attribute_vlm

            return cast(LLMAttributionResult, attribute_vlm(
                self, inp, target, skip_tokens, num_trials, gen_args, foil,
                rows_per_forward, prompts_per_call, kwargs,
            ))  # fmt: skip
        if isinstance(inp, TextTemplateInput):
            inp.tokenizer = self.tokenizer
        prompt = inp.prompt_ids()
        target_ids = _target_ids(self.model, self.tokenizer, prompt, target, gen_args, skip_tokens)
        pad = _pad_id(self.tokenizer)
        scorer = Scorer(self.model, prompt, target_ids, pad, rows_per_forward)
        foil_scorer = None
        if foil is not None:
            foil_ids = _target_ids(self.model, self.tokenizer, prompt, foil, None, skip_tokens)
            foil_scorer = Scorer(self.model, prompt, foil_ids, pad, rows_per_forward)

        def scores(presence: Tensor) -> tuple[Tensor, Tensor | None]:
            rows = inp.perturbed_ids(presence)
            foil_logp = None if foil_scorer is None else foil_scorer.score(rows)
            return scorer.score(rows), foil_logp

        foil_ids = None if foil_scorer is None else foil_scorer.target
        return run_attribution(
            self, inp, scores, target_ids, scorer.original, foil_ids,
            prompts_per_call, num_trials, kwargs,
        )  # fmt: skip


def run_attribution(
    attr: LLMAttribution,
    inp: Any,
    scores: Callable[[Tensor], tuple[Tensor, Tensor | None]],
    target_ids: Tensor,
    original_logp: Tensor,
    foil_ids: Tensor | None,
    prompts_per_call: int | None,
    num_trials: int,
    kwargs: dict[str, Any],
    info: dict[str, Any] | None = None,
) -> LLMAttributionResult:
    """Run ``attr``'s perturbation method over ``inp``'s features and build the result; shared by
    text inputs and image inputs (:mod:`llmattr.vision.vlm_scorer`), which differ only in how a
    batch of presence rows ``(k, n)`` is scored.

    Args:
        scores: presence rows -> ``(k, K)`` target log-probs and, with a foil, the foil's.
        original_logp: ``(K,)`` the target's log-probs under the unperturbed input.
        foil_ids: the foil's token ids, or None.
        info: extra entries for the result's ``info``.
    """
    prob = attr.attr_target == "prob"
    per_token = attr.include_per_token_attr

    def forward(presence: Tensor) -> Tensor:
        logp, foil_logp = scores(presence)
        total = logp.sum(1)
        if foil_logp is not None:
            total = total - foil_logp.sum(1)
        total = total.exp() if prob else total
        if not per_token:
            return total  # one score per prompt: Lime's and KernelShap's surrogate target
        tokens = logp.exp() if prob else logp
        return torch.cat([total.unsqueeze(1), tokens], 1)

    method = copy.copy(attr.attr_method)
    # a hook for who evaluates the rows (llmattr.dataset.split divides them between processes)
    wrap = getattr(attr, "_wrap_forward", None)
    method.forward_func = forward if wrap is None else wrap(forward)
    n_rows = 1 + target_ids.numel() if per_token else 1
    trials = []
    for _ in range(max(int(num_trials), 1)):
        if isinstance(inp, TextTemplateInput):
            inp.new_trial()
        out = method.attribute(  # type: ignore[attr-defined]
            inp.to_tensor().float(),
            baselines=0.0,
            perturbations_per_eval=prompts_per_call,
            **kwargs,
        )
        trials.append(cast(Tensor, out).reshape(n_rows, -1))
    # (1 + K, n_itp_features), then one column per value for a grouped template
    result = inp.format_attr(torch.stack(trials).mean(0))
    full_info = target_info(attr.tokenizer, target_ids)
    if foil_ids is not None:
        full_info["foil_tokens"] = attr.tokenizer.convert_ids_to_tokens(foil_ids.tolist())
    full_info.update(info or {})
    return LLMAttributionResult(
        seq_attr=result[0],
        token_attr=result[1:] if per_token else None,
        input_tokens=list(inp.values),
        output_tokens=output_token_texts(attr.tokenizer, target_ids),
        output_probs=original_logp.exp(),
        method=type(attr.attr_method).__name__,
        info=full_info,
        inp=inp,
    )
