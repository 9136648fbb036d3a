"""Image views of attributions whose features include image regions (``ImageMaskInput``,
``MultimodalInput``): a PNG overlay, a matplotlib heatmap and the HTML report's image section.

* :func:`overlay_png`: the image in colour under a diverging overlay (red raises the target,
  blue lowers it, the report's colours), on a symmetric scale: a pixel's colour moves towards
  red or blue in proportion to ``|attribution| / max |attribution|``, so a pixel with zero
  attribution keeps its colour exactly. Pillow only, no matplotlib.
* :func:`plot_image_attr`: what Captum 0.9's ``LLMAttributionResult.plot_image_heatmap`` draws
  (grey image, heatmap, colour bar "Attribution", each region's border and id), with llmattr's
  red/blue colour map.
* :func:`image_section`: the ``<section>`` fragment :func:`llmattr.viz.report.result_section`
  adds for such a result: the overlay (top region outlined) and the plain image beside the
  prompt's text features as coloured chips, each modality's share, and a table of the regions'
  values, all inline (PNG as ``data:`` URIs).

Attribution maps are ``(H, W)``; NaN is drawn as 0 (with a warning or a note), ``±inf`` as the
strongest colour of its sign.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import palette
from .report_blocks import chip, escape, legend, plural, value_text
from .scale import as_array, symmetric_limit
from .tokens import display_tokens

if TYPE_CHECKING:
    from ..text.result import LLMAttributionResult

__all__ = ["IMAGE_CSS", "has_image", "image_section", "overlay_png", "plot_image_attr"]

#: Styles of the image section (appended to the report's CSS).
IMAGE_CSS = (
    ".imgsec{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start;margin:.4em 0}"
    ".imgsec figure{margin:0}.imgsec figcaption{font-size:12px;color:#555;max-width:24em}"
    ".imgsec img{image-rendering:pixelated;max-width:100%;height:auto;border:1px solid #ddd;"
    "border-radius:4px}.imgsec .side{flex:1 1 22em;min-width:16em}"
    ".shares{font-size:13px;margin:0 0 .5em}.imgnote{font-size:12px;color:#8a4b00}"
    ".vprompt{font:13px/2.1 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
    "border:1px solid #ddd;border-radius:4px;padding:.5em .7em;overflow-wrap:anywhere;"
    "margin-bottom:.6em}"
    ".regions{max-height:40vh;overflow:auto;display:inline-block}"
    "table.rg{border-collapse:collapse;font-size:12px}.rg th,.rg td{padding:1px 8px;"
    "text-align:left;white-space:pre}.rg td.v{text-align:right;font-family:ui-monospace,"
    "SFMono-Regular,Menlo,Consolas,monospace}.rg tr.top th{outline:2px solid #111}"
)

_POSITIVE = np.array([178, 24, 43], dtype=np.float64)  # palette's red: raises the target
_NEGATIVE = np.array([33, 102, 172], dtype=np.float64)  # palette's blue: lowers it
_OUTLINE = np.array([17, 17, 17], dtype=np.float64)
_TOP = ' class="top"'
_SHOWN_AT_LEAST = 256  # small images are scaled up (pixelated) to this many CSS pixels


def has_image(result: Any) -> bool:
    """Whether ``result.inp`` is an image input: it has an ``image`` and a callable
    ``format_pixel_attr`` (duck-typed)."""
    inp = getattr(result, "inp", None)
    return (
        inp is not None
        and getattr(inp, "image", None) is not None
        and callable(getattr(inp, "format_pixel_attr", None))
    )


def _rgb(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 copy of a PIL image (any mode) or an ``(H, W, C)`` / ``(H, W)`` array
    (values in ``[0, 1]`` are scaled to ``[0, 255]``)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # convert returns a new image
    data = as_array(image)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        data = data[:, :, :3]
    elif (data.ndim == 3 and data.shape[2] == 1) or data.ndim == 2:
        data = np.repeat(data.reshape(data.shape[0], data.shape[1], 1), 3, axis=2)
    else:
        raise ValueError(
            f"image must be a PIL image or an (H, W, 3) / (H, W) array; got shape {data.shape}. "
            "For a (3, H, W) tensor pass image.permute(1, 2, 0)."
        )
    if data.size and np.nanmax(data) <= 1.0:
        data = data * 255
    return np.clip(np.rint(np.nan_to_num(data)), 0, 255).astype(np.uint8)


def _map(pixel_attr: Any, hw: tuple[int, int]) -> tuple[np.ndarray, float, int]:
    """``(map, limit, n_nan)``: the ``(H, W)`` float map with NaN as 0 and ``±inf`` clipped to
    ``±limit``, where ``limit`` is the largest finite magnitude (1.0 when there is none)."""
    data = as_array(pixel_attr)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.shape != hw:
        raise ValueError(
            f"pixel_attr has shape {data.shape} but the image is {hw[0]} x {hw[1]} (height x "
            "width); give one value per pixel, e.g. inp.format_pixel_attr(attr[None])[0]."
        )
    nan = np.isnan(data)
    finite = data[np.isfinite(data)]
    limit = float(np.abs(finite).max()) if finite.size else 0.0
    limit = limit or 1.0
    return np.clip(np.where(nan, 0.0, data), -limit, limit), limit, int(nan.sum())


def _border(mask: np.ndarray) -> np.ndarray:
    """The mask's inner border: its pixels with a 4-neighbour outside it (or off the image)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _blend(
    image: Any, pixel_attr: Any, alpha: float, outline: Any = None
) -> tuple[np.ndarray, float, int]:
    """``(rgb, limit, n_nan)``: the ``(H, W, 3)`` uint8 overlay (see :func:`overlay_png`)."""
    if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}.")
    rgb = _rgb(image)
    hw = (rgb.shape[0], rgb.shape[1])
    attr, limit, n_nan = _map(pixel_attr, hw)
    t = attr / limit  # in [-1, 1]
    weight = (alpha * np.abs(t))[:, :, None]
    colour = np.where((t > 0)[:, :, None], _POSITIVE, _NEGATIVE)
    out = rgb * (1.0 - weight) + colour * weight
    if outline is not None:
        region = as_array(outline).astype(bool)
        if region.shape != hw:
            raise ValueError(f"outline has shape {region.shape}; the image is {hw}.")
        out[_border(region)] = _OUTLINE
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), limit, n_nan


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(image: Any, pixel_attr: Any, alpha: float = 0.6, *, outline: Any = None) -> bytes:
    """The image with its attributions as a diverging red/blue overlay, as PNG bytes.

    Each pixel moves towards red (raises the target) or blue (lowers it) by
    ``alpha * |a| / max |a|``: the scale is symmetric, the strongest pixel gets ``alpha`` of its
    colour, and a pixel with zero attribution (an all-zero map: every pixel) keeps its colour.

    Args:
        image: a PIL image (any mode; converted to RGB, the argument is not changed) or an
            ``(H, W, 3)`` / ``(H, W)`` array.
        pixel_attr: ``(H, W)`` attributions (a tensor or array; leading 1-sized dims are
            dropped), e.g. ``inp.format_pixel_attr(attr[None])[0]``. NaN is drawn as 0 with a
            warning; ``±inf`` as the strongest colour of its sign.
        alpha: the overlay's opacity at the strongest pixel, in ``[0, 1]``.
        outline: optional ``(H, W)`` booleans: the region whose border is drawn (dark).

    Returns:
        The PNG file's bytes, ``W x H`` pixels in RGB.
    """
    rgb, _, n_nan = _blend(image, pixel_attr, alpha, outline)
    if n_nan:
        warnings.warn(
            f"{plural(n_nan, 'pixel')} of the attribution map are NaN; drawn as 0.",
            RuntimeWarning,
            stacklevel=2,
        )
    return _png(rgb)


def plot_image_attr(
    image: Any,
    pixel_attr: Any,
    ax: Any = None,
    mask_list: Sequence[Any] | None = None,
    values: Sequence[float] | None = None,
    border_width: int = 2,
    show_legends: bool = True,
    mask_ids: Sequence[Any] | None = None,
    cmap: Any = "RdBu_r",
    alpha: float = 0.8,
) -> tuple[Any, Any]:
    """The image in grey under a heatmap of its pixel attributions (symmetric scale, colour bar
    labelled "Attribution"), each region's border and id on top: Captum 0.9's
    ``plot_image_heatmap`` drawing.

    Args:
        image: a PIL image or an ``(H, W, 3)`` / ``(H, W)`` array.
        pixel_attr: ``(H, W)`` attributions (NaN drawn as 0, ``±inf`` clipped to the scale).
        ax: the matplotlib axes to draw on (default: a new pyplot figure, as Captum).
        mask_list: one ``(H, W)`` boolean mask per region (bordered and labelled), or None.
        values: each region's attribution, colouring its border (a darker shade of its
            heatmap colour, as Captum); default: the mean of ``pixel_attr`` over the region.
        border_width: the borders' width in pixels; 0 draws none.
        show_legends: write each region's id at its centroid.
        mask_ids: the ids written (default ``0 .. len(mask_list) - 1``).
        cmap: a diverging matplotlib colour map (Captum: red-white-green; llmattr: red raises,
            blue lowers, as its other views).
        alpha: the heatmap's opacity over the grey image.

    Returns:
        ``(fig, ax)``.
    """
    from matplotlib import colormaps

    from .figure import new_figure
    from .masks import draw_mask_border, draw_mask_legend

    rgb = _rgb(image)
    hw = (rgb.shape[0], rgb.shape[1])
    attr, limit, _ = _map(pixel_attr, hw)
    masks = [as_array(m).astype(bool) for m in (mask_list or [])]
    for i, m in enumerate(masks):
        if m.shape != hw:
            raise ValueError(f"mask_list[{i}] has shape {m.shape}; the image is {hw}.")
    for name, given in (("values", values), ("mask_ids", mask_ids)):
        if given is not None and len(given) != len(masks):
            raise ValueError(f"{name} has {len(given)} entries for {len(masks)} masks.")
    colours = colormaps[cmap] if isinstance(cmap, str) else cmap

    fig, ax = new_figure((6.4, 4.8), True) if ax is None else (ax.figure, ax)
    ax.imshow(rgb.mean(axis=2), cmap="gray")
    heat = ax.imshow(attr, vmin=-limit, vmax=limit, cmap=colours, alpha=alpha)
    bar = fig.colorbar(heat, ax=ax)
    bar.ax.set_ylabel("Attribution", rotation=-90, va="bottom")
    for i, m in enumerate(masks):  # an empty mask draws nothing
        if border_width > 0:
            v = float(values[i]) if values is not None else float(attr[m].mean())
            v = 0.0 if math.isnan(v) else max(-limit, min(limit, v))
            rgba = np.array(colours((v / limit + 1) / 2))
            draw_mask_border(ax, m, border_width, np.array([*(rgba[:3] * 0.7), alpha]))
        if show_legends:
            draw_mask_legend(ax, m, label=str(mask_ids[i] if mask_ids is not None else i))
    fig.set_facecolor("white")
    ax.axis("off")
    return fig, ax


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, hw: tuple[int, int], alt: str) -> str:
    scale = max(1, _SHOWN_AT_LEAST // max(hw)) if max(hw) < _SHOWN_AT_LEAST else 1
    return (
        f'<img src="{_data_uri(png)}" width="{hw[1] * scale}" height="{hw[0] * scale}" '
        f'alt="{escape(alt)}">'
    )


def _shares(result: Any) -> str:
    try:
        shares = result.modality_shares()
    except (AttributeError, ValueError):
        return "modality shares: none (every attribution is 0)"
    text = " · ".join(
        f"{name} {'nan' if math.isnan(s) else f'{100 * s:.0f}%'}" for name, s in shares.items()
    )
    return f"share of |attribution|: {text}"


def image_section(result: LLMAttributionResult) -> str:
    """The HTML fragment showing an image result (``has_image(result)``) against ``seq_attr``:
    the image with its regions' heatmap (top region outlined) and the plain image, beside the
    prompt's text features as coloured chips, each modality's share of ``|attribution|``, and
    a table of the regions' names and values. Every name is escaped; the pictures are inline
    PNG ``data:`` URIs."""
    inp = result.inp
    names = display_tokens(result.input_tokens)
    seq = as_array(result.seq_attr).reshape(-1)
    modalities = list(getattr(inp, "modalities", None) or ["image"] * len(names))
    if len(modalities) != len(names):
        raise ValueError(
            f"The input has {len(modalities)} modalities for {len(names)} features; they must "
            "match (one 'image' or 'text' per feature)."
        )
    image_cols = [i for i, m in enumerate(modalities) if m == "image"]
    text_cols = [i for i, m in enumerate(modalities) if m != "image"]
    pixel = as_array(inp.format_pixel_attr(result.seq_attr.reshape(1, -1)))[0]
    getter = getattr(inp, "get_mask_list", None)
    masks = [as_array(m).astype(bool) for m in getter()] if callable(getter) else []

    region_values = [float(seq[i]) for i in image_cols]
    finite = [(abs(v), k) for k, v in enumerate(region_values) if math.isfinite(v) and v != 0]
    top = max(finite)[1] if finite else None
    outline = masks[top] if top is not None and len(masks) == len(image_cols) else None
    rgb, limit, n_nan = _blend(inp.image, pixel, 0.6, outline)
    hw = (rgb.shape[0], rgb.shape[1])
    top_name = "" if outline is None else f"; outlined: {names[image_cols[top]]}"

    seq_limit = symmetric_limit(seq)
    side = [f'<p class="shares">{escape(_shares(result))}</p>']
    if text_cols:
        chips = " ".join(chip(names[i], float(seq[i]), seq_limit) for i in text_cols)
        side.append(f'<div class="vprompt" title="text features">{chips}</div>')
    rows = "".join(
        f"<tr{_TOP if k == top else ''}><th>{escape(names[i])}</th>"
        f'<td class="v q{palette.level(v, seq_limit) + palette.LEVELS}">{value_text(v)}</td></tr>'
        for k, (i, v) in enumerate(zip(image_cols, region_values))
    )
    side.append(
        '<div class="regions"><table class="rg"><thead><tr><th>region</th><th>attribution</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )
    note = (
        f'<p class="imgnote">{plural(n_nan, "pixel")} with NaN attribution, drawn as 0.</p>'
        if n_nan
        else ""
    )
    return (
        "<h3>Image</h3>"
        + legend(limit, f"image: attribution to the whole target{top_name}", "img")
        + note
        + '<div class="imgsec"><figure>'
        + _img(_png(rgb), hw, "the image coloured by its regions' attributions")
        + f"<figcaption>{escape(plural(len(image_cols), 'region'))}, each pixel coloured by the "
        f"sum of the attributions of the regions covering it{escape(top_name)}</figcaption>"
        + "</figure><figure>"
        + _img(_png(_rgb(inp.image)), hw, "the image")
        + "<figcaption>the image</figcaption></figure>"
        + f'<div class="side">{"".join(side)}</div></div>'
    )
