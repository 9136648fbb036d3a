"""Concept activation vectors: the trained classifier weights of one experimental set at one layer,
saved to and loaded from disk.

Files live at ``<save_path>/<model_id>/<ids>-<layer>.pkl`` as in Captum (``"0-1-2-conv2.pkl"``),
with every path component sanitized (a concept name or model id cannot climb out of
``save_path``) and loaded with ``torch.load(weights_only=True)`` (no arbitrary pickle code).
:class:`~llmattr.concept.TCAV` adds a fingerprint of the model to ``model_id`` so a CAV trained on
one model is never read back for another.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .concept import Concept, concepts_to_str

__all__ = ["CAV", "safe_name"]


def safe_name(part: str) -> str:
    """``part`` as one path component: only ``[A-Za-z0-9_.-]`` kept, never ``"."`` or ``".."``."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(part))
    return "_" if name.strip(".") == "" else name


def _safe_dir(model_id: str) -> str:
    """A model id as a relative directory; ``/`` separates sub-directories, each sanitized."""
    return os.path.join(*(safe_name(p) for p in str(model_id).split("/") if p)) or "_"


def _storable(value: Any) -> Any:
    """Stats as tensors and plain Python values, so the file loads with ``weights_only=True``."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


class CAV:
    """The CAV of ``concepts`` at ``layer``: ``stats["weights"]`` ``(C, F)``, ``stats["classes"]``
    (the concept id of each row) and the classifier's other statistics (e.g. ``"accs"``).

    Args:
        concepts: the experimental set (only ids and names are saved).
        layer: the layer name.
        stats: ``{"weights": (C, F) tensor, "classes": [ids], ...}``.
        save_path: the root directory of the CAV files.
        model_id: the model's identifier (a sub-directory of ``save_path``).
    """

    def __init__(
        self,
        concepts: list[Concept],
        layer: str,
        stats: dict[str, Any] | None = None,
        save_path: str = "./cav/",
        model_id: str = "default_model_id",
    ) -> None:
        self.concepts = concepts
        self.layer = layer
        self.stats = stats
        self.save_path = save_path
        self.model_id = model_id

    @staticmethod
    def assemble_save_path(
        path: str, model_id: str, concepts: Sequence[Concept], layer: str
    ) -> str:
        """``<path>/<model_id>/<ids>-<layer>.pkl``, each component sanitized."""
        file_name = safe_name(concepts_to_str(concepts) + "-" + layer) + ".pkl"
        return os.path.join(path, _safe_dir(model_id), file_name)

    @staticmethod
    def create_cav_dir_if_missing(save_path: str, model_id: str) -> None:
        """Create ``<save_path>/<model_id>``."""
        os.makedirs(os.path.join(save_path, _safe_dir(model_id)), exist_ok=True)

    def save(self) -> None:
        """Write concept ids and names, the layer and the stats to :meth:`assemble_save_path`."""
        CAV.create_cav_dir_if_missing(self.save_path, self.model_id)
        save_dict = {
            "concept_ids": [c.id for c in self.concepts],
            "concept_names": [c.name for c in self.concepts],
            "layer": self.layer,
            "stats": _storable(self.stats),
        }
        path = CAV.assemble_save_path(self.save_path, self.model_id, self.concepts, self.layer)
        tmp = path + ".tmp"
        torch.save(save_dict, tmp)
        os.replace(tmp, path)  # never a half-written file under the real name

    @staticmethod
    def load(cavs_path: str, model_id: str, concepts: Sequence[Concept], layer: str) -> CAV | None:
        """The saved CAV of ``concepts`` at ``layer``, or ``None`` when there is none, or when the
        saved one was trained for concepts of the same ids but other names (stale)."""
        path = CAV.assemble_save_path(cavs_path, model_id, concepts, layer)
        if not os.path.exists(path):
            return None
        saved = torch.load(path, weights_only=True)
        if saved["concept_names"] != [c.name for c in concepts] or saved["layer"] != layer:
            return None
        loaded = [Concept(i, n, None) for i, n in zip(saved["concept_ids"], saved["concept_names"])]
        return CAV(loaded, saved["layer"], saved["stats"], cavs_path, model_id)
