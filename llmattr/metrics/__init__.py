"""Metrics that judge attributions: faithfulness of a ranking of prompt features."""

from .faithfulness import Faithfulness, faithfulness, top_features

__all__ = ["Faithfulness", "faithfulness", "top_features"]
