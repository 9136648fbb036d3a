"""PatchLayout reads a vision transformer's token layout from its config, and the tiny VLMs
build offline and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from llmattr._core.errors import InputError
from llmattr.vision.layout import PatchLayout
from llmattr.vision.tiny_models import tiny_llava, tiny_qwen2_vl


def _vit(config: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return T.AutoModel.from_config(config).eval()


@pytest.mark.parametrize(
    "config",
    [
        T.ViTConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        ),
        T.DeiTConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        ),
        T.Dinov2WithRegistersConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_register_tokens=3,
        ),
        T.CLIPVisionConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        ),
        T.SiglipVisionConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        ),
    ],
    ids=["vit", "deit", "dinov2-registers", "clip", "siglip"],
)
def test_token_count_matches_the_models_hidden_states(config: object) -> None:
    layout = PatchLayout.from_config(config)
    model = _vit(config)
    with torch.no_grad():
        hidden = model(pixel_values=torch.rand(2, 3, 16, 16), output_hidden_states=True)
    tokens = hidden.hidden_states[-1]
    assert layout.grid == (4, 4)
    layout.check_tokens(tokens.shape[1])
    grid = layout.to_grid(tokens)
    assert grid.shape == (2, tokens.shape[2], 4, 4)
    # the patch at row 1, column 2 is token n_prefix + 1 * 4 + 2
    assert torch.equal(grid[:, :, 1, 2], tokens[:, layout.n_prefix + 6])


def test_pixel_mask_is_patch_index_in_token_order() -> None:
    layout = PatchLayout((2, 3), (2, 4), 1)
    mask = layout.pixel_mask()
    assert mask.shape == (4, 12) and layout.image_size == (4, 12)
    assert mask[0, 0] == 0 and mask[1, 7] == 1 and mask[3, 11] == 5 and mask[2, 0] == 3
    assert torch.equal(torch.bincount(mask.flatten()), torch.full((6,), 8))


def test_bad_layouts_are_refused_clearly() -> None:
    with pytest.raises(InputError, match="not a multiple of the patch size"):
        PatchLayout.from_config(T.ViTConfig(image_size=30, patch_size=4))
    with pytest.raises(InputError, match="no patch_size"):
        PatchLayout.from_config(T.LlamaConfig())
    layout = PatchLayout.from_config(T.ViTConfig(image_size=16, patch_size=4))
    with pytest.raises(InputError, match="has 10 tokens"):
        layout.to_grid(torch.zeros(1, 10, 8))


def _image() -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype("uint8"))


def test_tiny_llava_builds_offline_and_generates() -> None:
    model, processor = tiny_llava(dtype=torch.float64)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "what colour is the cat ?"}],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image> what colour is the cat ? ASSISTANT:"
    inputs = processor(text=prompt, images=_image(), return_tensors="pt")
    image_id = model.config.image_token_index
    assert int((inputs["input_ids"] == image_id).sum()) == 16  # a 4x4 patch grid
    assert PatchLayout.from_config(model).grid == (4, 4)
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_tiny_qwen2_vl_batches_images_like_single_calls() -> None:
    model, processor = tiny_qwen2_vl(dtype=torch.float64)
    prompt = (
        "USER: <|vision_start|> <|image_pad|> <|vision_end|> what colour is the cat ? ASSISTANT:"
    )
    image = _image()
    one = processor(prompt, images=image)
    two = processor([prompt, prompt], images=[image, image.transpose(Image.FLIP_LEFT_RIGHT)])
    assert one["image_grid_thw"].tolist() == [[1, 4, 6]]  # 40x48 -> 56x84: 4x6 patches of 14
    assert int(one["mm_token_type_ids"].sum()) == 6  # merged 2x2 -> 6 image tokens
    with torch.no_grad():
        alone = model(**one).logits
        batched = model(**two).logits
    torch.testing.assert_close(batched[0], alone[0])
    assert not torch.allclose(batched[1], alone[0])  # the flipped image changes the output
