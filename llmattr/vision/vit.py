"""Patch attribution for ``transformers`` vision transformers (ViT, DeiT, BEiT, DINOv2, CLIP).

Two routes to one number per patch, both on the generic engine:

* perturbation: :func:`patch_feature_mask` gives a ``feature_mask`` that groups each patch's
  pixels, so ``FeatureAblation``, ``Occlusion``, ``ShapleyValueSampling``, ``KernelShap``, ``Lime``
  treat one patch as one feature; :func:`logits_forward` turns the model's ``ModelOutput`` into the
  logits tensor the engine selects targets from::

      forward = logits_forward(model)
      mask = patch_feature_mask(model, pixel_values)            # (1, 1, H, W)
      attr = FeatureAblation(forward).attribute(pixel_values, target=3, feature_mask=mask)

* gradients: :class:`PatchIntegratedGradients` runs ``LayerIntegratedGradients`` on the output of
  the patch-embedding module and sums over the hidden dimension, giving ``(N, rows, cols)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from ..attr.layer import LayerIntegratedGradients
from .layout import PatchLayout
from .masks import patch_mask

__all__ = [
    "ModelLogits",
    "PatchIntegratedGradients",
    "find_patch_embedding",
    "logits_forward",
    "patch_feature_mask",
    "patch_layout",
]


class ModelLogits(nn.Module):
    """A ``transformers`` model called as ``forward(pixel_values, *args)`` and returning one
    tensor (``output.logits`` by default) instead of a ``ModelOutput``.

    The model is a submodule, so layers of the model are layers of this forward (for layer
    methods), and ``config`` is the model's (for :class:`~llmattr.vision.layout.PatchLayout`).
    """

    def __init__(
        self, model: nn.Module, output: str = "logits", input_name: str = "pixel_values"
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InputTypeError(
                f"logits_forward needs a transformers model (an nn.Module), got "
                f"{type(model).__name__}."
            )
        self.model = model
        self.output = output
        self.input_name = input_name
        self.config = getattr(model, "config", None)

    def forward(self, pixel_values: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if args:
            out = self.model(pixel_values, *args, **kwargs)
        else:
            out = self.model(**{self.input_name: pixel_values}, **kwargs)
        if isinstance(out, Tensor):
            return out
        value = out[self.output] if self.output in out else None
        if not isinstance(value, Tensor):
            raise InputError(
                f"The model's output has no tensor {self.output!r} (it has "
                f"{list(out.keys())}); pass output= one of those to logits_forward."
            )
        return value


def logits_forward(
    model: nn.Module, output: str = "logits", input_name: str = "pixel_values"
) -> ModelLogits:
    """The forward function the attribution classes want: ``(N, C, H, W) -> (N, classes)``.

    Args:
        model: a ``transformers`` image model (``ViTForImageClassification``, ...).
        output: which field of the ``ModelOutput`` to return (``"logits"``).
        input_name: the keyword the model takes the image as (``"pixel_values"``).
    """
    if isinstance(model, ModelLogits):
        return model
    return ModelLogits(model, output, input_name)


def _unwrap(model: Any) -> Any:
    return model.model if isinstance(model, ModelLogits) else model


def _check_pixels(pixel_values: Any) -> Tensor:
    if not isinstance(pixel_values, Tensor):
        raise InputTypeError(
            f"pixel_values must be a (N, C, H, W) float tensor, got {type(pixel_values).__name__}; "
            "run the image processor with return_tensors='pt'."
        )
    if pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        raise InputError(
            f"pixel_values must be a (N, C, H, W) float tensor, got shape "
            f"{tuple(pixel_values.shape)} of {pixel_values.dtype}."
        )
    return pixel_values


def patch_layout(model: Any, pixel_values: Tensor | None = None) -> PatchLayout:
    """The model's :class:`PatchLayout` for images of ``pixel_values``' size (the config's
    ``image_size`` when not given)."""
    model = _unwrap(model)
    if pixel_values is None:
        return PatchLayout.from_config(model)
    _check_pixels(pixel_values)
    layout = PatchLayout.from_config(model, tuple(pixel_values.shape[-2:]))
    config = getattr(model, "config", model)
    channels = getattr(getattr(config, "vision_config", None) or config, "num_channels", None)
    if channels is not None and pixel_values.shape[1] != channels:
        raise InputError(
            f"pixel_values have {pixel_values.shape[1]} channels but the model expects "
            f"{channels}; convert the image (e.g. PIL's image.convert('RGB')) before the "
            "processor."
        )
    return layout


def patch_feature_mask(model: Any, pixel_values: Tensor | None = None) -> Tensor:
    """A ``feature_mask`` of shape ``(1, 1, H, W)``: each pixel's patch index, in the model's
    token order (row-major), broadcast over the batch and the channels (``masks.patch_mask``
    shaped for ``(N, C, H, W)`` inputs, its size checked against ``pixel_values``).

    Args:
        model: a ViT-like ``transformers`` model or its config.
        pixel_values: ``(N, C, H, W)`` images (their size sets the grid; else the config's).
    """
    layout = patch_layout(model, pixel_values)  # validates pixel_values against the config
    mask = patch_mask(_unwrap(model), layout.image_size)[None, None]
    return mask if pixel_values is None else mask.to(pixel_values.device)


def find_patch_embedding(model: nn.Module) -> nn.Module:
    """The module that turns pixels into patch embeddings (``...embeddings.patch_embeddings``
    for ViT/DeiT/BEiT/DINOv2, ``...embeddings.patch_embedding`` for CLIP/SigLIP)."""
    model = _unwrap(model)
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"Expected a transformers model, got {type(model).__name__}.")
    for name, module in model.named_modules():
        if name.endswith(("embeddings.patch_embeddings", "embeddings.patch_embedding")):
            return module
    raise InputError(
        f"Found no patch-embedding module (a submodule named '...embeddings.patch_embeddings' "
        f"or '...embeddings.patch_embedding') in {type(model).__name__}; pass the module as "
        "patch_embedding= explicitly."
    )


def patch_map(activation: Tensor, layout: PatchLayout) -> Tensor:
    """A patch-embedding attribution summed over the hidden dimension: ``(N, P, D)`` tokens or
    ``(N, D, rows, cols)`` conv maps -> ``(N, rows, cols)`` in token order."""
    rows, cols = layout.grid
    if activation.dim() == 3:
        if activation.shape[1] == layout.n_tokens:
            activation = activation[:, layout.n_prefix :]
        if activation.shape[1] != layout.n_patches:
            layout.check_tokens(activation.shape[1], "The patch embedding's output")
        return activation.sum(-1).reshape(-1, rows, cols)
    if activation.dim() == 4 and tuple(activation.shape[2:]) == (rows, cols):
        return activation.sum(1)
    raise InputError(
        f"The patch embedding's output has shape {tuple(activation.shape)}, which is neither "
        f"(N, {layout.n_patches}, D) nor (N, D, {rows}, {cols}) for the {rows}x{cols} grid."
    )


class PatchIntegratedGradients:
    """Integrated gradients on a vision transformer's patch embeddings, one score per patch.

    ``LayerIntegratedGradients`` on the patch-embedding module's output, summed over the hidden
    dimension. The path runs from the embedding of ``baselines`` (black/zero pixels by default:
    the conv bias, not a zero embedding) to the image's; the sum of all patches equals
    ``f(x) - f(baselines)`` up to the quadrature error (the delta).

    On a randomly initialized model whose class token, position embeddings and patch bias are
    zero (DeiT's and BEiT's init), a black baseline makes every token zero, where LayerNorm is
    not smooth: the delta is then large. Trained models, or another baseline, do not have this.

    Args:
        model: a ``transformers`` image classifier (or any forward whose layers include the
            patch embedding; a ``transformers`` model is wrapped with :func:`logits_forward`).
        patch_embedding: the module to cut at (found by :func:`find_patch_embedding`).
    """

    def __init__(self, model: nn.Module, patch_embedding: nn.Module | None = None) -> None:
        self.forward_func: Callable[..., Any] = (
            logits_forward(model) if hasattr(model, "config") else model
        )
        self.model = _unwrap(model)
        self.layer = patch_embedding or find_patch_embedding(self.model)
        self.lig = LayerIntegratedGradients(self.forward_func, self.layer)

    def attribute(
        self,
        pixel_values: Tensor,
        target: Any = None,
        baselines: Tensor | float | None = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Patch attributions ``(N, rows, cols)`` (and the delta ``(N,)`` when asked).

        Args:
            pixel_values: ``(N, C, H, W)`` images.
            target: the class to explain (as in Captum).
            baselines: ``(N, C, H, W)``/``(1, C, H, W)`` pixels or a number (zeros by default).
            additional_forward_args, n_steps, method, internal_batch_size: as for
                ``LayerIntegratedGradients``.
            return_convergence_delta: also return ``sum - (f(x) - f(baselines))``.
        """
        layout = patch_layout(self.model, pixel_values)
        out = self.lig.attribute(
            pixel_values,
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
        )
        attr, delta = out if return_convergence_delta else (out, None)
        if not isinstance(attr, Tensor):
            raise InputError("The patch embedding must output one tensor.")
        result = patch_map(attr, layout)
        return (result, delta) if delta is not None else result
