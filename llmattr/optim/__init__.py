"""Optim: feature visualization by input optimization, with the API of Captum's ``optim-wip``.

Image parameterizations (:class:`PixelImage`, :class:`FFTImage`, :class:`LaplacianImage`,
:class:`SharedImage`, :class:`StackImage`, :class:`NaturalImage`) and :class:`ToRGB`; transforms
for transformation robustness; composable losses and :class:`InputOptimization`;
:func:`render_channels` (every channel of a layer in one batched run) and PNG grids;
:class:`RedirectedReLU` / :func:`replace_layers`, :class:`ChannelReducer`, atlas and circuit
helpers; input targets (``"<name>:input"``, :func:`layer_input`). For language models:
:func:`max_activating_examples`, :func:`search_prompt` (GCG-style discrete prompt search over a
neuron, a direction or any loss, graded against :func:`exhaustive_max`) and
:func:`optimize_soft_prompt` (an embedding-space upper bound, projected to tokens).
"""

from .atlas import (
    calc_grid_indices,
    compute_avg_cell_samples,
    compute_avg_cell_vectors,
    create_atlas,
    create_atlas_vectors,
    normalize_grid,
)
from .circuits import (
    center_crop_weights,
    extract_expanded_weights,
    max2avg_pool2d,
)
from .colour import (
    ToRGB,
)
from .directions import (
    ActivationWeights,
    AngledNeuronDirection,
    Direction,
    NeuronDirection,
    TensorDirection,
)
from .image_tensor import (
    ImageTensor,
)
from .images import (
    FFTImage,
    ImageParameterization,
    LaplacianImage,
    PixelImage,
    SharedImage,
    StackImage,
)
from .layers import (
    ModuleOutputsHook,
    collect_activations,
    get_model_layers,
    layer_input,
)
from .loss import (
    L1,
    L2,
    ActivationInterpolation,
    Alignment,
    BaseLoss,
    ChannelActivation,
    CompositeLoss,
    DeepDream,
    Diversity,
    LayerActivation,
    Loss,
    NeuronActivation,
    TotalVariation,
    default_loss_summarize,
    sum_loss_list,
)
from .models import (
    MaxPool2dRelaxed,
    RedirectedReLU,
    RedirectedReluLayer,
    SkipLayer,
    replace_layers,
    skip_layers,
)
from .natural_image import NaturalImage
from .optimization import (
    InputOptimization,
    NonFiniteLossError,
    early_stopping,
    n_steps,
)
from .pixel_transforms import (
    BlendAlpha,
    GaussianSmoothing,
    IgnoreAlpha,
    NChannelsToRGB,
    RGBToBGR,
    ScaleInputRange,
)
from .prompt_search import PromptSearchResult, exhaustive_max, search_prompt
from .reducer import (
    ChannelReducer,
    posneg,
)
from .render import image_grid, render_channels, save_grid, save_png
from .soft_prompt import SoftPromptResult, nearest_tokens, optimize_soft_prompt
from .text_examples import ActivatingExample, MaxActivatingExamples, max_activating_examples
from .transforms import (
    CenterCrop,
    RandomCrop,
    RandomRotation,
    RandomScale,
    RandomScaleAffine,
    RandomSpatialJitter,
    SymmetricPadding,
    TransformationRobustness,
)

__all__ = [
    "L1",
    "L2",
    "ActivatingExample",
    "ActivationInterpolation",
    "ActivationWeights",
    "Alignment",
    "AngledNeuronDirection",
    "BaseLoss",
    "BlendAlpha",
    "CenterCrop",
    "ChannelActivation",
    "ChannelReducer",
    "CompositeLoss",
    "DeepDream",
    "Direction",
    "Diversity",
    "FFTImage",
    "GaussianSmoothing",
    "IgnoreAlpha",
    "ImageParameterization",
    "ImageTensor",
    "InputOptimization",
    "LaplacianImage",
    "LayerActivation",
    "Loss",
    "MaxActivatingExamples",
    "MaxPool2dRelaxed",
    "ModuleOutputsHook",
    "NChannelsToRGB",
    "NaturalImage",
    "NeuronActivation",
    "NeuronDirection",
    "NonFiniteLossError",
    "PixelImage",
    "PromptSearchResult",
    "RGBToBGR",
    "RandomCrop",
    "RandomRotation",
    "RandomScale",
    "RandomScaleAffine",
    "RandomSpatialJitter",
    "RedirectedReLU",
    "RedirectedReluLayer",
    "ScaleInputRange",
    "SharedImage",
    "SkipLayer",
    "SoftPromptResult",
    "StackImage",
    "SymmetricPadding",
    "TensorDirection",
    "ToRGB",
    "TotalVariation",
    "TransformationRobustness",
    "calc_grid_indices",
    "center_crop_weights",
    "collect_activations",
    "compute_avg_cell_samples",
    "compute_avg_cell_vectors",
    "create_atlas",
    "create_atlas_vectors",
    "default_loss_summarize",
    "early_stopping",
    "exhaustive_max",
    "extract_expanded_weights",
    "get_model_layers",
    "image_grid",
    "layer_input",
    "max2avg_pool2d",
    "max_activating_examples",
    "n_steps",
    "nearest_tokens",
    "normalize_grid",
    "optimize_soft_prompt",
    "posneg",
    "render_channels",
    "replace_layers",
    "save_grid",
    "save_png",
    "search_prompt",
    "skip_layers",
    "sum_loss_list",
]
