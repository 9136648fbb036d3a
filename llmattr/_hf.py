"""Small helpers around ``transformers`` shared by the demo model loader and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_transformers"]


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
