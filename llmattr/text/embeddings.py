"""Attributing token-id models through their embeddings.

Token ids cannot be differentiated, so gradient methods attribute to the embedding instead. Two
routes give the same numbers: ``LayerIntegratedGradients(model, model.get_input_embeddings())``
on the ids (preferred: nothing is changed), or swapping the embedding layer for an
:class:`InterpretableEmbedding` that passes precomputed embeddings through, so that the
embeddings themselves are the model's input (Captum's route; remember to swap it back).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError

__all__ = [
    "InterpretableEmbedding",
    "InterpretableEmbeddingBase",
    "TokenReferenceBase",
    "configure_interpretable_embedding_layer",
    "remove_interpretable_embedding_layer",
]


class InterpretableEmbedding(nn.Module):
    """Stands in for an embedding layer and returns its input unchanged.

    The model then takes embeddings where it took ids: compute them with
    :meth:`indices_to_embeddings` and pass them as the input.

    Args:
        embedding: the original embedding module (kept for :meth:`indices_to_embeddings` and to
            be put back).
        full_name: its dotted name in the model.
    """

    def __init__(self, embedding: nn.Module, full_name: str) -> None:
        super().__init__()
        self.embedding = embedding
        self.full_name = full_name
        self.num_embeddings = getattr(embedding, "num_embeddings", None)
        self.embedding_dim = getattr(embedding, "embedding_dim", None)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Return the embeddings passed in unchanged: the first positional argument or, when
        called with keywords only, the first keyword's value (``BertModel`` calls its
        embeddings module as ``self.embeddings(input_ids=..., position_ids=..., ...)``, so the
        precomputed embeddings go in as ``input_ids``). Other arguments are ignored."""
        if inputs:
            return inputs[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise TypeError("InterpretableEmbedding expects the embeddings as its first argument.")

    def indices_to_embeddings(self, *input: Any, **kwargs: Any) -> Tensor:
        """The original layer's embeddings of token ids, shape ``(*ids.shape, embedding_dim)``."""
        return self.embedding(*input, **kwargs)


InterpretableEmbeddingBase = InterpretableEmbedding  # Captum's name


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        raise ValueError(
            f"The model has no module named '{name}'. Embedding layers it has: {names or 'none'}."
        ) from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"'{name}' is not a module of the model.")
    return parent, child, module


def configure_interpretable_embedding_layer(
    model: nn.Module, embedding_layer_name: str = "embedding"
) -> InterpretableEmbedding:
    """Replace ``model.<embedding_layer_name>`` by an :class:`InterpretableEmbedding`.

    This modifies the model in place: call :func:`remove_interpretable_embedding_layer` when
    done (or prefer ``LayerIntegratedGradients`` on the embedding, which modifies nothing).

    Args:
        model: the model.
        embedding_layer_name: dotted name of the embedding module (e.g. ``"bert.embeddings.
            word_embeddings"``).

    Returns:
        The interpretable embedding layer now in the model.

    Raises:
        InputError: (an ``AssertionError``, as Captum raises) the layer already is one.
    """
    parent, child, module = _resolve(model, embedding_layer_name)
    if isinstance(module, InterpretableEmbedding):
        # Captum asserts here, so an AssertionError-compatible error, before anything changes
        raise InputError(
            f"'{embedding_layer_name}' is already an InterpretableEmbedding: use the layer "
            "returned by the first call, or call remove_interpretable_embedding_layer first."
        )
    warnings.warn(
        "The embedding layer is replaced in place by an InterpretableEmbedding that passes "
        "embeddings through; call remove_interpretable_embedding_layer to restore it.",
        stacklevel=2,
    )
    layer = InterpretableEmbedding(module, embedding_layer_name)
    setattr(parent, child, layer)
    return layer


def remove_interpretable_embedding_layer(
    model: nn.Module, interpretable_emb: InterpretableEmbedding
) -> None:
    """Put the original embedding layer back in place of ``interpretable_emb``."""
    parent, child, module = _resolve(model, interpretable_emb.full_name)
    if module is not interpretable_emb:
        raise ValueError("This InterpretableEmbedding is not the one installed in the model.")
    setattr(parent, child, interpretable_emb.embedding)


class TokenReferenceBase:
    """Reference (baseline) token sequences: every position holds ``reference_token_idx``.

    Args:
        reference_token_idx: the baseline token id (e.g. the pad token).
    """

    def __init__(self, reference_token_idx: int = 0) -> None:
        self.reference_token_idx = reference_token_idx

    def generate_reference(self, sequence_length: int, device: torch.device | str) -> Tensor:
        """A ``(sequence_length,)`` long tensor of the reference id on ``device``."""
        return torch.full(
            (sequence_length,), self.reference_token_idx, dtype=torch.long, device=device
        )
