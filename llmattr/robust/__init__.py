"""Robustness: adversarial attacks and how much perturbation a model's answer survives.

Captum's ``captum.robust`` names (``FGSM``, ``PGD``, ``Perturbation``, ``AttackComparator``,
``MinParamPerturbation``) with the same signatures, defaults and return types, plus attacks in a
language model's embedding space (:class:`EmbeddingFGSM`, :class:`EmbeddingPGD`) and
:func:`answer_robustness`: the fewest prompt features (ranked by an attribution) whose removal
changes a language model's answer.
"""

from .comparator import AttackComparator
from .embedding import EmbeddingAttackResult, EmbeddingFGSM, EmbeddingPGD
from .fgsm import FGSM
from .min_param import MinParamPerturbation
from .perturbation import Perturbation
from .pgd import PGD
from .text import AnswerRobustness, answer_robustness, feature_ranking, preference_margins

__all__ = [
    "FGSM",
    "PGD",
    "AnswerRobustness",
    "AttackComparator",
    "EmbeddingAttackResult",
    "EmbeddingFGSM",
    "EmbeddingPGD",
    "MinParamPerturbation",
    "Perturbation",
    "answer_robustness",
    "feature_ranking",
    "preference_margins",
]
