"""``ImageTensor``: rendered images that show and save themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmattr._core.errors import InputError

__all__ = ["ImageTensor"]


class ImageTensor(torch.Tensor):
    """A tensor of images ``(N, C, H, W)`` or ``(C, H, W)`` with values in ``[0, 1]``.

    Behaves as a ``torch.Tensor`` (operations keep the subclass) and adds :meth:`show` and
    :meth:`export`. Batches are drawn side by side; ``C`` must be 1 (grey), 3 (RGB) or 4 (RGBA).
    """

    @staticmethod
    def __new__(cls, data: object, **kwargs: object) -> ImageTensor:
        return torch.as_tensor(data, **kwargs).as_subclass(cls)  # type: ignore[arg-type]

    def __init__(self, data: object, **kwargs: object) -> None:  # data is consumed by __new__
        super().__init__()

    @classmethod
    def open(cls, path: str | Path) -> ImageTensor:
        """Read a PNG (or any Pillow format) as ``(1, C, H, W)`` float32 in ``[0, 1]``."""
        from PIL import Image

        with Image.open(path) as img:
            mode = img.mode if img.mode in ("L", "RGB", "RGBA") else "RGB"
            array = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        return cls(torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous())

    def to_numpy(self, scale: float = 1.0) -> np.ndarray:
        """The images as one ``(H, N * W, C)`` array in ``[0, 1]`` (``(H, N * W)`` for grey)."""
        x = self.as_subclass(torch.Tensor).detach().to("cpu", torch.float64) * scale
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise InputError(f"an image is (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3, 4):
            raise InputError(
                f"only 1 (grey), 3 (RGB) or 4 (RGBA) channels can be drawn, got {x.shape[1]}"
            )
        grid = torch.cat(list(x.clamp(0.0, 1.0)), dim=2).permute(1, 2, 0).numpy()
        return grid[:, :, 0] if grid.shape[2] == 1 else grid

    def show(self, figsize: tuple[float, float] | None = None, scale: float = 1.0, ax=None):
        """Draw the images (batch side by side); returns ``(fig, ax)``.

        Uses a pyplot-free ``Figure`` unless ``ax`` is given, so nothing leaks between calls; in
        a notebook the returned figure displays itself.
        """
        grid = self.to_numpy(scale)
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=figsize)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        return fig, ax

    def export(self, path: str | Path, scale: float = 1.0) -> Path:
        """Save the images (batch side by side) as an 8-bit PNG; returns the path."""
        from PIL import Image

        pixels = np.round(self.to_numpy(scale) * 255.0).astype(np.uint8)
        path = Path(path)
        Image.fromarray(pixels).save(path, format="PNG")
        return path
