"""Feeding concept examples: an iterable over files and a DataLoader helper (Captum's names)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["CustomIterableDataset", "dataset_to_dataloader"]


class CustomIterableDataset(IterableDataset):
    """Iterate over the examples stored in a directory (every file in it) or in one file.

    Args:
        transform_filename_to_tensor: reads one file path and returns its example tensor (for a
            directory) or an iterator of examples (for a single file).
        path: a directory (its files, sorted, are read one by one) or a file.
    """

    def __init__(self, transform_filename_to_tensor: Callable[[str], Any], path: str) -> None:
        self.path = path
        self.transform_filename_to_tensor = transform_filename_to_tensor
        # sorted, unlike a bare glob, so the examples (and the cached activations) keep one order
        self.file_itr = sorted(glob.glob(os.path.join(path, "*"))) if os.path.isdir(path) else None

    def __iter__(self) -> Iterator[Any]:
        if self.file_itr is not None:
            return map(self.transform_filename_to_tensor, self.file_itr)
        return iter(self.transform_filename_to_tensor(self.path))


def dataset_to_dataloader(dataset: Dataset, batch_size: int = 64) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in batches of ``batch_size``."""
    return DataLoader(dataset, batch_size=batch_size)
