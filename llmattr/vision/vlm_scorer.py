"""Scoring a target under many perturbed vision-language inputs, in batched forwards.

A perturbed input of a VLM is a whole processor output (``input_ids``, ``attention_mask``,
``pixel_values``, and model-specific tensors such as Qwen2-VL's ``image_grid_thw`` and
``mm_token_type_ids``). :class:`VLMScorer` scores the target tokens teacher-forced, ``k`` inputs
per forward: each row is ``prompt + target[:-1]``, rows are padded on the RIGHT (exact for a
causal LM: a real token never attends to a later pad), per-image tensors are concatenated along
dim 0, and ``pixel_values`` are always passed, so no forward can drop the image (Captum 0.9's
cached mode does, under transformers 5, and returns zeros). A forward that runs out of memory is
retried with half as many rows (:func:`~llmattr._core.batching.run_in_chunks`).

:func:`attribute_vlm` is what ``LLMAttribution.attribute`` runs for an image input
(:class:`~llmattr.vision.ImageMaskInput`, :class:`~llmattr.vision.MultimodalInput`); benchmarks
may call it directly.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._core.batching import run_in_chunks
from .._core.errors import InputError
from ..text.scorer import model_device, rows_that_fit

__all__ = ["VLMScorer", "attribute_vlm", "check_model_inputs"]

# sequence-aligned tensors: extended with zeros over the target and the right padding
_SEQUENCE_KEYS = ("mm_token_type_ids", "token_type_ids")


def check_model_inputs(inputs: Any) -> dict[str, Any]:
    """The processor output as a dict, or an :class:`InputError` when it cannot be scored:
    not a mapping, no ``input_ids`` of one prompt, or no ``pixel_values``."""
    if not isinstance(inputs, Mapping):
        raise InputError(
            f"processor_fn must return the processor's output (a mapping with input_ids and "
            f"pixel_values), got {type(inputs).__name__}."
        )
    ids = inputs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
        raise InputError(
            "processor_fn must return input_ids of one prompt, shape (1, L) "
            f"(return_tensors='pt'); got {None if ids is None else tuple(ids.shape)}."
        )
    if inputs.get("pixel_values") is None:
        raise InputError(
            "processor_fn returned no pixel_values: the image would not reach the model. Pass "
            "the image to the processor (processor(text=prompt, images=image, "
            "return_tensors='pt')) and put the image placeholder (e.g. <image>) in the prompt."
        )
    return dict(inputs)


@contextlib.contextmanager
def model_state(model: nn.Module) -> Iterator[None]:
    """Restore the state some VLMs keep between calls (Qwen2-VL's ``rope_deltas``)."""
    holders: list[Any] = [
        m for m in (model, getattr(model, "model", None)) if hasattr(m, "rope_deltas")
    ]
    saved = [m.rope_deltas for m in holders]
    try:
        for m in holders:
            m.rope_deltas = None  # a stale value from an earlier call must not shift positions
        yield
    finally:
        for m, value in zip(holders, saved):
            m.rope_deltas = value


class VLMScorer:
    """Log-probabilities of ``target`` after each of many processor outputs.

    Args:
        model: a ``transformers`` vision-language model (``LlavaForConditionalGeneration``,
            ``Qwen2VLForConditionalGeneration``, ...) returning ``.logits``.
        target: ``(K,)`` token ids.
        pad_token_id: id written in the right padding (masked out).
        rows_per_forward: most inputs per forward; None chooses from memory.
    """

    def __init__(
        self,
        model: nn.Module,
        target: Tensor,
        pad_token_id: int = 0,
        rows_per_forward: int | None = None,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        self.target = target.reshape(-1).to(self.device)
        if self.target.numel() == 0:
            raise InputError("The target is empty: give at least one target token.")
        self.pad = int(pad_token_id)
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.rows_per_forward = rows_per_forward

    def score(self, inputs: Sequence[Mapping[str, Any]]) -> Tensor:
        """``(k, K)`` log-probabilities of the target tokens after each of ``k`` inputs (each a
        processor output for one prompt), on the CPU, in the logits' dtype (float32 at least)."""
        rows = [check_model_inputs(x) for x in inputs]
        if not rows:
            return torch.zeros(0, self.target.numel())
        rpf = self.rows_per_forward
        if rpf is None:
            width = max(int(r["input_ids"].shape[1]) for r in rows) + self.target.numel() - 1
            rpf = rows_that_fit(self.model, width, width, self.target.numel())
        out: list[Tensor] = []
        with model_state(self.model), torch.no_grad():
            for start in range(0, len(rows), rpf):
                group = rows[start : start + rpf]
                parts = run_in_chunks(len(group), "auto", partial(self._score_slice, group))
                out.extend(p.cpu() for p in parts)
        return torch.cat(out)

    def _score_slice(self, rows: list[dict[str, Any]], start: int, end: int) -> Tensor:
        return self._score_rows(rows[start:end])

    def _score_rows(self, rows: list[dict[str, Any]]) -> Tensor:
        batch, lengths = collate(rows, self.target, self.pad, self.device)
        K, width = self.target.numel(), batch["input_ids"].shape[1]
        keep = width - min(lengths) + 1  # logits from the earliest row's last prompt position
        if self.keep_logits:
            batch["logits_to_keep"] = keep
        logits = self.model(**batch, use_cache=False).logits
        logits = logits[:, -keep:] if logits.shape[1] != keep else logits
        offset = width - keep
        pos = torch.tensor(lengths, device=logits.device).unsqueeze(1) - 1 - offset
        pos = pos + torch.arange(K, device=logits.device)
        picked = logits.gather(1, pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
        index = self.target.to(picked.device).expand(len(rows), -1).unsqueeze(-1)
        return picked.gather(-1, index).squeeze(-1) - torch.logsumexp(picked, dim=-1)


def collate(
    rows: list[dict[str, Any]], target: Tensor, pad: int, device: torch.device
) -> tuple[dict[str, Any], list[int]]:
    """One batch of ``prompt + target[:-1]`` rows, right-padded, and each prompt's length.

    ``input_ids`` get the target appended and pads after; ``attention_mask`` ones over the target
    and zeros over the pads; sequence-aligned tensors (``mm_token_type_ids``) zeros; every other
    tensor (``pixel_values``, ``image_grid_thw``, ``image_sizes``) is concatenated along dim 0.
    """
    tail = target[:-1].to(device)
    lengths = [int(r["input_ids"].shape[1]) for r in rows]
    width = max(lengths) + tail.numel()
    k = len(rows)
    ids = torch.full((k, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((k, width), dtype=torch.long, device=device)
    for i, (r, n) in enumerate(zip(rows, lengths)):
        ids[i, :n] = r["input_ids"][0].to(device)
        ids[i, n : n + tail.numel()] = tail
        own = r.get("attention_mask")
        mask[i, :n] = 1 if own is None else own[0].to(device)
        mask[i, n : n + tail.numel()] = 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    for key, first in rows[0].items():
        if key in batch:
            continue
        values = [r.get(key) for r in rows]
        if key in _SEQUENCE_KEYS and isinstance(first, Tensor):
            seq = torch.zeros((k, width), dtype=first.dtype, device=device)
            for i, (v, n) in enumerate(zip(values, lengths)):
                seq[i, :n] = cast(Tensor, v)[0].to(device)
            batch[key] = seq
        elif isinstance(first, Tensor):
            batch[key] = torch.cat([cast(Tensor, v).to(device) for v in values])
        else:
            batch[key] = first
    return batch, lengths


def _tokenizer_of(tokenizer: Any) -> Any:
    """A processor passed as the tokenizer stands for its tokenizer."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and not hasattr(tokenizer, "convert_ids_to_tokens"):
        return inner
    return tokenizer


def _check_context(model: nn.Module, prompt_len: int, target_len: int, what: str) -> None:
    """A prompt (image tokens included) and target longer than the language model's context
    is an error before any forward (a VLM keeps the limit in its ``text_config``)."""
    config = getattr(model, "config", None)
    limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    needed = prompt_len + target_len - 1
    if isinstance(limit, int) and needed > limit:
        raise InputError(
            f"The prompt ({prompt_len} tokens, image tokens included) and {what} ({target_len} "
            f"tokens) need {needed} positions, more than the model's context of {limit}."
        )


def attribute_vlm(
    attr: Any,
    inp: Any,
    target: str | Tensor | Sequence[int] | None,
    skip_tokens: Sequence[int | str] | None,
    num_trials: int,
    gen_args: dict[str, Any] | None,
    foil: str | Tensor | Sequence[int] | None,
    rows_per_forward: int | None,
    prompts_per_call: int,
    kwargs: dict[str, Any],
) -> Any:
    """``LLMAttribution.attribute`` for an image input (``inp`` has ``perturbed_model_inputs``).

    ``attr`` is the :class:`~llmattr.LLMAttribution`; the other arguments are its checked
    ``attribute`` arguments. Every feature's attribution is the change of the target's
    (log-)probability, computed exactly: teacher-forced, with the perturbed image always given.
    """
    from ..text.inputs import _skip_token_id
    from ..text.llm_attr import _pad_id, _target_ids, run_attribution

    model, tokenizer = attr.model, _tokenizer_of(attr.tokenizer)
    original = check_model_inputs(inp.original_model_inputs)
    prompt = original["input_ids"][0]
    pad = _pad_id(tokenizer)
    for s in skip_tokens or ():  # checked before generation runs
        _skip_token_id(tokenizer, s)
    if target is None:
        args = {"max_new_tokens": 25, "do_sample": False, **(gen_args or {})}
        args.setdefault("pad_token_id", pad)
        if isinstance(args.get("max_new_tokens"), int):
            _check_context(model, prompt.numel(), args["max_new_tokens"], "max_new_tokens")
        device = model_device(model)
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in original.items()}
        with model_state(model), torch.no_grad():
            out = model.generate(**moved, **args)  # type: ignore[operator]
        target = out[0, prompt.numel() :].cpu()
    target_ids = _target_ids(model, tokenizer, prompt, target, None, skip_tokens)
    _check_context(model, prompt.numel(), target_ids.numel(), "target")
    scorer = VLMScorer(model, target_ids, pad, rows_per_forward)
    base = scorer.score([original])[0]
    foil_scorer = None
    if foil is not None:
        foil_ids = _target_ids(model, tokenizer, prompt, foil, None, skip_tokens)
        foil_scorer = VLMScorer(model, foil_ids, pad, rows_per_forward)
        foil_base = foil_scorer.score([original])[0]

    def known_or_scored(presence: Tensor, sc: VLMScorer, known: Tensor) -> Tensor:
        keep = torch.as_tensor(presence).reshape(-1, inp.n_itp_features) != 0
        out = known.expand(keep.shape[0], -1).clone()
        todo = [i for i in range(keep.shape[0]) if not bool(keep[i].all())]
        if todo:  # the unperturbed input's scores are known already
            out[todo] = sc.score(inp.perturbed_model_inputs(keep[todo].to(torch.float32)))
        return out

    def scores(presence: Tensor) -> tuple[Tensor, Tensor | None]:
        logp = known_or_scored(presence, scorer, base)
        if foil_scorer is None:
            return logp, None
        return logp, known_or_scored(presence, foil_scorer, foil_base)

    foil_ids = None if foil_scorer is None else foil_scorer.target
    return run_attribution(
        attr, inp, scores, target_ids, base, foil_ids, prompts_per_call, num_trials, kwargs,
        info={"modalities": list(inp.modalities)},
    )  # fmt: skip
