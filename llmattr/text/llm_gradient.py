"""Gradient LLM attribution: integrated gradients, gradient × activation or GradientShap of a
language model's target log-probabilities, credited to its prompt's tokens/features.

Two paths give the same numbers (up to float rounding):

* the fast path, for a ``transformers`` decoder-only model with the method on its input
  embedding: one forward per evaluation point shared by every target token (each target position
  backpropagates only its own output layer);
* the general path (:mod:`.gradient_any`), for any ``nn.Module`` and any layer: Captum's
  evaluation, one attribution per target token on ``prompt + target[:k]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._core.base import Attribution
from .._core.batching import ChunkSize, check_chunk_size, run_in_chunks
from .._core.errors import InputError
from .._core.hooks import registered
from .._core.layers import LayerCut
from .._core.progress import progress
from ..attr.integrated_gradients import step_rule
from ..attr.layer import LayerGradientXActivation, LayerIntegratedGradients
from ..attr.layer_path import LayerGradientShap
from .gradient_any import (
    MethodOrInputError,
    TokenLogProb,
    check_baselines,
    general_attributions,
    target_tokens,
)
from .inputs import _TokenFeatures
from .llm_attr import _pad_id, output_token_texts, target_info
from .result import LLMAttributionResult
from .scorer import Scorer, model_device, rows_that_fit

__all__ = ["LLMGradientAttribution"]

_GRADIENT = (LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap)
# the wrapped method's arguments LLMGradientAttribution passes on
_ALLOWED = {
    LayerIntegratedGradients: {
        "n_steps", "method", "internal_batch_size", "baselines", "attribute_to_layer_input"
    },
    LayerGradientXActivation: {"attribute_to_layer_input"},
    LayerGradientShap: {
        "n_samples", "stdevs", "internal_batch_size", "baselines", "attribute_to_layer_input"
    },
}  # fmt: skip


class LLMGradientAttribution(Attribution):
    """Gradient-based attribution of a language model's output to its prompt's tokens/features.

    For each target token ``k`` the explained function is ``log p(target[k])`` given the prompt
    and ``target[:k]``; the wrapped method attributes it to the activations of its layer (the
    layer's baseline activation is the one of the prompt with every feature at its baseline
    token; target tokens are never perturbed), and each prompt position's attribution is summed
    over the layer's other dimensions. Features made of several tokens (``words()``) sum their
    tokens.

    Works on any ``nn.Module`` whose ``model(ids)`` gives logits (``.logits`` or a tensor
    ``(batch, seq, vocab)``), with the method on any of its layers whose output is
    ``(batch, seq, ...)``. A ``transformers`` decoder-only model with the method on its input
    embedding takes a fast path (one forward per evaluation point for all target tokens). A
    float64 model gets float64 attributions.

    Args:
        attr_method: LayerIntegratedGradients, LayerGradientXActivation or LayerGradientShap
            built on the model, e.g. ``LayerIntegratedGradients(model, model.emb)``.
        tokenizer: the model's tokenizer.

    Raises:
        MethodOrInputError: another method, or a method not built on an ``nn.Module``.
        InputError: an encoder-decoder model (its two halves share the embedding; use
            :class:`LLMAttribution`).
    """

    def __init__(self, attr_method: Attribution, tokenizer: Any) -> None:
        if not isinstance(attr_method, _GRADIENT):
            raise MethodOrInputError(
                "LLMGradientAttribution takes LayerIntegratedGradients, LayerGradientXActivation "
                f"or LayerGradientShap, got {type(attr_method).__name__}; for perturbation "
                "methods (FeatureAblation, ...) use LLMAttribution."
            )
        model = attr_method.forward_func
        if not isinstance(model, nn.Module):
            raise MethodOrInputError(
                "LLMGradientAttribution needs the method built on the model itself (an "
                f"nn.Module), got a {type(model).__name__}: it calls model(ids) and "
                "model.generate."
            )
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise InputError(
                "LLMGradientAttribution supports decoder-only models (the encoder and decoder of "
                f"{type(model).__name__} share its input embedding); use LLMAttribution with a "
                "perturbation method for encoder-decoder models."
            )
        super().__init__(model)
        self.model = model
        self.attr_method = attr_method
        self.tokenizer = tokenizer
        self.device = model_device(model)

    def attribute(
        self,
        inp: _TokenFeatures | Sequence[_TokenFeatures],
        target: str | Tensor | Sequence[int] | None = None,
        gen_args: dict[str, Any] | None = None,
        *,
        skip_tokens: Sequence[int | str] | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> LLMAttributionResult | list[LLMAttributionResult]:
        """Attribute every target token to the features of ``inp``.

        Every argument is checked, and the prompt, target and context length validated, before
        the model runs.

        Args:
            inp: a token-level text input (``TextTokenInput``, ``words(...)``, ...) or a list.
            target: the continuation (string, ids, or None to generate with ``gen_args``); a
                string is tokenized without special tokens, as in :meth:`LLMAttribution.attribute`.
            gen_args: arguments of ``model.generate`` when ``target`` is None (giving them with
                a target is an error, as in Captum).
            skip_tokens: target tokens to leave out (ids, or token strings of the vocabulary;
                an llmattr addition).
            show_progress: a tqdm bar, one per input (an llmattr addition): over the path
                points (integration steps or samples) on the fast path, over the target tokens
                on the general path.
            **kwargs: the method's arguments: ``baselines`` (the presence of each feature at the
                baseline, Captum's interpretable baseline: 0 (default) puts the input's baseline
                token, 1 keeps the token; a scalar or ``(1, n_features)``),
                ``attribute_to_layer_input``, and ``n_steps``, ``method``,
                ``internal_batch_size`` (LayerIntegratedGradients) or ``n_samples``, ``stdevs``,
                ``internal_batch_size`` (LayerGradientShap). ``internal_batch_size`` None or
                ``"auto"`` (default) evaluates as many path points per forward as fit in memory
                and halves on out-of-memory; an int fixes it. Results do not depend on it. Any
                other name is an error.

        Returns:
            An :class:`LLMAttributionResult` (a list for a list of inputs): ``token_attr``
            ``(n_target_tokens, n_features)``, ``seq_attr`` its column sums, ``input_tokens``
            the input's ``values``, ``output_tokens`` the target tokens as readable text (as
            Captum decodes them), ``output_probs`` the target tokens' probabilities (Captum
            leaves it None), and ``inp``.
        """
        kwargs = {**kwargs, "show_progress": bool(show_progress)}
        if isinstance(inp, list | tuple):
            return [self._attribute_one(i, target, skip_tokens, gen_args, kwargs) for i in inp]
        return self._attribute_one(inp, target, skip_tokens, gen_args, kwargs)

    def _fast_path(self, kwargs: dict[str, Any]) -> bool:
        """Whether the shared-forward embedding path applies (it gives the same numbers)."""
        get_embedding = getattr(self.model, "get_input_embeddings", None)
        if not callable(get_embedding) or not callable(getattr(self.model, "generate", None)):
            return False
        try:
            embedding = get_embedding()
        except (NotImplementedError, AttributeError):
            return False
        return (
            self.attr_method.layer is embedding
            and self.attr_method.multiplies_by_inputs
            and not kwargs.get("attribute_to_layer_input", False)
        )

    def _attribute_one(
        self,
        inp: Any,
        target: str | Tensor | Sequence[int] | None,
        skip_tokens: Sequence[int | str] | None,
        gen_args: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> LLMAttributionResult:
        kwargs = dict(kwargs)
        show_progress = bool(kwargs.pop("show_progress", False))
        if not isinstance(inp, _TokenFeatures):
            raise MethodOrInputError(
                "LLMGradientAttribution needs token-level features (TextTokenInput, words(), "
                f"sentences(), chat_turns()), got {type(inp).__name__}; a template changes the "
                "prompt's tokens (use LLMAttribution for TextTemplateInput)."
            )
        allowed = _ALLOWED[type(self.attr_method)]  # type: ignore[index]
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(
                f"{type(self.attr_method).__name__} in LLMGradientAttribution does not accept "
                f"{unknown}; it takes {sorted(allowed)}."
            )
        many = isinstance(self.attr_method, LayerGradientShap)  # a baseline distribution
        base_presence = check_baselines(kwargs.pop("baselines", None), inp.n_features, many)
        ibs = kwargs.get("internal_batch_size", None)
        if ibs is not None and ibs != "auto":
            check_chunk_size(ibs, "internal_batch_size")
        prompt = inp.prompt_ids()
        target_ids = target_tokens(
            self.model, self.tokenizer, prompt, target, gen_args, skip_tokens, self.device
        )
        feature = inp.feature_of_token
        if self._fast_path(kwargs):
            # one row of baseline ids per baseline: a value of 1 keeps that feature's token
            presence = base_presence if base_presence is not None else torch.zeros(1, 1)
            kept = torch.zeros(presence.shape[0], feature.numel(), dtype=torch.bool)
            if base_presence is not None:
                kept[:, feature >= 0] = base_presence[:, feature[feature >= 0]] == 1
            baseline_ids = torch.where(kept, prompt, inp.baseline_ids)
            kwargs.pop("attribute_to_layer_input", None)
            kwargs.pop("internal_batch_size", None)
            per_token, probs = self._fast(prompt, baseline_ids, feature, target_ids, ibs, kwargs,
                                          show_progress)  # fmt: skip
        else:
            fwd = TokenLogProb(
                self.model, prompt, feature, inp.baseline_ids, target_ids, self.device
            )
            per_token, logp = general_attributions(
                self.attr_method,
                fwd,
                target_ids.numel(),
                inp.n_features,
                base_presence,
                kwargs,
                show_progress,
            )
            probs = logp.exp().cpu()
        scores = per_token.cpu()  # (K, L); float64 models keep their precision
        token_attr = torch.zeros(target_ids.numel(), inp.n_features, dtype=scores.dtype)
        token_attr.index_add_(1, feature[feature >= 0], scores[:, feature >= 0])
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=list(inp.values),
            output_tokens=output_token_texts(self.tokenizer, target_ids),
            output_probs=probs,
            method=type(self.attr_method).__name__,
            info=target_info(self.tokenizer, target_ids),
            inp=inp,
        )

    def _fast(
        self,
        prompt: Tensor,
        baseline_ids: Tensor,
        feature: Tensor,
        target_ids: Tensor,
        ibs: ChunkSize,
        kwargs: dict[str, Any],
        show_progress: bool,
    ) -> tuple[Tensor, Tensor]:
        """``(K, L)`` per-position attributions and ``(K,)`` target probabilities, by the
        shared-forward embedding path (``baseline_ids``: ``(n_baselines, L)``)."""
        # the unperturbed probabilities; the scorer also checks the context before any forward
        pad = _pad_id(self.tokenizer)
        scorer = Scorer(self.model, prompt, target_ids, pad, rows_per_forward=1, reuse_prefix=False)
        device = self.device
        ids = torch.cat([prompt, target_ids[:-1]]).unsqueeze(0).to(device)
        m = baseline_ids.shape[0]
        base_ids = torch.cat([baseline_ids, target_ids[:-1].expand(m, -1)], 1).to(device)
        # non-feature prompt tokens (BOS, ...) keep their own embedding: no attribution
        fixed = torch.cat([feature < 0, torch.ones(target_ids.numel() - 1, dtype=torch.bool)])
        base_ids[:, fixed.to(device)] = ids[:, fixed.to(device)]
        per_token = self._embedding_attributions(
            ids, base_ids, target_ids.to(device), ibs, kwargs, show_progress
        )
        return per_token[:, : prompt.numel()], scorer.original.exp()

    def _embedding_attributions(
        self,
        ids: Tensor,
        base_ids: Tensor,
        target: Tensor,
        internal_batch_size: ChunkSize,
        kwargs: dict[str, Any],
        show_progress: bool = False,
    ) -> Tensor:
        """``(K, L + K - 1)``: per target token, the attribution of every position's embedding,
        summed over the embedding dimension.

        ``internal_batch_size`` None or ``"auto"`` evaluates as many points per forward as fit
        in memory (:func:`~llmattr.text.scorer.rows_that_fit`), halving on out-of-memory.
        """
        embedding, head = _embedding_layers(self.model)
        cut = LayerCut(self.model, [embedding])
        with torch.no_grad():
            e_x = embedding(ids)[0]
            e_b_all = embedding(base_ids)  # one row per baseline (several: GradientShap)
            e_b = e_b_all[0]
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
            if len(e_b_all) > 1:  # a baseline drawn for every sample
                starts = e_b_all[torch.randint(len(e_b_all), (n,)).to(e_b_all.device)]
            else:
                starts = e_b.expand(n, *e_b.shape)
            ends = e_x + sd * torch.randn((n, *e_x.shape), dtype=e_x.dtype, device=e_x.device)
        K, width = target.numel(), ids.shape[1]
        keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        captured: dict[str, Tensor] = {}

        def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured["h"] = args[0]

        acc = torch.promote_types(e_x.dtype, torch.float32)  # half models sum in float32

        def evaluate(start: int, end: int) -> Tensor:
            part = torch.zeros(K, width, dtype=acc, device=e_x.device)
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
                    head is not None
                    and hidden is not None
                    and hidden.shape[1] >= K
                    and torch.allclose(head(hidden[:, -K:].detach()).to(acc), logits.detach(),
                                       rtol=1e-4, atol=1e-5)
                )  # fmt: skip
                for k in range(K):  # one shared forward, then one backward per target token
                    if per_position:
                        assert head is not None and hidden is not None
                        # only this position's output layer enters the backward
                        z = head(hidden[:, hidden.shape[1] - K + k]).to(acc)
                    else:
                        z = logits[:, k]
                    logp = z.gather(-1, target[k].view(1, 1).expand(end - start, 1))[:, 0]
                    logp = logp - torch.logsumexp(z, -1)
                    (g,) = torch.autograd.grad(logp.sum(), points, retain_graph=k < K - 1)
                    part[k] = (g * diff * w).to(acc).sum((0, 2))
            return part

        n_points = len(alphas)
        with progress(show_progress, n_points, type(method).__name__) as advance:

            def counted(start: int, end: int) -> Tensor:
                part = evaluate(start, end)
                advance(end - start)  # after success: a chunk retried smaller counts once
                return part

            if internal_batch_size is not None and internal_batch_size != "auto":
                return torch.stack(run_in_chunks(n_points, internal_batch_size, counted)).sum(0)
            # sized from memory: a long prompt runs a few points per forward instead of failing
            size = rows_that_fit(self.model, width, width, K if keep else width, grad=True,
                                 cpu_rows=None)  # fmt: skip
            parts: list[Tensor] = []
            for first in range(0, n_points, size):
                last = min(first + size, n_points)
                parts += run_in_chunks(last - first, "auto", partial(_shifted, counted, first))
            return torch.stack(parts).sum(0)


def _shifted(evaluate: Callable[[int, int], Tensor], offset: int, start: int, end: int) -> Tensor:
    return evaluate(offset + start, offset + end)


def _embedding_layers(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The model's input embedding and its output layer (None when it has none)."""
    get_embedding = getattr(model, "get_input_embeddings", None)
    if not callable(get_embedding):
        raise TypeError(f"{type(model).__name__} has no get_input_embeddings().")
    embedding = get_embedding()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return cast(nn.Module, embedding), cast(nn.Module | None, head)
