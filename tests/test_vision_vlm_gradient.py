"""VLMGradientAttribution: integrated gradients through a VLM's own image merge (tiny LLaVA and
tiny Qwen2-VL, float64)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from conftest import Boom, count_forwards, hook_state
from PIL import Image

from llmattr._core.errors import InputError
from llmattr.attr.layer import LayerIntegratedGradients
from llmattr.vision.tiny_models import tiny_llava, tiny_qwen2_vl
from llmattr.vision.vlm_gradient import VLMGradientAttribution

pytestmark = pytest.mark.usefixtures("one_thread")

LLAVA_PROMPT = "USER: <image> what colour is the cat ? ASSISTANT:"
QWEN_PROMPT = (
    "USER: <|vision_start|> <|image_pad|> <|vision_end|> what colour is the cat ? ASSISTANT:"
)
TARGET = "red cat"


def _image(seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (36, 40, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_llava(dtype=torch.float64)
    return model, processor, processor(text=LLAVA_PROMPT, images=_image(), return_tensors="pt")


@pytest.fixture(scope="module")
def qwen():
    model, processor = tiny_qwen2_vl(dtype=torch.float64)
    return model, processor, processor(QWEN_PROMPT, images=_image())


@pytest.fixture(params=["llava", "qwen"])
def vlm(request):
    return request.getfixturevalue(request.param)


def _with_target(inputs, target_ids):
    """The processor's dict with ``target[:-1]`` appended (an independent re-implementation)."""
    fed = target_ids[:-1].view(1, -1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], fed], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(fed)], 1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], 0 * fed], 1)
    return out


def _logp(model, inputs, target_ids, hooks=()):
    """``(K,)`` log p(target) by a plain forward, with optional (module, hook) forward hooks."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.no_grad():
            logits = model(**_with_target(inputs, target_ids)).logits[0, -target_ids.numel() :]
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(logits, -1).gather(-1, target_ids.view(-1, 1))[:, 0]


def _baseline_hooks(model, processor, inputs, target_ids):
    """Hooks putting the documented baseline in: zero image features, and the pad embedding at
    every non-special, non-image prompt token."""
    tok = processor.tokenizer
    ids = _with_target(inputs, target_ids)["input_ids"][0]
    L = inputs["input_ids"].shape[1]
    special = set(tok.all_special_ids) | {model.config.image_token_id}
    text = torch.tensor([i not in special for i in ids.tolist()])
    text[L:] = False
    emb = model.get_input_embeddings()
    pad_vec = emb.weight[tok.pad_token_id].detach()

    def zero_image(module, args, out):
        return torch.zeros_like(out)

    def pad_text(module, args, out):
        out = out.clone()
        out[:, text] = pad_vec
        return out

    image_layer = VLMGradientAttribution(model, processor).image_layer
    return [(image_layer, zero_image), (emb, pad_text)]


def _target_ids(processor, target=TARGET):
    return torch.tensor(processor.tokenizer(target, add_special_tokens=False)["input_ids"])


# ---- the math -------------------------------------------------------------------------------


def test_completeness_against_independent_baseline_forward(vlm):
    """sum(text) + sum(image) == logp(target | x) - logp(target | baseline), per target token,
    with both ends computed by independent forwards (plain call; hooks putting the baseline)."""
    model, processor, inputs = vlm
    t = _target_ids(processor)
    r = VLMGradientAttribution(model, processor).attribute(
        inputs, TARGET, n_steps=400, return_convergence_delta=True
    )
    at_x = _logp(model, inputs, t)
    at_b = _logp(model, inputs, t, _baseline_hooks(model, processor, inputs, t))
    total = r.text_token_attr.sum(1) + r.image_token_attr.sum(1)
    assert torch.allclose(total, at_x - at_b, atol=1e-6, rtol=0)
    assert torch.allclose(r.delta, total - (at_x - at_b), atol=1e-12, rtol=0)
    assert torch.allclose(r.output_probs, at_x.exp(), atol=1e-12, rtol=0)
    # both modalities carry attribution, and the image is really on the path
    assert r.image_token_attr.abs().sum() > 1e-4 and r.text_token_attr.abs().sum() > 1e-4


def test_matches_joint_layer_integrated_gradients(llava):
    """The same joint path through llmattr's LayerIntegratedGradients over [projector,
    embedding] (its own batching and quadrature), one target token at a time."""
    model, processor, inputs = llava
    attr = VLMGradientAttribution(model, processor)
    t = _target_ids(processor)
    r = attr.attribute(inputs, t, n_steps=20)
    hooks = _baseline_hooks(model, processor, inputs, t)
    state = {"s": None}
    ends = {}
    with torch.no_grad():
        for m, _ in hooks:
            ends[m] = []
        plain = [m.register_forward_hook(lambda m, a, o: ends[m].append(o)) for m, _ in hooks]
        model(**_with_target(inputs, t))
        for m, h in hooks:
            ends[m].append(h(m, None, ends[m][0]))
        for h in plain:
            h.remove()

    def mix(module, args, out):  # s=1 keeps the input, s=0 puts the baseline (batched)
        x, b = ends[module][0], ends[module][1]
        s = state["s"].view(-1, *[1] * (x.dim() - 1)).to(x)
        return (b + s * (x - b)).expand(out.shape)

    handles = [m.register_forward_hook(mix) for m, _ in hooks]
    try:

        def f(s):
            state["s"] = s
            rows = {
                k: (torch.cat([v] * len(s)) if torch.is_tensor(v) else v)
                for k, v in _with_target(inputs, t).items()
            }
            logits = model(**rows).logits[:, -t.numel() :]
            index = t.view(1, -1, 1).expand(len(s), -1, 1)
            return torch.log_softmax(logits, -1).gather(-1, index)[..., 0]

        lig = LayerIntegratedGradients(f, [m for m, _ in hooks])
        one = torch.ones(1, 1, dtype=torch.float64)
        for k in range(t.numel()):
            img, emb = lig.attribute(one, baselines=0 * one, target=k, n_steps=20)
            assert torch.allclose(img.sum(-1).reshape(-1), r.image_token_attr[k], atol=1e-10)
            L = inputs["input_ids"].shape[1]
            assert torch.allclose(emb.sum(-1)[0, :L], r.text_token_attr[k], atol=1e-10)
    finally:
        for h in handles:
            h.remove()


def test_hooks_leave_the_forward_unchanged_at_alpha_one(vlm):
    """Substituting the input's own activations (alpha = 1) reproduces the plain call's logits."""
    model, processor, inputs = vlm
    attr = VLMGradientAttribution(model, processor)
    t = _target_ids(processor)
    with torch.no_grad():
        img, _, emb, _ = attr._endpoints(inputs, t, processor.tokenizer.pad_token_id, None)
        rows = attr._rows(inputs, t, 3)
        hooked = attr._run(rows, [torch.cat([img] * 3), emb.expand(3, -1, -1)], t.numel())
        plain = model(**_with_target(inputs, t)).logits[:, -t.numel() :]
    assert torch.equal(hooked[0], plain[0]) or torch.allclose(hooked[0], plain[0], atol=1e-13)
    assert torch.allclose(hooked, plain.expand_as(hooked), atol=1e-12)


@pytest.mark.parametrize("ibs", [1, 3, 7])
def test_internal_batch_size_invariance(vlm, ibs):
    model, processor, inputs = vlm
    attr = VLMGradientAttribution(model, processor)
    ref = attr.attribute(inputs, TARGET, n_steps=7, internal_batch_size="auto")
    r = attr.attribute(inputs, TARGET, n_steps=7, internal_batch_size=ibs)
    assert torch.allclose(r.image_token_attr, ref.image_token_attr, atol=1e-12)
    assert torch.allclose(r.text_token_attr, ref.text_token_attr, atol=1e-12)


def test_zero_attribution_where_the_model_ignores_it(llava):
    """Placeholders and special tokens get exactly 0; a projector with zero weights (the image
    cannot matter) gives image_attr exactly 0, and an image baseline equal to the image too."""
    model, processor, inputs = llava
    r = VLMGradientAttribution(model, processor).attribute(inputs, TARGET, n_steps=5)
    placeholder = inputs["input_ids"][0] == model.config.image_token_id
    assert torch.all(r.text_token_attr[:, placeholder] == 0)
    assert torch.all(r.text_token_attr[:, ~placeholder] != 0)
    same = VLMGradientAttribution(model, processor).attribute(
        inputs, TARGET, n_steps=5, image_baseline=inputs["pixel_values"]
    )
    assert torch.all(same.image_token_attr == 0)
    blank, _ = tiny_llava(dtype=torch.float64)
    proj = blank.model.multi_modal_projector.linear_2
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
    dead = VLMGradientAttribution(blank, processor).attribute(inputs, TARGET, n_steps=5)
    assert torch.all(dead.image_token_attr == 0)
    assert dead.text_token_attr.abs().sum() > 0


def test_image_attribution_responds_to_the_image(llava):
    model, processor, inputs = llava
    attr = VLMGradientAttribution(model, processor)
    other = processor(text=LLAVA_PROMPT, images=_image(1), return_tensors="pt")
    a = attr.attribute(inputs, TARGET, n_steps=10).image_attr[0]
    b = attr.attribute(other, TARGET, n_steps=10).image_attr[0]
    assert a.shape == (4, 4) and (a - b).abs().max() > 1e-5


def test_baseline_image_and_text_baselines(llava):
    """A baseline image and a zero text baseline still give complete attributions."""
    model, processor, inputs = llava
    black = processor(text=LLAVA_PROMPT, images=Image.new("RGB", (40, 36)), return_tensors="pt")
    r = VLMGradientAttribution(model, processor).attribute(
        inputs, TARGET, n_steps=100, image_baseline=black, text_baseline="zeros",
        return_convergence_delta=True,
    )  # fmt: skip
    assert r.delta.abs().max() < 1e-6


# ---- the result ------------------------------------------------------------------------------


def test_result_grids_frames_and_pixel_maps(qwen, llava):
    model, processor, inputs = qwen
    r = VLMGradientAttribution(model, processor).attribute(
        inputs, _target_ids(processor, "cat the"), n_steps=4
    )
    (rows, cols), (H, W) = r.image_grids[0], r.image_frames[0]
    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert (rows, cols) == (h // 2, w // 2) and (H, W) == (14 * h, 14 * w)
    grid = r.image_attr[0]
    assert torch.allclose(r.image_attr_of(0)[0] + r.image_attr_of(1)[0], grid, atol=1e-14)
    assert torch.allclose(r.image_attr_of((0, 2))[0], grid, atol=1e-14)
    px = r.pixel_attr()
    assert px.shape == (H, W) and px[0, 0] == grid[0, 0] and px[-1, -1] == grid[-1, -1]
    assert torch.allclose(r.pixel_attr(spread=True).sum(), grid.sum(), atol=1e-12)
    shares = r.modality_shares()
    assert abs(shares["image"] + shares["text"] - 1) < 1e-12
    assert r.output_tokens == ["cat", "the"] and len(r.text_tokens) == inputs["input_ids"].shape[1]
    lm, lp, li = llava
    rl = VLMGradientAttribution(lm, lp).attribute(li, TARGET, n_steps=2)
    assert rl.image_grids == [(4, 4)] and rl.image_frames == [(32, 32)]


def test_target_as_ids_equals_target_as_text_and_inputs_untouched(llava):
    model, processor, inputs = llava
    before = {k: v.clone() for k, v in inputs.items()}
    attr = VLMGradientAttribution(model, processor)
    a = attr.attribute(inputs, TARGET, n_steps=3)
    b = attr.attribute(inputs, _target_ids(processor), n_steps=3)
    assert torch.equal(a.text_token_attr, b.text_token_attr)
    assert all(torch.equal(inputs[k], v) for k, v in before.items())


# ---- state and bad input ---------------------------------------------------------------------


def test_hooks_and_state_restored_after_an_exception(qwen):
    model, processor, inputs = qwen
    hooks = _hooks_after_warm_up(model, inputs)
    model.model.rope_deltas = None
    layer = model.model.language_model.layers[0]
    calls = [0]

    def boom(module, args, out):
        calls[0] += 1
        if calls[0] == 1:  # the first integration forward
            raise Boom

    handle = layer.register_forward_hook(boom)
    try:
        with pytest.raises(Boom):
            VLMGradientAttribution(model, processor).attribute(inputs, TARGET, n_steps=4)
    finally:
        handle.remove()
    assert hook_state(model) == hooks
    assert model.model.rope_deltas is None
    assert not model.training
    r = VLMGradientAttribution(model, processor).attribute(inputs, TARGET, n_steps=2)
    assert model.model.rope_deltas is None and r.image_token_attr.abs().sum() > 0


def _hooks_after_warm_up(model, inputs):
    """The model's hooks once ``transformers`` installed its own (lazily, on the first forward
    asking for hidden states; LLaVA's vision tower does), which stay for good."""
    with torch.no_grad():
        model(**inputs)
    return hook_state(model)


def test_bad_input_refused_before_any_forward(llava):
    model, processor, inputs = llava
    hooks = _hooks_after_warm_up(model, inputs)
    attr = VLMGradientAttribution(model, processor)
    calls = count_forwards(model)
    try:
        no_pixels = {k: v for k, v in inputs.items() if k != "pixel_values"}
        with pytest.raises(InputError, match="no pixel_values"):
            attr.attribute(no_pixels, TARGET)
        two = {k: torch.cat([v, v]) for k, v in inputs.items()}
        with pytest.raises(InputError, match="one prompt"):
            attr.attribute(two, TARGET)
        text_only = processor.tokenizer("what colour", return_tensors="pt")
        with pytest.raises(InputError, match="image token"):
            attr.attribute({**text_only, "pixel_values": inputs["pixel_values"]}, TARGET)
        with pytest.raises(InputError, match="text_baseline"):
            attr.attribute(inputs, TARGET, text_baseline="mean")
        with pytest.raises(InputError, match="n_steps"):
            attr.attribute(inputs, TARGET, n_steps=0)
        with pytest.raises(InputError):
            attr.attribute(inputs, TARGET, method="simpson")
        with pytest.raises(InputError, match="internal_batch_size"):
            attr.attribute(inputs, TARGET, internal_batch_size=0)
        with pytest.raises(InputError, match="empty"):
            attr.attribute(inputs, [])
        with pytest.raises(TypeError):
            attr.attribute([1, 2], TARGET)
        with pytest.raises(InputError, match="baseline pixel_values"):
            attr.attribute(inputs, TARGET, image_baseline=inputs["pixel_values"][..., :16])
        with pytest.raises(InputError, match="image_baseline"):
            attr.attribute(inputs, TARGET, image_baseline="blur")
        assert calls[0] == 0
    finally:
        del model.forward
    with pytest.raises(InputError, match="image_layer"):
        VLMGradientAttribution(model, processor, image_layer=model.lm_head).attribute(
            inputs, TARGET, n_steps=2
        )
    assert hook_state(model) == hooks


def test_inputs_embeds_route_breaks_the_merge(llava):
    """Why the hooks: the ``inputs_embeds`` route Captum users take fails in transformers 5."""
    model, _, inputs = llava
    emb = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids=inputs["input_ids"], inputs_embeds=emb, pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="do not match"):
        model(inputs_embeds=0.5 * emb, pixel_values=inputs["pixel_values"])


def test_two_images_each_on_its_own_grid(qwen):
    """Two images of different shapes in one prompt: each gets its merged grid, and the total is
    complete against the independent baseline forward."""
    model, processor, _ = qwen
    prompt = QWEN_PROMPT.replace("what", "<|vision_start|> <|image_pad|> <|vision_end|> what")
    wide, tall = _image(2), _image(3).resize((30, 50))
    inputs = processor(prompt, images=[wide, tall])
    t = _target_ids(processor, "red")
    r = VLMGradientAttribution(model, processor).attribute(inputs, t, n_steps=200)
    assert r.image_grids == [(2, 3), (3, 2)] and r.image_frames == [(56, 84), (84, 56)]
    assert [tuple(g.shape) for g in r.image_attr] == [(2, 3), (3, 2)]
    assert r.image_attr[0].abs().sum() > 0 and r.image_attr[1].abs().sum() > 0
    at_x = _logp(model, inputs, t)
    at_b = _logp(model, inputs, t, _baseline_hooks(model, processor, inputs, t))
    total = r.text_attr.sum() + sum(g.sum() for g in r.image_attr)
    assert abs(float(total - (at_x - at_b).sum())) < 1e-6


def test_baseline_image_must_have_the_same_grid(qwen):
    model, processor, inputs = qwen
    turned = processor(QWEN_PROMPT, images=_image().resize((36, 40)))
    assert turned["pixel_values"].shape == inputs["pixel_values"].shape
    with pytest.raises(InputError, match="image_grid_thw"):
        VLMGradientAttribution(model, processor).attribute(inputs, TARGET, image_baseline=turned)


def test_generated_target_keeps_the_model_state(qwen):
    model, processor, inputs = qwen
    model.model.rope_deltas = None
    r = VLMGradientAttribution(model, processor).attribute(
        inputs, None, gen_args={"max_new_tokens": 3}, n_steps=2
    )
    assert r.target_ids.numel() == 3 and len(r.output_tokens) == 3
    assert model.model.rope_deltas is None


def test_float32_model_keeps_its_dtype_and_completeness():
    model, processor = tiny_llava()
    inputs = processor(text=LLAVA_PROMPT, images=_image(), return_tensors="pt")
    r = VLMGradientAttribution(model, processor).attribute(
        inputs, TARGET, n_steps=200, return_convergence_delta=True
    )
    assert r.image_token_attr.dtype == torch.float32 and r.text_token_attr.dtype == torch.float32
    assert r.delta.abs().max() < 1e-3


def test_views_through_an_llm_result(vlm):
    model, processor, inputs = vlm
    res = VLMGradientAttribution(model, processor).attribute(inputs, TARGET, n_steps=16)
    (rows, cols), frame = res.image_grids[0], res.image_frames[0]
    view = res.to_llm_result(_image())
    n = rows * cols
    assert view.input_tokens[:n] == [f"patch_{r}_{c}" for r in range(rows) for c in range(cols)]
    assert view.input_tokens[n:] == [res.text_tokens[i] for i in res.text_features]
    torch.testing.assert_close(view.seq_attr[:n].reshape(rows, cols), res.image_attr[0])
    torch.testing.assert_close(view.seq_attr[n:], res.text_attr[res.text_features])
    # nothing lost: the dropped text positions (specials, placeholders) carry no attribution
    assert view.seq_attr[n:].sum().item() == pytest.approx(res.text_attr.sum().item())
    torch.testing.assert_close(view.inp.format_pixel_attr(view.seq_attr), res.pixel_attr(0))
    assert view.inp.image.size == (frame[1], frame[0])
    assert view.modality_shares() == pytest.approx(res.modality_shares())
    html = res.to_html(_image())
    assert "data:image/png;base64," in html and "patch_0_0" in html
