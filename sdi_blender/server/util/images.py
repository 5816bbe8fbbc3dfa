"""Image tensors to files: grids, labels, PNG bytes and atomic image writes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ...errors import UserError
from .fileio import atomic_write, probe_writable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def to_pil(image: Tensor) -> Image.Image:
    """A [3, H, W] tensor in [0, 1] as an RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def grid(rows: list[list[Tensor]]) -> Tensor:
    """Rows of equally sized [3, H, W] images tiled into one image."""
    return torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)


def label(image: Image.Image, text: str, xy: tuple[int, int] = (2, 1)) -> Image.Image:
    """Write a small caption at ``xy`` (default: the top-left corner), on a copy."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle(draw.textbbox(xy, text), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255))
    return out


def check_output_path(path: Path) -> None:
    """Raise :class:`UserError` unless an image can be written at ``path``.

    Probes the folder with a real write: permission bits say little when running as
    root or on read-only mounts.
    """
    if path.is_dir():
        raise UserError(f"output path '{path}' is a directory")
    if path.suffix.lower() not in FORMATS:
        raise UserError(
            f"unsupported output format '{path.suffix or path.name}'", hint=f"use one of {', '.join(FORMATS)}"
        )
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"output folder '{folder}' does not exist")
    try:
        probe_writable(folder)
    except OSError as exc:
        raise UserError(f"cannot write to '{folder}': {exc.strerror or exc}") from exc


def png_bytes(image: Image.Image | Tensor | Figure, format: str = "PNG", dpi: int = 100) -> bytes:
    """``image`` encoded as PNG (or ``format``, e.g. ``"JPEG"``): a PIL image, a [3, H, W] tensor
    in [0, 1] (as :func:`to_pil` reads it) or a matplotlib figure (rendered at ``dpi``)."""
    buf = io.BytesIO()
    if isinstance(image, Tensor):
        image = to_pil(image)
    if isinstance(image, Image.Image):
        image.save(buf, format=format)
    else:
        image.savefig(buf, format=format.lower(), dpi=dpi)
    return buf.getvalue()


def write_image_atomic(image: Image.Image, path: Path) -> None:
    """Encode by the path's suffix and write atomically (no half-written image is ever left)."""
    atomic_write(path, png_bytes(image, format=FORMATS[path.suffix.lower()]))


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Equally tall images placed left to right."""
    out = Image.new("RGB", (sum(i.width for i in images), images[0].height))
    for k, img in enumerate(images):
        out.paste(img, (sum(i.width for i in images[:k]), 0))
    return out
