"""The result of an LLM attribution: scores, tokens, probabilities, and their views."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["LLMAttributionResult"]


@dataclass
class LLMAttributionResult:
    """Attributions of a generated (or given) target to the features of a prompt.

    Attributes:
        seq_attr: ``(n_features,)`` attribution to the whole target (its total log-probability,
            or its probability with ``attr_target="prob"``).
        token_attr: ``(n_output_tokens, n_features)`` attribution to each target token, or None.
        input_tokens: the features' names (tokens, words, sentences, ...).
        output_tokens: the target tokens.
        output_probs: ``(n_output_tokens,)`` each target token's probability under the
            unperturbed prompt.
        method: the attribution method's name.
        info: free-form extras (e.g. the contrastive foil).
    """

    seq_attr: Tensor
    token_attr: Tensor | None
    input_tokens: list[str]
    output_tokens: list[str]
    output_probs: Tensor
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

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

    # ---- plots -------------------------------------------------------------------------------

    def plot_token_attr(self, show: bool = False) -> tuple[Any, Any]:
        """Heatmap of ``token_attr`` (target tokens × features); returns ``(fig, ax)``."""
        import matplotlib.pyplot as plt

        if self.token_attr is None:
            raise ValueError("This result has no per-token attributions.")
        data = self.token_attr.detach().float().cpu().numpy()
        limit = float(abs(data).max()) or 1.0
        fig, ax = plt.subplots(
            figsize=(
                max(4, 0.5 * len(self.input_tokens) + 2),
                max(2, 0.4 * len(self.output_tokens) + 1.5),
            )
        )
        image = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(self.input_tokens)), self.input_tokens, rotation=60, ha="right")
        ax.set_yticks(range(len(self.output_tokens)), self.output_tokens)
        ax.set_xlabel("prompt features")
        ax.set_ylabel("target tokens")
        fig.colorbar(image, ax=ax, label="attribution")
        fig.tight_layout()
        if show:
            plt.show()
        return fig, ax

    def plot_seq_attr(self, show: bool = False) -> tuple[Any, Any]:
        """Bar chart of ``seq_attr`` per feature; returns ``(fig, ax)``."""
        import matplotlib.pyplot as plt

        values = self.seq_attr.detach().float().cpu().numpy()
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(values) + 2), 3))
        colors = ["#c0392b" if v > 0 else "#2c7fb8" for v in values]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), self.input_tokens, rotation=60, ha="right")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("attribution")
        fig.tight_layout()
        if show:
            plt.show()
        return fig, ax

    # ---- HTML --------------------------------------------------------------------------------

    def to_html(self, title: str | None = None) -> str:
        """One self-contained HTML page (inline CSS, no scripts or network): the prompt's
        features coloured by ``seq_attr`` with a legend, and the target-token × feature table
        with values and probabilities on hover. Every token is HTML-escaped."""
        esc = html.escape
        seq = self.seq_attr.detach().float().cpu()
        limit = float(seq.abs().max()) or 1.0

        def colour(v: float, lim: float) -> str:
            a = min(abs(v) / lim, 1.0)
            return f"rgba(192,57,43,{a:.3f})" if v > 0 else f"rgba(44,127,184,{a:.3f})"

        chips = "".join(
            f'<span class="tok" style="background:{colour(v, limit)}" title="{esc(n)}: {v:+.4f}">'
            f"{esc(n)}</span>"
            for n, v in zip(self.input_tokens, seq.tolist())
        )
        rows = ""
        if self.token_attr is not None:
            data = self.token_attr.detach().float().cpu()
            tl = float(data.abs().max()) or 1.0
            head = "".join(f"<th>{esc(n)}</th>" for n in self.input_tokens)
            body = []
            for t, (tok, p) in enumerate(zip(self.output_tokens, self.output_probs.tolist())):
                cells = "".join(
                    f'<td style="background:{colour(v, tl)}" title="{esc(tok)} ← {esc(n)}: '
                    f'{v:+.4f} (p={p:.3f})">{v:+.2f}</td>'
                    for n, v in zip(self.input_tokens, data[t].tolist())
                )
                body.append(f'<tr><th title="p={p:.4f}">{esc(tok)}</th>{cells}</tr>')
            rows = f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"
        heading = esc(title or f"{self.method or 'Attribution'}: {''.join(self.output_tokens)}")
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{heading}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
            ".tok{padding:2px 3px;margin:1px;border-radius:3px;display:inline-block;"
            "white-space:pre}table{border-collapse:collapse;font-size:12px;margin-top:1em}"
            "td,th{border:1px solid #ddd;padding:2px 4px;text-align:center;white-space:pre}"
            ".legend span{padding:2px 8px;margin-right:6px}</style></head><body>"
            f"<h2>{heading}</h2>"
            '<div class="legend"><span style="background:rgba(192,57,43,.8)">raises the target'
            '</span><span style="background:rgba(44,127,184,.8)">lowers it</span></div>'
            f"<p>{chips}</p>{rows}</body></html>"
        )

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
        assert seq is not None and probs is not None
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
