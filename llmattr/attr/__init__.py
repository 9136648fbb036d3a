"""The attribution algorithms (``from llmattr.attr import IntegratedGradients`` mirrors Captum)."""

from .._core.base import (
    Attribution,
    GradientAttribution,
    LayerAttribution,
    NeuronAttribution,
    PerturbationAttribution,
)
from .backprop import Deconvolution, GuidedBackprop
from .deeplift import DeepLift, DeepLiftShap
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients
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

__all__ = [
    "LRP",
    "Alpha1_Beta0_Rule",
    "AlphaBetaRule",
    "Attribution",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "EpsilonRule",
    "GammaRule",
    "GradientAttribution",
    "GradientShap",
    "GuidedBackprop",
    "IdentityRule",
    "InputXGradient",
    "IntegratedGradients",
    "LayerAttribution",
    "NeuronAttribution",
    "NoiseTunnel",
    "NoiseTunnelType",
    "PerturbationAttribution",
    "PropagationRule",
    "Saliency",
]
