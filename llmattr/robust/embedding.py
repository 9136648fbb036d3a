"""Attacks on a language model in embedding space.

Token ids are integers: they have no gradient and no "small" perturbation. What an attacker can
move continuously is the prompt's input embeddings, ``(N, L, H)`` — the output of
``model.get_input_embeddings()``. :class:`EmbeddingFGSM` and :class:`EmbeddingPGD` run
:class:`~llmattr.robust.FGSM` / :class:`~llmattr.robust.PGD` on those embeddings against the
summed log-probability of the target tokens (teacher-forced after the prompt): untargeted they
push it down (the model's answer becomes less likely), targeted they pull it up (a wanted answer
becomes more likely). Each result also projects the perturbed embeddings back to the nearest
vocabulary tokens, which tells whether the attack survives as a real edit of the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from ..text.gradient_any import logits_of
from ..text.llm_attr import _target_ids
from ..text.scorer import model_device
from .fgsm import FGSM
from .perturbation import check_amount
from .pgd import PGD, check_pgd_args

__all__ = ["EmbeddingAttackResult", "EmbeddingFGSM", "EmbeddingPGD"]


@dataclass
class EmbeddingAttackResult:
    """What an embedding attack found.

    Attributes:
        input_ids: ``(N, L)`` the prompt's token ids.
        target_ids: ``(N, T)`` the target tokens whose log-probability was attacked.
        original_embeddings: ``(N, L, H)`` the prompt's input embeddings.
        perturbed_embeddings: ``(N, L, H)`` the attacked embeddings.
        nearest_ids: ``(N, L)`` the vocabulary token nearest (L2) to each perturbed embedding.
        original_logprob: ``(N,)`` summed target log-prob with the original prompt.
        perturbed_logprob: ``(N,)`` the same with the perturbed embeddings.
        nearest_logprob: ``(N,)`` the same with the nearest tokens as the prompt.
    """

    input_ids: Tensor
    target_ids: Tensor
    original_embeddings: Tensor
    perturbed_embeddings: Tensor
    nearest_ids: Tensor
    original_logprob: Tensor
    perturbed_logprob: Tensor
    nearest_logprob: Tensor

    @property
    def changed(self) -> Tensor:
        """``(N, L)`` bool: positions whose nearest token is not the original one."""
        return self.nearest_ids != self.input_ids

    def nearest_text(self, tokenizer: Any) -> list[str]:
        """The projected prompts, decoded (special tokens kept)."""
        return [tokenizer.decode(row.tolist()) for row in self.nearest_ids]


class _TargetLogProb(nn.Module):
    """``(N, L, H)`` prompt embeddings -> ``(N,)`` summed log-probs of the target tokens."""

    def __init__(self, model: nn.Module, target_ids: Tensor, attention_mask: Tensor | None):
        super().__init__()
        self.model = model
        self.target_ids = target_ids
        self.attention_mask = attention_mask
        with torch.no_grad():  # the target tokens' embeddings are fixed: only the prompt moves
            self.target_embeds = model.get_input_embeddings()(target_ids[:, :-1])

    def forward(self, prompt_embeds: Tensor) -> Tensor:
        n, length = prompt_embeds.shape[:2]
        t = self.target_ids.shape[1]
        embeds = torch.cat([prompt_embeds, self.target_embeds.to(prompt_embeds.dtype)], 1)
        mask = torch.ones(n, embeds.shape[1], dtype=torch.long, device=embeds.device)
        if self.attention_mask is not None:
            mask[:, :length] = self.attention_mask
        logits = logits_of(self.model(inputs_embeds=embeds, attention_mask=mask))
        # position length-1+k predicts target token k
        logits = logits[:, length - 1 : length - 1 + t]
        # half-precision logits are normalized in float32; float64 stays float64
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        picked = logp.gather(-1, self.target_ids.unsqueeze(-1)).squeeze(-1)
        return picked.sum(1).to(prompt_embeds.dtype)


def _negated(outputs: Tensor, target: Any) -> Tensor:
    """The attacks' loss: the negative target log-prob (so an untargeted step lowers it)."""
    return -outputs


class _EmbeddingAttack:
    """Shared set-up: token ids, target ids, mask, and scoring of the result."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        if not callable(getattr(model, "get_input_embeddings", None)):
            raise InputTypeError(
                f"{type(model).__name__} has no get_input_embeddings(); embedding attacks need a "
                "transformers-style language model that accepts inputs_embeds."
            )
        self.model = model
        self.tokenizer = tokenizer

    def _prompt_ids(self, inputs: str | Tensor | Sequence[int]) -> Tensor:
        if isinstance(inputs, str):
            if self.tokenizer is None:
                raise InputError("A text prompt needs a tokenizer: pass tokenizer= when creating.")
            return torch.tensor([self.tokenizer(inputs)["input_ids"]], dtype=torch.long)
        ids = torch.as_tensor(inputs)
        if ids.is_floating_point():
            raise InputTypeError(
                "inputs are floating point; embedding attacks take token ids (or text). To attack "
                "embeddings you already have, use PGD / FGSM on a forward taking inputs_embeds."
            )
        if ids.dim() not in (1, 2) or ids.shape[-1] == 0:
            raise InputError(f"token ids must have shape (L,) or (N, L), got {tuple(ids.shape)}.")
        return ids.long().reshape(-1, ids.shape[-1]).cpu()

    def _targets(self, target: Any, ids: Tensor) -> Tensor:
        n = ids.shape[0]
        if isinstance(target, Tensor) and target.dim() == 2:
            if target.shape[0] != n:
                raise InputError(f"target ids {tuple(target.shape)} do not fit {n} prompt(s).")
            return target.long().cpu()
        if target is None and n > 1:
            raise InputError("Generating targets needs one prompt; pass target ids (N, T).")
        row = _target_ids(self.model, self.tokenizer, ids[0], target, None, None)
        return row.reshape(1, -1).expand(n, -1)

    def _mask(self, mask: Any, n: int, length: int, hidden: int) -> Tensor | None:
        """The mask as ``(1 or N, L, 1 or H)``, checked against the prompt."""
        if mask is None:
            return None
        m = torch.as_tensor(mask)
        if m.dim() == 1 and m.shape[0] == length:
            return m.reshape(1, length, 1)
        if m.dim() == 2 and tuple(m.shape) in ((1, length), (n, length)):
            return m.unsqueeze(-1)
        if m.dim() == 3 and tuple(m.shape) in ((1, length, hidden), (n, length, hidden)):
            return m
        raise InputError(
            f"mask has shape {tuple(m.shape)}; pass one value per prompt position, ({length},) "
            f"or ({n}, {length}), or one per embedding element ({n}, {length}, {hidden})."
        )

    def _run(self, inputs: Any, target: Any, mask: Any, attention_mask: Any, attack: Any):
        ids = self._prompt_ids(inputs)
        embed = self.model.get_input_embeddings()
        m = self._mask(mask, *ids.shape, embed.weight.shape[1])
        am = None if attention_mask is None else torch.as_tensor(attention_mask)
        if am is not None and tuple(am.shape) != tuple(ids.shape):
            raise InputError(
                f"attention_mask has shape {tuple(am.shape)}; it must match the token ids "
                f"{tuple(ids.shape)}."
            )
        target_ids = self._targets(target, ids)
        device = model_device(self.model)
        ids, target_ids = ids.to(device), target_ids.to(device)
        with torch.no_grad():
            original = embed(ids)
        objective = _TargetLogProb(self.model, target_ids, None if am is None else am.to(device))
        perturbed = attack(objective, original, None if m is None else m.to(device))
        with torch.no_grad():
            weight = embed.weight
            flat = perturbed.reshape(-1, perturbed.shape[-1]).to(weight.dtype)
            nearest = torch.cdist(flat, weight).argmin(-1).reshape(ids.shape)
            scores = [objective(e) for e in (original, perturbed, embed(nearest))]
        return EmbeddingAttackResult(
            ids, target_ids, original, perturbed, nearest, *(s.detach() for s in scores)
        )


class EmbeddingFGSM(_EmbeddingAttack):
    """FGSM on a causal language model's input embeddings.

    Args:
        model: a ``transformers``-style causal LM (``get_input_embeddings()``, accepts
            ``inputs_embeds``).
        tokenizer: needed for text prompts and targets.
    """

    def perturb(
        self,
        inputs: str | Tensor,
        epsilon: float,
        target: str | Tensor | None = None,
        targeted: bool = False,
        mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> EmbeddingAttackResult:
        """One signed-gradient step of size ``epsilon`` on the prompt's embeddings.

        Args:
            inputs: a prompt (text) or token ids ``(L,)`` / ``(N, L)``.
            epsilon: step size in embedding units (compare with the embedding weights' scale).
            target: the answer attacked (text, ids ``(T,)`` or ``(N, T)``), or None for the
                model's greedy answer to a single prompt.
            targeted: raise the target's log-prob instead of lowering it.
            mask: which prompt positions may move, ``(L,)`` or ``(N, L)``, or ``(N, L, H)``.
            attention_mask: ``(N, L)`` for padded prompt batches.
        """
        epsilon = check_amount(epsilon, "epsilon")
        return self._run(
            inputs,
            target,
            mask,
            attention_mask,
            lambda f, x, m: FGSM(f, _negated).perturb(x, epsilon, None, targeted=targeted, mask=m),
        )


class EmbeddingPGD(_EmbeddingAttack):
    """PGD on a causal language model's input embeddings (see :class:`EmbeddingFGSM`)."""

    def perturb(
        self,
        inputs: str | Tensor,
        radius: float,
        step_size: float,
        step_num: int,
        target: str | Tensor | None = None,
        targeted: bool = False,
        random_start: bool = False,
        norm: str = "Linf",
        mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> EmbeddingAttackResult:
        """PGD on the prompt's embeddings within a ``norm`` ball of ``radius`` (per prompt for
        L2). Arguments as :meth:`EmbeddingFGSM.perturb` and :meth:`PGD.perturb`."""
        check_pgd_args(radius, step_size, step_num, norm)

        def attack(f: Any, x: Tensor, m: Tensor | None) -> Tensor:
            return PGD(f, _negated).perturb(
                x, radius, step_size, step_num, None, None, targeted, random_start, norm, m
            )

        return self._run(inputs, target, mask, attention_mask, attack)
