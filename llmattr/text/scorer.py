"""The scorer: log-probabilities of a target continuation under many perturbed prompts, fast.

For a decoder-only model every target token of every perturbed prompt is scored in one
teacher-forced forward: the input is ``prompt + target[:-1]`` and the logits at the last
``len(target)`` positions give each target token's log-probability. Three things make it fast
while keeping it exact (equal to replaying generation token by token):

* **Shared prefix, computed once.** Perturbed prompts agree with the original prompt up to the
  first perturbed token. The key/value cache of the original ``prompt + target`` is computed once;
  each batch of perturbations reuses its first ``j`` positions (``j`` = the batch's shared prefix)
  and runs only the rest.
* **Only the needed logits.** ``logits_to_keep`` asks the model for the target positions only.
* **Padding in the middle.** Rows whose perturbed parts differ in length are padded between the
  shared prefix and their own tokens, with the attention mask hiding the pads and explicit
  ``position_ids`` keeping every real token at its true position, so the target positions line up
  and nothing is approximated.

Encoder–decoder models (T5, BART) run the perturbed prompts through the encoder and the target
through the decoder, teacher-forced, in one call.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.batching import run_in_chunks

__all__ = ["Scorer", "model_device"]


def _execution_device(module: nn.Module | None) -> torch.device | None:
    """The device an accelerate hook runs ``module`` on (its weights may be on ``meta``)."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", ())]:  # a SequentialHook holds several
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def model_device(model: nn.Module) -> torch.device:
    """Where token ids go: the device of the input embedding (works with accelerate dispatch,
    including offloaded models whose weights wait on the ``meta`` device)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in (embed, model):
        device = _execution_device(module)
        if device is not None:
            return device
    weight = getattr(embed, "weight", None) if embed is not None else None
    if weight is not None and weight.device.type != "meta":
        return weight.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def context_length(model: nn.Module) -> int | None:
    """The model's maximum number of positions, when its config says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Scorer:
    """Scores ``target`` after each of many prompts that differ from one original prompt.

    Args:
        model: a ``transformers`` causal LM (or encoder–decoder) returning ``.logits``.
        prompt: ``(L,)`` token ids of the original prompt.
        target: ``(K,)`` token ids of the continuation to score.
        pad_token_id: id used for padding (any valid id: pads are masked).
        rows_per_forward: rows scored in one forward (default: 8 on the CPU, where small
            forwards that share a long prefix are fastest, 64 on accelerators). Rows are
            grouped by shared prefix first, and a forward that runs out of memory is retried
            with half as many rows.
        reuse_prefix: reuse the original prompt's key/value cache (turn off to compare).
    """

    def __init__(
        self,
        model: nn.Module,
        prompt: Tensor,
        target: Tensor,
        pad_token_id: int = 0,
        rows_per_forward: int | None = None,
        reuse_prefix: bool = True,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        self.prompt = prompt.reshape(-1).to(self.device)
        self.target = target.reshape(-1).to(self.device)
        if self.prompt.numel() == 0:
            raise ValueError("The prompt is empty: there is nothing to attribute.")
        if self.target.numel() == 0:
            raise ValueError("The target is empty: give at least one target token.")
        self.pad = int(pad_token_id)
        if rows_per_forward is None:
            rows_per_forward = 8 if model_device(model).type == "cpu" else 64
        self.rows_per_forward = rows_per_forward
        self.encoder_decoder = bool(
            getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        )
        limit = context_length(model)
        L, K = self.prompt.numel(), self.target.numel()
        # the model reads prompt + target[:-1] (the last target token is only predicted); an
        # encoder-decoder reads the prompt in the encoder and start + target[:-1] in the decoder
        needed = max(L, K) if self.encoder_decoder else L + K - 1
        if limit is not None and needed > limit:
            raise ValueError(
                f"The prompt ({L} tokens) and target ({K} tokens) need {needed} positions, more "
                f"than the model's context of {limit}."
            )
        params = inspect.signature(model.forward).parameters
        self.keep_logits = "logits_to_keep" in params
        self.cache: Any = None
        self.reuse_prefix = reuse_prefix and not self.encoder_decoder
        self.original = self._original_scores()

    @torch.no_grad()
    def _original_scores(self) -> Tensor:
        """Log-probs under the original prompt; also keeps its key/value cache."""
        if self.encoder_decoder:
            return self._score_encoder_decoder([self.prompt])[0]
        full = torch.cat([self.prompt, self.target[:-1]]).unsqueeze(0)
        out = self.model(input_ids=full, use_cache=self.reuse_prefix)
        cache = getattr(out, "past_key_values", None)
        if self.reuse_prefix and cache is not None and getattr(cache, "is_croppable", True):
            self.cache = cache
        logits = out.logits[:, -self.target.numel() :]
        return self._log_probs(logits)[0]

    def _log_probs(self, logits: Tensor) -> Tensor:
        # log p(t) = logit_t - logsumexp(logits): no full log-softmax tensor is materialized
        logits = logits.float()
        index = self.target.to(logits.device).expand(logits.shape[0], -1).unsqueeze(-1)
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def score(self, prompts: Sequence[Tensor]) -> Tensor:
        """Log-probabilities of every target token after each prompt.

        Args:
            prompts: ``k`` token-id sequences (lengths may differ).

        Returns:
            ``(k, K)`` float32 log-probabilities, on the CPU.
        """
        rows = [p.reshape(-1).to(self.device) for p in prompts]
        for r in rows:
            if r.numel() == 0:
                raise ValueError("A perturbed prompt is empty; keep at least one token.")
        # rows sharing a long prefix go together, so each forward recomputes little
        order = sorted(range(len(rows)), key=lambda i: -self._prefix(rows[i]))
        ranked = [rows[i] for i in order]
        parts = []
        for start in range(0, len(rows), self.rows_per_forward):
            group = ranked[start : start + self.rows_per_forward]
            parts += run_in_chunks(
                len(group), "auto", lambda s, e, g=group: self._score_rows(g[s:e])
            )
        scores = torch.cat(parts).cpu()
        out = torch.empty_like(scores)
        out[torch.tensor(order)] = scores
        return out

    @torch.no_grad()
    def _score_rows(self, rows: list[Tensor]) -> Tensor:
        if self.encoder_decoder:
            return self._score_encoder_decoder(rows)
        return self._score_causal(rows)

    def _shared_prefix(self, rows: list[Tensor]) -> int:
        """Longest prefix every row shares with the original prompt, leaving each row at least
        its last token (whose logits predict the first target token)."""
        if self.cache is None:
            return 0
        return min(self._prefix(r) for r in rows)

    def _prefix(self, row: Tensor) -> int:
        """How much of ``row`` can come from the original prompt's cache."""
        n = min(row.numel(), self.prompt.numel())
        differs = (row[:n] != self.prompt[:n]).nonzero()
        lcp = int(differs[0]) if differs.numel() else n
        return min(lcp, row.numel() - 1)

    def _score_causal(self, rows: list[Tensor]) -> Tensor:
        k, K = len(rows), self.target.numel()
        j = self._shared_prefix(rows)
        tails = [torch.cat([r[j:], self.target[:-1]]) for r in rows]
        width = max(t.numel() for t in tails)
        ids = torch.full((k, width), self.pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((k, j + width), dtype=torch.long, device=self.device)
        positions = torch.zeros((k, width), dtype=torch.long, device=self.device)
        mask[:, :j] = 1
        for i, t in enumerate(tails):  # one row each: lengths differ
            n = t.numel()
            ids[i, width - n :] = t
            mask[i, j + width - n :] = 1
            positions[i, width - n :] = torch.arange(j, j + n, device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
        }
        if j > 0:
            cache = copy.deepcopy(self.cache)
            # a negative crop removes that many positions (the form every version accepts)
            cache.crop(j - cache.get_seq_length())
            cache.batch_repeat_interleave(k)
            kwargs["past_key_values"] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        if self.keep_logits:
            kwargs["logits_to_keep"] = K
        logits = self.model(**kwargs).logits[:, -K:]
        return self._log_probs(logits)

    def _score_encoder_decoder(self, rows: list[Tensor]) -> Tensor:
        k, K = len(rows), self.target.numel()
        width = max(r.numel() for r in rows)
        ids = torch.full((k, width), self.pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((k, width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            ids[i, : r.numel()] = r
            mask[i, : r.numel()] = 1
        start = getattr(self.model.config, "decoder_start_token_id", None)
        if start is None:
            start = self.pad
        decoder = torch.cat([torch.tensor([start], device=self.device), self.target[:-1]])
        logits = self.model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=decoder.expand(k, K)
        ).logits[:, -K:]
        return self._log_probs(logits)
