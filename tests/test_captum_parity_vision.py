"""ImageMaskInput and LLMAttribution on a tiny LLaVA against Captum 0.9 itself (float64).

Captum's exact mode (``use_cached_outputs=False``: token by token, no cache) is the reference;
its default cached mode drops the image after the first step under transformers 5 and returns
zeros, which is shown here too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import llmattr
from llmattr.vision.image_input import ImageMaskInput
from llmattr.vision.tiny_models import tiny_llava

ca = pytest.importorskip("captum.attr")

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "USER: <image> what colour is the cat ? ASSISTANT:"
TARGET = "red cat"


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(32, 32, dtype=torch.long)
    m[:, 16:] = 1
    m[16:] += 2
    m[:8, :8] = 5  # ids need not be contiguous
    return m


def _inputs(llava, image, mask, **kw):
    _, proc = llava

    def process(im):
        return proc(text=PROMPT, images=im, return_tensors="pt")

    return ImageMaskInput(image, mask=mask, processor_fn=process, **kw), ca.ImageMaskInput(
        image, mask=mask, processor_fn=process, **kw
    )


def assert_same(ours, theirs) -> None:
    """Same tokens and shapes; values equal to Captum's float32 accumulation."""
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens
    assert ours.seq_attr.shape == theirs.seq_attr.shape
    torch.testing.assert_close(ours.seq_attr, theirs.seq_attr.double(), atol=1e-6, rtol=1e-5)
    if theirs.token_attr is None:
        assert ours.token_attr is None
    else:
        assert ours.token_attr.shape == theirs.token_attr.shape
        torch.testing.assert_close(
            ours.token_attr, theirs.token_attr.double(), atol=1e-6, rtol=1e-5
        )
    assert float(ours.seq_attr.abs().max()) > 1e-3  # the comparison is not vacuous


def test_captum_cached_mode_returns_zeros_where_ours_does_not(llava, image, mask):
    model, proc = llava
    ours_inp, their_inp = _inputs(llava, image, mask)
    theirs = ca.LLMAttribution(ca.FeatureAblation(model), proc.tokenizer).attribute(
        their_inp, target=TARGET
    )  # Captum's default: use_cached_outputs=True
    assert float(theirs.seq_attr.abs().max()) < 1e-6
    ours = llmattr.LLMAttribution(llmattr.FeatureAblation(model), proc.tokenizer).attribute(
        ours_inp, target=TARGET
    )  # use_cached_outputs=True accepted, changes nothing
    assert float(ours.seq_attr.abs().max()) > 1e-3


def test_feature_ablation_matches_captum_exact_mode(llava, image, mask):
    model, proc = llava
    ours_inp, their_inp = _inputs(llava, image, mask)
    theirs = ca.LLMAttribution(ca.FeatureAblation(model), proc.tokenizer).attribute(
        their_inp, target=TARGET, use_cached_outputs=False
    )
    ours = llmattr.LLMAttribution(llmattr.FeatureAblation(model), proc.tokenizer).attribute(
        ours_inp, target=TARGET
    )
    assert_same(ours, theirs)
    assert ours.input_tokens == ["image_feature_0", "image_feature_1", "image_feature_2",
                                 "image_feature_3", "image_feature_5"]  # fmt: skip


def test_shapley_value_sampling_seeded_matches_captum(llava, image, mask):
    model, proc = llava
    ours_inp, their_inp = _inputs(llava, image, mask, baseline=(0, 0, 0))
    torch.manual_seed(4)
    theirs = ca.LLMAttribution(ca.ShapleyValueSampling(model), proc.tokenizer).attribute(
        their_inp, target=TARGET, use_cached_outputs=False, n_samples=2
    )
    torch.manual_seed(4)
    ours = llmattr.LLMAttribution(llmattr.ShapleyValueSampling(model), proc.tokenizer).attribute(
        ours_inp, target=TARGET, n_samples=2, perturbations_per_eval=3
    )
    assert_same(ours, theirs)


def test_generated_target_matches_captum(llava, image, mask):
    model, proc = llava
    ours_inp, their_inp = _inputs(llava, image, mask)
    gen_args = {"max_new_tokens": 3, "do_sample": False}
    theirs = ca.LLMAttribution(ca.FeatureAblation(model), proc.tokenizer).attribute(
        their_inp, gen_args=gen_args, use_cached_outputs=False
    )
    ours = llmattr.LLMAttribution(llmattr.FeatureAblation(model), proc.tokenizer).attribute(
        ours_inp, gen_args=gen_args
    )
    assert len(ours.output_tokens) == 3
    assert_same(ours, theirs)


def test_input_surface_matches_captum(image, mask):
    ours, theirs = ImageMaskInput(image, mask=mask), ca.ImageMaskInput(image, mask=mask)
    assert ours.n_itp_features == theirs.n_itp_features
    assert ours.mask_id_to_idx == theirs.mask_id_to_idx and ours.values == theirs.values
    torch.testing.assert_close(ours.to_tensor(), theirs.to_tensor())
    attr = torch.randn(2, ours.n_itp_features)
    torch.testing.assert_close(ours.format_attr(attr), theirs.format_attr(attr))
    # Captum's format_pixel_attr returns (1, H, W) for a (1, n) input, as ours does
    torch.testing.assert_close(ours.format_pixel_attr(attr[:1]), theirs.format_pixel_attr(attr[:1]))
    for a, b in zip(ours.get_mask_list(), theirs.get_mask_list()):
        assert torch.equal(a, b)
    present = torch.tensor([[1, 0, 1, 0, 1]])
    assert np.array_equal(np.array(ours.to_model_input(present)),
                          np.array(theirs.to_model_input(present)))  # fmt: skip
    masks = [mask == 0, (mask == 1) | (mask == 2)]  # overlapping-capable mask lists
    ours_l, theirs_l = (
        ImageMaskInput(image, mask_list=masks),
        ca.ImageMaskInput(image, mask_list=masks),
    )
    torch.testing.assert_close(ours_l.format_pixel_attr(attr[:1, :2]),
                               theirs_l.format_pixel_attr(attr[:1, :2]))  # fmt: skip
    assert np.array_equal(np.array(ours_l.to_model_input(torch.tensor([[0, 1]]))),
                          np.array(theirs_l.to_model_input(torch.tensor([[0, 1]]))))  # fmt: skip
