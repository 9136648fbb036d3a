"""Metrics that judge attributions: faithfulness of a ranking of prompt features, completeness of
attributions that should sum to the change of the target's log-probability, and faithfulness
curves for images (deletion, insertion, pixel flipping, ROAD)."""

from .faithfulness import Completeness, Faithfulness, completeness, faithfulness, top_features
from .flipping import pixel_flipping
from .image import CurveResult, deletion_curve, insertion_curve
from .road import NoisyLinearImputer, road

__all__ = [
    "Completeness",
    "CurveResult",
    "Faithfulness",
    "NoisyLinearImputer",
    "completeness",
    "deletion_curve",
    "faithfulness",
    "insertion_curve",
    "pixel_flipping",
    "road",
    "top_features",
]
