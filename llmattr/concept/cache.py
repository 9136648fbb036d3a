"""The on-disk activation cache, keyed so that it is never reused for another model.

Layout under ``save_path``::

    <model_id>/<fingerprint>/av/<layer>/<concept name>-<id>.pt   pooled activations (N, F)
    <model_id>/<fingerprint>/cav-<classifier key>/<ids>-<layer>.pkl   CAVs (see CAV)

The fingerprint hashes the model's parameter and buffer names, shapes, dtypes and value summaries,
its ``config`` (when it has one) and how activations are read (layer input or output, pooling,
tokenizer). Two models saved under one ``model_id`` get different directories: changed weights
mean recomputed activations and CAVs, never silently reused ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from .cav import safe_name
from .concept import Concept

__all__ = ["ActivationStore", "fingerprint"]


def fingerprint(model: nn.Module, **extra: Any) -> str:
    """A 16-hex-digit hash of ``model`` (names, shapes, dtypes, per-tensor sum, sum of squares and
    first values of every parameter and buffer, and ``model.config``) and of ``extra``."""
    h = hashlib.sha256()
    summaries = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        v = t.detach().reshape(-1).float()
        if v.numel():
            summaries.append(torch.stack([v.sum(), (v * v).sum(), *v[:4]]).cpu())
    for s in summaries:
        h.update(s.double().numpy().tobytes())
    config = getattr(model, "config", None)
    if config is not None:
        h.update((config.to_json_string() if hasattr(config, "to_json_string") else repr(config))
                 .encode())  # fmt: skip
    h.update(json.dumps(extra, sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


class ActivationStore:
    """Pooled activations ``(N, F)`` of each (layer, concept), one file each, under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, layer: str, concept: Concept) -> str:
        return os.path.join(
            self.root, "av", safe_name(layer), safe_name(concept.identifier) + ".pt"
        )

    def exists(self, layer: str, concept: Concept) -> bool:
        """A file for this layer and this concept (same id and name) is there."""
        return self.load(layer, concept) is not None

    def save(self, layer: str, concept: Concept, activations: Tensor) -> None:
        path = self.path(layer, concept)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"id": concept.id, "name": concept.name, "layer": layer,
                  "activations": activations.detach().cpu()}  # fmt: skip
        torch.save(record, path + ".tmp")
        os.replace(path + ".tmp", path)

    def load(self, layer: str, concept: Concept) -> Tensor | None:
        """The saved activations, or ``None`` when missing or saved for another concept."""
        path = self.path(layer, concept)
        if not os.path.exists(path):
            return None
        record = torch.load(path, weights_only=True)
        if (record["id"], record["name"], record["layer"]) != (concept.id, concept.name, layer):
            return None
        return record["activations"]
