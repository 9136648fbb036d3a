"""Loading Hugging Face language models: quietly, whole, and never with untrained weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ModelLoadError", "load_language_model", "quiet_transformers"]


class ModelLoadError(ValueError):
    """A model could not be loaded as a language model; the message says why."""


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No loading bars or load reports from transformers while loading a model: the only bar
    on stderr is the attribution's, and problems with the weights are for the caller to judge
    (``output_loading_info=True``). Both settings are restored afterwards."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    verbosity = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub name (``gpt2``, ``org/model``)."""
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def load_language_model(name: str | None, device: Any) -> tuple[Any, Any, str]:
    """A language model and its tokenizer from a local directory or a hub name.

    Args:
        name: a directory written by ``save_pretrained``, a hub name, or None for the shipped
            demo model.
        device: where to put the model.

    Returns:
        ``(model, tokenizer, label)``: the model in eval mode on ``device`` (an encoder-decoder
        checkpoint as a whole, anything else as a causal LM) and a label naming its source.

    Raises:
        ModelLoadError: the name is no model directory, the model cannot be loaded, or its
            checkpoint leaves parameters untrained (an encoder such as BERT given a language
            model head), which would make every answer noise.
    """
    if name is None:
        from .demo import MODEL_DIR, load_demo_model

        model, tokenizer = load_demo_model(device)
        return model, tokenizer, f"llmattr demo model ({MODEL_DIR})"
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    path = Path(name).expanduser()
    if not path.exists() and _looks_like_path(name):
        raise ModelLoadError(f"model path {name!r} does not exist")
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"model path {name!r} is a file; give the model's directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{name!r} has no config.json: not a Hugging Face model directory (write one with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
        )
    source = str(path) if path.exists() else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # an encoder-decoder (T5, BART) as a whole: BART-like models also have a decoder-only
        # *ForCausalLM class, which would leave the encoder's weights unused
        config = AutoConfig.from_pretrained(source)  # read once, handed to the model class
        seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        loaded: Any = auto.from_pretrained(source, config=config, output_loading_info=True)
        model, info = loaded
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load a model and tokenizer from {name!r}: {first}") from None
    missing = list(info.get("missing_keys") or [])
    if missing:  # e.g. an encoder (BERT) given a language-model head it was never trained with
        raise ModelLoadError(
            f"{name!r} holds no trained weights for {len(missing)} parameters of "
            f"{type(model).__name__} (e.g. {missing[0]}): it is not a causal or "
            "encoder-decoder language model, and its answers would be random"
        )
    return model.to(device).eval(), tokenizer, source
