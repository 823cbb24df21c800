"""Frames too large to upscale whole, upscaled exactly, a tile at a time.

UpscalerNet has no normalisation layer, so each output pixel depends only on
the input pixels within its receptive field. Each tile is run with a halo of
that many pixels around it, and only its own part of the output is kept: the
halo absorbs what the tile's borders change (padding, the bicubic base's edge
handling), so the stitched frame equals the whole-frame result up to float
rounding. Unlike vidstyle.strips (instance norm needs the whole frame at each
layer), no activation is ever kept whole: memory is bounded by one tile (with
the temporal stage, plus the features at the input's size, which it blends).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from vidstyle.model import UpscalerNet

# Output pixels per tile, halo included: a few hundred MB of working memory.
TILE_OUTPUT_PIXELS = 1 << 20


def tile_side(net: UpscalerNet, tile_output_pixels: int = TILE_OUTPUT_PIXELS) -> int:
    """The side, in input pixels, of the square tiles (without their halo) that fit the budget."""
    return max(16, math.isqrt(tile_output_pixels) // net.factor - 2 * net.receptive_radius())


def upscale_in_tiles(net: UpscalerNet, x: torch.Tensor, side: int | None = None,
                     between: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """net(x) for (N, 3, H, W) x, computed on tiles of side x side input pixels plus their halo.
    With `between` (the temporal stage's blend, which needs the whole frame's features and
    their history): the features in tiles, blended whole (at the input's size, a sixteenth of
    an x4 output's pixels), then the output in tiles from them."""
    side = side or tile_side(net)
    if between is None:
        return _in_tiles(net, (x,), net.factor, net.receptive_radius(), side)
    features = between(_in_tiles(net.encode, (x,), 1, net.receptive_radius(), side))
    return _in_tiles(net.render, (features, x), net.factor, net.receptive_radius(), side)


def _in_tiles(function: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], factor: int, halo: int,
              side: int) -> torch.Tensor:
    """function(*inputs) of a local function whose output is factor times its inputs' size and
    depends only on input pixels within `halo`, a tile at a time."""
    height, width = inputs[0].shape[-2:]
    out = None
    for top in range(0, height, side):
        for left in range(0, width, side):
            bottom, right = min(height, top + side), min(width, left + side)
            y0, x0 = max(0, top - halo), max(0, left - halo)
            result = function(*(tensor[..., y0:min(height, bottom + halo), x0:min(width, right + halo)] for tensor in inputs))
            if out is None:  # the dtype is autocast's
                out = result.new_empty(*result.shape[:2], height * factor, width * factor)
            out[..., top * factor:bottom * factor, left * factor:right * factor] = result[
                ..., (top - y0) * factor:(bottom - y0) * factor, (left - x0) * factor:(right - x0) * factor]
    return out
