"""The console view of an LLM attribution result: the prompt coloured by attribution (ANSI
256-colour backgrounds, red raises the target's probability, blue lowers it), the features
ranked by magnitude, and each target token's strongest features.

Used by ``llmattr explain``; :func:`summary` returns plain text when ``color`` is False.
"""

from __future__ import annotations

import itertools
from typing import Any

from . import palette
from .scale import symmetric_limit

__all__ = ["colored_prompt", "display_names", "feature_spans", "summary"]

# what one attribution value means, by method (the line under the target)
_MEANING = {
    None: "how much the feature raises log p(target) (negative: lowers it)",
    "FeatureAblation": "change of log p(target) when the feature is replaced by the baseline "
    "(positive: the feature raises it)",
    "ShapleyValueSampling": "the feature's average contribution to log p(target) over random "
    "orders of adding features (Shapley value; positive: raises it)",
    "Lime": "the feature's weight in a linear model of log p(target) fitted to prompts with "
    "random features removed (positive: raises it)",
    "KernelShap": "the feature's Shapley value for log p(target), estimated by a weighted linear "
    "fit (positive: raises it)",
    "LayerIntegratedGradients": "integrated gradients of log p(target) along the path from the "
    "baseline token's embedding to the feature's (positive: raises it)",
}

# xterm-256 background levels, weakest to strongest
_REDS = (224, 217, 210, 203, 196)
_BLUES = (195, 153, 117, 75, 33)


def feature_spans(inp: Any, tokenizer: Any, prompt: str) -> list[tuple[int, int] | None] | None:
    """Each feature's character span in ``prompt`` (from the tokenizer's offsets), or None
    when the tokenizer gives no offsets."""
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    offsets = enc.get("offset_mapping")
    if offsets is None or len(offsets) != inp.ids.numel():
        return None
    spans: list[tuple[int, int] | None] = [None] * inp.n_features
    for (start, end), f in zip(offsets, inp.feature_of_token.tolist()):
        if f < 0 or end <= start:
            continue
        old = spans[f]
        spans[f] = (start, end) if old is None else (min(old[0], start), max(old[1], end))
    return spans


def display_names(names: list[str], tokenizer: Any, features: str) -> list[str]:
    """Feature names for the console: tokens as text (``Ġred`` → ``red``), one line each."""
    shown = []
    for name in names:
        if features == "tokens":
            try:
                name = tokenizer.convert_tokens_to_string([name]).strip() or name
            except (TypeError, ValueError, KeyError, AttributeError):
                pass
        name = " ".join(name.split())
        shown.append(name if len(name) <= 40 else name[:37] + "...")
    return shown


def _paint(text: str, value: float, limit: float) -> str:
    # the palette's steps (±inf strongest, NaN neutral) halved onto the five colours: values
    # under ~15% of the largest stay unpainted
    level = abs(palette.level(value, limit)) * len(_REDS) // palette.LEVELS
    if level == 0:
        return text
    code = (_REDS if value > 0 else _BLUES)[level - 1]
    return f"\x1b[38;5;16;48;5;{code}m{text}\x1b[0m"


def colored_prompt(
    prompt: str, names: list[str], spans: list[tuple[int, int] | None] | None, values: list[float]
) -> str:
    """The prompt with each feature's text on a background coloured by its attribution."""
    limit = symmetric_limit(values)
    placed = [] if spans is None else sorted((s, f) for f, s in enumerate(spans) if s is not None)
    if (
        spans is None
        or len(placed) != len(values)
        or any(a[0][1] > b[0][0] for a, b in itertools.pairwise(placed))
    ):
        return " ".join(_paint(n, v, limit) for n, v in zip(names, values))
    parts, cursor = [], 0
    for (start, end), f in placed:
        parts += [prompt[cursor:start], _paint(prompt[start:end], values[f], limit)]
        cursor = end
    parts.append(prompt[cursor:])
    return "".join(parts)


def summary(
    result: Any,
    prompt: str,
    names: list[str],
    spans: list[tuple[int, int] | None] | None,
    tokenizer: Any,
    color: bool,
    top: int = 10,
) -> str:
    """The readable console summary of an LLMAttributionResult."""
    values = [float(v) for v in result.seq_attr.detach().float().cpu()]
    probs = [float(p) for p in result.output_probs.detach().float().cpu()]
    try:
        target = tokenizer.convert_tokens_to_string(list(result.output_tokens))
    except (TypeError, ValueError, KeyError, AttributeError):
        target = " ".join(result.output_tokens)
    joint = 1.0
    for p in probs:
        joint *= p
    n, k = len(values), len(result.output_tokens)
    lines = [
        f"method: {result.method} over {n} feature{'s' * (n != 1)}",
        f"target: {target!r} ({k} token{'s' * (k != 1)}, probability {joint:.3g})",
        f"attribution: {_MEANING.get(result.method, _MEANING[None])}",
    ]
    check = (result.info or {}).get("completeness")
    if isinstance(check, dict) and {"sum", "expected", "gap"} <= check.keys():
        lines.append(
            f"completeness: the attributions sum to {check['sum']:+.4f}; log p(target) - "
            f"log p(target | baseline prompt) = {check['expected']:+.4f} "
            f"(gap {check['gap']:+.2g})"
        )
    if color:
        legend = f"{_paint(' raises ', 1, 1)} {_paint(' lowers ', -1, 1)}"
        lines += ["", f"prompt  {legend}", colored_prompt(prompt, names, spans, values)]
    order = sorted(range(n), key=lambda i: -abs(values[i]))[:top]
    width = max((len(names[i]) for i in order), default=0)
    lines += ["", f"top {len(order)} of {n} features by |attribution|:"]
    strongest = symmetric_limit(values)
    for rank, i in enumerate(order, 1):
        shown = _paint(names[i], values[i], strongest) if color else names[i]
        pad = " " * (width - len(names[i]))
        lines.append(f"  {rank:>3}. {values[i]:+10.4f}  {shown}{pad}  (feature {i})")
    if result.token_attr is not None and k > 1:
        lines += ["", "per target token (top 3 features):"]
        rows = result.token_attr.detach().float().cpu()
        for t, (token, p) in enumerate(zip(result.output_tokens, probs)):
            row = [float(v) for v in rows[t]]
            best = sorted(range(n), key=lambda i: -abs(row[i]))[:3]
            tops = ", ".join(f"{names[i]} {row[i]:+.3f}" for i in best)
            lines.append(f"  {token!r} p={p:.3f}: {tops}")
    return "\n".join(lines) + "\n"
