"""Attribution of a language model served elsewhere: only text and log-probabilities cross.

:class:`RemoteLLMProvider` is what a served model must offer (Captum's interface): ``generate``
text from a prompt, and ``get_logprobs`` of a target string's tokens after a prompt.
:class:`RemoteLLMAttribution` runs a perturbation method (FeatureAblation, ShapleyValueSampling,
ShapleyValues, Lime, KernelShap) over a prompt's features, asking the provider for the target's
log-probabilities under each perturbed prompt. Nothing runs locally but the tokenizer.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import Attribution
from .._core.errors import InputError
from ..attr.ablation import FeatureAblation
from ..attr.lime import KernelShap, Lime
from ..attr.shapley import ShapleyValues, ShapleyValueSampling
from .gradient_any import DEFAULT_GEN_ARGS, MethodOrInputError
from .result import LLMAttributionResult

__all__ = ["RemoteLLMAttribution", "RemoteLLMProvider"]

_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
# methods whose engine credits every output column: one attribution row per target token
_PER_TOKEN = (FeatureAblation, ShapleyValueSampling, ShapleyValues)
_SET_BY_US = ("additional_forward_args", "target")


class RemoteLLMProvider(ABC):
    """A language model behind an API that gives log-probabilities (e.g. a vLLM server).

    Subclasses implement :meth:`generate` and :meth:`get_logprobs`; ``api_url`` names the
    endpoint (informational).
    """

    api_url: str

    @abstractmethod
    def generate(self, prompt: str, **gen_args: Any) -> str:
        """The text the model generates after ``prompt`` (``gen_args``: generation options,
        e.g. ``max_new_tokens``)."""

    @abstractmethod
    def get_logprobs(
        self, input_prompt: str, target_str: str, tokenizer: Any | None = None
    ) -> list[float]:
        """``log p`` of each token of ``target_str`` (tokenized by ``tokenizer`` without special
        tokens) when it follows ``input_prompt``: one float per target token."""


class _PlaceholderModel:
    """Stands in for the model when building the wrapped method (``FeatureAblation(
    RemoteLLMAttribution.placeholder_model)``): a callable returning 0, on the CPU."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        return 0


class RemoteLLMAttribution(Attribution):
    """Perturbation attribution of a remotely served language model's output to its prompt.

    Args:
        attr_method: FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime or KernelShap,
            built on anything (``RemoteLLMAttribution.placeholder_model`` by convention); its
            forward is replaced by calls to the provider.
        tokenizer: the served model's tokenizer (target strings ↔ token ids).
        provider: a :class:`RemoteLLMProvider` (anything with ``generate`` and
            ``get_logprobs``).
        attr_target: ``"log_prob"`` (default) or ``"prob"``.

    Raises:
        MethodOrInputError: another method (an AssertionError, as in Captum, and a TypeError).
        InputError: an unknown ``attr_target``.
    """

    placeholder_model = _PlaceholderModel()

    def __init__(
        self,
        attr_method: Attribution,
        tokenizer: Any,
        provider: RemoteLLMProvider,
        attr_target: str = "log_prob",
    ) -> None:
        if not isinstance(attr_method, _METHODS):
            raise MethodOrInputError(
                "RemoteLLMAttribution takes FeatureAblation, ShapleyValueSampling, ShapleyValues, "
                f"Lime or KernelShap, got {type(attr_method).__name__}."
            )
        if attr_target not in ("log_prob", "prob"):
            raise InputError(
                f"attr_target should be either 'log_prob' or 'prob', got {attr_target!r}."
            )
        super().__init__(attr_method.forward_func)
        self.model = attr_method.forward_func
        self.device = getattr(self.model, "device", torch.device("cpu"))
        self.attr_method = copy.copy(attr_method)  # the user's instance keeps its forward
        self.tokenizer = tokenizer
        self.provider = provider
        self.attr_target = attr_target
        self.include_per_token_attr = isinstance(attr_method, _PER_TOKEN)

    # ---- text in, text out -------------------------------------------------------------------

    def _prompt_text(self, model_input: Any) -> str:
        """A prompt for the provider: token ids are decoded (special tokens kept)."""
        if isinstance(model_input, Tensor):
            return str(self.tokenizer.decode(model_input.flatten().tolist()))
        return str(model_input)

    def _target_tokens(
        self, inp: Any, target: str | Tensor | None, gen_args: dict[str, Any] | None
    ) -> Tensor:
        if target is None:
            if not callable(getattr(self.provider, "generate", None)):
                raise InputError(
                    "The provider has no generate function to produce the target; give the "
                    "target to explain."
                )
            args = dict(gen_args) if gen_args else dict(DEFAULT_GEN_ARGS)
            text = self.provider.generate(self._prompt_text(inp.to_model_input()), **args)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif gen_args is not None:
            raise InputError(
                "gen_args must be None when a target is given (it is only used to generate)."
            )
        elif isinstance(target, str):
            ids = self.tokenizer.encode(target, add_special_tokens=False)
        elif isinstance(target, Tensor):
            ids = target
        else:
            raise TypeError(
                f"target must either be str or Tensor, but the type of target is {type(target)}"
            )
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
        if ids.numel() == 0:
            raise InputError("The target is empty; nothing to explain.")
        return ids

    # ---- attribution -----------------------------------------------------------------------------

    def attribute(
        self,
        inp: Any,
        target: str | Tensor | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        use_cached_outputs: bool = True,
        _inspect_forward: Callable[[str, str, list[float]], None] | None = None,
        forward_in_tokens: bool = True,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute the target (generated by the provider when None) to ``inp``'s features.

        The positional order is Captum's. Each perturbed prompt is sent to the provider once
        (prompts repeated within one call are asked once).

        Args:
            inp: ``TextTokenInput``, ``TextTemplateInput`` or another text input of llmattr.
            target: the continuation: a string, token ids, or None to generate it.
            num_trials: repeat and average (random template baselines differ between trials).
            gen_args: arguments of ``provider.generate`` when ``target`` is None (default
                ``{"max_new_tokens": 25, "do_sample": False, "temperature": None,
                "top_p": None}``); must be None when a target is given.
            use_cached_outputs, forward_in_tokens: accepted for Captum compatibility; the
                provider decides how it scores.
            _inspect_forward: called as ``(prompt, target text, probabilities)`` after each
                provider call (the total first, then each token's, for per-token methods).
            **kwargs: the wrapped method's arguments (``n_samples``, ``show_progress``, ...).

        Returns:
            An :class:`LLMAttributionResult` (float32, as Captum's): ``seq_attr``
            ``(n_features,)``; ``token_attr`` ``(n_target_tokens, n_features)``, None for Lime
            and KernelShap; ``output_probs`` the target tokens' probabilities under the prompt.
        """
        del use_cached_outputs, forward_in_tokens
        if not all(callable(getattr(inp, m, None)) for m in ("to_tensor", "to_model_input")):
            raise MethodOrInputError(
                "RemoteLLMAttribution takes TextTokenInput, TextTemplateInput or another text "
                f"input of llmattr, got {type(inp).__name__}."
            )
        for name in _SET_BY_US:
            if name in kwargs:
                raise TypeError(f"{name} is set by RemoteLLMAttribution; do not pass it.")
        target_ids = self._target_tokens(inp, target, gen_args)
        target_str = str(self.tokenizer.decode(target_ids.tolist()))
        K = target_ids.numel()
        asked: dict[str, Tensor] = {}

        def log_probs(prompt: str) -> Tensor:
            if prompt not in asked:
                got = self.provider.get_logprobs(
                    input_prompt=prompt, target_str=target_str, tokenizer=self.tokenizer
                )
                if len(got) != K:
                    raise ValueError(
                        f"Number of token logprobs from provider ({len(got)}) does not match "
                        f"expected target token length ({K})"
                    )
                asked[prompt] = torch.tensor([float(v) for v in got], dtype=torch.float64)
            return asked[prompt]

        prob = self.attr_target == "prob"

        def forward(presence: Tensor) -> Tensor:
            rows = presence.reshape(-1, presence.shape[-1])
            out = []
            for row in rows:
                prompt = self._prompt_text(inp.to_model_input(row.unsqueeze(0)))
                logp = log_probs(prompt)
                values = torch.cat([logp.sum().unsqueeze(0), logp])
                if prob:
                    values = values.exp()
                if _inspect_forward is not None:
                    shown = values.exp() if not prob else values
                    _inspect_forward(prompt, target_str, shown.tolist())
                out.append(values if self.include_per_token_attr else values[:1])
            stacked = torch.stack(out)  # (k, 1 + K), or (k, 1)
            return stacked if self.include_per_token_attr else stacked[:, 0]

        method = copy.copy(self.attr_method)
        method.forward_func = forward
        trials = []
        # random template baselines are drawn at every prompt built, as in Captum
        for _ in range(max(int(num_trials), 1)):
            attr = method.attribute(inp.to_tensor().to(torch.float64), **kwargs)  # type: ignore[attr-defined]
            rows = 1 + K if self.include_per_token_attr else 1
            trials.append(torch.as_tensor(attr).reshape(rows, -1))
        attr = torch.stack(trials).mean(0)
        format_attr = getattr(inp, "format_attr", None)
        if callable(format_attr):
            attr = format_attr(attr)
        attr = attr.to(torch.float32)
        original = log_probs(self._prompt_text(inp.to_model_input()))
        names = inp.format_tokens() if callable(getattr(inp, "format_tokens", None)) else None
        return LLMAttributionResult(
            seq_attr=attr[0],
            token_attr=attr[1:] if self.include_per_token_attr else None,
            input_tokens=list(names if names is not None else inp.values),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            output_probs=original.exp().to(torch.float32),
            method=type(self.attr_method).__name__,
            info={"target_text": target_str},
        )
