"""Learning a sparse mask over a prompt's features with stochastic gates.

Each feature of the prompt (a token, a word, ...) gets a stochastic gate ``z``; the embedding of
each of its tokens becomes ``b + z * (e - b)``, between the baseline token's embedding ``b``
(``z = 0``) and its own ``e`` (``z = 1``). The gates' parameters maximize

    E_z[ log p(target | gated prompt) ] - reg_weight * sum_i P(z_i > 0)

by stochastic gradient ascent (the model is frozen), so a gate stays open only when its feature
is worth its cost to the target's log-probability. The learned open probabilities
``P(z_i > 0)`` are a sparse, attribution-like score of each feature: read them, or turn them into
an :class:`~llmattr.text.result.LLMAttributionResult` for plots and reports.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from ..text.inputs import _TokenFeatures, words
from ..text.llm_attr import _target_ids, output_token_texts
from ..text.result import LLMAttributionResult
from ..text.scorer import model_device
from .binary_concrete import BinaryConcreteStochasticGates
from .gates_base import StochasticGatesBase
from .gaussian import GaussianStochasticGates

__all__ = ["PromptMaskResult", "learn_prompt_mask"]

_GATES = {"binary_concrete": BinaryConcreteStochasticGates, "gaussian": GaussianStochasticGates}


@dataclass
class PromptMaskResult:
    """A learned prompt mask.

    Attributes:
        gate_probs: ``(n_features,)`` each feature's probability of being kept, ``P(z > 0)``.
        gate_values: ``(n_features,)`` the gates' deterministic (eval-mode) values in ``[0, 1]``.
        input_tokens: the features' names.
        output_tokens: the target tokens.
        target_ids: ``(n_output_tokens,)`` the target's token ids.
        full_log_probs: ``(n_output_tokens,)`` each target token's log-probability under the
            unmasked prompt.
        masked_log_prob: the target's total log-probability with the eval-mode gates.
        kept_log_prob: the target's total log-probability when only the features with
            ``gate_probs > 0.5`` are kept (the others at the baseline token).
        losses: the objective minimized, per step (negative log-probability plus penalty).
        gates: the trained gates module (in eval mode).
        method: the gates' class name.
        inp: the text input the mask is for.
    """

    gate_probs: Tensor
    gate_values: Tensor
    input_tokens: list[str]
    output_tokens: list[str]
    target_ids: Tensor
    full_log_probs: Tensor
    masked_log_prob: float
    kept_log_prob: float
    losses: list[float] = field(default_factory=list)
    gates: StochasticGatesBase | None = field(default=None, repr=False, compare=False)
    method: str = ""
    inp: Any = field(default=None, repr=False, compare=False)

    def kept(self, threshold: float = 0.5) -> list[int]:
        """Indices of the features whose keep probability exceeds ``threshold``."""
        return [i for i, p in enumerate(self.gate_probs.tolist()) if p > threshold]

    def to_attribution_result(self) -> LLMAttributionResult:
        """The keep probabilities as an :class:`LLMAttributionResult` (``seq_attr``; no
        ``token_attr``: one mask explains the whole target), with the target tokens'
        probabilities under the full prompt as ``output_probs``; plots, HTML and JSON work on
        it."""
        return LLMAttributionResult(
            seq_attr=self.gate_probs.clone(),
            token_attr=None,
            input_tokens=list(self.input_tokens),
            output_tokens=list(self.output_tokens),
            output_probs=self.full_log_probs.exp(),
            method=f"PromptMask({self.method})",
            info={"masked_log_prob": self.masked_log_prob, "kept_log_prob": self.kept_log_prob},
            inp=self.inp,
        )

    def to_html(self, title: str | None = None, path: Any = None) -> str:
        """The HTML report of :meth:`to_attribution_result`."""
        return self.to_attribution_result().to_html(title=title, path=path)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside the block; both restored on exit."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _check_number(name: str, value: Any, low: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not value >= low:
        what = "an int" if integer else "a number"
        raise InputError(f"{name} must be {what} >= {low}, got {value!r}.")
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}.")


def _make_gates(
    gates: str | StochasticGatesBase, n: int, mask: Tensor, kwargs: dict[str, Any]
) -> StochasticGatesBase:
    """The gates to train: a new module of the named kind, or a copy of the given one, with
    ``mask`` (the gate of each feature token) set."""
    if isinstance(gates, StochasticGatesBase):
        if kwargs:
            raise InputError("gates_kwargs configure a gates type given by name; got a module.")
        if gates.n_gates != n or gates.mask is not None:
            extra = " and a mask" if gates.mask is not None else ""
            raise InputError(
                f"A gates module must have n_gates={n} (one per prompt feature) and no mask; "
                f"got n_gates={gates.n_gates}{extra}."
            )
        module = copy.deepcopy(gates)  # the caller's module is never trained
        module.mask = mask
        return module
    if not isinstance(gates, str) or gates not in _GATES:
        raise InputError(f"gates must be one of {list(_GATES)} or a module, got {gates!r}.")
    return _GATES[gates](n, mask=mask, **kwargs)


def _target_log_probs(model: nn.Module, embeds: Tensor, target: Tensor) -> Tensor:
    """``(batch, n_target)`` log-probabilities of ``target`` ``(n_target,)`` after the prompt
    embeddings ``embeds`` ``(batch, L, d)``, teacher-forced in one forward."""
    emb = model.get_input_embeddings()  # type: ignore[operator]
    n, length = embeds.shape[0], embeds.shape[1]
    tail = emb(target[:-1].unsqueeze(0)).expand(n, -1, -1).to(embeds.dtype)
    out = model(inputs_embeds=torch.cat([embeds, tail], dim=1), use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out
    # log-softmax in at least float32 (half-precision logits lose the small probabilities)
    logits = logits[:, length - 1 :].to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(2, target.view(1, -1, 1).expand(n, -1, 1)).squeeze(2)


def learn_prompt_mask(
    model: nn.Module,
    tokenizer: Any,
    inp: str | _TokenFeatures,
    target: str | Tensor | Sequence[int] | None = None,
    gates: str | StochasticGatesBase = "binary_concrete",
    steps: int = 100,
    reg_weight: float = 0.05,
    *,
    lr: float = 0.2,
    n_samples: int = 8,
    seed: int = 0,
    gates_kwargs: dict[str, Any] | None = None,
) -> PromptMaskResult:
    """Learn which prompt features the target needs, with stochastic gates on their embeddings.

    Args:
        model: a decoder-only ``transformers`` language model (``inputs_embeds`` and
            ``get_input_embeddings``). It is frozen while the gates train: its parameters are
            untouched, and its train/eval mode and ``requires_grad`` flags are restored.
        tokenizer: its tokenizer.
        inp: the prompt: a string (its words are the features, ``words(prompt, tokenizer)``, the
            pad token the baseline), or any token-level text input (``TextTokenInput``,
            ``words(...)``, ``sentences(...)``) whose features and baseline token are used.
        target: the continuation to explain: a string (encoded without special tokens), token
            ids, or None to generate it greedily.
        gates: ``"binary_concrete"`` (default), ``"gaussian"``, or a gates module with one gate
            per feature and no mask (a copy is trained, with ``reg_weight`` and ``"sum"``
            reduction; the module passed is left as it was).
        steps: optimization steps (Adam), each on ``n_samples`` gate draws.
        reg_weight: the penalty per expected open gate, in nats of target log-probability.
        lr: Adam's learning rate.
        n_samples: gate samples per step (one batch of one forward).
        seed: seeds the gates' initialization and noise (the global RNG is left as it was).
        gates_kwargs: further arguments of the gates class (``temperature``, ``std``, ...).

    Returns:
        :class:`PromptMaskResult`: ``gate_probs`` ``(n_features,)`` and the log-probabilities
        with the full, gated and hard-masked prompt.

    Raises:
        InputError / InputTypeError: an unknown gates name, a gates module of the wrong size,
            non-positive ``steps``, ``n_samples`` or ``lr``, a negative ``reg_weight``, an empty
            target, or a model without input embeddings or an encoder-decoder model; all before
            any forward.
    """
    _check_number("steps", steps, 1, integer=True)
    _check_number("n_samples", n_samples, 1, integer=True)
    _check_number("reg_weight", reg_weight, 0)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise InputError(f"lr must be a positive number, got {lr!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError(f"seed must be an int, got {type(seed).__name__}.")
    has_embeddings = callable(getattr(model, "get_input_embeddings", None))
    if not isinstance(model, nn.Module) or not has_embeddings:
        raise InputTypeError(
            "learn_prompt_mask needs a transformers language model (an nn.Module with "
            f"get_input_embeddings and inputs_embeds), got {type(model).__name__}."
        )
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise InputError("learn_prompt_mask supports decoder-only models, not encoder-decoders.")
    if isinstance(inp, str):
        inp = words(inp, tokenizer)
    if not isinstance(inp, _TokenFeatures):
        raise InputTypeError(
            "inp must be a prompt string or a token-level text input (TextTokenInput, words(...),"
            f" sentences(...)), got {type(inp).__name__}."
        )
    emb = model.get_input_embeddings()
    device = model_device(model)
    features = inp.feature_of_token
    pos = (features >= 0).nonzero().squeeze(1)
    # the gates' mask: each feature token's gate, broadcast over the batch and the width
    mask = features[pos].view(1, -1, 1)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # the gates' initialization
        module = _make_gates(gates, inp.n_features, mask, dict(gates_kwargs or {}))
    module.reg_weight, module.reg_reduction = reg_weight, "sum"
    ids, pos, mask = inp.prompt_ids().to(device), pos.to(device), mask.to(device)
    if isinstance(target, str) and not target.strip():
        raise InputError("The target is empty: give at least one target token (or None).")
    if target is not None and not isinstance(target, str) and torch.as_tensor(target).numel() == 0:
        raise InputError("The target is empty: give at least one target token (or None).")
    target_ids = _target_ids(model, tokenizer, inp.prompt_ids(), target, None, None).to(device)

    with _frozen(model), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed + 1)  # the gates' noise
        with torch.no_grad():
            full = emb(ids.unsqueeze(0))  # (1, L, d)
            base = emb(inp.baseline_ids.to(device).unsqueeze(0))
            full_lp = _target_log_probs(model, full, target_ids)[0]
        # the gates learn in float32 at least (Adam on half-precision parameters stalls)
        module = module.to(device=device, dtype=torch.promote_types(full.dtype, torch.float32))
        diff = (full - base)[:, pos]  # (1, P, d)
        diff = diff.to(torch.promote_types(diff.dtype, torch.float32))

        def gated_prompt(n: int) -> tuple[Tensor, Tensor]:
            """``(n, L, d)`` prompt embeddings with sampled gates, and the penalty."""
            gated, reg = module(diff.expand(n, -1, -1))
            embeds = full.expand(n, -1, -1).clone()
            embeds[:, pos] = base[:, pos] + gated.to(full.dtype)
            return embeds, reg

        opt = torch.optim.Adam(module.parameters(), lr=lr)
        module.train()
        losses = []
        for _ in range(steps):
            embeds, reg = gated_prompt(n_samples)
            loss = reg - _target_log_probs(model, embeds, target_ids).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        module.eval()
        with torch.no_grad():
            probs = module.get_gate_active_probs()
            masked = _target_log_probs(model, gated_prompt(1)[0], target_ids).sum()
            keep = (probs > 0.5)[mask]
            hard = torch.where(keep, full[:, pos], base[:, pos])
            kept_embeds = full.clone()
            kept_embeds[:, pos] = hard
            kept = _target_log_probs(model, kept_embeds, target_ids).sum()
    return PromptMaskResult(
        gate_probs=probs.cpu(),
        gate_values=module.get_gate_values().cpu(),
        input_tokens=list(inp.format_tokens()),
        output_tokens=output_token_texts(tokenizer, target_ids.cpu()),
        target_ids=target_ids.cpu(),
        full_log_probs=full_lp.detach().cpu(),
        masked_log_prob=float(masked),
        kept_log_prob=float(kept),
        losses=losses,
        gates=module,
        method=type(module).__name__,
        inp=inp,
    )
