"""Text: prompt features, baselines, embeddings, the scorer, and LLM attribution."""

from .embeddings import (
    InterpretableEmbedding,
    InterpretableEmbeddingBase,
    TokenReferenceBase,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
)
from .inputs import TextSpanInput, TextTokenInput, chat_turns, sentences, words
from .llm_attr import LLMAttribution
from .llm_gradient import LLMGradientAttribution
from .remote import RemoteLLMAttribution, RemoteLLMProvider
from .result import LLMAttributionResult
from .scorer import Scorer
from .templates import ProductBaselines, TextTemplateInput
from .vllm_provider import VLLMProvider

__all__ = [
    "InterpretableEmbedding",
    "InterpretableEmbeddingBase",
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "ProductBaselines",
    "RemoteLLMAttribution",
    "RemoteLLMProvider",
    "Scorer",
    "TextSpanInput",
    "TextTemplateInput",
    "TextTokenInput",
    "TokenReferenceBase",
    "VLLMProvider",
    "chat_turns",
    "configure_interpretable_embedding_layer",
    "remove_interpretable_embedding_layer",
    "sentences",
    "words",
]
