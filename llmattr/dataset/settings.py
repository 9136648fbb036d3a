"""What determines a dataset run's numbers: its settings (kept in the results file's header,
compared before a run resumes) and a fingerprint of the model's weights."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._core.errors import InputError
from ..cli_options import DEFAULT_SAMPLES, FEATURES, METHODS

__all__ = ["check_options", "model_fingerprint", "run_settings", "settings_difference"]

# parameter values read into the fingerprint: the first few of each tensor, enough to tell
# two trainings of one architecture apart without reading every weight
_VALUES_PER_TENSOR = 8


def check_options(method: str, features: str, **counts: int | None) -> None:
    """Raise InputError for an unknown method or feature kind, or a count below 1."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    if features not in FEATURES:
        raise InputError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{name} must be an integer, got {value!r}")
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")


def run_settings(
    model: str,
    method: str,
    features: str,
    baseline: str | None,
    max_new_tokens: int,
    n_samples: int | None,
    n_steps: int,
    seed: int,
    robustness: bool,
) -> dict[str, Any]:
    """The header's settings (without ``model_fingerprint``, added once the model is loaded):
    only what changes the numbers of ``method`` (``n_steps`` for integrated gradients,
    ``n_samples`` and ``seed`` for the sampling methods)."""
    from .. import __version__

    settings: dict[str, Any] = {
        "model": model,
        "method": method,
        "features": features,
        "baseline": baseline,
        "max_new_tokens": max_new_tokens,
        "robustness": robustness,
    }
    if method == "integrated-gradients":
        settings["n_steps"] = n_steps
    elif method in DEFAULT_SAMPLES:
        settings["n_samples"] = n_samples if n_samples is not None else DEFAULT_SAMPLES[method]
        settings["seed"] = seed
    settings["llmattr_version"] = __version__
    return settings


def model_fingerprint(model: Any) -> str:
    """A short hash of the model's config and a summary of its parameters (name, shape,
    dtype and the first few values of each; parameters not in memory, on the ``meta``
    device, by name and shape only). Equal for the same weights on any device."""
    import torch

    config = getattr(model, "config", None)
    summary: dict[str, Any] = {"class": type(model).__name__}
    if config is not None and hasattr(config, "to_dict"):
        summary["config"] = {
            k: v
            for k, v in config.to_dict().items()
            if not k.startswith("_") and k not in ("transformers_version", "name_or_path")
        }
    params = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            row: list[Any] = [name, list(p.shape), str(p.dtype)]
            if p.device.type != "meta":
                row.append(p.detach().reshape(-1)[:_VALUES_PER_TENSOR].double().cpu().tolist())
            params.append(row)
    summary["parameters"] = params
    blob = json.dumps(summary, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def settings_difference(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """None when equal, else a sentence naming each setting that differs (``found``: the
    results file's, ``wanted``: this run's)."""
    keys = sorted(set(found) | set(wanted), key=str)
    diffs = [
        f"{k} is {found.get(k)!r} there, {wanted.get(k)!r} in this run"
        for k in keys
        if found.get(k) != wanted.get(k)
    ]
    return "; ".join(diffs) or None
