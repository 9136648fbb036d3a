"""LLM attribution: which parts of a prompt made a Hugging Face model produce its answer.

``LLMAttribution`` runs a perturbation method (FeatureAblation, ShapleyValueSampling,
ShapleyValues, Lime, KernelShap) over the prompt's features, scoring the target under every
perturbed prompt with the :class:`~llmattr.text.scorer.Scorer` (one teacher-forced forward for all
target tokens, the shared prefix's key/value cache reused). ``LLMGradientAttribution`` runs
integrated gradients, gradient × activation or GradientShap in the embedding space, with one
forward per evaluation point shared by every target token.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import Attribution
from .._core.batching import run_in_chunks
from .._core.hooks import registered
from .._core.layers import LayerCut
from ..attr.ablation import FeatureAblation
from ..attr.integrated_gradients import step_rule
from ..attr.layer import LayerGradientXActivation, LayerIntegratedGradients
from ..attr.layer_path import LayerGradientShap
from ..attr.lime import KernelShap, Lime
from ..attr.shapley import ShapleyValues, ShapleyValueSampling
from .inputs import TextTemplateInput, _TokenFeatures
from .result import LLMAttributionResult
from .scorer import Scorer, model_device

__all__ = ["LLMAttribution", "LLMGradientAttribution"]

TextInput = _TokenFeatures | TextTemplateInput
_PERTURBATION = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
_GRADIENT = (LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap)
# arguments of the wrapped method that LLMAttribution sets itself
_SET_BY_US = frozenset({"target", "baselines", "feature_mask", "additional_forward_args"})


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # pads are masked out, so any valid id works


def _target_ids(
    model: nn.Module,
    tokenizer: Any,
    prompt: Tensor,
    target: str | Tensor | Sequence[int] | None,
    gen_args: dict[str, Any] | None,
    skip_tokens: Sequence[int | str] | None,
) -> Tensor:
    """The target's token ids: encoded without special tokens when a string, generated greedily
    when None (``gen_args`` go to ``generate``)."""
    if target is None:
        args = {"max_new_tokens": 25, "do_sample": False, **(gen_args or {})}
        args.setdefault("pad_token_id", _pad_id(tokenizer))
        device = model_device(model)
        with torch.no_grad():
            out = model.generate(
                prompt.unsqueeze(0).to(device),
                attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long, device=device),
                **args,
            )
        is_ed = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        ids = out[0, 1:] if is_ed else out[0, prompt.numel() :]
    elif isinstance(target, str):
        # no BOS/EOS: the target is exactly the continuation written (a special token written
        # out in the string, e.g. "</s>", is kept as that token)
        ids = torch.tensor(tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
    else:
        ids = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if skip_tokens:
        skip = {
            s if isinstance(s, int) else tokenizer.convert_tokens_to_ids(s) for s in skip_tokens
        }
        ids = ids[torch.tensor([int(i) not in skip for i in ids.tolist()], dtype=torch.bool)]
    if ids.numel() == 0:
        raise ValueError("The target is empty (after skipping tokens); nothing to explain.")
    return ids.cpu()


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
            raise TypeError(
                "LLMAttribution takes FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime "
                f"or KernelShap, got {type(attr_method).__name__}; for gradient methods use "
                "LLMGradientAttribution."
            )
        if attr_target not in ("log_prob", "prob"):
            raise ValueError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}.")
        model = attr_method.forward_func
        if not isinstance(model, nn.Module):
            raise TypeError("The attribution method must be built on the model (an nn.Module).")
        super().__init__(model)
        self.model = model
        self.attr_method = attr_method
        self.tokenizer = tokenizer
        self.attr_target = attr_target

    def attribute(
        self,
        inp: TextInput | Sequence[TextInput],
        target: str | Tensor | Sequence[int] | None = None,
        skip_tokens: Sequence[int | str] | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        foil: str | Tensor | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult | list[LLMAttributionResult]:
        """Attribute the target (generated when None) to the features of ``inp``.

        Args:
            inp: a text input (``TextTokenInput``, ``TextTemplateInput``, ``words(...)``, ...),
                or a list of them (one result each).
            target: the continuation to explain: a string (tokenized without special tokens),
                token ids, or None to generate greedily with ``gen_args``.
            skip_tokens: target tokens to leave out (ids or strings).
            num_trials: repeat with fresh baselines (``ProductBaselines``) and average.
            gen_args: arguments of ``model.generate`` when ``target`` is None.
            foil: a contrastive alternative: attribute ``log p(target) - log p(foil)``.
            **kwargs: arguments of the wrapped method (``perturbations_per_eval``,
                ``n_samples``, ``show_progress``, ``generator``, ...).

        Returns:
            An :class:`LLMAttributionResult` (a list for a list of inputs).
        """
        if isinstance(inp, list | tuple):
            return [
                self.attribute(i, target, skip_tokens, num_trials, gen_args, foil, **kwargs)  # type: ignore[misc]
                for i in inp
            ]
        _check_kwargs(self.attr_method, kwargs, set())
        for bad in sorted(_SET_BY_US):
            if bad in kwargs:
                raise TypeError(f"{bad} is set by LLMAttribution; do not pass it.")
        if isinstance(inp, TextTemplateInput):
            inp.tokenizer = self.tokenizer
        prompt = inp.prompt_ids()
        target_ids = _target_ids(self.model, self.tokenizer, prompt, target, gen_args, skip_tokens)
        pad = _pad_id(self.tokenizer)
        scorer = Scorer(self.model, prompt, target_ids, pad)
        foil_scorer = None
        if foil is not None:
            foil_ids = _target_ids(self.model, self.tokenizer, prompt, foil, None, skip_tokens)
            foil_scorer = Scorer(self.model, prompt, foil_ids, pad)
        prob = self.attr_target == "prob"

        def forward(presence: Tensor) -> Tensor:
            rows = inp.perturbed_ids(presence)
            logp = scorer.score(rows)
            total = logp.sum(1)
            if foil_scorer is not None:
                total = total - foil_scorer.score(rows).sum(1)
            tokens = logp.exp() if prob else logp
            return torch.cat([(total.exp() if prob else total).unsqueeze(1), tokens], 1)

        method = copy.copy(self.attr_method)
        method.forward_func = forward
        kwargs.setdefault("perturbations_per_eval", min(inp.n_features, 64))
        trials = []
        for _ in range(max(int(num_trials), 1)):
            if isinstance(inp, TextTemplateInput):
                inp.new_trial()
            trials.append(method.attribute(inp.to_tensor(), baselines=0.0, **kwargs))
        attr = torch.stack(trials).mean(0)[0]  # (1 + K, n_features)
        info: dict[str, Any] = {}
        if foil_scorer is not None:
            info["foil_tokens"] = self.tokenizer.convert_ids_to_tokens(foil_scorer.target.tolist())
        return LLMAttributionResult(
            seq_attr=attr[0],
            token_attr=attr[1:],
            input_tokens=inp.format_tokens(),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            output_probs=scorer.original.exp(),
            method=type(self.attr_method).__name__,
            info=info,
        )


class LLMGradientAttribution(Attribution):
    """Gradient-based attribution of a language model's output to its prompt's tokens/features.

    The method works in the embedding space: the prompt's embeddings move from the baseline's
    (the baseline token at every feature position) to the prompt's; target tokens stay fixed.
    Every evaluation point runs one forward for all target tokens, then one backward each.
    It supports decoder-only models (an encoder-decoder shares its embedding between its two
    halves: use :class:`LLMAttribution` for those). A float64 model gets float64 attributions.

    Args:
        attr_method: LayerIntegratedGradients, LayerGradientXActivation or LayerGradientShap on
            the model's input embedding layer.
        tokenizer: the model's tokenizer.
    """

    def __init__(self, attr_method: Attribution, tokenizer: Any) -> None:
        if not isinstance(attr_method, _GRADIENT):
            raise TypeError(
                "LLMGradientAttribution takes LayerIntegratedGradients, LayerGradientXActivation "
                f"or LayerGradientShap, got {type(attr_method).__name__}."
            )
        model = attr_method.forward_func
        if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings"):
            raise TypeError("The attribution method must be built on a transformers model.")
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError(
                "LLMGradientAttribution supports decoder-only models (the encoder and decoder of "
                f"{type(model).__name__} share its input embedding); use LLMAttribution with a "
                "perturbation method for encoder-decoder models."
            )
        embedding = model.get_input_embeddings()
        layer = attr_method.layer  # type: ignore[attr-defined]
        if layer is not embedding:
            raise ValueError(
                f"LLMGradientAttribution attributes through the input embedding; the method's "
                f"layer is {type(layer).__name__}, not model.get_input_embeddings() "
                f"({type(embedding).__name__}). Build it as "
                f"{type(attr_method).__name__}(model, model.get_input_embeddings())."
            )
        super().__init__(model)
        self.model = model
        self.attr_method = attr_method
        self.tokenizer = tokenizer

    def attribute(
        self,
        inp: _TokenFeatures | Sequence[_TokenFeatures],
        target: str | Tensor | Sequence[int] | None = None,
        skip_tokens: Sequence[int | str] | None = None,
        gen_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult | list[LLMAttributionResult]:
        """Attribute every target token to the features of ``inp``.

        Args:
            inp: a token-level text input (``TextTokenInput``, ``words(...)``, ...) or a list.
            target: the continuation (string, ids, or None to generate with ``gen_args``).
            skip_tokens: target tokens to leave out.
            gen_args: arguments of ``model.generate``.
            **kwargs: the method's arguments: ``n_steps``, ``method``, ``internal_batch_size``
                (IntegratedGradients), ``n_samples``, ``stdevs`` (GradientShap).

        Returns:
            An :class:`LLMAttributionResult`; ``token_attr`` rows sum (with the non-feature
            tokens, whose baseline is themselves) to each target token's log-probability change.
        """
        if isinstance(inp, list | tuple):
            return [self.attribute(i, target, skip_tokens, gen_args, **kwargs) for i in inp]  # type: ignore[misc]
        if not isinstance(inp, _TokenFeatures):
            raise TypeError(
                "LLMGradientAttribution needs token-level features (TextTokenInput, words(), "
                "sentences(), chat_turns()); a template changes the prompt's tokens."
            )
        allowed = {
            LayerIntegratedGradients: {"n_steps", "method", "internal_batch_size"},
            LayerGradientXActivation: set(),
            LayerGradientShap: {"n_samples", "stdevs", "internal_batch_size"},
        }[type(self.attr_method)]  # type: ignore[index]
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(
                f"{type(self.attr_method).__name__} in LLMGradientAttribution does not accept "
                f"{unknown}; it takes {sorted(allowed)}."
            )
        prompt = inp.prompt_ids()
        target_ids = _target_ids(self.model, self.tokenizer, prompt, target, gen_args, skip_tokens)
        device = model_device(self.model)
        ids = torch.cat([prompt, target_ids[:-1]]).unsqueeze(0).to(device)
        base_ids = torch.cat([inp.baseline_ids, target_ids[:-1]]).unsqueeze(0).to(device)
        # non-feature prompt tokens (BOS, ...) keep their own embedding: no attribution
        fixed = torch.cat(
            [inp.feature_of_token < 0, torch.ones(target_ids.numel() - 1, dtype=torch.bool)]
        )
        base_ids[0, fixed.to(device)] = ids[0, fixed.to(device)]
        per_token = self._embedding_attributions(ids, base_ids, target_ids.to(device), kwargs)
        L = prompt.numel()
        # (K, L): summed over the embedding; float64 models keep their precision
        scores = per_token[:, :L].sum(-1).cpu()
        feature = inp.feature_of_token
        token_attr = torch.zeros(target_ids.numel(), inp.n_features, dtype=scores.dtype)
        token_attr.index_add_(1, feature[feature >= 0], scores[:, feature >= 0])
        scorer = Scorer(self.model, prompt, target_ids, _pad_id(self.tokenizer), reuse_prefix=False)
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.format_tokens(),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            output_probs=scorer.original.exp(),
            method=type(self.attr_method).__name__,
        )

    def _embedding_attributions(
        self, ids: Tensor, base_ids: Tensor, target: Tensor, kwargs: dict[str, Any]
    ) -> Tensor:
        """``(K, L + K - 1, hidden)``: per target token, the attribution of every embedding."""
        embedding = self.model.get_input_embeddings()
        cut = LayerCut(self.model, [embedding])
        with torch.no_grad():
            e_x = embedding(ids)[0]
            e_b = embedding(base_ids)[0]
        method = self.attr_method
        if isinstance(method, LayerIntegratedGradients):
            alphas, weights = step_rule(
                kwargs.get("method", "gausslegendre"), kwargs.get("n_steps", 50)
            )
            starts = e_b.expand(len(alphas), *e_b.shape)
            ends = e_x.expand(len(alphas), *e_x.shape)
        elif isinstance(method, LayerGradientXActivation):
            alphas, weights = torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
            starts, ends = torch.zeros_like(e_x).unsqueeze(0), e_x.unsqueeze(0)
        else:
            n = int(kwargs.get("n_samples", 5))
            sd = float(kwargs.get("stdevs", 0.0))
            alphas = torch.rand(n, dtype=torch.float64)
            weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
            starts = e_b.expand(n, *e_b.shape)
            ends = e_x + sd * torch.randn((n, *e_x.shape), dtype=e_x.dtype, device=e_x.device)
        K = target.numel()
        head = self.model.get_output_embeddings()
        keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        captured: dict[str, Tensor] = {}

        def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured["h"] = args[0]

        acc = torch.promote_types(e_x.dtype, torch.float32)  # half models sum in float32

        def evaluate(start: int, end: int) -> Tensor:
            part = torch.zeros(K, *e_x.shape, dtype=acc, device=e_x.device)
            a = alphas[start:end].to(e_x.dtype).to(e_x.device).view(-1, 1, 1)
            diff = ends[start:end] - starts[start:end]
            w = weights[start:end].to(e_x.dtype).to(e_x.device).view(-1, 1, 1)
            rows = ids.expand(end - start, -1)
            with torch.enable_grad():
                points = (starts[start:end] + a * diff).detach().requires_grad_()
                hooks = [partial(head.register_forward_pre_hook, grab)] if head is not None else []
                with cut.replaced([(points,)]), registered(*hooks):
                    out = self.model(input_ids=rows, **({"logits_to_keep": K} if keep else {}))
                logits = out.logits[:, -K:].to(acc)
                hidden = captured.get("h")
                per_position = (
                    hidden is not None
                    and hidden.shape[1] >= K
                    and torch.allclose(head(hidden[:, -K:].detach()).to(acc), logits.detach(),
                                       rtol=1e-4, atol=1e-5)
                )  # fmt: skip
                for k in range(K):  # one shared forward, then one backward per target token
                    if per_position:
                        # only this position's output layer enters the backward
                        z = head(hidden[:, hidden.shape[1] - K + k]).to(acc)  # type: ignore[index]
                    else:
                        z = logits[:, k]
                    logp = z.gather(-1, target[k].view(1, 1).expand(end - start, 1))[:, 0]
                    logp = logp - torch.logsumexp(z, -1)
                    (g,) = torch.autograd.grad(logp.sum(), points, retain_graph=k < K - 1)
                    part[k] = (g * diff * w).sum(0).to(acc)
            return part

        return sum(run_in_chunks(len(alphas), kwargs.get("internal_batch_size"), evaluate))
