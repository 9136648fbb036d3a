"""CLIP image-text similarity attributed to image patches and text tokens (tiny random CLIP)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from llmattr._core.errors import InputError
from llmattr.vision.clip import CLIPAttribution, CLIPSimilarity

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
PAD, BOS, EOS = 0, 48, 49


@pytest.fixture
def clip() -> tf.CLIPModel:
    text = dict(
        vocab_size=50,
        max_position_embeddings=8,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **SMALL,
    )
    config = tf.CLIPConfig(
        text_config=text,
        vision_config=dict(image_size=16, patch_size=8, **SMALL),
        projection_dim=8,
    )
    return tf.CLIPModel(config).eval().double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ids = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 9, 10, EOS, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    return pixels, ids, mask


def test_similarity_is_the_logits_diagonal(clip, batch) -> None:
    pixels, ids, mask = batch
    with torch.no_grad():
        full = clip(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_image
        logit = CLIPSimilarity(clip)(pixels, ids, mask)
        cosine = CLIPSimilarity(clip, "cosine")(pixels, ids, mask)
    torch.testing.assert_close(logit, full.diagonal())
    torch.testing.assert_close(logit, cosine * clip.logit_scale.exp())


def test_ablation_equals_brute_force(clip, batch) -> None:
    pixels, ids, mask = batch
    result = CLIPAttribution(clip).attribute(pixels, ids, mask, method="ablation", baselines=0.25)
    assert result.image_attr.shape == (2, 2, 2) and result.text_attr.shape == (2, 5)
    f = CLIPSimilarity(clip)
    with torch.no_grad():
        full = f(pixels, ids, mask)
        torch.testing.assert_close(result.score, full)
        for r in range(2):
            for c in range(2):
                painted = pixels.clone()
                painted[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 0.25
                torch.testing.assert_close(result.image_attr[:, r, c], full - f(painted, ids, mask))
        special = (ids == BOS) | (ids == EOS) | (ids == PAD) | (mask == 0)
        for t in range(5):
            dropped = torch.where(special[:, t], ids[:, t], PAD)
            dropped = torch.cat([ids[:, :t], dropped[:, None], ids[:, t + 1 :]], 1)
            torch.testing.assert_close(result.text_attr[:, t], full - f(pixels, dropped, mask))
        # special tokens and padding are not features (removing EOS would move the pooling)
        assert (result.text_attr[special] == 0).all() and (result.text_attr[~special] != 0).all()
    batched = CLIPAttribution(clip).attribute(
        pixels, ids, mask, method="ablation", baselines=0.25, perturbations_per_eval=3
    )
    torch.testing.assert_close(batched.image_attr, result.image_attr)
    torch.testing.assert_close(batched.text_attr, result.text_attr)
    shares = result.shares()
    torch.testing.assert_close(shares["image"] + shares["text"], torch.ones(2, dtype=torch.float64))


def test_ig_joint_completeness(clip, batch) -> None:
    pixels, ids, mask = batch
    attribution = CLIPAttribution(clip, score="cosine")
    result = attribution.attribute(pixels, ids, mask, method="ig", n_steps=64)
    assert result.delta is not None and result.delta.abs().max() < 1e-6
    # f at the baseline embeddings: both embedding modules' outputs replaced by their values on
    # the baseline inputs (black image, pad tokens, special tokens kept); which token is pooled
    # still follows ids
    f = CLIPSimilarity(clip, "cosine")
    special = (ids == BOS) | (ids == EOS) | (ids == PAD) | (mask == 0)
    base_pixels, base_ids = torch.zeros_like(pixels), torch.where(special, ids, PAD)
    with torch.no_grad():
        base_patch = attribution.patch_embedding(base_pixels)
        base_tokens = attribution.token_embedding(base_ids)
        handles = [
            attribution.patch_embedding.register_forward_hook(lambda m, a, o: base_patch),
            attribution.token_embedding.register_forward_hook(lambda m, a, o: base_tokens),
        ]
        try:
            at_baseline = f(pixels, ids, mask)
        finally:
            for h in handles:
                h.remove()
        full = f(pixels, ids, mask)
    total = result.image_attr.sum((1, 2)) + result.text_attr.sum(1)
    torch.testing.assert_close(total, full - at_baseline, atol=1e-6, rtol=1e-5)
    assert result.image_attr.abs().sum() > 0 and result.text_attr.abs().sum() > 0
    assert (result.text_attr[special] == 0).all()


def test_bad_inputs(clip, batch) -> None:
    pixels, ids, mask = batch
    attribution = CLIPAttribution(clip)
    with pytest.raises(InputError, match="2 images but 1 texts"):
        attribution.attribute(pixels, ids[:1], mask[:1])
    with pytest.raises(InputError, match="integer tensor"):
        attribution.attribute(pixels, ids.double(), mask)
    with pytest.raises(InputError, match="method"):
        attribution.attribute(pixels, ids, mask, method="lime")
    with pytest.raises(InputError, match="attention_mask"):
        attribution.attribute(pixels, ids, mask[:, :3])
    with pytest.raises(InputError, match="score"):
        CLIPSimilarity(clip, "dot")
    with pytest.raises(InputError, match="CLIP-like"):
        CLIPSimilarity(clip.vision_model)


def test_token_gradcam_on_the_similarity(clip, batch) -> None:
    from llmattr.vision.token_cam import TokenGradCam

    pixels, ids, mask = batch
    # one block: its output's patch tokens never reach the pooled class token (the trap), so
    # take the input of its first LayerNorm, which holds every token
    layer = clip.vision_model.encoder.layers[0].layer_norm1
    with pytest.warns(UserWarning, match="all zero"):
        TokenGradCam(CLIPSimilarity(clip), clip.vision_model.encoder.layers[0]).attribute(
            pixels, additional_forward_args=(ids, mask)
        )
    cam = TokenGradCam(CLIPSimilarity(clip), layer).attribute(
        pixels, additional_forward_args=(ids, mask), attribute_to_layer_input=True
    )
    assert cam.shape == (2, 1, 2, 2) and cam.abs().sum() > 0
    store = {}
    handle = layer.register_forward_pre_hook(lambda m, a: store.__setitem__("a", a[0]))
    score = CLIPSimilarity(clip)(pixels, ids, mask)
    handle.remove()
    (grad,) = torch.autograd.grad(score.sum(), store["a"])
    g, a = grad[:, 1:].transpose(1, 2), store["a"].detach()[:, 1:].transpose(1, 2)
    hand = (g.mean(-1, keepdim=True) * a).sum(1).reshape(2, 1, 2, 2)
    torch.testing.assert_close(cam, hand)
