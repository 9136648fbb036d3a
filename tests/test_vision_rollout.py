"""Attention rollout (Abnar & Zuidema) and gradient-weighted rollout (Chefer et al.)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from llmattr._core.errors import InputError
from llmattr.vision.rollout import (
    AttentionRollout,
    GradientAttentionRollout,
    _discard,
    fuse_heads,
    rollout,
)

SMALL = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)


def vit(layers: int = 2) -> tf.ViTForImageClassification:
    config = tf.ViTConfig(
        image_size=16, patch_size=4, num_labels=3, num_hidden_layers=layers, **SMALL
    )
    return tf.ViTForImageClassification(config).eval().double()


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, dtype=torch.float64)


def _attentions(model, pixels):
    model.set_attn_implementation("eager")
    try:
        return model(pixel_values=pixels, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")


def test_uniform_attention_closed_form(pixels: torch.Tensor) -> None:
    model = vit(layers=1)
    attn = model.vit.layers[0].attention
    with torch.no_grad():  # zero queries and keys: every token attends uniformly (1 / 17)
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    got = AttentionRollout(model).attribute(pixels)
    torch.testing.assert_close(got, torch.full((2, 4, 4), 0.5 / 17, dtype=torch.float64))


def test_rollout_matches_hand_product_and_rows_sum_to_one(pixels: torch.Tensor) -> None:
    model = vit(layers=3)
    assert model.config._attn_implementation == "sdpa"
    got = AttentionRollout(model).attribute(pixels, start_layer=1)
    assert model.config._attn_implementation == "sdpa"  # switched back after the call
    attentions = _attentions(model, pixels)
    eye = torch.eye(17, dtype=torch.float64)
    hand = eye
    for a in attentions[1:]:
        step = 0.5 * a.mean(1) + 0.5 * eye
        hand = (step / step.sum(-1, keepdim=True)) @ hand
    torch.testing.assert_close(got, hand[:, 0, 1:].reshape(2, 4, 4))
    matrix = rollout(attentions, "max", discard_ratio=0.3)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(2, 17, dtype=torch.float64))


def test_head_fusion_and_discard_ratio(pixels: torch.Tensor) -> None:
    model = vit()
    attentions = _attentions(model, pixels)
    torch.testing.assert_close(fuse_heads(attentions[0], "min"), attentions[0].amin(1))
    plain = AttentionRollout(model).attribute(pixels)
    torch.testing.assert_close(AttentionRollout(model).attribute(pixels, discard_ratio=0.0), plain)
    fused = AttentionRollout(model).attribute(pixels, head_fusion="max", discard_ratio=0.5)
    assert not torch.allclose(fused, plain)
    # discarding zeroes the lowest half of each example's fused entries, except [CLS, CLS]
    fused0 = attentions[0].mean(1).detach()
    thinned = _discard(fused0, 0.5)
    for n in range(2):
        zeroed = (thinned[n] == 0).flatten()
        assert not zeroed[0]
        k = int(17 * 17 * 0.5)
        assert int(zeroed.sum()) in (k, k - 1)
        flat = fused0[n].flatten()
        assert flat[~zeroed].min() >= flat[zeroed].max()
        torch.testing.assert_close(thinned[n].flatten()[~zeroed], flat[~zeroed])
    with pytest.raises(InputError, match="discard_ratio"):
        AttentionRollout(model).attribute(pixels, discard_ratio=1.0)
    with pytest.raises(InputError, match="head_fusion"):
        AttentionRollout(model).attribute(pixels, head_fusion="median")
    with pytest.raises(InputError, match="start_layer"):
        AttentionRollout(model).attribute(pixels, start_layer=2)


def test_gradient_rollout_one_layer_by_hand(pixels: torch.Tensor) -> None:
    model = vit(layers=1)
    got = [GradientAttentionRollout(model).attribute(pixels, target=k) for k in (0, 1)]
    assert not torch.allclose(got[0], got[1])
    model.set_attn_implementation("eager")
    out = model(pixel_values=pixels, output_attentions=True)
    model.set_attn_implementation("sdpa")
    (grad,) = torch.autograd.grad(out.logits[:, 1].sum(), out.attentions[0])
    cam = (grad * out.attentions[0]).clamp(min=0).mean(1)
    # R = I + cam @ I: the class token's row over the patches is cam's
    torch.testing.assert_close(got[1], cam[:, 0, 1:].detach().reshape(2, 4, 4))
    assert model.config._attn_implementation == "sdpa"


def test_models_with_other_prefixes(pixels: torch.Tensor) -> None:
    config = tf.Dinov2WithRegistersConfig(
        image_size=16, patch_size=4, num_hidden_layers=1, num_register_tokens=2, **SMALL
    )
    dino = tf.Dinov2WithRegistersModel(config).eval().double()
    out = AttentionRollout(dino).attribute(pixels)
    assert out.shape == (2, 4, 4)
    (a,) = _attentions(dino, pixels)
    step = 0.5 * a.mean(1) + 0.5 * torch.eye(19, dtype=torch.float64)
    torch.testing.assert_close(out, step[:, 0, 3:].reshape(2, 4, 4))
    siglip = tf.SiglipVisionModel(
        tf.SiglipVisionConfig(image_size=16, patch_size=4, num_hidden_layers=1, **SMALL)
    )
    siglip = siglip.eval().double()
    got = AttentionRollout(siglip).attribute(pixels)  # no class token: the mean row
    (a,) = _attentions(siglip, pixels)
    step = 0.5 * a.mean(1) + 0.5 * torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(got, step.mean(1).reshape(2, 4, 4))


def test_bad_models_and_inputs(pixels: torch.Tensor) -> None:
    with pytest.raises(InputError, match="patch_size"):
        AttentionRollout(tf.BertModel(tf.BertConfig(**SMALL, num_hidden_layers=1)))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        AttentionRollout(vit()).attribute(pixels[0])
    with pytest.raises(InputError, match="start_layer"):
        GradientAttentionRollout(vit()).attribute(pixels, target=0, start_layer=-1)
    clip = tf.CLIPModel(
        tf.CLIPConfig(
            text_config=dict(vocab_size=20, num_hidden_layers=1, **SMALL),
            vision_config=dict(image_size=16, patch_size=4, num_hidden_layers=1, **SMALL),
            projection_dim=8,
        )
    )
    with pytest.raises(InputError, match="CLIPSimilarity"):
        GradientAttentionRollout(clip)
    assert AttentionRollout(clip.double()).attribute(pixels).shape == (2, 4, 4)


def test_attention_implementation_restored_on_error(pixels: torch.Tensor) -> None:
    model = vit()

    def boom(*_):
        raise RuntimeError("boom")

    handle = model.vit.layers[1].register_forward_hook(boom)
    try:
        for method in (AttentionRollout(model), GradientAttentionRollout(model)):
            with pytest.raises(RuntimeError, match="boom"):
                method.attribute(pixels)
            assert model.config._attn_implementation == "sdpa"
    finally:
        handle.remove()
