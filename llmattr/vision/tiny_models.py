"""Tiny vision-language models built offline, for tests, examples and benchmarks.

No hub access is needed: the models are random-init ``transformers`` models built from configs,
and their processors are assembled from parts (a word-level tokenizer made with ``tokenizers``
and an image processor made with its constructor). The recipes are short on purpose, so users can
copy them to build a stand-in for their own model:

>>> model, processor = tiny_llava()            # CLIP vision tower + Llama, LlavaProcessor
>>> inputs = processor(text="USER: <image> what colour is the cat ? ASSISTANT:",
...                    images=image, return_tensors="pt")
>>> model(**inputs).logits.shape               # (1, prompt tokens incl. image tokens, vocab)

:func:`tiny_qwen2_vl` builds a Qwen2-VL model (vision transformer with merged patches, M-RoPE
positions); its processor is :class:`Qwen2VLStyleProcessor`, because ``Qwen2VLProcessor`` insists
on a video processor that needs ``torchvision``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["WORDS", "Qwen2VLStyleProcessor", "tiny_llava", "tiny_qwen2_vl", "word_tokenizer"]

# every prompt and answer of the examples is made of these words (anything else is <unk>)
WORDS = (
    "what which where is are the a an of in on at to and or this that image picture photo "
    "colour color shape object animal cat dog bird car tree house sky sun sea grass "
    "red green blue yellow black white orange purple grey brown "
    "left right top bottom middle centre center up down big small "
    "square circle triangle stripe dot yes no one two three four describe ? . ,"
).split()

_CHAT = (
    "{% for m in messages %}{{ m['role'] | upper }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_tokenizer(special: Sequence[str] = ()) -> Any:
    """A whitespace word-level tokenizer over :data:`WORDS` (plus ``USER:``, ``ASSISTANT:`` and
    the given special tokens), as a ``PreTrainedTokenizerFast``: ids 0-3 are ``<pad> <s> </s>
    <unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<s>", "</s>", "<unk>", *special, "USER:", "ASSISTANT:"]
    vocab = {w: i for i, w in enumerate([*base, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(special),
    )


def _llama_text_config(vocab_size: int, hidden: int, layers: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def tiny_llava(
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """A random-init LLaVA (CLIP vision tower + projector + Llama) and its ``LlavaProcessor``.

    The processor resizes and centre-crops images to ``image_size`` (CLIP's preprocessing) and
    expands each ``<image>`` in the text to ``(image_size // patch_size) ** 2`` image tokens.

    Returns:
        ``(model, processor)``; the model in eval mode, ``dtype`` parameters.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer(["<image>"])
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        projection_dim=hidden_size,
    )
    text = LlamaConfig(**_llama_text_config(len(tokenizer), hidden_size, num_layers))
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_CHAT,
    )
    return model, processor


class Qwen2VLStyleProcessor:
    """Qwen2-VL's processing without its video processor: images become flattened patches
    (``pixel_values`` ``(n_patches, C * T * P * P)``, ``image_grid_thw`` ``(n_images, 3)``) and
    each ``<|image_pad|>`` of the text is expanded to the image's merged-patch count, with the
    ``mm_token_type_ids`` M-RoPE needs (1 at image tokens)."""

    image_token = "<|image_pad|>"

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.merge = int(image_processor.merge_size) ** 2

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        return_tensors: str = "pt",
        padding: bool | str = False,
    ) -> dict[str, Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        out: dict[str, Tensor] = {}
        if images is not None:
            pixels = self.image_processor(images=images, return_tensors="pt")
            out.update(pixels)
            counts = iter((pixels["image_grid_thw"].prod(-1) // self.merge).tolist())
            expanded = []
            for t in texts:
                pieces = t.split(self.image_token)
                body = pieces[0]
                for piece in pieces[1:]:
                    body += " ".join([self.image_token] * int(next(counts))) + piece
                expanded.append(body)
            texts = expanded
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding)
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        out.update(enc)
        out["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return str(self.tokenizer.decode(*args, **kwargs))

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return list(self.tokenizer.batch_decode(*args, **kwargs))


def tiny_qwen2_vl(
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Qwen2VLStyleProcessor]:
    """A random-init Qwen2-VL (14-pixel patches merged 2x2, M-RoPE) and its processor.

    Images are resized to a multiple of 28 pixels between ``min_pixels`` and ``max_pixels``
    pixels in area; write ``<|vision_start|> <|image_pad|> <|vision_end|>`` where the image goes.

    Returns:
        ``(model, processor)``; the model in eval mode, ``dtype`` parameters.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers import Qwen2VLImageProcessorPil as ImageProcessor

    special = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(special)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in special}
    image_processor = ImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2
    )
    vision = {
        "depth": num_layers,
        "embed_dim": hidden_size,
        "hidden_size": hidden_size,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    text = _llama_text_config(len(tokenizer), hidden_size, num_layers)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    config = Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(dtype).eval()
    return model, Qwen2VLStyleProcessor(image_processor, tokenizer)
