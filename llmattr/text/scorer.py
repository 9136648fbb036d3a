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

How many rows go into one forward is chosen from memory (:func:`rows_that_fit`): on CUDA from the
free memory and an estimate of one row's activations, key/value cache and logits; on the CPU at
most 8 rows (small forwards sharing a long prefix are fastest there) within a fixed budget. A
forward that still runs out of memory is retried with half as many rows. Long prompts therefore
run in small chunks instead of failing, and no result depends on the chunking.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.batching import run_in_chunks

__all__ = ["Scorer", "check_context", "context_length", "model_device", "rows_that_fit"]

CPU_ROWS = 8  # rows per scoring forward on the CPU: more rows share less prefix, and gain little
CPU_BUDGET = 2 << 30  # bytes one CPU forward may take (no out-of-memory error to back off from)
GPU_ROWS = 256  # upper bound on rows per forward on accelerators
GPU_FRACTION = 0.5  # of the free memory: leaves room for fragmentation and the estimate's error


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
    getter = getattr(model, "get_input_embeddings", None)
    embed = getter() if callable(getter) else None
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


def check_context(model: nn.Module, prompt_len: int, target_len: int, what: str = "target") -> None:
    """Raise a ValueError when a prompt and target of these lengths do not fit the context.

    A decoder-only model reads ``prompt + target[:-1]`` (the last target token is only
    predicted); an encoder-decoder reads the prompt in the encoder and ``start + target[:-1]``
    in the decoder."""
    limit = context_length(model)
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    needed = max(prompt_len, target_len) if encoder_decoder else prompt_len + target_len - 1
    if limit is not None and needed > limit:
        raise ValueError(
            f"The prompt ({prompt_len} tokens) and {what} ({target_len} tokens) need {needed} "
            f"positions, more than the model's context of {limit}."
        )


def _config_int(config: Any, names: Sequence[str], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def row_bytes(
    model: nn.Module, new_tokens: int, context: int, n_logits: int, grad: bool = False
) -> int:
    """A generous estimate of the memory one row of a forward takes, in bytes.

    Counts one layer's working set (hidden states, attention projections, MLP activations, and
    the attention matrix when the model computes it explicitly), the key/value cache of every
    layer, and the float32 logits at the scored positions with their log-sum-exp temporaries.
    With ``grad`` every layer's activations are kept for the backward, twice (values and
    gradients).

    Args:
        model: a ``transformers`` model (sizes are read from ``model.config``).
        new_tokens: positions the forward computes.
        context: positions attended to (cached prefix + new tokens).
        n_logits: positions whose logits are computed.
        grad: whether a backward follows.
    """
    config = getattr(model, "config", None)
    hidden = _config_int(config, ("hidden_size", "n_embd", "d_model"), 1024)
    layers = _config_int(config, ("num_hidden_layers", "n_layer", "num_layers"), 12)
    layers += _config_int(config, ("num_decoder_layers", "decoder_layers"), 0)
    heads = _config_int(config, ("num_attention_heads", "n_head", "num_heads"), hidden // 64)
    inter = _config_int(config, ("intermediate_size", "n_inner", "d_ff", "ffn_dim"), 4 * hidden)
    vocab = _config_int(config, ("vocab_size",), 32000)
    param = next(iter(model.parameters()), None)
    item = param.element_size() if param is not None else 4
    per_layer = new_tokens * (8 * hidden + 3 * inter)
    if getattr(config, "_attn_implementation", None) == "eager":
        per_layer += 2 * heads * new_tokens * context  # scores and probabilities
    activations = per_layer * (2 * layers if grad else 1)
    cache = 2 * layers * context * hidden
    logits = n_logits * vocab * (item + 12)  # the logits, a float32 copy, exp and its sum
    return int(item * (activations + cache) + logits)


def rows_that_fit(
    model: nn.Module,
    new_tokens: int,
    context: int,
    n_logits: int,
    grad: bool = False,
    cpu_rows: int | None = CPU_ROWS,
) -> int:
    """Rows per forward: on CUDA as many as fit in half the free memory (at most 256), on the
    CPU at most ``cpu_rows`` (None: no cap) within a fixed 2 GiB budget; always at least one.

    The arguments are those of :func:`row_bytes`. Out-of-memory back-off (halving) covers the
    estimate's error.
    """
    device = model_device(model)
    per_row = max(row_bytes(model, new_tokens, context, n_logits, grad), 1)
    cap: int | None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = int(free * GPU_FRACTION), GPU_ROWS
    else:
        budget, cap = CPU_BUDGET, cpu_rows
    rows = budget // per_row
    if cap is not None:
        rows = min(rows, cap)
    return max(int(rows), 1)


def _reusable(cache: Any) -> bool:
    """Whether a model's key/value cache can serve as a shared prefix: it crops to a length and
    repeats along the batch (``transformers`` ``Cache`` objects that allow cropping). Anything
    else (legacy tuples of older transformers, caches of recurrent layers) is not reused: every
    prompt then runs whole, with the same exact results."""
    if cache is None or not getattr(cache, "is_croppable", True):
        return False
    return all(
        callable(getattr(cache, m, None))
        for m in ("crop", "batch_repeat_interleave", "get_seq_length")
    )


class Scorer:
    """Scores ``target`` after each of many prompts that differ from one original prompt.

    Args:
        model: a ``transformers`` causal LM (or encoder–decoder) returning ``.logits``.
        prompt: ``(L,)`` token ids of the original prompt.
        target: ``(K,)`` token ids of the continuation to score.
        pad_token_id: id used for padding (any valid id: pads are masked).
        rows_per_forward: most rows scored in one forward; None (default) chooses from memory
            (:func:`rows_that_fit`, for the longest row). Rows are grouped by shared prefix
            first, and a forward that runs out of memory is retried with half as many rows.
        reuse_prefix: reuse the original prompt's key/value cache (turn off to compare).

    Raises:
        ValueError: before any forward, for an empty prompt or target, or a prompt and target
            longer than the model's context.
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
        self.encoder_decoder = bool(
            getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        )
        L, K = self.prompt.numel(), self.target.numel()
        check_context(model, L, K)
        params = inspect.signature(model.forward).parameters
        self.keep_logits = "logits_to_keep" in params
        # transformers 5 renamed ``past_key_values`` to ``cache``
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        if rows_per_forward is None:
            width = L + K - 1 if not self.encoder_decoder else L + K
            logits = K if self.keep_logits or self.encoder_decoder else width
            rows_per_forward = rows_that_fit(model, width, width, logits)
        elif (
            isinstance(rows_per_forward, bool)
            or not isinstance(rows_per_forward, int)
            or rows_per_forward < 1
        ):
            raise ValueError(f"rows_per_forward must be a positive int, got {rows_per_forward!r}.")
        self.rows_per_forward = int(rows_per_forward)
        self.cache: Any = None
        self.reuse_prefix = reuse_prefix and not self.encoder_decoder
        self.original = self._original_scores()

    @torch.no_grad()
    def _original_scores(self) -> Tensor:
        """Log-probs under the original prompt; also keeps its key/value cache."""
        if self.encoder_decoder:
            return self._score_encoder_decoder([self.prompt])[0]
        full = torch.cat([self.prompt, self.target[:-1]]).unsqueeze(0)
        keep = {"logits_to_keep": self.target.numel()} if self.keep_logits else {}
        out = self.model(input_ids=full, use_cache=self.reuse_prefix, **keep)
        if self.reuse_prefix:
            # transformers 5 returns ``cache``; earlier versions ``past_key_values``
            name = "cache" if hasattr(out, "cache") else "past_key_values"
            cache = getattr(out, name, None)
            if _reusable(cache):
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
        out = self.original.cpu().expand(len(rows), -1).clone()
        # the unperturbed prompt (the engine's first call, Shapley's full coalitions) is known
        todo = [i for i, r in enumerate(rows) if not self._is_original(r)]
        # rows sharing a long prefix go together, so each forward recomputes little
        todo.sort(key=lambda i: -self._prefix(rows[i]))
        for start in range(0, len(todo), self.rows_per_forward):
            group = [rows[i] for i in todo[start : start + self.rows_per_forward]]
            parts = run_in_chunks(len(group), "auto", partial(self._score_slice, group))
            out[todo[start : start + len(group)]] = torch.cat(parts).cpu()
        return out

    def _is_original(self, row: Tensor) -> bool:
        return row.numel() == self.prompt.numel() and bool((row == self.prompt).all())

    def _score_slice(self, rows: list[Tensor], start: int, end: int) -> Tensor:
        return self._score_rows(rows[start:end])

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
            kwargs[self.cache_arg] = cache
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
