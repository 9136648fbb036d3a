"""llmattr: explain what models do — Captum's API, provably right answers, faster.

The public API is flat: ``from llmattr import IntegratedGradients`` works like
``from captum.attr import IntegratedGradients``, and ``from llmattr import LLMAttribution`` like
``from captum.attr import LLMAttribution``. Captum 0.9's ``ImageMaskInput`` is here too, with
``MultimodalInput`` (image regions and prompt words as features of one attribution); the rest of
the vision layer is :mod:`llmattr.vision`.
"""

from .attr import *  # noqa: F403
from .attr import __all__ as _attr_all
from .text import *  # noqa: F403
from .text import __all__ as _text_all
from .vision.image_input import ImageMaskInput as ImageMaskInput
from .vision.multimodal import MultimodalInput as MultimodalInput
from .viz import *  # noqa: F403
from .viz import __all__ as _viz_all

__version__ = "0.1.0"
__all__ = sorted(
    {*_attr_all, *_text_all, *_viz_all, "ImageMaskInput", "MultimodalInput", "__version__"}
)
