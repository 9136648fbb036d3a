"""Max-activating examples for language models: the corpus tokens that drive a neuron or direction.

:func:`max_activating_examples` runs a causal LM over a corpus in batches, reads one layer's output
``(batch, tokens, D)`` through a forward hook, scores every real token (a neuron's value, or the
dot product with a direction) and keeps a running top-k, so memory is bounded by ``batch_size``
whatever the corpus size. Texts are padded on the **right** with an attention mask: with causal
attention a real token then sees exactly what it sees when its text runs alone (same positions,
no padding before it), and padding positions are never scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from .._core.hooks import registered
from .layers import ModuleOutputsHook, Target, resolve_target

__all__ = ["ActivatingExample", "MaxActivatingExamples", "max_activating_examples"]


@dataclass(frozen=True)
class ActivatingExample:
    """One scored token of the corpus.

    Attributes:
        value: the neuron's activation (or the projection on the direction) at this token.
        text_index: index of the text in the corpus (its order of iteration).
        position: token position in the text's token ids (0 is the BOS token when the tokenizer
            adds one).
        token: the token as the tokenizer spells it (``str(id)`` without a tokenizer).
        token_id: the token's id.
        context: the tokens from ``position - context`` to ``position + context`` (clipped to
            the text); the scored token is ``context[position - context_start]``.
        context_start: the position of ``context[0]`` in the text.
    """

    value: float
    text_index: int
    position: int
    token: str
    token_id: int
    context: tuple[str, ...]
    context_start: int

    @property
    def highlight(self) -> int:
        """Index of the scored token inside :attr:`context`."""
        return self.position - self.context_start

    def context_text(self, marker: tuple[str, str] = ("[[", "]]")) -> str:
        """The context tokens joined by spaces, the scored token wrapped in ``marker``."""
        parts = list(self.context)
        i = self.highlight
        parts[i] = f"{marker[0]}{parts[i]}{marker[1]}"
        return " ".join(parts)


@dataclass
class MaxActivatingExamples(Sequence[ActivatingExample]):
    """The top-k examples, best first (ties: earlier text, then earlier position, first).

    A sequence of :class:`ActivatingExample`; ``values`` gives their scores as a tensor ``(n,)``.
    """

    examples: list[ActivatingExample]
    layer: str = ""
    target: str = ""
    num_tokens: int = 0
    num_texts: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: Any) -> Any:  # int -> example, slice -> list
        return self.examples[i]

    def __iter__(self) -> Iterator[ActivatingExample]:
        return iter(self.examples)

    @property
    def values(self) -> Tensor:
        """The scores, ``(n,)`` float64, in rank order."""
        return torch.tensor([e.value for e in self.examples], dtype=torch.float64)

    def _rows(self, marker: tuple[str, str]) -> list[tuple[str, ...]]:
        return [
            (
                str(rank),
                f"{e.value:.4g}",
                str(e.text_index),
                str(e.position),
                e.token,
                e.context_text(marker),
            )
            for rank, e in enumerate(self.examples)
        ]

    _HEADER = ("rank", "value", "text", "pos", "token", "context")

    def to_markdown(self) -> str:
        """A markdown table, the scored token in bold inside its context."""

        def cell(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [
            "| " + " | ".join(self._HEADER) + " |",
            "|" + "|".join("---" for _ in self._HEADER) + "|",
        ]
        lines += [
            "| " + " | ".join(cell(c) for c in row) + " |" for row in self._rows(("**", "**"))
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        title = (
            f"MaxActivatingExamples({self.target} of {self.layer!r}: top {len(self)} of "
            f"{self.num_tokens} tokens in {self.num_texts} texts)"
        )
        rows = [self._HEADER, *self._rows(("[[", "]]"))]
        widths = [max(len(r[j]) for r in rows) for j in range(len(self._HEADER) - 1)]
        body = [
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
            for r in rows
        ]
        return "\n".join([title, *body])


class _StopForward(Exception):
    """Raised by a forward hook once the target layer has run: the rest of the model is skipped."""


def _stop(module: nn.Module, args: Any, output: Any) -> None:
    raise _StopForward


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}.")
    return value


def _token_ids(batch: list[Any], tokenizer: Any, start: int) -> list[list[int]]:
    """Token ids of each item: strings through the tokenizer, id sequences as given."""
    if tokenizer is not None:
        for j, item in enumerate(batch):
            if not isinstance(item, str):
                raise InputTypeError(
                    f"With a tokenizer the corpus holds strings; text {start + j} is a "
                    f"{type(item).__name__}."
                )
        return [list(ids) for ids in tokenizer(batch)["input_ids"]]
    out: list[list[int]] = []
    for j, item in enumerate(batch):
        if isinstance(item, str):
            raise InputTypeError(
                f"Text {start + j} is a string but no tokenizer was given; pass tokenizer=... "
                "or give each text as a sequence of token ids."
            )
        ids = item.tolist() if isinstance(item, Tensor) else list(item)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise InputTypeError(f"Text {start + j} must be a sequence of int token ids.")
        out.append(ids)
    return out


def _scores(act: Tensor, target: int | Tensor, shape: tuple[int, int]) -> Tensor:
    """``(B, T)`` scores from the layer output ``act`` ``(B, T, D)``."""
    if act.dim() != 3 or tuple(act.shape[:2]) != shape:
        raise InputError(
            f"The layer's output has shape {tuple(act.shape)}; max_activating_examples needs "
            f"(batch, tokens, D) = {shape} + (D,): choose a layer whose output is per token."
        )
    dim = act.shape[-1]
    if isinstance(target, int):
        if not 0 <= target < dim:
            raise InputError(f"Neuron {target} is out of range for a layer of width {dim}.")
        return act[..., target]
    if target.shape != (dim,):
        raise InputError(
            f"The direction has shape {tuple(target.shape)}; the layer's width is {dim}, so it "
            f"must be ({dim},)."
        )
    return act @ target.to(device=act.device, dtype=act.dtype)


def max_activating_examples(
    model: nn.Module,
    layer: Target,
    neuron_or_direction: int | Tensor,
    corpus: Iterable[str] | Iterable[Sequence[int]],
    k: int = 10,
    tokenizer: Any = None,
    batch_size: int = 16,
    context: int = 5,
    skip_token_ids: Sequence[int] = (),
    stop_after_layer: bool = True,
) -> MaxActivatingExamples:
    """The ``k`` tokens of a corpus where a neuron (or a direction) of ``layer`` is largest.

    Every token of every text is scored, padding never: the corpus is streamed ``batch_size``
    texts at a time, right-padded with the tokenizer's pad id (or 0) and an attention mask, and
    only a running top-k (with each winner's context) is kept.

    Args:
        model: a causal LM called as ``model(input_ids=..., attention_mask=...)`` (a
            ``transformers`` model), in eval mode.
        layer: a module of ``model`` or its dotted name (``"model.layers.1.mlp.act_fn"``); its
            output (or first tensor of a tuple output) must be ``(batch, tokens, D)``.
        neuron_or_direction: an int in ``[0, D)`` (the neuron's value is the score) or a
            tensor ``(D,)`` (the score is the dot product with it, not normalized).
        corpus: strings (with ``tokenizer``), or sequences / 1-D tensors of token ids (without);
            any iterable, read once, in order; text ``i`` is the ``i``-th item.
        k: how many examples; fewer come back when the corpus has fewer scored tokens.
        tokenizer: a ``transformers`` tokenizer (its special tokens, e.g. BOS, are added and
            scored like any token unless listed in ``skip_token_ids``).
        batch_size: texts per forward pass.
        context: tokens kept on each side of the scored token.
        skip_token_ids: token ids never scored (e.g. ``[tokenizer.bos_token_id]``).
        stop_after_layer: end each forward pass as soon as ``layer`` has run (the later layers
            and the ``(batch, tokens, vocab)`` logits are never computed). Set False for a model
            that catches exceptions inside its forward.

    Returns:
        :class:`MaxActivatingExamples`, best first; ties go to the earlier text, then the
        earlier position.

    Raises:
        InputError: an unknown layer (the valid names are listed), ``k``/``batch_size`` < 1,
            ``context`` < 0, a neuron out of range, a direction of the wrong width, or a layer
            whose output is not per token.
        InputTypeError: a single string as corpus, texts of the wrong type.
    """
    k = _check_positive_int("k", k)
    batch_size = _check_positive_int("batch_size", batch_size)
    context = _check_positive_int("context", context, minimum=0)
    if isinstance(corpus, str | bytes):
        raise InputTypeError(
            "corpus must be an iterable of texts, not a single string; use [text]."
        )
    target: int | Tensor
    if isinstance(neuron_or_direction, Tensor):
        if neuron_or_direction.dim() != 1 or not neuron_or_direction.is_floating_point():
            raise InputError(
                "A direction must be a 1-D floating tensor (D,), got "
                f"{neuron_or_direction.dtype} of shape {tuple(neuron_or_direction.shape)}."
            )
        target = neuron_or_direction.detach()
        target_name = f"direction (D={target.shape[0]})"
    elif isinstance(neuron_or_direction, int) and not isinstance(neuron_or_direction, bool):
        target = neuron_or_direction
        target_name = f"neuron {target}"
    else:
        raise InputTypeError(
            "neuron_or_direction must be an int or a tensor (D,), got "
            f"{type(neuron_or_direction).__name__}."
        )
    module = resolve_target(model, layer)
    layer_name = layer if isinstance(layer, str) else _module_name(model, module)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    skip = torch.tensor(sorted({int(t) for t in skip_token_ids}), dtype=torch.long)

    # Running top-k: scores (float64), text index, position, and each entry's context ids.
    top_val = torch.empty(0, dtype=torch.float64)
    top_text = torch.empty(0, dtype=torch.long)
    top_pos = torch.empty(0, dtype=torch.long)
    top_ctx: list[tuple[list[int], int]] = []
    num_tokens = num_texts = 0

    iterator = iter(corpus)
    # The stop hook is registered after the capture hook, so it runs after it.
    stopper = (lambda: module.register_forward_hook(_stop),) if stop_after_layer else ()
    with torch.no_grad(), ModuleOutputsHook([module]) as hook, registered(*stopper):
        while batch := list(islice(iterator, batch_size)):
            start = num_texts
            num_texts += len(batch)
            ids_list = _token_ids(batch, tokenizer, start)
            lengths = [len(ids) for ids in ids_list]
            keep = [j for j, n in enumerate(lengths) if n > 0]  # empty texts have no tokens
            if not keep:
                continue
            width = max(lengths)
            ids = torch.full((len(keep), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(keep), width), dtype=torch.long)
            for row, j in enumerate(keep):
                ids[row, : lengths[j]] = torch.tensor(ids_list[j], dtype=torch.long)
                mask[row, : lengths[j]] = 1
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            except _StopForward:
                pass
            act = hook.consume_outputs()[module]
            scores = _scores(act, target, (len(keep), width)).double().cpu()
            valid = mask.bool()
            if skip.numel():
                valid &= ~torch.isin(ids, skip)
            num_tokens += int(valid.sum())
            rows, cols = valid.nonzero(as_tuple=True)  # row-major: text, then position order
            cand_val = torch.cat([top_val, scores[rows, cols]])
            cand_text = torch.cat([top_text, torch.tensor(keep, dtype=torch.long)[rows] + start])
            cand_pos = torch.cat([top_pos, cols])
            # Old entries come first and, being sorted by value with ties in (text, position)
            # order, stay so; new ones follow in (text, position) order: a stable sort on the
            # value alone keeps the ranking ordered by value, then text, then position.
            order = torch.sort(cand_val, descending=True, stable=True).indices[:k]
            n_old = top_val.numel()
            new_ctx: list[tuple[list[int], int]] = []
            for c in order.tolist():
                if c < n_old:
                    new_ctx.append(top_ctx[c])
                else:
                    r, p = int(rows[c - n_old]), int(cols[c - n_old])
                    text_ids = ids_list[keep[r]]
                    lo = max(0, p - context)
                    new_ctx.append((text_ids[lo : p + context + 1], lo))
            top_val, top_text, top_pos = cand_val[order], cand_text[order], cand_pos[order]
            top_ctx = new_ctx

    def spell(token_ids: list[int]) -> list[str]:
        if tokenizer is None:
            return [str(t) for t in token_ids]
        return [str(t) for t in tokenizer.convert_ids_to_tokens(token_ids)]

    examples = []
    for i in range(top_val.numel()):
        ctx_ids, lo = top_ctx[i]
        pos = int(top_pos[i])
        tokens = spell(ctx_ids)
        examples.append(
            ActivatingExample(
                value=float(top_val[i]),
                text_index=int(top_text[i]),
                position=pos,
                token=tokens[pos - lo],
                token_id=int(ctx_ids[pos - lo]),
                context=tuple(tokens),
                context_start=lo,
            )
        )
    return MaxActivatingExamples(
        examples, layer=layer_name, target=target_name, num_tokens=num_tokens, num_texts=num_texts
    )


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` (``"<name>:input"`` for an input target)."""
    tapped = getattr(module, "tapped", None)
    look = tapped if isinstance(tapped, nn.Module) else module
    name = next((n for n, m in model.named_modules() if m is look), type(look).__name__)
    return f"{name}:input" if look is not module else name
