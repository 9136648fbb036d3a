"""Discrete prompt search on a language model (GCG / AutoPrompt style).

:func:`search_prompt` looks for the ``length``-token prompt that maximizes one neuron (or the dot
product with a direction) of a layer of a causal LM, read at one position of the prompt. Each step
takes the gradient of the objective with respect to the prompt's one-hot tokens, keeps the
``top_k`` most promising swaps per position, scores a batch of single-swap candidates **exactly**
by forward passes and keeps the best; when no candidate improves for ``patience`` steps it
restarts from a fresh random prompt (the best prompt over all restarts is returned).
:func:`exhaustive_max` scores every prompt of a small vocabulary by brute force, for grading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .layers import ModuleOutputsHook, Target, resolve_target

__all__ = ["PromptSearchResult", "exhaustive_max", "search_prompt"]


@dataclass
class PromptSearchResult:
    """The best prompt found.

    Attributes:
        ids: the prompt's token ids, ``length`` of them (the fixed prefix is not included).
        text: ``tokenizer.decode(ids)`` when a tokenizer was given, else None.
        value: the exact objective of ``ids`` (activation minus ``fluency`` times cross-entropy).
        activation: the exact activation (neuron value or dot with the direction).
        history: the best value so far after each step (one float per step).
        restarts: how many times the search restarted from a random prompt.
    """

    ids: list[int]
    text: str | None
    value: float
    activation: float
    history: list[float] = field(default_factory=list)
    restarts: int = 0


def _embedding(model: nn.Module) -> nn.Embedding:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        raise InputError(
            "search_prompt needs a language model with get_input_embeddings() returning an "
            f"nn.Embedding (a transformers model); {type(model).__name__} has none."
        )
    return emb


def _check_unit(
    model: nn.Module, neuron_or_direction: int | Tensor, length: int, allowed: Tensor
) -> None:
    if isinstance(neuron_or_direction, bool) or not isinstance(neuron_or_direction, int | Tensor):
        raise InputError(
            "neuron_or_direction must be an int (a unit of the layer's last dimension) or a 1-D "
            f"direction tensor, got {type(neuron_or_direction).__name__}."
        )
    if isinstance(neuron_or_direction, Tensor) and neuron_or_direction.dim() != 1:
        raise InputError(f"A direction must be 1-D, got shape {tuple(neuron_or_direction.shape)}.")
    if not isinstance(length, int) or length < 1:
        raise InputError(f"length must be a positive int, got {length!r}.")
    if allowed.numel() == 0:
        raise InputError("allowed_ids is empty: no token can be placed in the prompt.")


def _allowed(model: nn.Module, allowed_ids: Sequence[int] | Tensor | None) -> Tensor:
    vocab = _embedding(model).num_embeddings
    if allowed_ids is None:
        return torch.arange(vocab)
    ids = torch.as_tensor(allowed_ids, dtype=torch.long).flatten().unique()
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise InputError(f"allowed_ids must lie in [0, {vocab}); got {ids.tolist()}.")
    return ids


def _read(act: Tensor, unit: int | Tensor, position: int) -> Tensor:
    """``(B, T, H)`` activation -> ``(B,)`` value of the unit at ``position``."""
    if act.dim() != 3:
        raise InputError(
            f"The layer's activation has shape {tuple(act.shape)}; prompt search needs "
            "(batch, tokens, features)."
        )
    row = act[:, position, :]
    if isinstance(unit, Tensor):
        if unit.numel() != row.shape[-1]:
            raise InputError(
                f"The direction has {unit.numel()} entries; the layer has {row.shape[-1]} features."
            )
        return row @ unit.to(row)
    if not -row.shape[-1] <= unit < row.shape[-1]:
        raise InputError(f"Neuron {unit} is out of range for a layer of {row.shape[-1]} features.")
    return row[:, unit]


def _cross_entropy(logits: Tensor, ids: Tensor, n_prefix: int) -> Tensor:
    """Mean next-token cross-entropy of the prompt tokens ``(B, L)`` given what precedes them.

    ``logits``: ``(B, P + L, V)``. The first prompt token is scored only when there is a prefix.
    """
    start = max(n_prefix, 1)
    pred = logits[:, start - 1 : -1, :].float()
    target = ids[:, start - n_prefix :]
    if pred.shape[1] == 0:
        return torch.zeros(ids.shape[0], device=ids.device)
    ce = torch.nn.functional.cross_entropy(pred.transpose(1, 2), target, reduction="none")
    return ce.mean(dim=1)


def _logits(out: Any) -> Tensor:
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor):
        raise InputError("fluency > 0 needs a model whose output has .logits (or is a tensor).")
    return logits


def _score(
    model: nn.Module,
    module: nn.Module,
    unit: int | Tensor,
    ids: Tensor,
    prefix: Tensor,
    position: int,
    fluency: float,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Exact ``(value, activation)``, each ``(N,)``, of prompts ``ids`` ``(N, L)``."""
    values, acts = [], []
    with torch.no_grad(), ModuleOutputsHook([module]) as hook:
        for chunk in ids.split(batch_size):
            full = torch.cat([prefix.expand(chunk.shape[0], -1), chunk], dim=1)
            out = model(input_ids=full)
            act = _read(hook.consume_outputs()[module], unit, position).float()
            val = act
            if fluency:
                val = act - fluency * _cross_entropy(_logits(out), chunk, prefix.numel())
            values.append(val)
            acts.append(act)
    return torch.cat(values), torch.cat(acts)


def _gradient(
    model: nn.Module,
    module: nn.Module,
    unit: int | Tensor,
    ids: Tensor,
    prefix: Tensor,
    position: int,
    fluency: float,
) -> Tensor:
    """Gradient ``(L, V)`` of the objective w.r.t. the one-hot tokens of one prompt ``(L,)``."""
    weight = _embedding(model).weight
    onehot = torch.zeros(ids.numel(), weight.shape[0], dtype=weight.dtype, device=weight.device)
    onehot.scatter_(1, ids[:, None], 1.0)
    onehot.requires_grad_(True)
    embeds = torch.cat([weight[prefix[0]].detach(), onehot @ weight], dim=0)[None]
    with ModuleOutputsHook([module]) as hook:
        out = model(inputs_embeds=embeds)
        value = _read(hook.consume_outputs()[module], unit, position)
    if fluency:
        value = value - fluency * _cross_entropy(_logits(out), ids[None], prefix.numel())
    (grad,) = torch.autograd.grad(value.sum(), onehot)
    return grad


def search_prompt(
    model: nn.Module,
    layer: Target,
    neuron_or_direction: int | Tensor,
    length: int = 3,
    position: int = -1,
    steps: int = 150,
    top_k: int = 12,
    batch_size: int = 128,
    seed: int = 0,
    fluency: float = 0.0,
    tokenizer: Any = None,
    allowed_ids: Sequence[int] | Tensor | None = None,
    prefix_ids: Sequence[int] | None = None,
    patience: int = 3,
) -> PromptSearchResult:
    """Greedy coordinate gradient search for the prompt that maximizes a neuron or direction.

    Args:
        model: a causal LM taking ``input_ids`` and ``inputs_embeds`` (a transformers model).
        layer: the module, or its dotted name, whose output ``(batch, tokens, features)`` is read.
        neuron_or_direction: a feature index, or a direction ``(features,)`` to dot with.
        length: number of prompt tokens searched.
        position: the token (of prefix + prompt) at which the activation is read; -1 the last.
        steps: search steps (one gradient and ``batch_size`` exact forwards each).
        top_k: candidate tokens per position, by gradient.
        batch_size: candidate prompts scored exactly per step (also the forward chunk size).
        seed: seeds the ``torch.Generator`` of the initial prompts and candidate sampling.
        fluency: weight of the prompt's own mean cross-entropy, subtracted from the activation.
        tokenizer: decodes the result's ``text`` when given.
        allowed_ids: the tokens the prompt may use (default: the whole vocabulary).
        prefix_ids: fixed tokens before the prompt (e.g. ``[tokenizer.bos_token_id]``).
        patience: steps without improvement before restarting from a random prompt.

    Returns:
        :class:`PromptSearchResult` with the best prompt over all restarts.
    """
    module = resolve_target(model, layer)
    allowed = _allowed(model, allowed_ids)
    _check_unit(model, neuron_or_direction, length, allowed)
    for name, v in (("steps", steps), ("top_k", top_k), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}.")
    device = _embedding(model).weight.device
    allowed = allowed.to(device)
    prefix = torch.as_tensor(list(prefix_ids or []), dtype=torch.long, device=device)[None]
    if not -(prefix.numel() + length) <= position < prefix.numel() + length:
        raise InputError(f"position {position} is outside the {prefix.numel() + length} tokens.")
    gen = torch.Generator().manual_seed(seed)
    mask = torch.full((_embedding(model).num_embeddings,), float("-inf"), device=device)
    mask[allowed] = 0.0
    k = min(top_k, allowed.numel())

    def random_prompt() -> Tensor:
        return allowed[torch.randint(allowed.numel(), (length,), generator=gen).to(device)]

    def score(ids: Tensor) -> tuple[Tensor, Tensor]:
        return _score(
            model, module, neuron_or_direction, ids, prefix, position, fluency, batch_size
        )

    current = random_prompt()
    cur_val = score(current[None])[0][0].item()
    best, best_val = current.clone(), cur_val
    history: list[float] = []
    stale, restarts = 0, 0
    for _ in range(steps):
        grad = _gradient(model, module, neuron_or_direction, current, prefix, position, fluency)
        top = (grad + mask).topk(k, dim=1).indices  # (L, k)
        pos = torch.randint(length, (batch_size,), generator=gen).to(device)
        pick = torch.randint(k, (batch_size,), generator=gen).to(device)
        cands = current.repeat(batch_size, 1)
        cands[torch.arange(batch_size, device=device), pos] = top[pos, pick]
        cands = cands.unique(dim=0)
        vals, _ = score(cands)
        i = int(vals.argmax())
        if vals[i].item() > cur_val:
            current, cur_val, stale = cands[i].clone(), vals[i].item(), 0
        else:
            stale += 1
        if cur_val > best_val:
            best, best_val = current.clone(), cur_val
        history.append(best_val)
        if stale >= patience:
            current, stale, restarts = random_prompt(), 0, restarts + 1
            cur_val = score(current[None])[0][0].item()
    value, act = score(best[None])
    ids = best.tolist()
    text = tokenizer.decode(ids) if tokenizer is not None else None
    return PromptSearchResult(ids, text, value.item(), act.item(), history, restarts)


def exhaustive_max(
    model: nn.Module,
    layer: Target,
    neuron: int | Tensor,
    length: int = 3,
    batch_size: int = 8192,
    position: int = -1,
    allowed_ids: Sequence[int] | Tensor | None = None,
    prefix_ids: Sequence[int] | None = None,
) -> tuple[float, list[int]]:
    """Brute-force maximum of the activation over all ``len(allowed_ids) ** length`` prompts.

    Args:
        model, layer, neuron, length, position, allowed_ids, prefix_ids: as in
            :func:`search_prompt` (``neuron`` may be a direction).
        batch_size: prompts per forward pass.

    Returns:
        ``(max_value, ids)``: the largest activation and the first prompt (in lexicographic order
        of ``allowed_ids``) reaching it.
    """
    module = resolve_target(model, layer)
    allowed = _allowed(model, allowed_ids)
    _check_unit(model, neuron, length, allowed)
    if allowed.numel() ** length > 50_000_000:
        raise InputError(f"{allowed.numel()}**{length} prompts are too many to enumerate.")
    device = _embedding(model).weight.device
    allowed = allowed.to(device)
    prefix = torch.as_tensor(list(prefix_ids or []), dtype=torch.long, device=device)[None]
    grids = torch.cartesian_prod(*([allowed] * length)) if length > 1 else allowed[:, None]
    vals, _ = _score(model, module, neuron, grids, prefix, position, 0.0, batch_size)
    i = int(vals.argmax())
    return vals[i].item(), grids[i].tolist()
