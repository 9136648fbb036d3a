"""Concept-based interpretability: TCAV with Captum's API (``captum.concept``), for tensor models
and for language models (concepts as texts, pooled token activations).

>>> from llmattr.concept import TCAV, Concept
>>> tcav = TCAV(model, ["model.layers.1"], tokenizer=tok, pooling="last")  # doctest: +SKIP
>>> tcav.interpret(prompts, [[polite, random_0]], target=token_id)  # doctest: +SKIP
"""

from .cav import CAV
from .classifier import Classifier, DefaultClassifier
from .concept import Concept, ConceptInterpreter, concepts_to_str
from .data import CustomIterableDataset, dataset_to_dataloader
from .stats import ttest_ind
from .tcav import TCAV
from .text import LastTokenLogits

__all__ = [
    "CAV",
    "TCAV",
    "Classifier",
    "Concept",
    "ConceptInterpreter",
    "CustomIterableDataset",
    "DefaultClassifier",
    "LastTokenLogits",
    "concepts_to_str",
    "dataset_to_dataloader",
    "ttest_ind",
]
