"""Vision: image features, baselines, vision transformers, CLIP and vision-language models.

Every attribution algorithm of :mod:`llmattr` already works on image tensors ``(N, C, H, W)``;
this package adds what is specific to images, composed over the same engine:

* features — :func:`grid_mask`, :func:`patch_mask` (ViT patches in token order), :func:`slic`
  superpixels, :func:`label_map_mask`, :func:`masks_from_boxes` (overlapping), and
  :func:`scatter_to_pixels` back to pixels;
* baselines for absent pixels — :class:`ConstantBaseline`, :class:`MeanBaseline`,
  :class:`BlurBaseline`, :class:`NoiseBaseline`, :class:`InpaintBaseline` (tensors and PIL);
  :class:`ImageSegments` for overlapping regions and region-dependent fills;
* vision transformers and CLIP — :class:`PatchLayout`, :class:`PatchIntegratedGradients`,
  :class:`TokenGradCam`, :class:`GuidedTokenGradCam`, :class:`AttentionRollout`,
  :class:`GradientAttentionRollout`, :class:`CLIPAttribution`;
* vision-language models — :class:`ImageMaskInput` (Captum 0.9's), :class:`MultimodalInput`
  (image regions and words in one attribution) for :class:`~llmattr.LLMAttribution`, and
  :class:`VLMGradientAttribution` (integrated gradients through the model's image merge).

Tiny offline stand-ins for LLaVA and Qwen2-VL are in :mod:`llmattr.vision.tiny_models`; two
models trained on scikit-learn's digits in :mod:`llmattr.vision.digits`.
"""

from .baselines import (
    BlurBaseline,
    ConstantBaseline,
    ImageBaseline,
    InpaintBaseline,
    MeanBaseline,
    NoiseBaseline,
    baseline_from,
    dataset_mean,
    gaussian_blur,
)
from .clip import CLIPAttribution, CLIPAttributionResult, CLIPSimilarity, clip_similarity_forward
from .image_input import ImageMaskInput
from .layout import PatchLayout
from .masks import (
    LabelMap,
    as_feature_mask,
    check_mask,
    check_mask_list,
    grid_mask,
    label_map_mask,
    masks_from_boxes,
    patch_mask,
    scatter_to_pixels,
)
from .multimodal import MultimodalInput
from .rollout import AttentionRollout, GradientAttentionRollout
from .segments import ImageSegments
from .superpixels import connected_components, slic
from .token_cam import GuidedTokenGradCam, TokenGradCam
from .vit import (
    PatchIntegratedGradients,
    find_patch_embedding,
    logits_forward,
    patch_feature_mask,
)
from .vlm_gradient import VLMGradientAttribution, VLMGradientResult, find_image_feature_layer
from .vlm_scorer import VLMScorer

__all__ = [
    "AttentionRollout",
    "BlurBaseline",
    "CLIPAttribution",
    "CLIPAttributionResult",
    "CLIPSimilarity",
    "ConstantBaseline",
    "GradientAttentionRollout",
    "GuidedTokenGradCam",
    "ImageBaseline",
    "ImageMaskInput",
    "ImageSegments",
    "InpaintBaseline",
    "LabelMap",
    "MeanBaseline",
    "MultimodalInput",
    "NoiseBaseline",
    "PatchIntegratedGradients",
    "PatchLayout",
    "TokenGradCam",
    "VLMGradientAttribution",
    "VLMGradientResult",
    "VLMScorer",
    "as_feature_mask",
    "baseline_from",
    "check_mask",
    "check_mask_list",
    "clip_similarity_forward",
    "connected_components",
    "dataset_mean",
    "find_image_feature_layer",
    "find_patch_embedding",
    "gaussian_blur",
    "grid_mask",
    "label_map_mask",
    "logits_forward",
    "masks_from_boxes",
    "patch_feature_mask",
    "patch_mask",
    "scatter_to_pixels",
    "slic",
]
