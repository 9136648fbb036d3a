"""Patch attribution and token Grad-CAM on tiny random ViT / DeiT / CLIP vision models."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as tf

from llmattr import FeatureAblation, LayerIntegratedGradients
from llmattr._core.errors import InputError
from llmattr.vision.layout import PatchLayout
from llmattr.vision.token_cam import GuidedTokenGradCam, TokenGradCam
from llmattr.vision.vit import (
    PatchIntegratedGradients,
    find_patch_embedding,
    logits_forward,
    patch_feature_mask,
)

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def vit(**kw: object) -> tf.ViTForImageClassification:
    config = tf.ViTConfig(image_size=16, patch_size=4, num_labels=3, **SMALL, **kw)
    return tf.ViTForImageClassification(config).eval().double()


def deit() -> tf.DeiTForImageClassification:
    config = tf.DeiTConfig(image_size=16, patch_size=4, num_labels=3, **SMALL)
    model = tf.DeiTForImageClassification(config).eval().double()
    # DeiT initializes its class, distillation and position embeddings to zero: with a black
    # image every token is then zero, and LayerNorm (eps 1e-12) is not smooth there
    emb = model.deit.embeddings
    with torch.no_grad():
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
            p.normal_()
    return model


def dino_registers() -> tf.Dinov2WithRegistersForImageClassification:
    config = tf.Dinov2WithRegistersConfig(
        image_size=16, patch_size=4, num_labels=3, num_register_tokens=2, **SMALL
    )
    return tf.Dinov2WithRegistersForImageClassification(config).eval().double()


def first_block(model):
    for name, module in model.named_modules():
        if name.endswith(("layers.0", "layer.0")):
            return module
    raise AssertionError("no block")


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, dtype=torch.float64)


def test_patch_ablation_equals_brute_force(pixels: torch.Tensor) -> None:
    model = vit()
    forward = logits_forward(model)
    mask = patch_feature_mask(model, pixels)
    attr = FeatureAblation(forward).attribute(
        pixels, baselines=0.5, target=1, feature_mask=mask, perturbations_per_eval=5
    )
    with torch.no_grad():
        full = forward(pixels)[:, 1]
        for r in range(4):
            for c in range(4):
                painted = pixels.clone()
                painted[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.5
                expected = full - forward(painted)[:, 1]
                got = attr[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
                torch.testing.assert_close(got, expected[:, None, None, None].expand_as(got))


def test_patch_mask_token_order() -> None:
    mask = patch_feature_mask(vit())
    assert mask.shape == (1, 1, 16, 16)
    assert mask[0, 0, 0, 4] == 1 and mask[0, 0, 4, 0] == 4 and mask[0, 0, 15, 15] == 15


@pytest.mark.parametrize("build", [vit, deit])
def test_patch_ig_completeness_and_hand_lig(build, pixels: torch.Tensor) -> None:
    model = build()
    forward = logits_forward(model)
    attr, delta = PatchIntegratedGradients(model).attribute(
        pixels, target=2, n_steps=64, return_convergence_delta=True
    )
    assert attr.shape == (2, 4, 4)
    with torch.no_grad():
        gap = forward(pixels)[:, 2] - forward(torch.zeros_like(pixels))[:, 2]
    torch.testing.assert_close(attr.sum((1, 2)), gap, atol=1e-6, rtol=1e-5)
    assert delta.abs().max() < 1e-6
    layer = find_patch_embedding(model)
    by_hand = LayerIntegratedGradients(forward, layer).attribute(pixels, target=2, n_steps=64)
    torch.testing.assert_close(attr, by_hand.sum(-1).reshape(2, 4, 4))


def test_patch_ig_on_a_conv_patch_embedding(pixels: torch.Tensor) -> None:
    config = tf.CLIPVisionConfig(image_size=16, patch_size=4, projection_dim=8, **SMALL)
    model = tf.CLIPVisionModelWithProjection(config).eval().double()
    pig = PatchIntegratedGradients(logits_forward(model, output="image_embeds"))
    attr, delta = pig.attribute(pixels, target=0, n_steps=64, return_convergence_delta=True)
    assert attr.shape == (2, 4, 4) and delta.abs().max() < 1e-6
    embeds = logits_forward(model, output="image_embeds")
    with torch.no_grad():
        gap = embeds(pixels)[:, 0] - embeds(torch.zeros_like(pixels))[:, 0]
    torch.testing.assert_close(attr.sum((1, 2)), gap, atol=1e-6, rtol=1e-5)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="patch_size"):
        patch_feature_mask(tf.BertConfig())
    with pytest.raises(InputError, match="multiple of the patch size"):
        patch_feature_mask(vit(), torch.zeros(1, 3, 15, 16))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        PatchIntegratedGradients(vit()).attribute(torch.zeros(3, 16, 16), target=0)
    with pytest.raises(InputError, match="4 channels but the model expects 3"):
        PatchIntegratedGradients(vit()).attribute(torch.zeros(1, 4, 16, 16), target=0)
    with pytest.raises(InputError, match="no tensor 'nope'"):
        logits_forward(vit(), output="nope")(torch.zeros(1, 3, 16, 16, dtype=torch.float64))


def _hand_cam(model, layer, pixels, target, n_prefix):
    """pytorch-grad-cam's ViT recipe: reshape_transform drops the prefix tokens and moves the
    hidden dimension to channels; weights = gradients averaged over the grid; ReLU of the sum."""
    store = {}
    handle = layer.register_forward_hook(lambda m, a, o: store.__setitem__("a", o))
    logits = model(pixel_values=pixels).logits
    handle.remove()
    act = store["a"]
    (grad,) = torch.autograd.grad(logits[:, target].sum(), act)

    def reshape_transform(t):
        return t[:, n_prefix:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    a, g = reshape_transform(act.detach()), reshape_transform(grad)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))


@pytest.mark.parametrize("build,n_prefix", [(vit, 1), (deit, 2), (dino_registers, 3)])
def test_token_gradcam_equals_hand_computation(build, n_prefix, pixels: torch.Tensor) -> None:
    model = build()
    layer = first_block(model)
    cam = TokenGradCam(model, layer).attribute(pixels, target=1, relu_attributions=True)
    assert cam.shape == (2, 1, 4, 4)
    torch.testing.assert_close(cam, _hand_cam(model, layer, pixels, 1, n_prefix))
    assert cam.abs().sum() > 0
    raw = TokenGradCam(model, layer).attribute(pixels, target=1, attr_dim_summation=False)
    assert raw.shape == (2, 16, 4, 4)


def test_token_gradcam_warns_on_last_block(pixels: torch.Tensor) -> None:
    model = vit()
    with pytest.warns(UserWarning, match="block before the last"):
        cam = TokenGradCam(model, model.vit.layers[-1]).attribute(pixels, target=0)
    assert torch.count_nonzero(cam) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam = TokenGradCam(model, model.vit.layers[-1].layernorm_before).attribute(
            pixels, target=0, attribute_to_layer_input=True
        )
    assert torch.count_nonzero(cam) > 0


def test_token_gradcam_token_mismatch_and_hooks_restored(pixels: torch.Tensor) -> None:
    model = vit()
    embed = model.vit.embeddings.patch_embeddings  # 16 patch tokens, no class token
    with pytest.raises(InputError, match="16 tokens"):
        TokenGradCam(model, embed).attribute(pixels, target=0)
    wrong = PatchLayout((2, 2), (8, 8), 1)
    with pytest.raises(InputError, match="2x2"):
        TokenGradCam(model, model.vit.layers[0], layout=wrong).attribute(pixels, target=0)

    def boom(*_):
        raise RuntimeError("boom")

    handle = model.classifier.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        TokenGradCam(model, model.vit.layers[0]).attribute(pixels, target=0)
    handle.remove()
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_guided_token_gradcam(pixels: torch.Tensor) -> None:
    model = vit()  # GELU only: guided backpropagation is the plain gradient
    layer = model.vit.layers[0]
    got = GuidedTokenGradCam(model, layer).attribute(pixels, target=2)
    x = pixels.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(pixel_values=x).logits[:, 2].sum(), x)
    cam = _hand_cam(model, layer, pixels, 2, 1)
    up = cam.repeat_interleave(4, 2).repeat_interleave(4, 3)
    torch.testing.assert_close(got, grad * up)
