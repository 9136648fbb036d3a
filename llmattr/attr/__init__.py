"""The attribution algorithms (``from llmattr.attr import IntegratedGradients`` mirrors Captum)."""

from .._core.base import (
    Attribution,
    GradientAttribution,
    LayerAttribution,
    NeuronAttribution,
    PerturbationAttribution,
)
from ..text.embeddings import (
    InterpretableEmbedding,
    InterpretableEmbeddingBase,
    TokenReferenceBase,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
)
from .ablation import FeatureAblation, FeaturePermutation, Occlusion
from .backprop import Deconvolution, GuidedBackprop
from .dataloader_attr import DataLoaderAttribution
from .deeplift import DeepLift, DeepLiftShap
from .gradcam import GuidedGradCam, LayerGradCam
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients
from .layer import (
    LayerActivation,
    LayerFeatureAblation,
    LayerFeaturePermutation,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LayerLRP,
)
from .layer_path import (
    InternalInfluence,
    LayerConductance,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerGradientShap,
)
from .lime import KernelShap, Lime, LimeBase, exp_kernel_similarity
from .linear_models import (
    LinearModel,
    Model,
    SGDLasso,
    SGDLinearModel,
    SGDLinearRegression,
    SGDRidge,
    SkLearnLasso,
    SkLearnLinearModel,
    SkLearnLinearRegression,
    SkLearnRidge,
)
from .lrp import (
    LRP,
    Alpha1_Beta0_Rule,
    AlphaBetaRule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)
from .neuron import (
    NeuronConductance,
    NeuronDeconvolution,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronFeatureAblation,
    NeuronGradient,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronIntegratedGradients,
)
from .noise_tunnel import NoiseTunnel, NoiseTunnelType
from .shapley import ShapleyValues, ShapleyValueSampling
from .stat import MSE, CommonStats, Count, Max, Mean, Min, Stat, StatValue, StdDev, Sum, Var
from .summarizer import ClassSummarizer, Summarizer, SummarizerSingleTensor
from .surrogates import InterpretableModel, Lasso, LinearRegression, Ridge

__all__ = [
    "LRP",
    "MSE",
    "Alpha1_Beta0_Rule",
    "AlphaBetaRule",
    "Attribution",
    "ClassSummarizer",
    "CommonStats",
    "Count",
    "DataLoaderAttribution",
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
    "GuidedGradCam",
    "IdentityRule",
    "InputXGradient",
    "IntegratedGradients",
    "InternalInfluence",
    "InterpretableEmbedding",
    "InterpretableEmbeddingBase",
    "InterpretableModel",
    "KernelShap",
    "Lasso",
    "LayerActivation",
    "LayerAttribution",
    "LayerConductance",
    "LayerDeepLift",
    "LayerDeepLiftShap",
    "LayerFeatureAblation",
    "LayerFeaturePermutation",
    "LayerGradCam",
    "LayerGradientShap",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "LayerLRP",
    "Lime",
    "LimeBase",
    "LinearModel",
    "LinearRegression",
    "Max",
    "Mean",
    "Min",
    "Model",
    "NeuronAttribution",
    "NeuronConductance",
    "NeuronDeconvolution",
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronFeatureAblation",
    "NeuronGradient",
    "NeuronGradientShap",
    "NeuronGuidedBackprop",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "NoiseTunnelType",
    "Occlusion",
    "PerturbationAttribution",
    "PropagationRule",
    "Ridge",
    "SGDLasso",
    "SGDLinearModel",
    "SGDLinearRegression",
    "SGDRidge",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
    "SkLearnLasso",
    "SkLearnLinearModel",
    "SkLearnLinearRegression",
    "SkLearnRidge",
    "Stat",
    "StatValue",
    "StdDev",
    "Sum",
    "Summarizer",
    "SummarizerSingleTensor",
    "TokenReferenceBase",
    "Var",
    "configure_interpretable_embedding_layer",
    "exp_kernel_similarity",
    "remove_interpretable_embedding_layer",
]


def __getattr__(name: str) -> object:
    # ``from captum.attr import visualization as viz`` becomes
    # ``from llmattr.attr import visualization as viz``; imported lazily so that the algorithms do
    # not pull in matplotlib
    if name == "visualization":
        from .. import viz

        return viz
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
