"""Metrics that judge attributions: faithfulness of a ranking of prompt features, completeness of
attributions that should sum to the change of the target's log-probability, and faithfulness
curves for images (deletion, insertion, pixel flipping, ROAD); Captum's infidelity and
sensitivity_max, with perturbations of prompt features so both score LLM attributions."""

from .faithfulness import Completeness, Faithfulness, completeness, faithfulness, top_features
from .flipping import pixel_flipping
from .image import CurveResult, deletion_curve, insertion_curve
from .infidelity import infidelity, infidelity_perturb_func_decorator
from .road import NoisyLinearImputer, road
from .sensitivity import default_perturb_func, sensitivity_max
from .text_perturb import (
    embedding_noise_perturb_func,
    llm_infidelity,
    llm_sensitivity_max,
    random_mask_perturb_func,
)

__all__ = [
    "Completeness",
    "CurveResult",
    "Faithfulness",
    "NoisyLinearImputer",
    "completeness",
    "default_perturb_func",
    "deletion_curve",
    "embedding_noise_perturb_func",
    "faithfulness",
    "infidelity",
    "infidelity_perturb_func_decorator",
    "insertion_curve",
    "llm_infidelity",
    "llm_sensitivity_max",
    "pixel_flipping",
    "random_mask_perturb_func",
    "road",
    "sensitivity_max",
    "top_features",
]
