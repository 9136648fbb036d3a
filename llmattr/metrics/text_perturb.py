"""Infidelity and max-sensitivity of LLM attributions (:class:`~llmattr.LLMAttribution`,
:class:`~llmattr.LLMGradientAttribution` results), as compositions of :func:`infidelity` and
:func:`sensitivity_max`.

**Coordinates.** An attribution of a prompt's ``n`` features (tokens, words, template values)
is read as an attribution of the *presence vector* ``z`` ``(1, n)``: ``z = 1`` is the prompt,
feature ``i`` at ``z_i = 0`` is replaced by its baseline. The explained value is the target's
total log-probability (its probability for ``LLMAttribution(..., attr_target="prob")``), the
quantity the attributions were computed for. The perturbations follow Captum's convention for
global attributions (``multiply_by_inputs``): the perturbation ``I`` is the fraction of the way
from each feature to its baseline, so ``sum(seq_attr * I)`` should predict the drop of the
target's log-probability. This assumes the attribution's baseline is the input's (every
feature at its baseline token), the default of both attribution classes.

* ``mode="mask"`` (:func:`random_mask_perturb_func`): each feature is removed (``I_i = 1``,
  replaced by its baseline) with probability ``mask_prob``; the perturbed prompts are scored by
  the exact :class:`~llmattr.text.scorer.Scorer`. Any text input, any result.
* ``mode="embedding_noise"`` (:func:`embedding_noise_perturb_func`): ``I_i ~ N(0, noise_std^2)``
  and feature ``i``'s token embeddings become ``e - I_i (e - b)`` (``b``: the baseline token's
  embedding). A result holds one number per feature, not one per embedding dimension, so the
  noise moves each token along its own token-to-baseline direction. Token-level inputs of
  decoder-only ``transformers`` models; meant for gradient results.

**Scale.** Infidelity is a squared error in the units of the explained value: it grows with
the attributions' scale (twice the attributions, about four times the error once they
overshoot), with ``noise_std^2``, and with the number of features removed. Compare values of
attributions on the same scale, or pass ``normalize=True`` (the attributions rescaled by the
least-squares factor first), which makes the value invariant to scaling them.

:func:`llm_sensitivity_max` re-attributes the prompt with every one of its tokens' embedding
vectors moved by uniform noise of half-width ``perturb_radius`` times the root-mean-square of
the prompt's embedding entries, and reports the largest relative change of ``seq_attr``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._core.batching import ChunkSize, check_chunk_size
from .._core.errors import InputError, InputTypeError
from .._core.hooks import registered
from .._core.inputs import TensorOrTuple, as_tuple, format_baselines, restore_form
from ..text.gradient_any import logits_of
from ..text.inputs import _TokenFeatures
from ..text.llm_attr import LLMAttribution, _pad_id, _target_ids
from ..text.llm_gradient import LLMGradientAttribution
from ..text.result import LLMAttributionResult
from ..text.scorer import Scorer, model_device
from ..text.templates import TextTemplateInput
from .infidelity import check_samples, infidelity
from .sensitivity import default_perturb_func, sensitivity_max

__all__ = [
    "embedding_noise_perturb_func",
    "llm_infidelity",
    "llm_sensitivity_max",
    "random_mask_perturb_func",
]

Mode = Literal["mask", "embedding_noise"]


def _check_fraction(name: str, value: float, high: float | None = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputTypeError(f"{name} must be a number, got {type(value).__name__}.")
    if value < 0 or (high is not None and value > high):
        bound = f"between 0 and {high}" if high is not None else "at least 0"
        raise InputError(f"{name} must be {bound}, got {value}.")
    return float(value)


def _toward_baseline(draw: Callable[[Tensor], Tensor]) -> Callable[..., Any]:
    """A perturb_func (Captum's contract) moving each element the fraction ``draw(x)`` of the
    way to its baseline; it returns that fraction as the perturbation."""

    def perturb(inputs: TensorOrTuple, baselines: Any = None) -> tuple[Any, Any]:
        xs = as_tuple(inputs)
        refs = format_baselines(baselines, xs)  # None: zeros
        fractions = [draw(x) for x in xs]
        perturbed = [x - f * (x - b) for x, f, b in zip(xs, fractions, refs)]
        was_tuple = isinstance(inputs, tuple)
        return restore_form(fractions, was_tuple), restore_form(perturbed, was_tuple)

    return perturb


def random_mask_perturb_func(mask_prob: float = 0.5) -> Callable[..., Any]:
    """A ``perturb_func`` for :func:`infidelity` that removes each element (puts it at its
    baseline, 0 without baselines) with probability ``mask_prob``.

    Returns:
        ``perturb(inputs, baselines=None) -> (masks, perturbed_inputs)``: the perturbation is
        the 0/1 mask (1: removed), the convention of global attributions.
    """
    p = _check_fraction("mask_prob", mask_prob)
    return _toward_baseline(lambda x: (torch.rand(x.shape, device=x.device) < p).to(x.dtype))


def embedding_noise_perturb_func(noise_std: float = 0.1) -> Callable[..., Any]:
    """A ``perturb_func`` for :func:`infidelity` that moves each element the fraction
    ``I ~ N(0, noise_std^2)`` of the way to its baseline (``x - I (x - baseline)``).

    Returns:
        ``perturb(inputs, baselines=None) -> (I, perturbed_inputs)``.
    """
    std = _check_fraction("noise_std", noise_std, None)
    return _toward_baseline(lambda x: torch.randn_like(x) * std)


def _model(llm_attr: Any) -> tuple[nn.Module, Any, bool]:
    if not isinstance(llm_attr, LLMAttribution | LLMGradientAttribution):
        raise InputTypeError(
            "llm_attr must be the LLMAttribution or LLMGradientAttribution that made the "
            f"result, got {type(llm_attr).__name__}."
        )
    return llm_attr.model, llm_attr.tokenizer, getattr(llm_attr, "attr_target", "") == "prob"


def _text_input(inp: Any, tokenizer: Any) -> Any:
    if not isinstance(inp, _TokenFeatures | TextTemplateInput):
        raise InputTypeError(
            "inp must be the text input that was attributed (TextTokenInput, words(), "
            f"TextTemplateInput, ...), got {type(inp).__name__}."
        )
    if isinstance(inp, TextTemplateInput) and inp.tokenizer is None:
        inp = copy.copy(inp)  # the caller's input is left as it is
        inp.tokenizer = tokenizer
    return inp


def _feature_attr(inp: Any, result: LLMAttributionResult, n_targets: int) -> Tensor:
    """``(1, n)``: the result's attribution of each feature the input perturbs, checked."""
    if not isinstance(result, LLMAttributionResult):
        raise InputTypeError(f"result must be an LLMAttributionResult, got {type(result)}.")
    if "foil_tokens" in result.info:
        raise InputError("Contrastive (foil) results are not supported; attribute without foil.")
    seq = torch.as_tensor(result.seq_attr, dtype=torch.float64).reshape(-1)
    if seq.numel() != len(inp.values):
        raise InputError(
            f"The result has {seq.numel()} features but the input has {len(inp.values)}; pass "
            "the input that was attributed."
        )
    if len(result.output_tokens) != n_targets:
        raise InputError(
            f"The result explains {len(result.output_tokens)} target tokens but the target has "
            f"{n_targets}; pass the target that was attributed."
        )
    if isinstance(inp, TextTemplateInput) and inp.mask is not None:
        # values of one group share its attribution: take one value per group
        first = [inp.formatted_mask.index(f) for f in range(inp.n_itp_features)]
        seq = seq[torch.tensor(first)]
    return seq.unsqueeze(0)


def _score_forward(model: nn.Module, tokenizer: Any, inp: Any, target: Tensor, prob: bool) -> Any:
    """Presence rows ``(k, n)`` (0/1) -> ``(k,)`` target log-probs (or probs), exact scorer."""
    scorer = Scorer(model, inp.prompt_ids(), target, _pad_id(tokenizer))

    def forward(presence: Tensor) -> Tensor:
        logp = scorer.score(inp.perturbed_ids(presence.cpu() > 0.5)).double().sum(1)
        return logp.exp() if prob else logp

    return forward


def _check_embedding_model(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get) or getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise InputError(
            "Embedding perturbations need a decoder-only model with get_input_embeddings(); "
            "use mode='mask'."
        )
    return get()


def _check_token_input(inp: Any) -> None:
    if not isinstance(inp, _TokenFeatures):
        raise InputError(
            "mode='embedding_noise' needs a token-level input (TextTokenInput, words(), ...); "
            "a template re-tokenizes its prompt. Use mode='mask'."
        )


class _EmbeddingForward:
    """Presence rows ``(k, n)`` (any reals) -> ``(k,)`` target log-probs (or probs), with each
    feature token's embedding at ``b + z (e - b)``, in one teacher-forced forward."""

    def __init__(self, model: nn.Module, inp: Any, target: Tensor, prob: bool) -> None:
        self.model, self.prob, self.embedding = model, prob, _check_embedding_model(model)
        device = model_device(model)
        prompt, K = inp.prompt_ids(), target.numel()
        self.L, self.target = prompt.numel(), target.to(device)
        none = torch.full((K - 1,), -1, dtype=torch.long)
        self.feature = torch.cat([inp.feature_of_token, none]).to(device)
        self.ids = torch.cat([prompt, target[:-1]]).to(device)
        base = torch.cat([inp.baseline_ids, target[:-1]]).to(device)
        base = torch.where(self.feature >= 0, base, self.ids)
        with torch.no_grad():
            e = self.embedding(self.ids.unsqueeze(0))[0]
            self.base = self.embedding(base.unsqueeze(0))[0]
        self.delta = e - self.base

    @torch.no_grad()
    def __call__(self, presence: Tensor) -> Tensor:
        k, pos = presence.shape[0], self.feature >= 0
        scale = torch.ones(k, self.ids.numel(), dtype=self.base.dtype, device=self.base.device)
        scale[:, pos] = presence.to(scale)[:, self.feature[pos]]
        new = self.base + scale.unsqueeze(-1) * self.delta

        def substitute(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            return new.to(output.dtype)

        rows = self.ids.expand(k, -1)
        with registered(lambda: self.embedding.register_forward_hook(substitute)):
            out = self.model(input_ids=rows, attention_mask=torch.ones_like(rows), use_cache=False)
        logits = logits_of(out)[:, self.L - 1 :].double()
        index = self.target.expand(k, -1).unsqueeze(-1)
        logp = (logits.gather(-1, index).squeeze(-1) - logits.logsumexp(-1)).sum(1)
        return logp.exp() if self.prob else logp


def llm_infidelity(
    llm_attr: LLMAttribution | LLMGradientAttribution,
    inp: Any,
    target: str | Tensor | list[int] | None,
    result: LLMAttributionResult,
    n_perturb_samples: int = 10,
    mode: Mode = "mask",
    *,
    mask_prob: float = 0.5,
    noise_std: float = 0.1,
    normalize: bool = False,
    max_examples_per_batch: ChunkSize = None,
) -> float:
    """Infidelity of an LLM attribution ``result`` (see the module docstring for the scale).

    Args:
        llm_attr: the ``LLMAttribution`` / ``LLMGradientAttribution`` that made ``result``
            (its model, tokenizer and ``attr_target``).
        inp: the text input that was attributed.
        target: the target that was attributed (a string or ids); None generates it greedily,
            as ``attribute`` does by default.
        result: the attribution; its ``seq_attr`` ``(n_features,)`` is evaluated.
        n_perturb_samples: random perturbations drawn.
        mode: ``"mask"`` (remove random features) or ``"embedding_noise"``.
        mask_prob: probability that a feature is removed (``"mask"``).
        noise_std: standard deviation of the fraction of the way to the baseline
            (``"embedding_noise"``).
        normalize: rescale the attributions by the least-squares factor first.
        max_examples_per_batch: most perturbed prompts per forward (None: all at once).

    Returns:
        The infidelity, in squared units of the explained value (log-probability or
        probability).
    """
    model, tokenizer, prob = _model(llm_attr)
    inp = _text_input(inp, tokenizer)
    if mode not in ("mask", "embedding_noise"):
        raise InputError(f"mode must be 'mask' or 'embedding_noise', got {mode!r}.")
    check_samples(n_perturb_samples)
    check_chunk_size(max_examples_per_batch, "max_examples_per_batch")
    perturb = (
        random_mask_perturb_func(mask_prob)
        if mode == "mask"
        else embedding_noise_perturb_func(noise_std)
    )
    if mode == "embedding_noise":
        _check_token_input(inp)
        _check_embedding_model(model)
    target_ids = _target_ids(model, tokenizer, inp.prompt_ids(), target, None, None)
    attrs = _feature_attr(inp, result, target_ids.numel())
    if mode == "mask":
        forward = _score_forward(model, tokenizer, inp, target_ids, prob)
    else:
        forward = _EmbeddingForward(model, inp, target_ids, prob)
    value = infidelity(
        forward,
        perturb,
        torch.ones_like(attrs),
        attrs,
        n_perturb_samples=n_perturb_samples,
        max_examples_per_batch=max_examples_per_batch,
        normalize=normalize,
    )
    return float(value[0])


def llm_sensitivity_max(
    llm_attr: LLMAttribution | LLMGradientAttribution,
    inp: Any,
    target: str | Tensor | list[int] | None = None,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    *,
    norm_ord: Any = "fro",
    max_examples_per_batch: ChunkSize = None,
    seed: int | None = 0,
    **attr_kwargs: Any,
) -> float:
    """Max-sensitivity of ``llm_attr``'s attribution of ``inp`` to noise on its embeddings.

    Each sample adds uniform noise in ``[-r, r]`` (``r = perturb_radius`` times the
    root-mean-square of the prompt's token embedding entries) to the embedding vector of every
    token the prompt's features use (one noise vector per distinct token, wherever it occurs;
    the baseline token keeps its embedding), re-attributes the same target, and compares
    ``seq_attr`` with the unperturbed one.

    Args:
        llm_attr: an ``LLMAttribution`` or ``LLMGradientAttribution`` on a model with
            ``get_input_embeddings()``.
        inp: the text input.
        target: the target (string or ids); None generates it once, greedily.
        n_perturb_samples: noisy re-attributions.
        perturb_radius: the noise's half-width, relative to the embeddings' scale (>= 0).
        norm_ord: the norm of ``seq_attr`` differences (``torch.norm``'s ``p``).
        max_examples_per_batch: re-attributions per explanation call (no effect on the value).
        seed: every attribution runs with torch seeded to it, so sampling methods (Shapley
            value sampling, Lime, ...) draw the same samples and only the noise counts; None
            leaves the random state alone.
        **attr_kwargs: arguments of ``llm_attr.attribute`` (``n_steps``, ``n_samples``, ...).

    Returns:
        The largest ``||seq_attr(noisy) - seq_attr|| / ||seq_attr||``.
    """
    model, tokenizer, _ = _model(llm_attr)
    inp = _text_input(inp, tokenizer)
    _check_fraction("perturb_radius", perturb_radius, None)
    check_samples(n_perturb_samples)
    check_chunk_size(max_examples_per_batch, "max_examples_per_batch")
    embedding = _check_embedding_model(model)
    prompt = inp.prompt_ids()
    target_ids = _target_ids(model, tokenizer, prompt, target, None, None)
    if isinstance(inp, _TokenFeatures):
        ids = prompt[inp.feature_of_token >= 0]
        ids = ids[~torch.isin(ids, inp.baseline_ids)]
    else:
        ids = prompt
    tokens = torch.unique(ids).to(model_device(model))
    if tokens.numel() == 0:
        raise InputError("No prompt token differs from the baseline token: nothing to perturb.")
    with torch.no_grad():
        clean = embedding(tokens.unsqueeze(0))[0]  # (m, d)
    rms = float(clean.double().pow(2).mean().sqrt())
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []

    def attribute_with(shift: Tensor) -> Tensor:
        def add(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            hit = (args[0].unsqueeze(-1) == tokens).to(output.dtype)
            return output + hit @ shift.to(output.dtype)

        with registered(lambda: embedding.register_forward_hook(add)):
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                out = llm_attr.attribute(inp, target=target_ids, **attr_kwargs)
        assert isinstance(out, LLMAttributionResult)
        return torch.as_tensor(out.seq_attr, dtype=torch.float64)

    def explain(rows: Tensor | tuple[Tensor, ...]) -> Tensor:
        """(k, m, d) noisy embeddings (a 1-tuple for the unperturbed call) -> (k, n_features)."""
        rows = rows[0] if isinstance(rows, tuple) else rows
        return torch.stack([attribute_with(row - clean) for row in rows])

    value = sensitivity_max(
        explain,
        clean.unsqueeze(0),
        default_perturb_func,
        perturb_radius=perturb_radius * rms,
        n_perturb_samples=n_perturb_samples,
        norm_ord=norm_ord,
        max_examples_per_batch=max_examples_per_batch,
    )
    return float(value[0])
