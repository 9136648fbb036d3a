"""Integrated gradients for vision-language models, through the model's own image merge.

A LLaVA- or Qwen2-VL-style model embeds the prompt's tokens, encodes the image into *image
features* (one vector per image token), and writes those features over the prompt's image
placeholder tokens before the language model runs. Passing ``inputs_embeds`` to such a model (as
Captum's ``LayerIntegratedGradients`` on the embedding effectively asks users to) breaks that
merge in ``transformers`` 5: ``input_ids`` with ``inputs_embeds`` is refused ("You must specify
exactly one of input_ids or inputs_embeds"), and ``inputs_embeds`` alone finds the image tokens
by comparing embeddings with the image token's, so an interpolated embedding matches none
("Image features and image tokens do not match, tokens: 0").

:class:`VLMGradientAttribution` instead runs the model as it is meant to run (``input_ids`` +
``pixel_values`` + ``image_grid_thw`` / ``mm_token_type_ids`` / ...) and substitutes, with forward
hooks, two activations along the integration path, with one ``alpha`` for both (a joint path, as
``LayerIntegratedGradients`` over a list of layers): the output of the module producing the
image features (LLaVA: ``multi_modal_projector``; Qwen2-VL: ``visual.merger``) and the output of
the input embedding. One forward per chunk of path points serves every target token.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.batching import ChunkSize, check_chunk_size, run_in_chunks
from .._core.errors import InputError, InputTypeError
from .._core.layers import LayerCut
from ..attr.integrated_gradients import step_rule
from ..text.llm_attr import output_token_texts
from ..text.scorer import rows_that_fit
from .vlm_model import (
    find_image_feature_layer,
    forward_params,
    image_grids,
    image_token_id,
    restore_rope_state,
    rope_state,
)
from .vlm_result import VLMGradientResult

__all__ = ["VLMGradientAttribution", "VLMGradientResult", "find_image_feature_layer"]

# processor outputs with one entry per prompt token: extended with the target, repeated per row
_SEQUENCE_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}


def _logp(logits: Tensor, target: Tensor) -> Tensor:
    """``(batch, K)`` log-probabilities of ``target`` from ``(batch, K, vocab)`` logits."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = z.gather(-1, target.view(1, -1, 1).expand(z.shape[0], -1, 1))[..., 0]
    return picked - torch.logsumexp(z, -1)


class VLMGradientAttribution:
    """Integrated gradients of a vision-language model's target log-probabilities, credited to
    the image features entering its language model and to the prompt's token embeddings.

    For target token ``k`` the explained function is ``log p(target[k] | prompt, image,
    target[:k])``. The path runs jointly from the baseline (image features: zeros, or those of a
    baseline image; text: the embedding of a pad/unk token, or zeros) to the input. Image
    placeholder positions of the text embedding are overwritten by the merge, so their
    attribution is exactly 0; special tokens (BOS, ``<|vision_start|>``, ...) keep their own
    embedding and get 0; the target tokens fed back are never perturbed.

    Args:
        model: a ``transformers`` vision-language model (LLaVA, Qwen2-VL, ...), in the mode the
            user chose (eval recommended); it is never changed.
        processor_or_tokenizer: its processor (the tokenizer is its ``.tokenizer``) or tokenizer.
        image_layer: the module whose output is the image features (default:
            :func:`find_image_feature_layer`).
    """

    def __init__(
        self, model: nn.Module, processor_or_tokenizer: Any, image_layer: nn.Module | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        get_embedding = getattr(model, "get_input_embeddings", None)
        if not callable(get_embedding):
            raise InputTypeError(f"{type(model).__name__} has no get_input_embeddings().")
        self.model = model
        self.tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        self.embedding: nn.Module = get_embedding()
        self.image_layer = (
            image_layer if image_layer is not None else find_image_feature_layer(model)
        )
        if not any(m is self.image_layer for m in model.modules()):
            raise InputError("image_layer is not a submodule of the model.")
        self.image_token_id = image_token_id(model)

    # ---- input checks ------------------------------------------------------------------------

    def _check_inputs(self, model_inputs: Any) -> dict[str, Any]:
        if not hasattr(model_inputs, "keys") or "input_ids" not in model_inputs:
            raise InputTypeError(
                "model_inputs must be the processor's output (a dict with input_ids and "
                f"pixel_values), got {type(model_inputs).__name__}."
            )
        inputs = dict(model_inputs)  # never changed: rows are built from copies
        ids = inputs["input_ids"]
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise InputError(
                f"input_ids must be one prompt, a (1, seq) tensor, got {shape}; attribute one "
                "prompt at a time."
            )
        if inputs.get("pixel_values") is None:
            raise InputError(
                "model_inputs has no pixel_values: the processor returned no image. Call it "
                "with images=..., and with the image placeholder in the text."
            )
        n_img = int((ids == self.image_token_id).sum())
        if n_img == 0:
            raise InputError(
                "The prompt has no image token (id "
                f"{self.image_token_id}); put the processor's image placeholder in the text."
            )
        return inputs

    def _target_ids(self, inputs: dict[str, Any], target: Any, gen_args: Any) -> Tensor:
        if target is not None and gen_args is not None:
            raise InputError("gen_args is only used to generate a target; drop it or target.")
        if isinstance(target, str):
            ids = torch.as_tensor(self.tokenizer(target, add_special_tokens=False)["input_ids"])
        elif isinstance(target, Tensor | Sequence):
            ids = torch.as_tensor(target)
            if ids.is_floating_point() and ids.numel():
                raise InputTypeError("target ids must be integers.")
        elif target is None:
            args = {"max_new_tokens": 5, "do_sample": False, **(gen_args or {})}
            with torch.no_grad():
                out = self.model.generate(**inputs, **args)  # type: ignore[operator]
            ids = torch.as_tensor(out)[0, inputs["input_ids"].shape[1] :]
        else:
            raise InputTypeError(f"target must be a str, token ids or None, got {type(target)}.")
        ids = ids.reshape(-1).long().cpu()
        if ids.numel() == 0:
            raise InputError("The target is empty; give at least one token to explain.")
        return ids

    def _text_baseline(self, text_baseline: str | int) -> int | None:
        """The token id whose embedding is the text baseline (None: zeros)."""
        if text_baseline == "zeros":
            return None
        if isinstance(text_baseline, int) and not isinstance(text_baseline, bool):
            return text_baseline
        if text_baseline in ("pad", "unk"):
            value = getattr(self.tokenizer, f"{text_baseline}_token_id", None)
            if value is None:
                raise InputError(
                    f"The tokenizer has no {text_baseline} token; use text_baseline='zeros' or "
                    "a token id."
                )
            return int(value)
        raise InputError(
            f"text_baseline must be 'pad', 'unk', 'zeros' or a token id, got {text_baseline!r}."
        )

    # ---- the model run with substituted activations ------------------------------------------

    def _rows(self, inputs: dict[str, Any], target: Tensor, m: int) -> dict[str, Any]:
        """``m`` copies of the prompt + ``target[:-1]`` as one batch, in the model's own batch
        layout: per-token tensors extended and stacked, per-image tensors (pixel_values,
        image_grid_thw, ...) repeated along dim 0 (how LLaVA and Qwen2-VL batch images)."""
        device = next(self.model.parameters()).device
        L = inputs["input_ids"].shape[1]
        fed = target[:-1].view(1, -1)
        rows: dict[str, Any] = {}
        for key, value in inputs.items():
            if not isinstance(value, Tensor):
                rows[key] = value
                continue
            value = value.to(device)
            if key in _SEQUENCE_KEYS and value.dim() == 2 and value.shape[1] == L:
                extra = (
                    fed
                    if key == "input_ids"
                    else torch.ones_like(fed) * int(key == "attention_mask")
                )
                value = torch.cat([value, extra.to(value)], 1).expand(m, -1)
            else:
                value = torch.cat([value] * m) if m > 1 else value
            rows[key] = value
        return rows

    def _run(self, rows: dict[str, Any], values: list[Tensor] | None, K: int) -> Tensor:
        """Last ``K`` positions' logits, with the two layers' outputs replaced by ``values``
        (``[image (rows*...), embedding (rows, seq, D)]``) or unchanged (None)."""
        rows = dict(rows)
        if "logits_to_keep" in forward_params(self.model):
            rows["logits_to_keep"] = K
        if values is None:
            out = self.model(**rows)
        else:
            cut = LayerCut(self.model, [self.image_layer, self.embedding])
            with cut.replaced([(values[0],), (values[1],)]):
                out = self.model(**rows)
        return out.logits[:, -K:]

    def _endpoints(
        self,
        inputs: dict[str, Any],
        target: Tensor,
        base_ids: int | None,
        image_baseline: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(image features, baseline image features, embedding, baseline embedding)`` of
        one row (image features in the layer's own layout, for one prompt)."""
        rows = self._rows(inputs, target, 1)
        cut = LayerCut(lambda: self.model(**rows), [self.image_layer, self.embedding])
        (img,), (emb,) = cut.activations(())[0]
        if img.shape[-1] != emb.shape[-1] or img.numel() // img.shape[-1] != int(
            (rows["input_ids"] == self.image_token_id).sum()
        ):
            raise InputError(
                f"The image layer's output {tuple(img.shape)} is not one vector of size "
                f"{emb.shape[-1]} per image token of the prompt; pass image_layer=, the module "
                "whose output the model writes over the image tokens."
            )
        if image_baseline is None:
            img_b = torch.zeros_like(img)
        else:
            base_rows = self._rows({**inputs, "pixel_values": image_baseline}, target, 1)
            cut = LayerCut(lambda: self.model(**base_rows), [self.image_layer])
            ((img_b,),), _ = cut.activations(())
        emb_b = emb.clone()
        text = self._text_positions(rows["input_ids"][0], inputs["input_ids"].shape[1])
        if base_ids is None:
            emb_b[0, text] = 0
        else:
            ids = torch.full((1, 1), base_ids, device=emb.device)
            emb_b[0, text] = self.embedding(ids)[0, 0].to(emb_b)
        return img.detach(), img_b.detach(), emb.detach(), emb_b.detach()

    @staticmethod
    def _image_baseline(image_baseline: Any, inputs: dict[str, Any]) -> Tensor | None:
        """Baseline pixel values (None: zero image features)."""
        if isinstance(image_baseline, str) and image_baseline == "zeros":
            return None
        pix = (
            image_baseline.get("pixel_values") if hasattr(image_baseline, "get") else image_baseline
        )
        if not isinstance(pix, Tensor):
            raise InputError(
                "image_baseline must be 'zeros', baseline pixel_values (a tensor shaped like "
                "the input's) or the processor's output for a baseline image."
            )
        if tuple(pix.shape) != tuple(inputs["pixel_values"].shape):
            raise InputError(
                f"The baseline pixel_values have shape {tuple(pix.shape)}, the input's "
                f"{tuple(inputs['pixel_values'].shape)}; process the baseline image with the "
                "same processor settings (same size, same number of images)."
            )
        grid = image_baseline.get("image_grid_thw") if hasattr(image_baseline, "get") else None
        own = inputs.get("image_grid_thw")
        if grid is not None and own is not None and not torch.equal(grid.cpu(), own.cpu()):
            raise InputError(
                f"The baseline image's image_grid_thw {grid.tolist()} differs from the input's "
                f"{own.tolist()}; resize the baseline image to the input image's size."
            )
        return pix

    def _text_positions(self, ids: Tensor, L: int) -> Tensor:
        """``(seq,)`` bool: the prompt's text tokens that are features (not special tokens, not
        image placeholders, not the target tokens fed back)."""
        special = set(getattr(self.tokenizer, "all_special_ids", []) or []) | {self.image_token_id}
        keep = torch.tensor([int(i) not in special for i in ids.tolist()], device=ids.device)
        keep[L:] = False
        return keep

    # ---- attribution ------------------------------------------------------------------------

    def attribute(
        self,
        model_inputs: Any,
        target: str | Tensor | Sequence[int] | None = None,
        *,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: ChunkSize = "auto",
        image_baseline: Any = "zeros",
        text_baseline: str | int = "pad",
        return_convergence_delta: bool = False,
        gen_args: dict[str, Any] | None = None,
    ) -> VLMGradientResult:
        """Attribute each target token to the image features and the prompt's tokens.

        Args:
            model_inputs: the processor's output for ONE prompt with its image(s)
                (``input_ids`` ``(1, L)``, ``pixel_values``, and whatever else the model takes);
                never changed.
            target: the continuation to explain: text (tokenized without special tokens) or
                token ids; None generates it greedily (``gen_args``, default 5 new tokens).
            n_steps: integration points; ``method``: their rule (``gausslegendre``,
                ``riemann_trapezoid``, ``riemann_left``/``right``/``middle``).
            internal_batch_size: path points per forward (an int), or ``"auto"``/None (as many
                as fit in memory, halving on out-of-memory). Results do not depend on it.
            image_baseline: ``"zeros"`` (default), or the baseline image as pixel values shaped
                like the input's (e.g. ``processor(images=blurred, ...)["pixel_values"]``) or
                as the processor's output: its image features are the path's start.
            text_baseline: ``"pad"`` (default), ``"unk"``, a token id (its embedding), or
                ``"zeros"``. (Models built with ``padding_idx`` have a zero pad embedding.)
                A zero baseline vector enters the language model's first RMSNorm/LayerNorm
                at almost zero norm, where the normalized value turns sharply (over alphas
                of about ``sqrt(eps)``): few integration points can then miss completeness
                by ~1e-2 (``delta`` shows it). Use more points (200 or more) or a baseline
                image.
            return_convergence_delta: compute ``result.delta`` (one more forward).
            gen_args: ``model.generate`` arguments when ``target`` is None.

        Returns:
            A :class:`VLMGradientResult`.
        """
        inputs = self._check_inputs(model_inputs)
        check_chunk_size(internal_batch_size, "internal_batch_size")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise InputError(f"n_steps must be a positive int, got {n_steps!r}.")
        alphas, weights = step_rule(method, n_steps)
        base_id = self._text_baseline(text_baseline)
        base_pixels = self._image_baseline(image_baseline, inputs)
        states = rope_state(self.model)  # Qwen2-VL keeps rope_deltas between calls
        try:
            target_ids = self._target_ids(inputs, target, gen_args)
            L, K = inputs["input_ids"].shape[1], target_ids.numel()
            with torch.no_grad():
                img, img_b, emb, emb_b = self._endpoints(inputs, target_ids, base_id,
                                                         base_pixels)  # fmt: skip
            dev_target = target_ids.to(emb.device)
            img_part, text_part = self._integrate(
                inputs, dev_target, (img, img_b, emb, emb_b), alphas, weights, internal_batch_size
            )
            with torch.no_grad():
                logp_x = _logp(self._run(self._rows(inputs, target_ids, 1), None, K), dev_target)
                delta = None
                if return_convergence_delta:
                    rows = self._rows(inputs, target_ids, 1)
                    at_b = _logp(self._run(rows, [img_b, emb_b], K), dev_target)
                    total = img_part.sum(1) + text_part.sum(1)
                    delta = (total - (logp_x[0] - at_b[0]).to(total)).cpu()
        finally:
            restore_rope_state(states)
        grids, frames = image_grids(self.model, inputs, img.numel() // img.shape[-1])
        tokens = self.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
        return VLMGradientResult(
            text_token_attr=text_part[:, :L].cpu(),
            image_token_attr=img_part.cpu(),
            text_tokens=[str(t) for t in tokens],
            output_tokens=output_token_texts(self.tokenizer, target_ids),
            target_ids=target_ids,
            output_probs=logp_x[0].exp().cpu(),
            image_grids=grids,
            image_frames=frames,
            delta=delta,
            text_features=self._text_positions(inputs["input_ids"][0], L).nonzero()[:, 0].tolist(),
        )

    def _integrate(
        self,
        inputs: dict[str, Any],
        target: Tensor,
        ends: tuple[Tensor, Tensor, Tensor, Tensor],
        alphas: Tensor,
        weights: Tensor,
        internal_batch_size: ChunkSize,
    ) -> tuple[Tensor, Tensor]:
        """``(K, n_image_tokens)`` and ``(K, seq)``: per target token, the attribution of each
        image feature vector and each position's embedding (summed over the hidden size)."""
        img, img_b, emb, emb_b = ends
        K, width = target.numel(), emb.shape[1]
        d_img, d_emb = img - img_b, emb - emb_b
        acc = torch.promote_types(emb.dtype, torch.float32)

        def evaluate(start: int, end: int) -> tuple[Tensor, Tensor]:
            m = end - start
            a = alphas[start:end].to(emb.device, emb.dtype)
            w = weights[start:end].to(emb.device, acc)
            rows = self._rows(inputs, target.cpu(), m)
            with torch.enable_grad():
                p_img = (img_b + a.view(-1, *[1] * img.dim()) * d_img).detach().requires_grad_()
                p_emb = (emb_b + a.view(-1, 1, 1, 1) * d_emb).detach().requires_grad_()
                flat_img = p_img.reshape(m * img.shape[0], *img.shape[1:])
                logp = _logp(self._run(rows, [flat_img, p_emb.reshape(m, *emb.shape[1:])], K),
                             target)  # fmt: skip
                out_img = torch.zeros(K, img.numel() // img.shape[-1], dtype=acc, device=emb.device)
                out_emb = torch.zeros(K, width, dtype=acc, device=emb.device)
                for k in range(K):  # one shared forward, one backward per target token
                    g_img, g_emb = torch.autograd.grad(
                        logp[:, k].sum(), [p_img, p_emb], retain_graph=k < K - 1
                    )
                    gi = (g_img * d_img).to(acc).sum(-1).reshape(m, -1)
                    out_img[k] = (gi * w.view(-1, 1)).sum(0)
                    ge = (g_emb * d_emb).to(acc).sum(-1).reshape(m, -1)
                    out_emb[k] = (ge * w.view(-1, 1)).sum(0)
            return out_img, out_emb

        n = len(alphas)
        if internal_batch_size is None or internal_batch_size == "auto":
            size = rows_that_fit(self.model, width, width, K, grad=True, cpu_rows=None)
            parts: list[tuple[Tensor, Tensor]] = []
            for first in range(0, n, size):
                last = min(first + size, n)
                parts += run_in_chunks(last - first, "auto", partial(_shifted, evaluate, first))
        else:
            parts = run_in_chunks(n, internal_batch_size, evaluate)
        return torch.stack([p[0] for p in parts]).sum(0), torch.stack([p[1] for p in parts]).sum(0)


def _shifted(evaluate: Any, offset: int, start: int, end: int) -> Any:
    return evaluate(offset + start, offset + end)
