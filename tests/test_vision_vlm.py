"""LLMAttribution on vision-language models: ImageMaskInput, MultimodalInput, the VLM scorer.

Every number is checked against a brute-force recomputation: the region painted with numpy, the
processor and the model called one input at a time, float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from llmattr import (
    FeatureAblation,
    KernelShap,
    Lime,
    LLMAttribution,
    ShapleyValues,
    ShapleyValueSampling,
)
from llmattr._core.errors import InputError
from llmattr.text.result import LLMAttributionResult
from llmattr.vision.image_input import ImageMaskInput
from llmattr.vision.multimodal import MultimodalInput
from llmattr.vision.tiny_models import tiny_llava, tiny_qwen2_vl

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "USER: <image> what colour is the cat ? ASSISTANT:"
QWEN_PROMPT = (
    "USER: <|vision_start|> <|image_pad|> <|vision_end|> what colour is the cat ? ASSISTANT:"
)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2_vl(dtype=torch.float64)


def _image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _quadrants(size: int, ids=(0, 3, 7, 9)) -> torch.Tensor:
    h = size // 2
    mask = torch.empty(size, size, dtype=torch.long)
    mask[:h, :h], mask[:h, h:], mask[h:, :h], mask[h:, h:] = ids
    return mask


def _logp(model, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probs of ``target`` after one processor output (one forward)."""
    ids = inputs["input_ids"]
    n, tail = ids.shape[1], target[:-1].unsqueeze(0)
    kw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in kw:
        kw["mm_token_type_ids"] = torch.cat([kw["mm_token_type_ids"], torch.zeros_like(tail)], 1)
    full = torch.cat([ids, tail], 1)
    if hasattr(model, "model") and hasattr(model.model, "rope_deltas"):
        model.model.rope_deltas = None
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), **kw).logits
    logp = logits[0, n - 1 : n - 1 + target.numel()].log_softmax(-1)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def _painted(image: Image.Image, region: np.ndarray, colour=(255, 255, 255)) -> Image.Image:
    array = np.array(image)
    array[region] = colour
    return Image.fromarray(array)


def _brute_force(model, process, image, mask, target):
    """(1 + K, n) FeatureAblation attributions, one region painted at a time."""
    base = _logp(model, process(image), target)
    rows = []
    for mid in torch.unique(mask).tolist():
        logp = _logp(model, process(_painted(image, (mask == mid).numpy())), target)
        rows.append(torch.cat([(base - logp).sum(0, keepdim=True), base - logp]))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("ppe", [1, 4])
def test_feature_ablation_exact_llava(llava, ppe):
    model, proc = llava
    image, mask = _image(32), _quadrants(32)

    def process(im):
        return proc(text=PROMPT, images=im, return_tensors="pt")

    target = torch.tensor(proc.tokenizer.encode("red cat", add_special_tokens=False))
    inp = ImageMaskInput(image, mask=mask, processor_fn=process)
    attr = LLMAttribution(FeatureAblation(model), proc.tokenizer)
    res = attr.attribute(inp, target="red cat", perturbations_per_eval=ppe)
    want = _brute_force(model, process, image, mask, target)
    assert res.input_tokens == ["image_feature_0", "image_feature_3", "image_feature_7",
                                "image_feature_9"]  # fmt: skip
    assert res.output_tokens == ["red", "cat"]
    torch.testing.assert_close(res.seq_attr, want[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(res.token_attr, want[1:], atol=1e-10, rtol=0)
    assert res.seq_attr.abs().max() > 1e-4  # not Captum's cached-mode zeros
    torch.testing.assert_close(res.output_probs, _logp(model, process(image), target).exp())


@pytest.mark.parametrize("ppe", [1, 4])
def test_feature_ablation_exact_qwen2_vl(qwen, ppe):
    model, proc = qwen
    image, mask = _image(56), _quadrants(56, ids=(0, 1, 2, 3))

    def process(im):
        return proc(QWEN_PROMPT, images=im)

    target = torch.tensor(proc.tokenizer.encode("blue dog .", add_special_tokens=False))
    model.model.rope_deltas = torch.full((1, 1), 7)  # stale state must neither leak in nor out
    res = LLMAttribution(FeatureAblation(model), proc.tokenizer).attribute(
        ImageMaskInput(image, mask=mask, processor_fn=process), target=target,
        perturbations_per_eval=ppe,
    )  # fmt: skip
    assert model.model.rope_deltas.tolist() == [[7]]
    want = _brute_force(model, process, image, mask, target)
    torch.testing.assert_close(res.seq_attr, want[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(res.token_attr, want[1:], atol=1e-10, rtol=0)
    assert res.seq_attr.abs().max() > 1e-6


def test_batch_processor_and_chunking_give_the_same_numbers(llava):
    model, proc = llava
    image, mask = _image(32, 1), _quadrants(32)
    one = ImageMaskInput(
        image, mask=mask, processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt")
    )
    batched = ImageMaskInput(
        image, mask=mask,
        processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt"),
        batch_processor_fn=lambda ims: proc(
            text=[PROMPT] * len(ims), images=ims, return_tensors="pt"
        ),
    )  # fmt: skip
    attr = LLMAttribution(ShapleyValues(model), proc.tokenizer)
    a = attr.attribute(one, target="red cat", perturbations_per_eval=1)
    b = attr.attribute(batched, target="red cat", perturbations_per_eval=16)
    torch.testing.assert_close(a.token_attr, b.token_attr, atol=1e-10, rtol=0)


def test_shapley_values_efficiency(llava):
    """Exact Shapley values sum to f(all present) - f(all painted)."""
    model, proc = llava
    image, mask = _image(32, 2), _quadrants(32)

    def process(im):
        return proc(text=PROMPT, images=im, return_tensors="pt")

    target = torch.tensor(proc.tokenizer.encode("yes", add_special_tokens=False))
    res = LLMAttribution(ShapleyValues(model), proc.tokenizer).attribute(
        ImageMaskInput(image, mask=mask, processor_fn=process), target="yes"
    )
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    gap = _logp(model, process(image), target) - _logp(model, process(white), target)
    torch.testing.assert_close(res.seq_attr.sum(), gap.sum(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", [ShapleyValueSampling, Lime, KernelShap])
def test_every_perturbation_method_runs(llava, method):
    model, proc = llava
    inp = ImageMaskInput(
        _image(32), mask=_quadrants(32),
        processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt"),
    )  # fmt: skip
    kw = {"n_samples": 2} if method is ShapleyValueSampling else {"n_samples": 12}
    res = LLMAttribution(method(model), proc.tokenizer).attribute(
        inp, target="red cat", num_trials=2, **kw
    )
    assert res.seq_attr.shape == (4,)
    assert (res.token_attr is None) == (method is not ShapleyValueSampling)
    assert torch.isfinite(res.seq_attr).all()
    if method is not Lime:  # Lime's default Lasso (alpha 0.01) zeroes attributions this small
        assert res.seq_attr.abs().sum() > 0


def test_generated_target_and_skip_tokens(llava):
    model, proc = llava
    image, mask = _image(32), _quadrants(32)

    def process(im):
        return proc(text=PROMPT, images=im, return_tensors="pt")

    inp = ImageMaskInput(image, mask=mask, processor_fn=process)
    inputs = process(image)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    generated = out[0, inputs["input_ids"].shape[1] :]
    attr = LLMAttribution(FeatureAblation(model), proc.tokenizer)
    res = attr.attribute(inp, gen_args={"max_new_tokens": 3})
    given = attr.attribute(inp, target=generated)
    torch.testing.assert_close(res.token_attr, given.token_attr, atol=0, rtol=0)
    skip = attr.attribute(inp, target="red cat", skip_tokens=["cat"])
    assert skip.output_tokens == ["red"]
    prob = LLMAttribution(FeatureAblation(model), proc.tokenizer, attr_target="prob")
    p = prob.attribute(inp, target="red")
    target = torch.tensor(proc.tokenizer.encode("red", add_special_tokens=False))
    want = _brute_force(model, process, image, mask, target)  # log-probs: exp for probs
    base = _logp(model, process(image), target).exp()
    torch.testing.assert_close(p.seq_attr, base - (base.log() - want[0]).exp(), atol=1e-10, rtol=0)


# ---- the input: Captum's methods, pixels, bad input --------------------------------------------


def test_format_pixel_attr_sums_per_segment_and_overlaps():
    image, mask = _image(8), _quadrants(8)
    inp = ImageMaskInput(image, mask=mask)
    attr = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.float64)
    pixel = inp.format_pixel_attr(attr)
    assert pixel.shape == (1, 8, 8)
    for i, m in enumerate(inp.get_mask_list()):
        assert float(pixel[0][m].sum()) == pytest.approx(float(attr[0, i]) * int(m.sum()))
    a, b = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    a[:5], b[3:] = True, True
    over = ImageMaskInput(image, mask_list=[a, b])
    px = over.format_pixel_attr(torch.tensor([2.0, 5.0]))
    assert px[0, 0] == 2.0 and px[4, 0] == 7.0 and px[7, 0] == 5.0
    assert over.values == ["image_feature_0", "image_feature_1"] and over.n_itp_features == 2
    # painting: union of absent masks, nothing else changed; the input's image untouched
    before = np.array(image).copy()
    painted = np.array(over.perturbed_images(torch.tensor([[0.0, 1.0]]))[0])
    assert (painted[:5] == 255).all() and (painted[5:] == before[5:]).all()
    assert (np.array(over.image) == before).all() and (np.array(image) == before).all()
    assert ImageMaskInput(image).n_itp_features == 1  # the whole image as one feature


def test_named_and_object_baselines():
    pytest.importorskip("llmattr.vision.baselines")
    image, mask = _image(16), _quadrants(16)
    inp = ImageMaskInput(image, mask=mask, baseline="blur")
    out = np.array(inp.perturbed_images(torch.tensor([[0.0, 1, 1, 1]]))[0])
    assert (out[8:] == np.array(image)[8:]).all() and not (out[:8, :8] == 255).all()


def test_bad_input_is_refused_before_any_forward():
    image = _image(16)
    with pytest.raises(InputError, match=r"\(8, 8\).*16 x 16"):
        ImageMaskInput(image, mask=torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="must be >= 0"):
        ImageMaskInput(image, mask=torch.full((16, 16), -1))
    with pytest.raises(InputError, match="integer segment ids"):
        ImageMaskInput(image, mask=torch.full((16, 16), 0.5))
    with pytest.raises(InputError, match=r"mask_list\[1\]"):
        ImageMaskInput(image, mask_list=[torch.ones(16, 16).bool(), torch.ones(4, 4).bool()])
    for bad in [(256, 0, 0), (1, 2), "not-a-name", (1.0, 2, 3), (True, 0, 0), -1]:
        with pytest.raises((InputError, TypeError)):
            ImageMaskInput(image, baseline=bad)
    for mode in ["RGBA", "L"]:
        with pytest.warns(UserWarning, match="converted to RGB"):
            inp = ImageMaskInput(image.convert(mode))
        assert inp.image.mode == "RGB"
    floats = Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32))  # mode F, in [0, 1]
    for wide in [floats, floats.convert("I")]:
        with pytest.raises(InputError, match="Convert it to 8-bit"):
            ImageMaskInput(wide)


class _Refuse(nn.Module):
    """A model that fails the test if it is ever called."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran")


def test_processor_without_pixel_values_is_refused(llava):
    _, proc = llava
    inp = ImageMaskInput(
        _image(32), processor_fn=lambda im: proc.tokenizer("what", return_tensors="pt")
    )
    attr = LLMAttribution(FeatureAblation(_Refuse()), proc.tokenizer)
    with pytest.raises(InputError, match="no pixel_values"):
        attr.attribute(inp, target="red")


# ---- mixed modalities ------------------------------------------------------------------------


def _text_without(words: list[str], drop: int) -> str:
    return " ".join(w for i, w in enumerate(words) if i != drop)


@pytest.mark.parametrize("ppe", [1, 4])
def test_multimodal_feature_ablation_exact(llava, ppe):
    model, proc = llava
    image, mask = _image(32, 3), _quadrants(32)

    def process(im, text):
        return proc(text=text, images=im, return_tensors="pt")

    inp = MultimodalInput(image, PROMPT, process, mask=mask)
    assert inp.values[4:] == ["what", "colour", "is", "the", "cat", "?"]
    assert inp.modalities == ["image"] * 4 + ["text"] * 6
    res = LLMAttribution(FeatureAblation(model), proc.tokenizer).attribute(
        inp, target="red cat", perturbations_per_eval=ppe
    )
    target = torch.tensor(proc.tokenizer.encode("red cat", add_special_tokens=False))
    base = _logp(model, process(image, PROMPT), target)
    want = [base - _logp(model, process(_painted(image, (mask == m).numpy()), PROMPT), target)
            for m in torch.unique(mask).tolist()]  # fmt: skip
    words = PROMPT.split()
    for i in range(2, 8):  # the question's words (USER: <image> ... ASSISTANT: stay)
        want.append(base - _logp(model, process(image, _text_without(words, i)), target))
    want_t = torch.stack(want, 1)
    torch.testing.assert_close(res.token_attr, want_t, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.seq_attr, want_t.sum(0), atol=1e-10, rtol=0)
    shares = res.modality_shares()
    a = res.seq_attr.abs()
    assert shares["image"] == pytest.approx(float(a[:4].sum() / a.sum()))
    assert shares["image"] + shares["text"] == pytest.approx(1.0)
    signed = res.modality_shares(signed=True)
    assert signed["image"] == pytest.approx(float(res.seq_attr[:4].sum() / res.seq_attr.sum()))
    pixel = inp.format_pixel_attr(res.seq_attr)
    assert float(pixel.sum()) == pytest.approx(float((res.seq_attr[:4] * 256).sum()))
    back = LLMAttributionResult.from_dict(res.to_dict())
    assert back.modality_shares() == shares


class _OneModality(nn.Module):
    """A stub VLM whose logits depend on the image only, or on the text only."""

    def __init__(self, on: str, vocab: int) -> None:
        super().__init__()
        self.on, self.vocab = on, vocab
        self.head = nn.Linear(3, vocab).double()
        self.embed = nn.Embedding(vocab, 3).double()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, use_cache=None):
        if self.on == "image":
            x = pixel_values.double().mean((2, 3))[:, None, :]
        else:
            e = self.embed(input_ids) * attention_mask[..., None]
            x = e.cumsum(1)
        logits = self.head(x).expand(input_ids.shape[0], input_ids.shape[1], self.vocab)
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("on", ["image", "text"])
def test_modality_shares_of_a_one_modality_model(llava, on):
    _, proc = llava
    model = _OneModality(on, len(proc.tokenizer))
    inp = MultimodalInput(
        _image(32, 4), PROMPT, lambda im, t: proc(text=t, images=im, return_tensors="pt"),
        mask=_quadrants(32), baseline=(0, 0, 0),
    )  # fmt: skip
    res = LLMAttribution(FeatureAblation(model), proc.tokenizer).attribute(inp, target="red")
    shares = res.modality_shares()
    assert shares[on] == pytest.approx(1.0, abs=1e-12)
    assert shares["image" if on == "text" else "text"] == pytest.approx(0.0, abs=1e-12)


def test_text_results_have_text_shares_only():
    res = LLMAttributionResult(torch.tensor([1.0, -3.0]), None, ["a", "b"], ["x"])
    assert res.modality_shares() == {"image": 0.0, "text": 1.0}
    with pytest.raises(ValueError, match="sum to 0"):
        LLMAttributionResult(torch.tensor([1.0, -1.0]), None, ["a", "b"], ["x"]).modality_shares(
            signed=True
        )


def test_plot_image_heatmap(llava):
    pytest.importorskip("llmattr.viz.image_report")
    import matplotlib

    matplotlib.use("Agg")
    model, proc = llava
    inp = ImageMaskInput(
        _image(32), mask=_quadrants(32),
        processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt"),
    )  # fmt: skip
    res = LLMAttribution(FeatureAblation(model), proc.tokenizer).attribute(inp, target="red cat")
    for pos in (None, 1, (0, 2)):
        fig, ax = res.plot_image_heatmap(target_token_pos=pos)
        assert fig is not None and ax is not None
    fig, ax = inp.plot_mask_overlay(border_width=1)
    assert fig is not None
    with pytest.raises(InputError):
        LLMAttributionResult.from_dict(res.to_dict()).plot_image_heatmap()


def test_foil_and_a_list_of_inputs(llava):
    model, proc = llava
    inp = ImageMaskInput(
        _image(32, 5), mask=_quadrants(32),
        processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt"),
    )  # fmt: skip
    attr = LLMAttribution(FeatureAblation(model), proc.tokenizer)
    red, blue = attr.attribute([inp, inp], target="red")[0], attr.attribute(inp, target="blue")
    contrast = attr.attribute(inp, target="red", foil="blue")
    torch.testing.assert_close(contrast.seq_attr, red.seq_attr - blue.seq_attr, atol=1e-12, rtol=0)
    assert contrast.info["foil_tokens"] == ["blue"]


def test_bad_skip_tokens_and_too_long_targets_fail_before_generation(llava):
    _, proc = llava
    inp = ImageMaskInput(
        _image(32), processor_fn=lambda im: proc(text=PROMPT, images=im, return_tensors="pt")
    )
    attr = LLMAttribution(FeatureAblation(_Refuse()), proc.tokenizer)
    with pytest.raises(ValueError, match="skip token"):
        attr.attribute(inp, skip_tokens=["not-a-word"])
    refuse = _Refuse()
    refuse.config = type("C", (), {"text_config": type("T", (), {"max_position_embeddings": 30})})
    with pytest.raises(InputError, match="context of 30"):
        LLMAttribution(FeatureAblation(refuse), proc.tokenizer).attribute(
            inp, gen_args={"max_new_tokens": 20}
        )


@pytest.mark.parametrize("overlap", [False, True])
def test_painting_and_pixel_maps_equal_the_per_mask_definition(overlap):
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 7, 12, 40])[torch.randint(0, 4, (12, 10), generator=gen)]  # gaps
    if overlap:
        masks = [torch.rand(12, 10, generator=gen) > 0.5 for _ in range(5)]
        inp = ImageMaskInput(_image(12).resize((10, 12)), mask_list=masks)
    else:
        inp = ImageMaskInput(_image(12).resize((10, 12)), mask=ids)
        masks = [ids == k for k in (3, 7, 12, 40)]
    presence = (torch.rand(6, len(masks), generator=gen) > 0.5).float()
    expected = torch.stack(
        [torch.stack([m & (p[j] == 0) for j, m in enumerate(masks)]).any(0) for p in presence]
    )
    assert torch.equal(inp.removed_pixels(presence), expected)
    attr = torch.randn(3, len(masks), generator=gen, dtype=torch.float64)
    pixel = sum(attr[:, j, None, None] * m for j, m in enumerate(masks))
    torch.testing.assert_close(inp.format_pixel_attr(attr), pixel)


def test_removed_words_leave_single_spaces_and_no_leading_space():
    inp = MultimodalInput(
        _image(8), "what colour is it", lambda im, t: {"pixel_values": torch.zeros(1)}
    )
    cases = {
        (0, 1, 1, 1): "colour is it",
        (0, 0, 1, 1): "is it",
        (1, 1, 1, 0): "what colour is",
        (1, 0, 1, 1): "what is it",
        (0, 1, 0, 1): "colour it",
        (0, 0, 0, 0): "",
    }
    for keep, text in cases.items():
        assert inp.perturbed_text(torch.tensor(keep, dtype=torch.float)) == text
