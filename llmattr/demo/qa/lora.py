"""Low-rank adapters (LoRA) on a BERT encoder's linear layers: trained, saved, merged at load time.

An adapted layer computes ``W x + b + (alpha / rank) * B (A x)`` with ``A`` of shape
``(rank, in_features)`` and ``B`` of shape ``(out_features, rank)``; ``B`` starts at zero so
training starts from the pretrained model exactly. What ships are the ``A``/``B`` pairs; loading
folds them into the pretrained weights (``W + (alpha / rank) * B @ A``), which leaves plain
``nn.Linear`` modules behind: the merged model is an ordinary ``BertForQuestionAnswering``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TARGETS", "LoRALinear", "add_lora", "lora_tensors", "merge_lora"]

# the linear layers of each encoder layer that get adapters: attention and feed-forward
TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (for training only)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        bound = 1.0 / math.sqrt(base.in_features)  # nn.Linear's default init range
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def _targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(full name, parent module, attribute)`` of every adapted linear layer."""
    found = []
    for name, module in model.named_modules():
        for target in TARGETS:
            if name.endswith("." + target) and isinstance(module, nn.Linear | LoRALinear):
                # "output.dense" also ends "attention.output.dense": keep the exact layer suffix
                if target == "output.dense" and name.endswith("attention.output.dense"):
                    continue
                parent_name, attr = name.rsplit(".", 1)
                found.append((name, model.get_submodule(parent_name), attr))
    return found


def add_lora(model: nn.Module, rank: int, alpha: float, seed: int = 0) -> list[nn.Parameter]:
    """Replace the target linear layers of ``model`` (in place) by :class:`LoRALinear`.

    Returns:
        the new trainable parameters (``A`` and ``B`` of every layer).
    """
    generator = torch.Generator().manual_seed(seed)
    params: list[nn.Parameter] = []
    for _, parent, attr in _targets(model):
        wrapped = LoRALinear(getattr(parent, attr), rank, alpha, generator)
        setattr(parent, attr, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_tensors(model: nn.Module) -> dict[str, Tensor]:
    """``{"<layer name>.lora_A": (rank, in), "<layer name>.lora_B": (out, rank)}`` of a model
    adapted by :func:`add_lora` (names without the ``.base`` of the wrapped layer)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{name}.lora_A"] = module.lora_A.detach().clone()
            out[f"{name}.lora_B"] = module.lora_B.detach().clone()
    return out


@torch.no_grad()
def merge_lora(model: nn.Module, tensors: dict[str, Tensor], scale: float) -> int:
    """Add ``scale * B @ A`` to the weight of every plain ``nn.Linear`` named in ``tensors``.

    Computed in float32 (or the weight's dtype if wider) whatever the stored dtype.

    Returns:
        how many layers were merged.

    Raises:
        KeyError: a name in ``tensors`` is no linear layer of ``model`` or lacks its pair.
    """
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise KeyError(f"{name} is not an nn.Linear of the model")
        dtype = torch.promote_types(layer.weight.dtype, torch.float32)
        a = tensors[f"{name}.lora_A"].to(layer.weight.device, dtype)
        b = tensors[f"{name}.lora_B"].to(layer.weight.device, dtype)
        layer.weight.copy_((layer.weight.to(dtype) + (b @ a) * scale).to(layer.weight.dtype))
    return len(names)
