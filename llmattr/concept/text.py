"""Language models in TCAV: texts to token ids, pooling of token activations, the scored logit.

A concept for a language model is a set of texts of different lengths. Each text's activations
at a layer, ``(T, H)``, are pooled to one vector ``(H,)`` before the classifier:

* ``"last"`` - the last real token (what a causal model predicts from);
* ``"mean"`` - the mean over the attention mask (padding excluded);
* an ``int`` - that token position of the unpadded text (negative counts from the end).

The prediction's sensitivity is pooled to match: the directional derivative of the target logit
when the pooled position's activation (``"last"``, ``int``) or every real token's activation
(``"mean"``) moves along the CAV, i.e. the gradient at that position, or summed over the mask.
Texts are right-padded (positions ``0..T-1`` stay those of the unpadded text).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError

__all__ = ["LastTokenLogits", "Pooling", "check_pooling", "encode_texts", "pool", "text_batches"]

Pooling = str | int


def check_pooling(pooling: Any) -> Pooling:
    """``pooling`` if it is ``"last"``, ``"mean"`` or an int position, else an InputError."""
    if pooling in ("last", "mean") or (isinstance(pooling, int) and not isinstance(pooling, bool)):
        return pooling
    raise InputError(f"pooling must be 'last', 'mean' or an int token position, got {pooling!r}.")


def _ids_of(tokenizer: Any, text: str) -> list[int]:
    if hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(text)
    else:
        ids = tokenizer(text)["input_ids"]
    return [int(i) for i in torch.as_tensor(ids).reshape(-1)]


def encode_texts(
    tokenizer: Any, texts: Sequence[str], pooling: Pooling, device: Any = None
) -> tuple[Tensor, Tensor]:
    """Token ids ``(N, T)`` right-padded with the tokenizer's pad id (0 without one) and the
    attention mask ``(N, T)``; an InputError for an empty text or a position out of range."""
    rows = [_ids_of(tokenizer, t) for t in texts]
    for text, ids in zip(texts, rows):
        if not ids:
            raise InputError(f"The text {text!r} has no tokens; remove it.")
        if isinstance(pooling, int) and not -len(ids) <= pooling < len(ids):
            raise InputError(
                f"pooling={pooling} is outside the {len(ids)} tokens of {text!r}; choose a "
                "position every text has (e.g. a negative one, counted from the end)."
            )
    width = max(len(r) for r in rows)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: Tensor, pooling: Pooling) -> Tensor:
    """The pooled token's index in each row ``(N,)`` for ``"last"`` or an int position."""
    lengths = mask.sum(1)
    if pooling == "last":
        return lengths - 1
    return torch.where(torch.as_tensor(pooling) < 0, lengths + pooling, torch.as_tensor(pooling))


def pool(values: Tensor, mask: Tensor, pooling: Pooling, gradient: bool = False) -> Tensor:
    """Pool ``(N, T, H)`` token activations (or, with ``gradient``, their sensitivities) to
    ``(N, H)``: the chosen position, or the mean over the mask (the sum for ``gradient``: a shift
    of every real token along a direction)."""
    if values.dim() != 3 or values.shape[:2] != mask.shape:
        raise InputError(
            f"Expected token activations (N, T, H) matching the mask {tuple(mask.shape)}, got "
            f"{tuple(values.shape)}: choose a layer whose output is (batch, tokens, hidden)."
        )
    m = mask.to(values.dtype).unsqueeze(-1)
    if pooling == "mean":
        total = (values * m).sum(1)
        return total if gradient else total / m.sum(1)
    rows = torch.arange(len(values), device=values.device)
    return values[rows, _positions(mask, pooling).to(values.device)]


def text_batches(data_iter: Iterable[Any], batch_size: int) -> Iterator[list[str]]:
    """Batches of texts from a concept's ``data_iter``: a flat list of strings (chunked), or an
    iterable of strings / lists of strings (a DataLoader over texts yields lists)."""
    if isinstance(data_iter, list | tuple) and all(isinstance(t, str) for t in data_iter):
        for i in range(0, len(data_iter), batch_size):
            yield list(data_iter[i : i + batch_size])
        return
    for item in data_iter:
        batch = [item] if isinstance(item, str) else list(item)
        if not all(isinstance(t, str) for t in batch):
            raise InputTypeError(
                "With a tokenizer, a concept's examples are texts: give data_iter a list of "
                f"strings (or batches of strings); got a batch of {type(batch[0]).__name__}."
            )
        yield batch


class LastTokenLogits(nn.Module):
    """``(input_ids (N, T), attention_mask (N, T)) -> (N, V)``: the language model's next-token
    logits after each right-padded prompt's last real token (so ``target`` is a token id)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, tuple | list) else out
        rows = torch.arange(len(logits), device=logits.device)
        return logits[rows, _positions(attention_mask, "last").to(logits.device)]
