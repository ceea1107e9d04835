"""Images in, tensors out: decoding (damaged and odd files are one clear error) and the model's preprocessing."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def model_transform(model: torch.nn.Module) -> Callable:
    """The model's eval preprocessing from its timm data config (PIL image -> tensor)."""
    import timm.data

    from ..model.adapter import FamilyAdapter, adapter_for

    cfg = timm.data.resolve_data_config({}, model=model)
    cfg["input_size"] = adapter_for(model).input_size
    chans = cfg["input_size"][0]
    for key in ("mean", "std"):  # a single-channel model with RGB statistics: use their average
        if len(cfg[key]) != chans and chans == 1:
            cfg[key] = (float(np.mean(cfg[key])),)
    return ModelTransform(timm.data.create_transform(**cfg, is_training=False), "L" if chans == 1 else "RGB")


class ModelTransform:
    """A decoded image in the model's channel mode through timm's eval transform (a class, not a closure: decoding
    workers started by spawn receive it pickled)."""

    def __init__(self, transform: Callable, mode: str) -> None:
        self.transform, self.mode = transform, mode

    def __call__(self, image) -> torch.Tensor:
        return self.transform(to_8bit(image).convert(self.mode))


def to_8bit(image):
    """16-bit (and 32-bit integer) images scaled to 8 bits: PIL's own conversion would clip them to white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image


def open_image(ident: str, source, *, verify_only: bool = False):
    """A fully decoded PIL image from a path or bytes; an unreadable, truncated, non-image or oversized
    (decompression bomb) file is one UserError naming the image. ``verify_only``: the cheap header and
    structure check of PIL's ``verify`` instead of decoding."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        pil = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if verify_only:
            pil.verify()
        else:
            pil.load()
        return pil
    except Image.DecompressionBombError as exc:
        raise UserError(f"image '{ident}' is too large to decode safely ({exc}); resize it or remove it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"unreadable image '{ident}' ({type(exc).__name__}); remove or replace the file") from exc


__all__ = ["model_transform", "to_8bit", "open_image", "IMAGE_EXTENSIONS"]
