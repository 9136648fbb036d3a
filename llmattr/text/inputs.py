"""Text features: which parts of a prompt are the features an LLM attribution credits.

Every input here turns a presence vector (which features are kept) into the token ids of the
perturbed prompt.

* :class:`TextTokenInput` — every token the tokenizer produces is a feature, special tokens
  (BOS, ``[CLS]``) included, as in Captum (``skip_tokens`` leaves some out); absent tokens become
  a baseline token, so lengths never change.
* :class:`TextSpanInput` — any character spans of a text are the features, with the tokens they
  cover replaced by a baseline token. :func:`words`, :func:`sentences` and :func:`chat_turns` build
  it for the usual granularities (words from the tokenizer's offsets, sentences from punctuation,
  the messages of a chat rendered with the tokenizer's chat template). These builders are
  llmattr's own: the special tokens the tokenizer adds (BOS, ``[CLS]``, chat-template markup)
  are never features of them.

Choosing baselines: the baseline is what "absent" means, and attributions are only as meaningful
as that choice. Replacing a token by a neutral token of the same length (a pad, ``<unk>`` or a
space token) keeps positions fixed and the prompt in distribution; an empty-string baseline
deletes text and is often out of distribution (the model sees a broken sentence).
Templates whose filled-in values are the features are in :mod:`llmattr.text.templates`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError

__all__ = [
    "TextSpanInput",
    "TextTokenInput",
    "chat_turns",
    "sentences",
    "words",
]


def unknown_text(tokenizer: Any, text: str, ids: Sequence[int]) -> bool:
    """Whether ``text`` has words the tokenizer's vocabulary lacks: its ids hold the unknown
    token more often than the text spells that token out."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None:
        return False
    unk = str(getattr(tokenizer, "unk_token", None))
    return [int(i) for i in ids].count(int(unk_id)) > text.count(unk)


def _baseline_id(tokenizer: Any, baseline: int | str | None) -> int:
    """One token id for a baseline given as an id, a token string or one-token text, or None.

    A string is first looked up as a token of the vocabulary (``"<unk>"``, ``"Ġthe"``), as
    Captum does; a string that is no such token is encoded as text and must be one token
    (``" the"``). None means the pad token, else unk, else eos."""
    if baseline is None:
        for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        return 0
    if isinstance(baseline, bool) or not isinstance(baseline, int | str):
        raise InputError(
            f"baselines must be a token id (int) or a token string, got {type(baseline).__name__}."
        )
    if isinstance(baseline, int):
        return baseline
    unk = getattr(tokenizer, "unk_token", None)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    to_ids = getattr(tokenizer, "convert_tokens_to_ids", None)
    if to_ids is not None:
        tid = to_ids(baseline)
        if isinstance(tid, int) and (tid != unk_id or baseline == unk):
            return tid
    ids = tokenizer.encode(baseline, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(
            f"The baseline string {baseline!r} is {len(ids)} tokens for this tokenizer; a token "
            "baseline must be exactly one token (it replaces one token, keeping positions). Use "
            "a token id, a one-token string, or TextTemplateInput for replacement strings."
        )
    if unknown_text(tokenizer, baseline, ids):
        raise InputError(
            f"The baseline string {baseline!r} is not in this tokenizer's vocabulary: it encodes "
            f"to the unknown token {unk!r}. Pass a word the vocabulary has, or "
            f"{unk!r} itself if the unknown token is the baseline you want."
        )
    return int(ids[0])


def _encode(
    tokenizer: Any, text: str, offsets: bool = False, add_special_tokens: bool = True
) -> dict[str, Any]:
    if not text:
        raise ValueError("The prompt is empty: there is nothing to attribute.")
    enc = tokenizer(
        text,
        return_offsets_mapping=offsets,
        return_special_tokens_mask=True,
        add_special_tokens=add_special_tokens,
    )
    return enc


def _skip_token_id(tokenizer: Any, token: int | str) -> int:
    """The id of a token to skip, given as an id or as a token string of the vocabulary."""
    if isinstance(token, int):
        return token
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token", None)
    if tid is None or (tid == getattr(tokenizer, "unk_token_id", None) and token != unk):
        raise ValueError(
            f"skip token {token!r} is not a token of the tokenizer's vocabulary; give a token "
            "id or a token string as the tokenizer spells it (see tokenizer.tokenize)."
        )
    return int(tid)


def _presence_rows(present: Tensor, n_features: int) -> Tensor:
    """Presence as a ``(k, n_features)`` bool tensor (a single row may be given 1-D)."""
    keep = torch.as_tensor(present).to(torch.bool).cpu()
    if keep.dim() == 1:
        keep = keep.unsqueeze(0)
    if keep.dim() != 2 or keep.shape[1] != n_features:
        raise ValueError(
            f"presence must have shape (k, {n_features}) (one column per feature); got "
            f"{tuple(present.shape)}."
        )
    return keep


class _TokenFeatures:
    """Shared machinery: token ids, a feature id per token (-1: not a feature), baselines."""

    ids: Tensor
    feature_of_token: Tensor
    baseline_ids: Tensor
    names: list[str]
    tokenizer: Any

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def n_itp_features(self) -> int:  # Captum's name
        return self.n_features

    @property
    def values(self) -> list[str]:
        return self.names

    def to_tensor(self) -> Tensor:
        """``(1, n_features)`` ones: every feature present (what attribution methods perturb)."""
        return torch.ones(1, self.n_features)

    def prompt_ids(self) -> Tensor:
        return self.ids

    def perturbed_ids(self, present: Tensor) -> list[Tensor]:
        """Token ids of the prompt for each presence row ``(k, n_features)`` (nonzero: kept)."""
        keep = _presence_rows(present, self.n_features)
        is_feature = self.feature_of_token >= 0
        token_kept = torch.ones(keep.shape[0], self.ids.numel(), dtype=torch.bool)
        token_kept[:, is_feature] = keep[:, self.feature_of_token[is_feature]]
        rows = torch.where(token_kept, self.ids, self.baseline_ids)
        return list(rows)

    def format_tokens(self) -> list[str]:
        return self.names

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Tensor:
        """Token ids the model reads (Captum's interface): ``(1, n_tokens)`` for the prompt
        when ``perturbed_tensor`` is None, else ``(k, n_tokens)`` for the ``(k, n_itp_features)``
        presence rows (a feature whose value is not 1 is absent, replaced by the baseline)."""
        if perturbed_tensor is None:
            return self.ids.unsqueeze(0)
        rows = _presence_rows(torch.as_tensor(perturbed_tensor) == 1, self.n_features)
        return torch.stack(self.perturbed_ids(rows)).to(torch.as_tensor(perturbed_tensor).device)

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """Attributions per feature, unchanged (one feature per column already)."""
        return itp_attr


class TextTokenInput(_TokenFeatures):
    """Every token the tokenizer produces is a feature (Captum's ``TextTokenInput``).

    As in Captum, the tokens the tokenizer adds (BOS, ``[CLS]``, ``[SEP]``) are features too;
    pass them in ``skip_tokens`` to leave them out (``skip_tokens=[tokenizer.bos_token_id]``).
    The tokenizer is used only through ``encode`` and ``convert_ids_to_tokens`` (and
    ``convert_tokens_to_ids`` for tokens given as strings), so any tokenizer with those works.

    Args:
        text: the prompt (encoded with ``tokenizer.encode(text)``).
        tokenizer: the model's tokenizer.
        baselines: the replacement of an absent token: a token id (default 0, Captum's), a
            token string of the vocabulary (``"<unk>"``), a text of exactly one token, or None
            (the pad token, else unk, else eos). Each absent token becomes one baseline token,
            so positions never shift.
        skip_tokens: tokens (ids or token strings) that are never features; they stay in the
            prompt, unperturbed.
        include_special_tokens: False also skips every special token of the tokenizer
            (``tokenizer.all_special_ids``, except unk, which stands for real text).

    Attributes (Captum's): ``inp_tensor`` ``(1, n_tokens)`` ids, ``itp_tensor``
    ``(1, n_itp_features)`` ids of the features, ``itp_mask`` ``(1, n_tokens)`` bool (None when
    no token is skipped), ``values`` the features' token strings, ``n_itp_features``,
    ``baselines`` (the baseline id) and ``skip_tokens`` (ids, or None).
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        baselines: int | str | None = 0,
        skip_tokens: Sequence[int | str] | None = None,
        *,
        include_special_tokens: bool = True,
    ) -> None:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}.")
        if not text.strip():
            raise InputError("The prompt is empty: there is nothing to attribute.")
        self.text = text
        self.tokenizer = tokenizer
        self.ids = torch.as_tensor(tokenizer.encode(text), dtype=torch.long).reshape(-1)
        skip_ids = [_skip_token_id(tokenizer, s) for s in skip_tokens or ()]
        skip = set(skip_ids)
        if not include_special_tokens:
            # an unknown-token id stands for real text (an emoji, a rare character): keep it
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            special.discard(getattr(tokenizer, "unk_token_id", None))
            skip |= special
        is_feature = torch.tensor([int(i) not in skip for i in self.ids.tolist()], dtype=torch.bool)
        if not bool(is_feature.any()):
            raise InputError(
                "No token of the prompt is a feature (all were skipped); skip fewer tokens."
            )
        self.feature_of_token = torch.full_like(self.ids, -1)
        self.feature_of_token[is_feature] = torch.arange(int(is_feature.sum()))
        self.inp_tensor = self.ids.unsqueeze(0)
        self.itp_tensor = self.ids[is_feature].unsqueeze(0)
        self.itp_mask: Tensor | None = None if bool(is_feature.all()) else is_feature.unsqueeze(0)
        self.skip_tokens: list[int] | None = skip_ids or None
        self.names = list(tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist()))
        self.baselines = _baseline_id(tokenizer, baselines)
        self.baseline_ids = torch.full_like(self.ids, self.baselines)

    def to_tensor(self) -> Tensor:
        """``(1, n_itp_features)`` ones (long, as Captum's): every token present."""
        return torch.ones_like(self.itp_tensor)


class TextSpanInput(_TokenFeatures):
    """Character spans of ``text`` are the features; each covers the tokens that start inside it.

    Args:
        text: the prompt.
        tokenizer: a fast Hugging Face tokenizer (for offsets).
        spans: ``(start, end)`` character ranges, non-overlapping.
        names: a name per span (default: the spans' text).
        baselines: the replacement token (see :class:`TextTokenInput`).
        add_special_tokens: let the tokenizer add its special tokens (BOS, ...); they are never
            features. False for text that already has them (a rendered chat template).
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        spans: Sequence[tuple[int, int]],
        names: Sequence[str] | None = None,
        baselines: int | str | None = None,
        add_special_tokens: bool = True,
    ) -> None:
        self.text = text
        self.tokenizer = tokenizer
        spans = [(int(a), int(b)) for a, b in spans]
        enc = _encode(tokenizer, text, offsets=True, add_special_tokens=add_special_tokens)
        if not spans:
            raise ValueError("No spans were given: the prompt has no features.")
        self.ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        offsets = enc["offset_mapping"]
        added = enc["special_tokens_mask"]
        ordered = sorted(range(len(spans)), key=lambda i: spans[i][0])
        for a, b in itertools.pairwise(ordered):
            if spans[a][1] > spans[b][0]:
                raise ValueError(f"Spans {spans[a]} and {spans[b]} overlap; features must not.")
        self.feature_of_token = torch.full_like(self.ids, -1)
        for t, ((start, end), is_added) in enumerate(zip(offsets, added)):
            # Tokens the tokenizer added (BOS, CLS, ...) cover no text and are never features;
            # an unknown-token id covering a character of a span is part of it.
            if is_added or end <= start:
                continue
            for f, (a, b) in enumerate(spans):
                if a <= start < b:
                    self.feature_of_token[t] = f
                    break
        covered = set(self.feature_of_token[self.feature_of_token >= 0].tolist())
        empty = [i for i in range(len(spans)) if i not in covered]
        if empty:
            raise ValueError(
                f"Span(s) {[tuple(spans[i]) for i in empty]} cover no token of the prompt."
            )
        self.names = list(names) if names is not None else [text[a:b] for a, b in spans]
        if len(self.names) != len(spans):
            raise ValueError(f"Got {len(self.names)} names for {len(spans)} spans.")
        self.baseline_ids = torch.full_like(self.ids, _baseline_id(tokenizer, baselines))


def words(text: str, tokenizer: Any, baselines: int | str | None = None) -> TextSpanInput:
    """Words (runs of non-space characters) of ``text`` as features; a word's sub-word tokens
    are perturbed together. Punctuation attached to a word belongs to it."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    return TextSpanInput(text, tokenizer, spans, baselines=baselines)


_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|(?=\n)|$)|\n+")


def sentences(text: str, tokenizer: Any, baselines: int | str | None = None) -> TextSpanInput:
    """Sentences of ``text`` (ending in ``.``, ``!`` or ``?``, or at a line break) as features."""
    spans = []
    for m in _SENTENCE.finditer(text):
        chunk = m.group()
        if not chunk.strip():
            continue
        lead = len(chunk) - len(chunk.lstrip())
        spans.append((m.start() + lead, m.end() - (len(chunk) - len(chunk.rstrip()))))
    return TextSpanInput(text, tokenizer, spans, baselines=baselines)


def chat_turns(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    baselines: int | str | None = None,
    add_generation_prompt: bool = True,
) -> TextSpanInput:
    """The messages of a chat as features, rendered with the tokenizer's chat template.

    The template's own markup (role headers, separators) is never a feature; each message's
    content is one, named ``"<role>: <start of content>"``.

    Args:
        messages: ``[{"role": "system" | "user" | "assistant", "content": ...}, ...]``.
        tokenizer: a tokenizer with a ``chat_template``.
        baselines: the replacement token.
        add_generation_prompt: end with the assistant header, ready to generate the answer.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "This tokenizer has no chat_template; set tokenizer.chat_template or use words() / "
            "sentences() on plain text."
        )
    chat: list[dict[str, Any]] = [dict(m) for m in messages]
    if not chat:
        raise ValueError("No messages: the chat has no features.")
    for message in messages:
        if not message.get("content"):
            raise ValueError(f"Message {message!r} has no content to attribute.")

    def render(msgs: list[dict[str, Any]]) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    text = render(chat)
    # Locate each message by rendering the chat with unique markers in place of the contents:
    # a content that also occurs in the template's markup (a role name, a separator) is then
    # never mistaken for it.
    markers = [f"\ue000{i}\ue001" for i in range(len(messages))]
    marked = render([{**m, "content": k} for m, k in zip(chat, markers)])
    spans: list[tuple[int, int]] = []
    rebuilt, cursor = [], 0
    for marker, message in zip(markers, messages):
        at = marked.find(marker, cursor)
        if at < 0:
            break
        rebuilt.append(marked[cursor:at])
        start = sum(map(len, rebuilt))
        rebuilt.append(message["content"])
        spans.append((start, start + len(message["content"])))
        cursor = at + len(marker)
    rebuilt.append(marked[cursor:])
    if len(spans) != len(messages) or "".join(rebuilt) != text:
        # The template transforms contents (strips them, ...): find them in order instead.
        spans, cursor = [], 0
        for message in messages:
            content = message["content"]
            at = text.find(content, cursor)
            if at < 0:
                raise ValueError(f"Message {message!r} does not appear in the rendered chat.")
            spans.append((at, at + len(content)))
            cursor = at + len(content)
    names = []
    for message in messages:
        content = message["content"]
        short = content if len(content) <= 24 else content[:21] + "..."
        names.append(f"{message['role']}: {short}")
    # The template writes the model's special tokens (BOS, ...) itself, as
    # ``apply_chat_template(tokenize=True)`` assumes: the tokenizer must not add them again.
    return TextSpanInput(text, tokenizer, spans, names, baselines, add_special_tokens=False)
