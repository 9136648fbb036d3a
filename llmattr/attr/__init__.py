"""The attribution algorithms (``from llmattr.attr import IntegratedGradients`` mirrors Captum)."""

from .._core.base import (
    Attribution,
    GradientAttribution,
    LayerAttribution,
    NeuronAttribution,
    PerturbationAttribution,
)
from .ablation import FeatureAblation, FeaturePermutation, Occlusion
from .backprop import Deconvolution, GuidedBackprop
from .deeplift import DeepLift, DeepLiftShap
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients
from .lime import KernelShap, Lime, exp_kernel_similarity
from .lrp import (
    LRP,
    Alpha1_Beta0_Rule,
    AlphaBetaRule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)
from .noise_tunnel import NoiseTunnel, NoiseTunnelType
from .shapley import ShapleyValues, ShapleyValueSampling
from .surrogates import InterpretableModel, Lasso, LinearRegression, Ridge

__all__ = [
    "LRP",
    "Alpha1_Beta0_Rule",
    "AlphaBetaRule",
    "Attribution",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "EpsilonRule",
    "FeatureAblation",
    "FeaturePermutation",
    "GammaRule",
    "GradientAttribution",
    "GradientShap",
    "GuidedBackprop",
    "IdentityRule",
    "InputXGradient",
    "IntegratedGradients",
    "InterpretableModel",
    "KernelShap",
    "Lasso",
    "LayerAttribution",
    "Lime",
    "LinearRegression",
    "NeuronAttribution",
    "NoiseTunnel",
    "NoiseTunnelType",
    "Occlusion",
    "PerturbationAttribution",
    "PropagationRule",
    "Ridge",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
    "exp_kernel_similarity",
]
