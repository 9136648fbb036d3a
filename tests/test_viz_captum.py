"""The rest of Captum's visualization module: the HTML helpers, the enums, and signatures that
match Captum 0.9's, compared with Captum itself when it is installed."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from test_viz_report import parse

from llmattr import viz
from llmattr.viz import (
    ImageVisualizationMethod,
    TimeseriesVisualizationMethod,
    VisualizeSign,
    format_classname,
    format_special_tokens,
    format_tooltip,
    format_word_importances,
    palette,
)
from llmattr.viz.image import IMAGE_METHODS
from llmattr.viz.scale import SIGNS
from llmattr.viz.timeseries import TIMESERIES_METHODS

cv = pytest.importorskip("captum.attr._utils.visualization")

HELPERS = ["format_classname", "format_special_tokens", "format_tooltip", "format_word_importances"]
MASKS = ["draw_mask_border", "draw_mask_legend"]
ENUMS = ["ImageVisualizationMethod", "TimeseriesVisualizationMethod", "VisualizeSign"]
# llmattr's additions after Captum's own parameters, with what they add.
EXTRA_PARAMETERS = {"visualize_text": ["return_html", "path"]}


def _words(cell_html: str, tag: str) -> list[str]:
    (cell,) = parse(cell_html).find_all("td")
    return [mark.text.strip() for mark in cell.find_all(tag)]


def test_exported_from_llmattr_viz():
    for name in HELPERS + ENUMS:
        assert name in viz.__all__ and getattr(viz, name) is not None


@pytest.mark.parametrize("name", ENUMS)
def test_enums_have_captums_members(name):
    ours, theirs = getattr(viz, name), getattr(cv, name)
    assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in theirs]


def test_enums_name_the_choices_the_functions_take():
    assert IMAGE_METHODS == tuple(m.name for m in ImageVisualizationMethod)
    assert TIMESERIES_METHODS == tuple(m.name for m in TimeseriesVisualizationMethod)
    assert sorted(SIGNS) == sorted(m.name for m in VisualizeSign)


@pytest.mark.parametrize(
    "token", ["<s>", "</s>", "<pad>", "<<unk>>", "word", "<", ">", "a<b>", "<b>c", "", "[CLS]"]
)
def test_format_special_tokens_is_captums(token):
    assert format_special_tokens(token) == cv.format_special_tokens(token)


def test_format_special_tokens_strips_the_brackets():
    assert format_special_tokens("<s>") == "#s"
    assert format_special_tokens("</s>") == "#/s"
    assert format_special_tokens("plain") == "plain"


def test_format_word_importances_has_captums_cell_and_word_order():
    words = ["<s>", "The", "movie", "was", "</s>"]
    values = [0.1, -0.5, 1.0, 0.0, -1.0]
    for importances in (values, np.array(values), torch.tensor(values)):
        ours = format_word_importances(words, importances)
        theirs = cv.format_word_importances(words, importances)
        assert ours.startswith("<td") and ours.endswith("</td>")
        assert (
            _words(ours, "span") == _words(theirs, "mark") == ["#s", "The", "movie", "was", "#/s"]
        )
    spans = parse(format_word_importances(words, values)).find_all("span")
    assert [s.attrs["style"].split("background:")[1].split(";")[0] for s in spans] == [
        palette.colour(palette.level(v, 1.0)) for v in values
    ]


def test_format_word_importances_empty_longer_and_too_short():
    assert format_word_importances(["a"], None) == cv.format_word_importances(["a"], None)
    assert (
        format_word_importances(["a"], []) == "<td></td>" == cv.format_word_importances(["a"], [])
    )
    # Extra importances are ignored, as Captum's.
    longer = format_word_importances(["a", "b"], [0.1, 0.2, 0.3])
    assert _words(longer, "span") == _words(
        cv.format_word_importances(["a", "b"], [0.1, 0.2, 0.3]), "mark"
    )
    with pytest.raises(ValueError, match="2 words but only 1"):
        format_word_importances(["a", "b"], [0.1])


def test_format_word_importances_escapes_words_unlike_captum():
    words = ["x<img src=x onerror=alert(1)>", "a&b", "<b>bold</b>", '"q"']
    ours = format_word_importances(words, [0.5] * 4)
    tree = parse(ours)
    assert not tree.find_all("img") and not tree.find_all("b")
    assert _words(ours, "span") == ["x<img src=x onerror=alert(1)>", "a&b", "#b>bold</b", '"q"']
    assert "<img" in cv.format_word_importances(words, [0.5] * 4)  # Captum inserts it raw


def test_format_word_importances_colours_infinities_by_sign():
    spans = parse(
        format_word_importances(["up", "down", "nan"], [np.inf, -np.inf, np.nan])
    ).find_all("span")
    backgrounds = [s.attrs["style"].split("background:")[1].split(";")[0] for s in spans]
    assert backgrounds == [
        palette.colour(palette.LEVELS),
        palette.colour(-palette.LEVELS),
        palette.colour(0),
    ]
    assert [s.attrs["title"] for s in spans] == ["+inf", "-inf", "nan"]


def test_format_classname_is_one_bold_cell():
    for name in ("positive", 3, "neg (0.93)"):
        ours, theirs = parse(format_classname(name)), parse(cv.format_classname(name))
        for tree in (ours, theirs):
            (cell,) = tree.find_all("td")
            assert [b.text for b in cell.find_all("b")] == [str(name)]
    hostile = parse(format_classname("<script>x</script> & co"))
    assert not hostile.find_all("script")
    assert hostile.find_all("b")[0].text == "<script>x</script> & co"


def test_format_tooltip_has_captums_markup_escaped():
    for tree in (parse(format_tooltip("word", "0.25")), parse(cv.format_tooltip("word", "0.25"))):
        (div,) = tree.find_all("div", "tooltip")
        (tip,) = div.find_all("span", "tooltiptext")
        assert div.text.replace(tip.text, "").strip() == "word" and tip.text.strip() == "0.25"
    hostile = parse(format_tooltip("<b>w</b>", "<i>t</i>"))
    assert not hostile.find_all("b") and not hostile.find_all("i")
    assert hostile.find_all("span", "tooltiptext")[0].text == "<i>t</i>"


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    "name",
    [
        "VisualizationDataRecord",
        "visualize_image_attr",
        "visualize_image_attr_multiple",
        "visualize_timeseries_attr",
        "visualize_text",
        *HELPERS,
        *MASKS,
    ],
)
def test_signatures_match_captums(name):
    ours, theirs = _parameters(getattr(viz, name)), _parameters(getattr(cv, name))
    extra = EXTRA_PARAMETERS.get(name, [])
    assert ours[: len(theirs)] == theirs  # names, order, kinds and defaults
    assert [p[0] for p in ours[len(theirs) :]] == extra


def test_every_captum_counterpart_is_compared():
    compared = {"VisualizationDataRecord", "visualize_image_attr", "visualize_image_attr_multiple"}
    compared |= {"visualize_timeseries_attr", "visualize_text", *HELPERS, *ENUMS, *MASKS}
    assert {n for n in viz.__all__ if hasattr(cv, n)} == compared


# ---- mask regions --------------------------------------------------------------------------------


def _mask_shapes():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :32]
    yield (yy - 12) ** 2 + (xx - 14) ** 2 < 60  # a disc
    yield np.ones((5, 7), dtype=bool)  # the whole image: its edge is a border
    yield rng.random((20, 20)) > 0.4  # ragged
    lone = np.zeros((6, 6), dtype=bool)
    lone[2, 3] = True
    yield lone


@pytest.mark.parametrize("width", [1, 2, 3, 0])
@pytest.mark.parametrize("color", ["red", np.array([0.1, 0.2, 0.3, 0.5])])
def test_draw_mask_border_equals_captums(width, color):
    pytest.importorskip("scipy")
    import matplotlib.pyplot as plt

    for mask in _mask_shapes():
        images = []
        for module in (viz, cv):
            fig, ax = plt.subplots()
            module.draw_mask_border(ax, mask, border_width=width, border_color=color)
            (image,) = ax.get_images()
            images.append(np.asarray(image.get_array()))
            plt.close(fig)
        assert np.array_equal(images[0], images[1])
        assert images[0].shape == (*mask.shape, 4)


def test_draw_mask_legend_equals_captums():
    import matplotlib.pyplot as plt

    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 6:11] = True
    texts = []
    for module in (viz, cv):
        fig, ax = plt.subplots()
        module.draw_mask_legend(ax, mask, "<3>", fontsize=7, text_color="y", bbox_alpha=0.3)
        (text,) = ax.texts
        box = text.get_bbox_patch()
        texts.append((text.get_position(), text.get_text(), text.get_color(), text.get_fontsize(),
                      box.get_facecolor(), box.get_alpha()))  # fmt: skip
        plt.close(fig)
    assert texts[0] == texts[1]
    assert texts[0][0] == (8.0, 3.0)  # the centre of mass, as (x, y)


def test_empty_masks_draw_nothing_and_bad_masks_are_refused():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    viz.draw_mask_border(ax, np.zeros((4, 4), dtype=bool))
    viz.draw_mask_legend(ax, np.zeros((4, 4), dtype=bool), "x")
    assert not ax.get_images() and not ax.texts
    with pytest.raises(ValueError, match=r"2-D \(height, width\)"):
        viz.draw_mask_border(ax, np.ones((2, 4, 4), dtype=bool))
    plt.close(fig)


def test_visualization_module_under_captums_import_path() -> None:
    """``from captum.attr import visualization as viz`` switches by changing the package name:
    every public function and class Captum's module defines is there."""
    from captum.attr import visualization as captum_viz

    from llmattr.attr import visualization

    assert visualization is viz
    defined = [
        name
        for name, obj in vars(captum_viz).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == captum_viz.__name__
    ]
    assert len(defined) > 10
    assert [name for name in defined if not hasattr(visualization, name)] == []
