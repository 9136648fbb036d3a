"""Discrete prompt search on a language model (GCG / AutoPrompt style).

:func:`search_prompt` looks for the ``length``-token prompt that maximizes an objective read at one
position of the prompt: a neuron (an int), the dot product with a direction (a 1-D tensor), or any
loss of :mod:`llmattr.optim.loss` / :mod:`llmattr.optim.directions`, compositions included. Each
step takes the gradient of the objective with respect to the prompt's one-hot tokens, keeps the
``top_k`` most promising swaps per position, scores a batch of single-swap candidates **exactly**
by forward passes and keeps the best; when no candidate improves for ``patience`` steps it
restarts from a fresh random prompt (the best prompt over all restarts is returned).
:func:`exhaustive_max` scores every prompt of a small vocabulary by brute force, for grading.

How a loss reads a text layer: the layer's output ``(N, T, D)`` is taken at ``position`` and
handed to the loss as an image-shaped ``(N, D, 1, 1)`` activation, so channel ``d`` is unit ``d``
of that token (``NeuronActivation(layer, d)`` and ``ChannelActivation(layer, d)`` equal the int
``d``; ``Direction(layer, v)`` equals the tensor ``v``; ``LayerActivation`` is the mean over the
``D`` units). Each prompt is scored as a batch of one (the loss's mean on it), so compositions of
losses, which average each side over the batch, never mix prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .layers import ModuleOutputsHook, Target, resolve_target
from .loss import Loss, _flat_targets

__all__ = ["PromptSearchResult", "exhaustive_max", "search_prompt"]

Objective = int | Tensor | Loss


@dataclass
class PromptSearchResult:
    """The best prompt found.

    Attributes:
        ids: the prompt's token ids, ``length`` of them (the fixed prefix is not included).
        text: ``tokenizer.decode(ids)`` when a tokenizer was given, else None.
        value: the exact objective of ``ids`` (activation minus ``fluency`` times cross-entropy).
        activation: the exact activation (neuron value, dot with the direction, or the loss).
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
            "prompt optimization needs a language model with get_input_embeddings() returning "
            f"an nn.Embedding (a transformers model); {type(model).__name__} has none."
        )
    return emb


def _allowed(model: nn.Module, allowed_ids: Sequence[int] | Tensor | None) -> Tensor:
    vocab = _embedding(model).num_embeddings
    if allowed_ids is None:
        return torch.arange(vocab)
    ids = torch.as_tensor(allowed_ids, dtype=torch.long).flatten().unique()
    if ids.numel() == 0:
        raise InputError("allowed_ids is empty: no token can be placed in the prompt.")
    if ids.min() < 0 or ids.max() >= vocab:
        raise InputError(f"allowed_ids must lie in [0, {vocab}); got {ids.tolist()}.")
    return ids


def _check_setup(length: int, n_prefix: int, position: int, **positive: Any) -> None:
    """Checks ``length`` and the named positive ints, and that ``position`` is a token."""
    for name, v in {"length": length, **positive}.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}.")
    if not -(n_prefix + length) <= position < n_prefix + length:
        raise InputError(f"position {position} is outside the {n_prefix + length} tokens.")


def _token_row(act: Tensor, position: int) -> Tensor:
    """``(B, T, D)`` activation -> ``(B, D)``, the features of token ``position``."""
    if act.dim() != 3:
        raise InputError(
            f"The layer's activation has shape {tuple(act.shape)}; prompt optimization needs "
            "(batch, tokens, features)."
        )
    return act[:, position, :]


def _per_example(loss: Loss, values: dict[Any, Tensor]) -> Tensor:
    """``loss`` on each example as a batch of one, reduced by its mean: ``(B,)``.

    ``values`` maps targets to ``(B, D, 1, 1)``. The first example is scored by a plain call (a
    bad loss raises its own clear error there); the batch is vectorized with ``torch.func.vmap``,
    or looped over when the loss cannot be vmapped.
    """
    first = loss({k: v[:1] for k, v in values.items()}).mean().reshape(1)
    batch = next(iter(values.values())).shape[0]
    if batch == 1:
        return first
    try:
        stacked = {k: v.unsqueeze(1) for k, v in values.items()}
        return torch.func.vmap(lambda d: loss(d).mean())(stacked)
    except InputError:
        raise
    except Exception:  # data-dependent Python in a custom loss: score one by one
        return torch.stack(
            [loss({k: v[i : i + 1] for k, v in values.items()}).mean() for i in range(batch)]
        )


class _Objective:
    """What the search maximizes: the modules to hook and ``(outputs, position) -> (B,)``."""

    def __init__(self, model: nn.Module, layer: Target | None, objective: Objective) -> None:
        self.objective = objective
        if isinstance(objective, Loss):
            self.names = _flat_targets(objective.target)
            self.modules = [resolve_target(model, t) for t in self.names]
            if layer is not None and not any(
                resolve_target(model, layer) is m for m in self.modules
            ):
                raise InputError(
                    f"layer {layer!r} is not a target of the loss {objective!r}; pass layer=None "
                    "(the loss names its layers) or one of its targets."
                )
            return
        if layer is None:
            raise InputError("layer is required when the objective is a neuron or direction.")
        self.modules = [resolve_target(model, layer)]
        if isinstance(objective, bool) or not isinstance(objective, int | Tensor):
            raise InputError(
                "The objective must be an int (a unit of the layer's last dimension), a 1-D "
                f"direction tensor or a Loss, got {type(objective).__name__}."
            )
        if isinstance(objective, Tensor) and objective.dim() != 1:
            raise InputError(f"A direction must be 1-D, got shape {tuple(objective.shape)}.")

    def __call__(self, outputs: dict[nn.Module, Tensor], position: int) -> Tensor:
        unit = self.objective
        if isinstance(unit, Loss):
            values: dict[Any, Tensor] = {}
            for name, module in zip(self.names, self.modules, strict=True):
                values[name] = values[module] = _token_row(outputs[module], position)[
                    ..., None, None
                ]
            return _per_example(unit, values)
        row = _token_row(outputs[self.modules[0]], position)
        if isinstance(unit, Tensor):
            if unit.numel() != row.shape[-1]:
                raise InputError(
                    f"The direction has {unit.numel()} entries; the layer has {row.shape[-1]} "
                    "features."
                )
            return row @ unit.to(row)
        if not -row.shape[-1] <= unit < row.shape[-1]:
            raise InputError(
                f"Neuron {unit} is out of range for a layer of {row.shape[-1]} features."
            )
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
    objective: _Objective,
    ids: Tensor,
    prefix: Tensor,
    position: int,
    fluency: float,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Exact ``(value, activation)``, each ``(N,)``, of prompts ``ids`` ``(N, L)``."""
    values, acts = [], []
    with torch.no_grad(), ModuleOutputsHook(objective.modules) as hook:
        for chunk in ids.split(batch_size):
            full = torch.cat([prefix.expand(chunk.shape[0], -1), chunk], dim=1)
            out = model(input_ids=full)
            act = objective(hook.consume_outputs(), position).float()
            val = act
            if fluency:
                val = act - fluency * _cross_entropy(_logits(out), chunk, prefix.numel())
            values.append(val)
            acts.append(act)
    return torch.cat(values), torch.cat(acts)


def _gradient(
    model: nn.Module,
    objective: _Objective,
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
    with ModuleOutputsHook(objective.modules) as hook:
        out = model(inputs_embeds=embeds)
        value = objective(hook.consume_outputs(), position)
    if fluency:
        value = value - fluency * _cross_entropy(_logits(out), ids[None], prefix.numel())
    if not value.requires_grad:
        raise InputError(
            "The objective does not depend on the prompt (its layer's output has no gradient "
            "with respect to the input embeddings); choose a layer the tokens flow through."
        )
    (grad,) = torch.autograd.grad(value.sum(), onehot)
    return grad


def _prefix(prefix_ids: Sequence[int] | None, device: torch.device) -> Tensor:
    return torch.as_tensor(list(prefix_ids or []), dtype=torch.long, device=device).reshape(1, -1)


def search_prompt(
    model: nn.Module,
    layer: Target | None,
    neuron_or_direction: Objective,
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
    """Greedy coordinate gradient search for the prompt that maximizes an objective.

    Args:
        model: a causal LM taking ``input_ids`` and ``inputs_embeds`` (a transformers model).
        layer: the module, or its dotted name, whose output ``(batch, tokens, features)`` is read;
            with a loss objective None (the loss names its layers) or one of the loss's targets.
        neuron_or_direction: the objective: a feature index, a direction ``(features,)`` to dot
            with, or a :class:`~llmattr.optim.loss.Loss` (read as in the module docstring).
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
    objective = _Objective(model, layer, neuron_or_direction)
    allowed = _allowed(model, allowed_ids)
    n_prefix = len(list(prefix_ids or []))
    _check_setup(length, n_prefix, position, steps=steps, top_k=top_k, batch_size=batch_size)
    device = _embedding(model).weight.device
    allowed = allowed.to(device)
    prefix = _prefix(prefix_ids, device)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.full((_embedding(model).num_embeddings,), float("-inf"), device=device)
    mask[allowed] = 0.0
    k = min(top_k, allowed.numel())

    def random_prompt() -> Tensor:
        return allowed[torch.randint(allowed.numel(), (length,), generator=gen).to(device)]

    def score(ids: Tensor) -> tuple[Tensor, Tensor]:
        return _score(model, objective, ids, prefix, position, fluency, batch_size)

    current = random_prompt()
    cur_val = score(current[None])[0][0].item()
    best, best_val = current.clone(), cur_val
    history: list[float] = []
    stale, restarts = 0, 0
    for _ in range(steps):
        grad = _gradient(model, objective, current, prefix, position, fluency)
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
    layer: Target | None,
    neuron: Objective,
    length: int = 3,
    batch_size: int = 8192,
    position: int = -1,
    allowed_ids: Sequence[int] | Tensor | None = None,
    prefix_ids: Sequence[int] | None = None,
) -> tuple[float, list[int]]:
    """Brute-force maximum of the objective over all ``len(allowed_ids) ** length`` prompts.

    Args:
        model, layer, length, position, allowed_ids, prefix_ids: as in :func:`search_prompt`.
        neuron: the objective, as ``neuron_or_direction`` of :func:`search_prompt`.
        batch_size: prompts per forward pass.

    Returns:
        ``(max_value, ids)``: the largest value and the first prompt (in lexicographic order of
        ``allowed_ids``) reaching it.
    """
    objective = _Objective(model, layer, neuron)
    allowed = _allowed(model, allowed_ids)
    _check_setup(length, len(list(prefix_ids or [])), position, batch_size=batch_size)
    if allowed.numel() ** length > 50_000_000:
        raise InputError(f"{allowed.numel()}**{length} prompts are too many to enumerate.")
    device = _embedding(model).weight.device
    allowed = allowed.to(device)
    grids = torch.cartesian_prod(*([allowed] * length)) if length > 1 else allowed[:, None]
    vals, _ = _score(
        model, objective, grids, _prefix(prefix_ids, device), position, 0.0, batch_size
    )
    i = int(vals.argmax())
    return vals[i].item(), grids[i].tolist()
