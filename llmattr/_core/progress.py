"""Progress bars over long attribution work (tqdm), shown only when asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


@contextmanager
def progress(show: bool, total: int, desc: str) -> Iterator[Callable[[int], object]]:
    """A bar over ``total`` units of work named ``desc``; yields its ``update(n)`` (a no-op when
    ``show`` is False). The bar is closed however the work ends."""
    if not show:
        yield lambda n: None
        return
    from tqdm.auto import tqdm  # imported here: tqdm.auto warns in notebooks without ipywidgets

    bar = tqdm(total=total, desc=desc)
    try:
        yield bar.update
    finally:
        bar.close()
