"""Image views: overlay PNG (closed-form blend), the matplotlib heatmap, and the HTML report's
image section for results whose input has an image (one self-contained, escaped page)."""

from __future__ import annotations

import base64
import io
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_viz_report import parse

from llmattr import LLMAttributionResult, html_report
from llmattr.viz import palette
from llmattr.viz.image_report import (
    has_image,
    image_section,
    overlay_png,
    plot_image_attr,
)
from llmattr.viz.report import result_section

pytestmark = pytest.mark.usefixtures("close_figures")

H, W = 24, 40  # not square: a transposed map would fail
RED = np.array([int(palette.colour(palette.LEVELS)[i : i + 2], 16) for i in (1, 3, 5)])
BLUE = np.array([int(palette.colour(-palette.LEVELS)[i : i + 2], 16) for i in (1, 3, 5)])


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _grid_masks(rows: int = 3, cols: int = 4) -> list[torch.Tensor]:
    r = torch.arange(H) * rows // H
    c = torch.arange(W) * cols // W
    ids = r[:, None] * cols + c[None, :]
    return [ids == i for i in range(rows * cols)]


class Stub:
    """The image-input contract (image, format_pixel_attr, get_mask_list, modalities, values,
    mask_id_to_idx): image regions first, then text words."""

    def __init__(self, image, masks, words=(), names=None):
        self.image = image
        self._masks = list(masks)
        self.values = list(names or [f"image_feature_{i}" for i in range(len(masks))])
        self.values += list(words)
        self.modalities = ["image"] * len(masks) + ["text"] * len(words)
        self.mask_id_to_idx = {i: i for i in range(len(masks))}

    def get_mask_list(self):
        return list(self._masks)

    def format_pixel_attr(self, attr):
        attr = torch.as_tensor(attr)[..., : len(self._masks)]
        cover = torch.stack(self._masks).to(attr.dtype)
        return torch.tensordot(attr, cover, dims=([-1], [0]))


WORDS = ["what", "<script>alert(1)</script>", "a&b", "?"]


def _result(seq=None, words=WORDS, names=None, image=None, n_regions=12, seed=3):
    masks = _grid_masks()[:n_regions]
    inp = Stub(image or _image(), masks, words, names)
    n = len(inp.values)
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(n, generator=g, dtype=torch.float64) if seq is None else seq
    return LLMAttributionResult(
        seq_attr=seq,
        token_attr=torch.randn(2, n, generator=g, dtype=torch.float64),
        input_tokens=list(inp.values),
        output_tokens=["<b>yes</b>", "."],
        output_probs=torch.tensor([0.5, 0.25]),
        method="FeatureAblation",
        inp=inp,
    )


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.array(image).astype(np.int64)


# ---- overlay_png ------------------------------------------------------------------------------


def test_overlay_is_the_closed_form_blend():
    image = _image()
    attr = torch.zeros(H, W, dtype=torch.float64)
    attr[2, 3], attr[5, 7], attr[10, 1] = 4.0, -2.0, -4.0
    out = _decode(overlay_png(image, attr, alpha=0.6))
    plain = np.array(image).astype(np.float64)
    assert out.shape == (H, W, 3)
    expected = plain.copy()
    for (y, x), colour, t in (((2, 3), RED, 1.0), ((5, 7), BLUE, 0.5), ((10, 1), BLUE, 1.0)):
        w = 0.6 * t
        expected[y, x] = plain[y, x] * (1 - w) + colour * w
    np.testing.assert_allclose(out, np.rint(expected), atol=1)
    untouched = (attr == 0).numpy()
    assert (out[untouched] == plain[untouched]).all()  # zero attribution keeps its colour


def test_overlay_scale_is_symmetric_and_scale_free():
    image = _image(1)
    attr = torch.randn(H, W, generator=torch.Generator().manual_seed(0))
    once = overlay_png(image, attr)
    assert overlay_png(image, attr * 1000.0) == once
    # on a grey image, each pixel moves towards red (a > 0) or blue (a < 0) by 0.6 |a| / max |a|,
    # and negating the map swaps the colours with the same weights
    grey = Image.new("RGB", (W, H), (128, 128, 128))
    a = attr.numpy()
    weight = 0.6 * np.abs(a) / np.abs(a).max()
    for sign in (1, -1):
        out = _decode(overlay_png(grey, sign * attr))
        colour = np.where((sign * a > 0)[..., None], RED, BLUE)
        expected = np.rint(128 * (1 - weight[..., None]) + colour * weight[..., None])
        np.testing.assert_allclose(out, expected, atol=1)


def test_overlay_of_zero_map_is_the_plain_image_and_no_warning():
    image = _image(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _decode(overlay_png(image, np.zeros((H, W))))
    assert (out == np.array(image)).all()


def test_overlay_nan_drawn_as_zero_with_warning_and_inf_as_the_strongest():
    image = _image(3)
    attr = torch.zeros(H, W, dtype=torch.float64)
    attr[0, 0], attr[1, 1], attr[2, 2] = 2.0, math.nan, math.inf
    with pytest.warns(RuntimeWarning, match="1 pixel .* NaN"):
        out = _decode(overlay_png(image, attr))
    clean = attr.clone()
    clean[1, 1], clean[2, 2] = 0.0, 2.0
    assert (out == _decode(overlay_png(image, clean))).all()


def test_overlay_does_not_change_its_inputs_and_takes_other_modes():
    image = _image(4).convert("RGBA")
    before = image.tobytes()
    attr = torch.ones(1, H, W)  # a leading 1-sized dim is dropped
    attr_before = attr.clone()
    out = _decode(overlay_png(image, attr))
    assert image.mode == "RGBA" and image.tobytes() == before
    assert torch.equal(attr, attr_before) and out.shape == (H, W, 3)
    grey = _decode(overlay_png(image.convert("L"), np.zeros((H, W))))
    assert (grey[..., 0] == grey[..., 1]).all()


def test_overlay_outline_draws_the_region_border_only():
    image = Image.new("RGB", (W, H), (255, 255, 255))
    region = np.zeros((H, W), bool)
    region[4:10, 5:15] = True
    out = _decode(overlay_png(image, np.zeros((H, W)), outline=region))
    dark = (out < 100).all(-1)
    border = region.copy()
    border[5:9, 6:14] = False
    assert (dark == border).all()


def test_overlay_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pixel_attr has shape"):
        overlay_png(_image(), np.zeros((W, H)))
    with pytest.raises(ValueError, match="alpha"):
        overlay_png(_image(), np.zeros((H, W)), alpha=1.5)
    with pytest.raises(ValueError, match="image must be"):
        overlay_png(np.zeros((3, H, W)), np.zeros((H, W)))


# ---- plot_image_attr ------------------------------------------------------------------------


def test_plot_has_colour_bar_and_one_border_and_label_per_region():
    masks = _grid_masks()
    masks.append(torch.zeros(H, W, dtype=torch.bool))  # empty: nothing drawn
    values = [float(i) - 5 for i in range(len(masks))]
    pixel = Stub(_image(), masks).format_pixel_attr(torch.tensor(values))
    fig, ax = plot_image_attr(
        _image(), pixel, mask_list=masks, values=values, mask_ids=[f"m{i}" for i in values]
    )
    assert len(ax.images) == 2 + 12  # grey image, heatmap, 12 borders
    bars = [a for a in fig.axes if a is not ax]
    assert len(bars) == 1 and bars[0].get_ylabel() == "Attribution"
    heat = ax.images[1]
    assert heat.get_clim() == (-6.0, 6.0)  # symmetric around 0
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"m{v}" for v in values[:12])
    # border colour follows the region's sign: region 0 (value -5) bluish, 11 (+6) reddish
    low = ax.images[2].get_array().reshape(-1, 4).max(0)
    high = ax.images[-1].get_array().reshape(-1, 4).max(0)
    assert low[2] > low[0] and high[0] > high[2]


def test_plot_options_and_zero_map():
    masks = _grid_masks()
    _, ax = plot_image_attr(
        _image(), np.zeros((H, W)), mask_list=masks, border_width=0, show_legends=False
    )
    assert len(ax.images) == 2 and not ax.texts
    assert ax.images[1].get_clim() == (-1.0, 1.0)  # no 0/0 scale
    with pytest.raises(ValueError, match="values has 2 entries for 12 masks"):
        plot_image_attr(_image(), np.zeros((H, W)), mask_list=masks, values=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"mask_list\[0\] has shape"):
        plot_image_attr(_image(), np.zeros((H, W)), mask_list=[torch.ones(W, H, dtype=bool)])


def test_result_plot_image_heatmap_uses_the_row_asked_for():
    result = _result()
    _, ax = result.plot_image_heatmap(target_token_pos=1, show_legends=False)
    expected = result.inp.format_pixel_attr(result.token_attr[1])
    np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), expected.numpy())
    assert len(ax.images) == 2 + 12


# ---- the HTML image section -----------------------------------------------------------------


def _images(page: str) -> list[str]:
    return [n.attrs["src"] for n in parse(page).find_all("img")]


def test_page_is_one_file_with_inline_pngs_only():
    result = _result()
    page = result.to_html()
    low = page.lower()
    for needle in ("http://", "https://", "//cdn", "<link", "@import", "url("):
        assert needle not in low, needle
    tree = parse(page)
    for node in tree.find_all():
        for attr in ("src", "href", "srcdoc"):
            value = node.attrs.get(attr)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), value
    (meta,) = [m for m in tree.find_all("meta") if m.attrs.get("http-equiv")]
    policy = meta.attrs["content"]
    assert "img-src data:" in policy and "default-src 'none'" in policy
    overlay, plain = _images(page)
    pngs = [_decode(base64.b64decode(s.split(",", 1)[1])) for s in (overlay, plain)]
    assert pngs[0].shape == pngs[1].shape == (H, W, 3)
    assert (pngs[1] == np.array(result.inp.image)).all()
    pixel = result.inp.format_pixel_attr(result.seq_attr).numpy()
    changed = (pngs[0] != pngs[1]).any(-1)
    top = int(np.argmax(np.abs(result.seq_attr[:12].numpy())))
    outline = result.inp.get_mask_list()[top].numpy()
    assert changed[(np.abs(pixel) > 1e-2 * np.abs(pixel).max()) & ~outline].all()


def test_names_are_escaped_and_inert():
    names = [f"<img src=x onerror=alert({i})>" for i in range(11)] + ["</table><script>x()"]
    page = _result(names=names).to_html()
    tree = parse(page)
    assert [s.attrs.get("type") for s in tree.find_all("script")] == ["application/json", None]
    assert len(tree.find_all("img")) == 2  # only our two pictures
    assert not any(k.startswith("on") for n in tree.find_all() for k in n.attrs)
    (section,) = tree.find_all("div", "imgsec")
    words = [n.text for n in section.find_all("span", "tok")]
    assert words == WORDS  # the prompt's text features only, decoded back exactly
    table = section.find_all("table", "rg")[0]
    assert [n.text for n in table.find_all("th")][2:] == names


def test_region_table_values_and_top_region():
    result = _result()
    (section,) = parse(result.to_html()).find_all("div", "imgsec")
    rows = section.find_all("table", "rg")[0].find_all("tr")[1:]
    seq = result.seq_attr.tolist()
    assert len(rows) == 12
    for row, v in zip(rows, seq[:12]):
        assert float(row.find_all("td")[0].text) == pytest.approx(v, abs=1e-4)
    top = [i for i, row in enumerate(rows) if "top" in row.classes]
    assert top == [int(np.argmax(np.abs(seq[:12])))]


def test_modality_shares_line():
    seq = torch.tensor([3.0, -1.0] + [0.0] * 10 + [-2.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    page = _result(seq=seq).to_html()
    (line,) = parse(page).find_all("p", "shares")
    assert "image 50% · text 50%" in line.text
    seq = torch.tensor([3.0] + [0.0] * 11 + [1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    (line,) = parse(_result(seq=seq).to_html()).find_all("p", "shares")
    assert "image 75% · text 25%" in line.text


def test_zero_and_nan_attributions_render():
    zero = _result(seq=torch.zeros(16, dtype=torch.float64))
    page = zero.to_html()
    (line,) = parse(page).find_all("p", "shares")
    assert "every attribution is 0" in line.text
    overlay, plain = _images(page)
    assert overlay == plain  # nothing to colour, no top region to outline
    seq = torch.zeros(16, dtype=torch.float64)
    seq[0], seq[1] = math.nan, 1.0
    page = _result(seq=seq).to_html()
    (note,) = parse(page).find_all("p", "imgnote")
    assert "NaN" in note.text


def test_text_results_render_as_before():
    plain = _result()
    text_only = LLMAttributionResult(
        seq_attr=plain.seq_attr,
        token_attr=plain.token_attr,
        input_tokens=plain.input_tokens,
        output_tokens=plain.output_tokens,
        output_probs=plain.output_probs,
        method=plain.method,
    )
    section = result_section(text_only, "t", "a")
    assert "imgsec" not in section and "<img" not in section and "<h3>Prompt</h3>" in section
    assert not has_image(text_only)

    class TextInput:  # an input without an image: not an image result
        values = plain.input_tokens

    text_only.inp = TextInput()
    assert not has_image(text_only) and result_section(text_only, "t", "a") == section
    assert has_image(plain) and "imgsec" in result_section(plain, "t", "a")


def test_report_of_several_results_mixes_image_and_text():
    image, text = _result(), _result()
    text.inp = None
    tree = parse(html_report([image, text]))
    sections = tree.find_all("section", "llmattr-result")
    assert [len(s.find_all("div", "imgsec")) for s in sections] == [1, 0]
    assert len(tree.find_all("img")) == 2


def test_image_mask_input_result_renders():
    from llmattr.vision.image_input import ImageMaskInput

    ids = torch.arange(H * W).reshape(H, W) // (H * W // 6)
    inp = ImageMaskInput(_image(5), mask=ids)
    seq = torch.linspace(-1, 1, inp.n_itp_features, dtype=torch.float64)
    result = LLMAttributionResult(seq, None, list(inp.values), ["cat"], inp=inp)
    fragment = image_section(result)
    tree = parse(fragment)
    assert len(tree.find_all("img")) == 2 and not tree.find_all("div", "vprompt")
    assert "image 100% · text 0%" in tree.find_all("p", "shares")[0].text
