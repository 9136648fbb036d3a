"""Metrics that judge attributions: faithfulness of a ranking of prompt features, and
completeness of attributions that should sum to the change of the target's log-probability."""

from .faithfulness import Completeness, Faithfulness, completeness, faithfulness, top_features

__all__ = ["Completeness", "Faithfulness", "completeness", "faithfulness", "top_features"]
