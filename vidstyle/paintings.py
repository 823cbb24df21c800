"""A painting for the any-painting network (vidstyle.model.ArbitraryStyleNet): whatever image a user
brings (a phone photo of a canvas, a 16-bit or CMYK scan, a PNG with transparency), read as the
network was trained to see it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from vidstyle.errors import VidstyleError
from vidstyle.media import read_still

# Below this many pixels a side a picture holds no brush strokes to carry a style.
MIN_PAINTING_SIDE = 16
WHITE = 255.0  # what shows through a transparent painting: the page it would hang on


def read_painting(path: Path, long_side: int) -> torch.Tensor:
    """(1, 3, H, W) RGB 0..255 with the long side resized to long_side, as the trainer resizes its
    paintings (vidstyle.trainer.arbitrary); one-line errors for a missing, unreadable or tiny file."""
    path = Path(path)
    if not path.is_file():
        raise VidstyleError(f"painting not found: {path}")
    # A huge scan's JPEG decodes at a fraction of its size; the usual painting, whole, as in training.
    still = read_still(path, reduce_to=4 * long_side)
    height, width = still.pixels.shape[:2]
    if min(height, width) < MIN_PAINTING_SIDE:
        raise VidstyleError(f"painting {path} is {width}x{height} pixels: too small to carry a style "
                            f"(at least {MIN_PAINTING_SIDE} a side)")
    pixels = torch.from_numpy(still.pixels).permute(2, 0, 1).float()
    if still.alpha is not None:
        opacity = torch.from_numpy(still.alpha.astype(np.float32) / 65535)
        pixels = pixels * opacity + WHITE * (1 - opacity)
    factor = long_side / max(height, width)
    size = [max(1, round(height * factor)), max(1, round(width * factor))]
    # Resized as 8-bit pixels, as the trainer's PIL images are.
    return TF.resize(pixels.round().to(torch.uint8), size, antialias=True).float().unsqueeze(0)
