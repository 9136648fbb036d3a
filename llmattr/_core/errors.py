"""Error types that match what Captum users catch.

Captum validates arguments with ``assert``, so code written for Captum catches ``AssertionError``
(invalid targets, neuron selectors, window shapes, ...). llmattr validates with clear messages
before any work, and raises :class:`InputError`, which is both a ``ValueError`` (what the Python
convention and llmattr's own users expect) and an ``AssertionError`` (what Captum users catch).
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "TargetIndexError"]


class InputError(ValueError, AssertionError):
    """An argument is invalid; raised before any forward pass.

    Catchable as ``ValueError`` and as ``AssertionError`` (Captum raises the latter through its
    ``assert`` checks, and its users' code catches it).
    """


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type: a ``TypeError`` (the Python convention) that is also an
    :class:`InputError` (``ValueError`` and ``AssertionError``, what Captum's asserts raise)."""


class TargetIndexError(IndexError, RuntimeError):
    """A target index is out of range for the output. Captum lets torch report it: an
    ``IndexError`` for an int or tuple target, a ``RuntimeError`` (from ``gather``) for a list or
    tensor target; this is both, so code written for either catches it."""
