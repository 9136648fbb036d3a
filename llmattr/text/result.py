"""The result of an LLM attribution: scores, tokens, probabilities, and their views."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError

__all__ = ["LLMAttributionResult"]


def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.tensor(value)


@dataclass
class LLMAttributionResult:
    """Attributions of a generated (or given) target to the features of a prompt.

    Attributes:
        seq_attr: ``(n_features,)`` attribution to the whole target (its total log-probability,
            or its probability with ``attr_target="prob"``).
        token_attr: ``(n_output_tokens, n_features)`` attribution to each target token, or None
            (Lime and KernelShap, as in Captum).
        input_tokens: the features' names (tokens, words, sentences, ...).
        output_tokens: the target tokens.
        output_probs: ``(n_output_tokens,)`` each target token's probability under the
            unperturbed prompt (llmattr fills it; Captum's LLMAttribution leaves it None).
        method: the attribution method's name.
        info: free-form extras (e.g. the contrastive foil).
        inp: the text input the attributions are for (Captum's ``inp``), or None.

    Built with Captum's keywords (``seq_attr=``, ``token_attr=``, ``input_tokens=``,
    ``output_tokens=``, ``output_probs=``, ``inp=``) or positionally in the order above; array
    likes become tensors, and shapes are checked (:class:`~llmattr._core.errors.InputError`).
    """

    seq_attr: Tensor
    token_attr: Tensor | None = None
    input_tokens: list[str] = field(default_factory=list)
    output_tokens: list[str] = field(default_factory=list)
    output_probs: Tensor | None = None
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    inp: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.seq_attr = _as_tensor(self.seq_attr)
        self.token_attr = None if self.token_attr is None else _as_tensor(self.token_attr)
        self.output_probs = None if self.output_probs is None else _as_tensor(self.output_probs)
        self.input_tokens, self.output_tokens = list(self.input_tokens), list(self.output_tokens)
        n_in, n_out = len(self.input_tokens), len(self.output_tokens)
        if self.seq_attr.dim() != 1 or self.seq_attr.shape[0] != n_in:
            raise InputError(
                f"seq_attr must be 1-D with one value per input token ({n_in}); got shape "
                f"{tuple(self.seq_attr.shape)}."
            )
        if self.token_attr is not None and tuple(self.token_attr.shape) != (n_out, n_in):
            raise InputError(
                f"token_attr must have shape (n_output_tokens, n_input_tokens) = "
                f"{(n_out, n_in)}; got {tuple(self.token_attr.shape)}."
            )
        if self.output_probs is not None and tuple(self.output_probs.shape) != (n_out,):
            raise InputError(
                f"output_probs must be 1-D with one value per output token ({n_out}); got "
                f"shape {tuple(self.output_probs.shape)}."
            )

    @property
    def seq_attr_dict(self) -> dict[str, float]:
        """``{feature name: attribution}`` (repeated names get a ``#i`` suffix)."""
        out: dict[str, float] = {}
        for i, (name, value) in enumerate(zip(self.input_tokens, self.seq_attr.tolist())):
            key = name if name not in out else f"{name}#{i}"
            while key in out:  # a later suffix can collide with a name given earlier
                key += f"#{i}"
            out[key] = value
        return out

    # ---- views (drawn by llmattr.viz) ------------------------------------------------------

    def plot_token_attr(self, show: bool = False, ax: Any = None) -> tuple[Any, Any] | None:
        """Heatmap of ``token_attr`` (target tokens × features), on ``ax`` if given (else a new
        figure). As in Captum, returns ``(fig, ax)``, or None when ``show`` displays it."""
        from ..viz.plots import plot_token_attr

        if self.token_attr is None:
            raise ValueError(
                "This result has no per-token attributions (token_attr is None: Lime and "
                "KernelShap explain the whole target only); use plot_seq_attr."
            )
        drawn = plot_token_attr(
            self.token_attr, self.input_tokens, self.output_tokens, ax=ax, show=show
        )
        return None if show else drawn

    def plot_seq_attr(self, show: bool = False, ax: Any = None) -> tuple[Any, Any] | None:
        """Bar chart of ``seq_attr`` per feature, on ``ax`` if given (else a new figure). As in
        Captum, returns ``(fig, ax)``, or None when ``show`` displays it."""
        from ..viz.plots import plot_seq_attr

        drawn = plot_seq_attr(self.seq_attr, self.input_tokens, ax=ax, show=show)
        return None if show else drawn

    def _rows(self, target_token_pos: int | tuple[int, int] | None) -> Tensor:
        """``seq_attr`` (None), one target token's row (int), or rows ``m..n-1`` summed."""
        if target_token_pos is None:
            return self.seq_attr
        if self.token_attr is None:
            raise ValueError(
                "token_attr is None (Lime and KernelShap explain the whole target only); use "
                "target_token_pos=None for the sequence attribution."
            )
        if isinstance(target_token_pos, int):
            return self.token_attr[target_token_pos]
        start, end = target_token_pos
        return self.token_attr[start:end].sum(0)

    def plot_image_heatmap(
        self,
        show: bool = False,
        target_token_pos: int | tuple[int, int] | None = None,
        border_width: int = 2,
        show_legends: bool = True,
    ) -> tuple[Any, Any] | None:
        """The input's image (grey) under a diverging heatmap of its regions' attributions, with
        each region's border and id (Captum 0.9's signature). ``target_token_pos``: None for
        ``seq_attr``, an int for that target token, ``(m, n)`` for tokens ``m..n-1`` summed.
        Returns ``(fig, ax)``, or None when ``show`` displays it."""
        inp = self.inp
        if inp is None or not callable(getattr(inp, "format_pixel_attr", None)):
            raise InputError(
                "plot_image_heatmap needs a result of an image input (ImageMaskInput, "
                "MultimodalInput) with its input attached (a loaded result has none)."
            )
        from ..viz.image_report import plot_image_attr

        attr = self._rows(target_token_pos)
        pixel = inp.format_pixel_attr(attr.unsqueeze(0))[0]
        image_cols = [i for i, m in enumerate(inp.modalities) if m == "image"]
        fig, ax = plot_image_attr(
            inp.image, pixel, mask_list=inp.get_mask_list(),
            values=[float(attr[i]) for i in image_cols], border_width=border_width,
            show_legends=show_legends, mask_ids=list(inp.mask_id_to_idx),
        )  # fmt: skip
        if show:
            import matplotlib.pyplot as plt

            plt.show()
            return None
        return fig, ax

    def modalities(self) -> list[str]:
        """The modality of each feature (``"image"`` or ``"text"``): the input's, else the
        saved ones, else all ``"text"``."""
        found = getattr(self.inp, "modalities", None) or self.info.get("modalities")
        return list(found) if found else ["text"] * len(self.input_tokens)

    def modality_shares(
        self, signed: bool = False, target_token_pos: int | tuple[int, int] | None = None
    ) -> dict[str, float]:
        """Each modality's share of the attribution, summing to 1 (always with ``"image"`` and
        ``"text"`` keys).

        Default: ``sum |a_i|`` over the modality's features / ``sum |a_i|`` over all, in
        ``[0, 1]``. ``signed=True``: ``sum a_i`` over the modality / ``sum a_i`` over all (the
        modality's part of the total change; can be negative or above 1). ``a`` is ``seq_attr``,
        or a target token's row (``target_token_pos`` as in :meth:`plot_image_heatmap`).

        Raises:
            ValueError: when the denominator is 0 (no attribution to share).
        """
        attr = self._rows(target_token_pos).double()
        attr = attr if signed else attr.abs()
        total = float(attr.sum())
        if total == 0.0:
            raise ValueError(
                "The attributions sum to 0, so modality shares are undefined"
                + (" (try signed=False)." if signed else " (every attribution is 0).")
            )
        names = self.modalities()
        shares = {"image": 0.0, "text": 0.0}
        for name in dict.fromkeys(names):
            cols = torch.tensor([m == name for m in names])
            shares[name] = float(attr[cols].sum()) / total
        return shares

    def to_html(self, title: str | None = None, path: str | Path | None = None) -> str:
        """One self-contained HTML page (see :func:`llmattr.viz.html_report`): the prompt's
        features coloured by ``seq_attr`` with a legend, and the target-token × feature heatmap
        with values and probabilities on hover. Every token is HTML-escaped. Written to
        ``path`` too when given."""
        from ..viz.report import html_report

        return html_report([self], path=path, titles=None if title is None else [title])

    # ---- saving ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats kept exactly)."""

        def pack(t: Tensor | None) -> dict[str, Any] | None:
            if t is None:
                return None
            t = t.detach().cpu()
            return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                    "data": t.double().reshape(-1).tolist()}  # fmt: skip

        return {
            "seq_attr": pack(self.seq_attr),
            "token_attr": pack(self.token_attr),
            "input_tokens": list(self.input_tokens),
            "output_tokens": list(self.output_tokens),
            "output_probs": pack(self.output_probs),
            "method": self.method,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMAttributionResult:
        """Inverse of :meth:`to_dict`."""

        def unpack(d: dict[str, Any] | None) -> Tensor | None:
            if d is None:
                return None
            t = torch.tensor(d["data"], dtype=torch.float64).reshape(d["shape"])
            return t.to(getattr(torch, d["dtype"]))

        seq, probs = unpack(data["seq_attr"]), unpack(data["output_probs"])
        if seq is None:
            raise InputError("The data has no seq_attr; it is not a saved LLMAttributionResult.")
        return cls(
            seq, unpack(data["token_attr"]), list(data["input_tokens"]),
            list(data["output_tokens"]), probs, data.get("method", ""), data.get("info", {}),
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (round-trips exactly with :meth:`load`)."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LLMAttributionResult:
        """Read a result written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
