"""Soft-prompt optimization: the prompt as free input embeddings, an upper bound for prompt search.

:func:`optimize_soft_prompt` maximizes the same objectives as
:func:`~llmattr.optim.prompt_search.search_prompt` (a neuron, a direction or a loss, read at one
position; see that module for how a loss reads a text layer) over ``length`` continuous vectors
fed as ``inputs_embeds`` after an optional fixed token prefix. It runs ``restarts`` prompts in one
batch with Adam, each starting at the embeddings of random allowed tokens. Every token prompt is a
point of this space, so the optimum is an upper bound on what any token prompt reaches (gradient
ascent finds a local optimum, so the bound holds in practice rather than by proof: the tests
measure it). The best soft prompt is then projected, position by position, onto its nearest
allowed token by cosine similarity and by L2 distance, and both projected prompts are scored
exactly. With ``constrain_norm`` each vector is kept after every step within the norm range of the
allowed tokens' embeddings, so the soft prompt stays where real tokens live.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .layers import ModuleOutputsHook, Target
from .optimization import NonFiniteLossError
from .prompt_search import (
    Objective,
    _allowed,
    _check_setup,
    _embedding,
    _Objective,
    _prefix,
    _score,
)

__all__ = ["SoftPromptResult", "nearest_tokens", "optimize_soft_prompt"]


@dataclass
class SoftPromptResult:
    """The best soft prompt and its projections to tokens.

    Attributes:
        embeds: the best soft prompt, ``(length, hidden)`` (the prefix is not included).
        soft_value: the exact objective of ``embeds`` (a forward on them): the upper bound.
        ids: the better of the two projected prompts (cosine on a tie), ``length`` token ids.
        value: the exact objective of ``ids``.
        text: ``tokenizer.decode(ids)`` when a tokenizer was given, else None.
        ids_cosine, value_cosine: the nearest allowed token to each vector by cosine similarity,
            and that prompt's exact objective.
        ids_l2, value_l2: the same by Euclidean distance.
        history: the best soft value so far after each step (one float per step).
        norm_range: ``(min, max)`` of the allowed tokens' embedding norms when ``constrain_norm``,
            else None.
    """

    embeds: Tensor
    soft_value: float
    ids: list[int]
    value: float
    text: str | None
    ids_cosine: list[int]
    value_cosine: float
    ids_l2: list[int]
    value_l2: float
    history: list[float] = field(default_factory=list)
    norm_range: tuple[float, float] | None = None


def nearest_tokens(embeds: Tensor, weight: Tensor, allowed: Tensor, metric: str) -> Tensor:
    """Nearest allowed token of each row of ``embeds`` ``(L, D)``: ids ``(L,)``.

    Args:
        embeds: the vectors ``(L, D)``.
        weight: the embedding matrix ``(V, D)``.
        allowed: the candidate token ids ``(K,)``.
        metric: ``"cosine"`` (largest cosine similarity; a zero vector has similarity 0) or
            ``"l2"`` (smallest Euclidean distance). Ties go to the first allowed id.
    """
    cands = weight[allowed].to(embeds)
    if metric == "cosine":
        a = embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)
        b = cands / cands.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return allowed[(a @ b.T).argmax(dim=1)]
    if metric == "l2":
        return allowed[torch.cdist(embeds[None], cands[None])[0].argmin(dim=1)]
    raise InputError(f"metric must be 'cosine' or 'l2', got {metric!r}.")


def _clamp_norm(x: Tensor, lo: float, hi: float) -> None:
    """Rescales each vector of ``x`` ``(..., D)`` in place so its norm lies in ``[lo, hi]``."""
    norm = x.norm(dim=-1, keepdim=True)
    x.mul_(norm.clamp(lo, hi) / norm.clamp_min(1e-12))


def optimize_soft_prompt(
    model: nn.Module,
    layer: Target | None,
    objective: Objective,
    length: int = 3,
    steps: int = 200,
    lr: float = 0.05,
    position: int = -1,
    prefix_ids: Sequence[int] | None = None,
    seed: int = 0,
    restarts: int = 8,
    constrain_norm: bool = False,
    allowed_ids: Sequence[int] | Tensor | None = None,
    tokenizer: Any = None,
) -> SoftPromptResult:
    """Gradient ascent on the prompt's input embeddings, then projection to the nearest tokens.

    Args:
        model: a causal LM taking ``input_ids`` and ``inputs_embeds`` (a transformers model);
            its parameters, mode and ``requires_grad`` flags are left as they are.
        layer, objective: what is maximized, as ``layer`` and ``neuron_or_direction`` of
            :func:`~llmattr.optim.prompt_search.search_prompt` (an int, a direction or a loss).
        length: number of soft vectors optimized.
        steps: Adam steps (each one forward and backward of ``restarts`` prompts).
        lr: Adam's learning rate (embedding units; the demo model's token norms are <= 0.77).
        position: the token (of prefix + prompt) at which the objective is read; -1 the last.
        prefix_ids: fixed tokens before the soft prompt (their embeddings are not optimized).
        seed: seeds the random start tokens.
        restarts: soft prompts optimized together as one batch; the best is returned.
        constrain_norm: keep each vector's norm within the allowed tokens' embedding norm range.
        allowed_ids: the tokens the start points and the projections use (default: all).
        tokenizer: decodes the result's ``text`` when given.

    Returns:
        :class:`SoftPromptResult`.
    """
    target = _Objective(model, layer, objective)
    allowed = _allowed(model, allowed_ids)
    n_prefix = len(list(prefix_ids or []))
    _check_setup(length, n_prefix, position, steps=steps, restarts=restarts)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"lr must be a positive finite number, got {lr!r}.")
    weight = _embedding(model).weight.detach()
    allowed = allowed.to(weight.device)
    prefix = _prefix(prefix_ids, weight.device)
    norms = weight[allowed].norm(dim=1)
    lo, hi = norms.min().item(), norms.max().item()
    gen = torch.Generator().manual_seed(seed)
    start = allowed[torch.randint(allowed.numel(), (restarts, length), generator=gen).to(allowed)]
    x = weight[start].clone().requires_grad_(True)  # (R, L, D)
    pre = weight[prefix[0]].expand(restarts, -1, -1)
    opt = torch.optim.Adam([x], lr=lr)
    best, best_val = x.detach()[0].clone(), -math.inf
    history: list[float] = []
    with ModuleOutputsHook(target.modules) as hook:
        for step in range(steps + 1):  # the last pass only scores the final point
            model(inputs_embeds=torch.cat([pre, x], dim=1))
            vals = target(hook.consume_outputs(), position)
            if not torch.isfinite(vals).all():
                raise NonFiniteLossError(
                    f"The objective became NaN or infinite at step {step} (lower lr, or check "
                    "the loss)."
                )
            i = int(vals.argmax())
            if vals[i].item() > best_val:
                best, best_val = x.detach()[i].clone(), vals[i].item()
            if step == steps:
                break
            history.append(best_val)
            (grad,) = torch.autograd.grad(-vals.sum(), x)
            x.grad = grad
            opt.step()
            if constrain_norm:
                with torch.no_grad():
                    _clamp_norm(x, lo, hi)
    with torch.no_grad(), ModuleOutputsHook(target.modules) as hook:
        model(inputs_embeds=torch.cat([pre[:1], best[None].to(pre)], dim=1))
        soft_value = target(hook.consume_outputs(), position).item()
    ids_cos = nearest_tokens(best, weight, allowed, "cosine")
    ids_l2 = nearest_tokens(best, weight, allowed, "l2")
    vals, _ = _score(model, target, torch.stack([ids_cos, ids_l2]), prefix, position, 0.0, 2)
    ids = ids_cos if vals[0] >= vals[1] else ids_l2
    return SoftPromptResult(
        embeds=best,
        soft_value=soft_value,
        ids=ids.tolist(),
        value=vals.max().item(),
        text=tokenizer.decode(ids.tolist()) if tokenizer is not None else None,
        ids_cosine=ids_cos.tolist(),
        value_cosine=vals[0].item(),
        ids_l2=ids_l2.tolist(),
        value_l2=vals[1].item(),
        history=history,
        norm_range=(lo, hi) if constrain_norm else None,
    )
