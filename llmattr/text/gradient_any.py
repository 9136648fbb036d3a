"""LLMGradientAttribution's general path: any ``nn.Module`` language model, any layer.

Used when the fast embedding path of :mod:`.llm_gradient` does not apply (the model is not a
``transformers`` decoder-only model, the wrapped method's layer is not the input embedding,
``multiply_by_inputs=False``, ``attribute_to_layer_input=True``). It evaluates every target token
the way Captum does: for target token ``k`` the model reads ``prompt + target[:k]`` (token ids,
one positional argument) and the log-softmax of its last position's logits, at ``target[k]``, is
the function explained. The wrapped method is applied to that function of the features'
presence vector, so a layer deep in the model, ``multiply_by_inputs`` and
``attribute_to_layer_input`` behave as the method documents.

What the model must provide (as in Captum): ``model(ids)`` with ``ids`` a ``(batch, seq)`` long
tensor returns logits ``(batch, seq, vocab)``, either as the output's ``.logits`` or as the
output itself; ``generate(input_ids=...)`` only when the target is to be generated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .._core.layers import LayerCut
from .._core.progress import progress
from ..attr.layer import LayerGradientXActivation, LayerIntegratedGradients
from .inputs import _skip_token_id
from .llm_attr import _target_ids

__all__ = [
    "DEFAULT_GEN_ARGS",
    "MethodOrInputError",
    "TokenLogProb",
    "check_baselines",
    "general_attributions",
    "logits_of",
    "target_tokens",
]

# Captum's generation arguments when ``gen_args`` is None (models without a generation_config,
# and remote providers)
DEFAULT_GEN_ARGS: dict[str, Any] = {
    "max_new_tokens": 25,
    "do_sample": False,
    "temperature": None,
    "top_p": None,
}


class MethodOrInputError(InputError, TypeError):
    """An unsupported attribution method or input type: Captum asserts (AssertionError), the
    Python convention is a TypeError; this is both (and a ValueError, as every InputError)."""


def logits_of(output: Any) -> Tensor:
    """``(batch, seq, vocab)`` logits from a model's output: its ``.logits``, the first element
    of a tuple, or the tensor itself (a 4-D ``(batch, 1, seq, vocab)`` loses its second dim)."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, tuple | list) and logits:
        logits = logits[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"The model returned {type(output).__name__}; LLMGradientAttribution needs logits "
            "(batch, seq, vocab): an output with .logits, or the logits tensor itself."
        )
    if logits.dim() == 4:  # Llama 4 style (batch, n_heads_out, seq, vocab)
        logits = logits[:, 0]
    if logits.dim() != 3:
        raise ValueError(
            f"The model's logits have shape {tuple(logits.shape)}; expected (batch, seq, vocab)."
        )
    return logits


class TokenLogProb:
    """``log p(target[k] | features at presence, target[:k])`` as a function of presence rows.

    A feature whose presence value is not 1 is replaced by its baseline token (Captum's rule for
    ``TextTokenInput``); tokens that are no feature keep their id.

    Args:
        model: the language model (``model(ids)`` gives logits).
        ids: ``(L,)`` prompt token ids.
        feature_of_token: ``(L,)`` feature index of each token, -1 for none.
        baseline_ids: ``(L,)`` the baseline token at each position.
        target: ``(K,)`` target token ids.
        device: where token ids go.
    """

    def __init__(
        self,
        model: nn.Module,
        ids: Tensor,
        feature_of_token: Tensor,
        baseline_ids: Tensor,
        target: Tensor,
        device: torch.device,
    ) -> None:
        self.model = model
        self.device = device
        self.ids = ids.to(device)
        self.feature = feature_of_token.to(device)
        self.baseline_ids = baseline_ids.to(device)
        self.target = target.to(device)

    def prompt_rows(self, presence: Tensor) -> Tensor:
        """``(batch, L)`` token ids for ``(batch, n_features)`` presence rows."""
        presence = presence.to(self.device)
        if presence.dim() == 1:
            presence = presence.unsqueeze(0)
        is_feature = self.feature >= 0
        kept = torch.ones(presence.shape[0], self.ids.numel(), dtype=torch.bool, device=self.device)
        kept[:, is_feature] = presence[:, self.feature[is_feature]] == 1
        return torch.where(kept, self.ids, self.baseline_ids)

    def __call__(self, presence: Tensor, k: int) -> Tensor:
        """``(batch,)`` log-probabilities of target token ``k``."""
        rows = self.prompt_rows(presence)
        prefix = self.target[:k].expand(rows.shape[0], -1)
        logits = logits_of(self.model(torch.cat([rows, prefix], 1)))[:, -1]
        return torch.log_softmax(logits, -1)[:, self.target[k]]

    def at(self, k: int) -> Callable[[Tensor], Tensor]:
        def forward(presence: Tensor) -> Tensor:
            return self(presence, k)

        return forward


def _per_position(attr: Any, L: int, k: int, method: str) -> Tensor:
    """``(L,)``: a layer attribution ``(1, L + k, ...)`` cut to the prompt and summed over the
    other dimensions (the sum is what Captum reports per token)."""
    if isinstance(attr, tuple | list):
        attr = attr[0]  # a block returning (hidden, ...): the hidden states
    if not isinstance(attr, Tensor) or attr.dim() < 2 or attr.shape[1] != L + k:
        shape = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise ValueError(
            f"{method}'s layer gives attributions of shape {shape}; LLMGradientAttribution "
            f"needs one row per token, (batch, {L + k}, ...). Choose a layer whose output is "
            "(batch, seq, ...), e.g. the input embedding or a decoder block."
        )
    return attr[0, :L].reshape(L, -1).sum(1).detach()


def _gradient_shap(
    method: Any,
    fwd: TokenLogProb,
    K: int,
    n_features: int,
    base: Tensor,
    kwargs: dict[str, Any],
    advance: Callable[[int], object],
) -> list[Tensor]:
    """GradientShap in the layer's activation space, one ``(L + k, ...)`` row per target token.

    The points are ``a(b) + alpha * (a(x) + noise - a(b))``, alpha uniform: the expected
    gradient on the straight path between the activations (Captum interpolates the presence
    vector instead, where every point with alpha < 1 is the all-baseline prompt).
    """
    n = int(kwargs.get("n_samples", 5))
    sd = float(kwargs.get("stdevs", 0.0))
    to_input = bool(kwargs.get("attribute_to_layer_input", False))
    size = kwargs.get("internal_batch_size")
    ones = torch.ones(1, n_features)
    layer = method.layer
    alphas = torch.rand(n, dtype=torch.float64)  # drawn as the fast path draws them
    pick = torch.randint(len(base), (n,)) if len(base) > 1 else None  # a baseline per sample
    noise: Tensor | None = None
    rows = []
    for k in reversed(range(K)):  # the longest input first: its shape sizes the noise
        cut = LayerCut(fwd.at(k), [layer], to_input)
        (at_x,), _ = cut.activations((ones,))
        (at_b,), _ = cut.activations((base,))
        if len(at_x) != 1:
            raise ValueError(
                "LayerGradientShap in LLMGradientAttribution needs a layer with one output "
                f"tensor; {type(layer).__name__} gives {len(at_x)}."
            )
        cut.check_floating(0, at_x)
        x, b = at_x[0].detach(), at_b[0].detach()
        if pick is not None:
            b = b[pick.to(b.device)]
        if noise is None:
            noise = torch.randn((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
        ends = x + sd * noise[:, : x.shape[1]]
        total = torch.zeros_like(x[0])
        step = n if size in (None, "auto") else int(size)
        for s in range(0, n, step):
            e = min(s + step, n)
            a = alphas[s:e].to(x.dtype).to(x.device).view(-1, *([1] * (x.dim() - 1)))
            start = b[s:e] if pick is not None else b
            with torch.enable_grad():
                points = (start + a * (ends[s:e] - start)).requires_grad_()
                with cut.replaced([(points,)]):
                    out = fwd(ones.expand(e - s, -1), k)
                (g,) = torch.autograd.grad(out.sum(), points)
            total += ((g * (ends[s:e] - start)) if method.multiplies_by_inputs else g).sum(0)
        rows.append((total / n).unsqueeze(0))
        advance(1)
    return rows[::-1]


def general_attributions(
    method: Any,
    fwd: TokenLogProb,
    K: int,
    n_features: int,
    baselines: Tensor | None,
    kwargs: dict[str, Any],
    show_progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per target token, the attribution of each prompt position, by the wrapped ``method``.

    Args:
        method: the user's LayerIntegratedGradients, LayerGradientXActivation or
            LayerGradientShap (copied, never changed).
        fwd: the per-target-token log-probability.
        K: number of target tokens.
        n_features: number of features.
        baselines: ``(1, n_features)`` presence of the baseline (None: every feature absent).
        kwargs: the method's arguments (already validated).
        show_progress: a tqdm bar over the target tokens.

    Returns:
        ``(K, L)`` attributions per position and ``(K,)`` log-probabilities of the targets.
    """
    L = fwd.ids.numel()
    ones = torch.ones(1, n_features)
    base = baselines if baselines is not None else torch.zeros(1, n_features)
    name = type(method).__name__
    with progress(show_progress, K, f"{name} (target tokens)") as advance:
        if isinstance(method, LayerIntegratedGradients | LayerGradientXActivation):
            raw = []
            for k in range(K):
                m = copy.copy(method)  # shallow: the user's instance keeps its forward
                m.forward_func = fwd.at(k)
                if isinstance(method, LayerIntegratedGradients):
                    raw.append(m.attribute(ones, baselines=base, **kwargs))
                else:
                    raw.append(m.attribute(ones, **kwargs))
                advance(1)
        else:
            raw = _gradient_shap(method, fwd, K, n_features, base, kwargs, advance)
    per_token = torch.stack([_per_position(a, L, k, name) for k, a in enumerate(raw)])
    with torch.no_grad():
        logp = torch.cat([fwd(ones, k) for k in range(K)]).detach()
    return per_token, logp


def check_baselines(baselines: Any, n_features: int, many: bool = False) -> Tensor | None:
    """Captum's interpretable baselines as ``(n_baselines, n_features)`` presence rows (1: the
    feature keeps its token, anything else: its baseline token); None stays None. Several rows
    (a distribution) only when ``many`` (GradientShap)."""
    if baselines is None:
        return None
    if isinstance(baselines, int | float) and not isinstance(baselines, bool):
        return torch.full((1, n_features), float(baselines))
    if isinstance(baselines, Tensor | Sequence):
        b = torch.as_tensor(baselines, dtype=torch.float64).cpu()
        if b.numel() == 1:
            return torch.full((1, n_features), float(b.reshape(())))
        if b.numel() == n_features and (b.dim() == 1 or b.shape[0] == 1):
            return b.reshape(1, n_features)
        if many and b.dim() == 2 and b.shape[1] == n_features and b.shape[0] > 0:
            return b
        raise InputError(
            f"baselines has shape {tuple(b.shape)}; LLMGradientAttribution takes a scalar or "
            f"one baseline presence row (1, {n_features}) (1 keeps a feature's token, 0 puts "
            f"the input's baseline token); LayerGradientShap also takes (n, {n_features})."
        )
    raise InputError(
        f"baselines must be a number or a tensor of shape (1, {n_features}), got "
        f"{type(baselines).__name__}."
    )


def target_tokens(
    model: nn.Module,
    tokenizer: Any,
    prompt: Tensor,
    target: str | Tensor | Sequence[int] | None,
    gen_args: dict[str, Any] | None,
    skip_tokens: Sequence[int | str] | None,
    device: torch.device,
) -> Tensor:
    """``(K,)`` target ids: given (a string is encoded without special tokens), or generated by
    ``model.generate`` when None (a ``transformers`` model as :class:`LLMAttribution` does; a
    model of one's own as Captum calls it, ``generate(input_ids=..., **gen_args)``).

    Raises:
        InputError: ``gen_args`` with a target, or no target and no ``generate``.
    """
    if target is not None and gen_args is not None:
        raise InputError(
            "gen_args is only used to generate the target; it must be None when a target "
            "is given (drop gen_args, or pass target=None to generate)."
        )
    if target is not None and not isinstance(target, str | Tensor | Sequence):
        raise TypeError(f"target must be a str, a Tensor of token ids or None, got {type(target)}.")
    if target is None and not callable(getattr(model, "generate", None)):
        raise InputError(
            f"{type(model).__name__} has no generate(); give the target to explain "
            "(a string or token ids)."
        )
    if target is not None or hasattr(model, "generation_config"):
        return _target_ids(model, tokenizer, prompt, target, gen_args, skip_tokens)
    skip = {_skip_token_id(tokenizer, s) for s in skip_tokens or ()}
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]
            input_ids=prompt.unsqueeze(0).to(device), **(gen_args or DEFAULT_GEN_ARGS)
        )
    ids = torch.as_tensor(out)[0, prompt.numel() :].cpu().long()
    ids = ids[torch.tensor([int(i) not in skip for i in ids.tolist()], dtype=torch.bool)]
    if ids.numel() == 0:
        raise ValueError("The generated target is empty (after skipping tokens).")
    return ids
