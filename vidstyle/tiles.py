"""Frames too large to upscale whole, upscaled exactly, a tile at a time.

UpscalerNet has no normalisation layer, so each output pixel depends only on
the input pixels within its receptive field. Each tile is run with a halo of
that many pixels around it, and only its own part of the output is kept: the
halo absorbs what the tile's borders change (padding, the bicubic base's edge
handling), so the stitched frame equals the whole-frame result up to float
rounding. Unlike vidstyle.strips (instance norm needs the whole frame at each
layer), no activation is ever kept whole: memory is bounded by one tile.
"""
from __future__ import annotations

import math

import torch

from vidstyle.model import UpscalerNet

# Output pixels per tile, halo included: a few hundred MB of working memory.
TILE_OUTPUT_PIXELS = 1 << 20


def tile_side(net: UpscalerNet, tile_output_pixels: int = TILE_OUTPUT_PIXELS) -> int:
    """The side, in input pixels, of the square tiles (without their halo) that fit the budget."""
    return max(16, math.isqrt(tile_output_pixels) // net.factor - 2 * net.receptive_radius())


def upscale_in_tiles(net: UpscalerNet, x: torch.Tensor, side: int | None = None) -> torch.Tensor:
    """net(x) for (N, 3, H, W) x, computed on tiles of side x side input pixels plus their halo."""
    side = side or tile_side(net)
    factor, halo = net.factor, net.receptive_radius()
    height, width = x.shape[-2:]
    out = None
    for top in range(0, height, side):
        for left in range(0, width, side):
            bottom, right = min(height, top + side), min(width, left + side)
            y0, x0 = max(0, top - halo), max(0, left - halo)
            result = net(x[..., y0:min(height, bottom + halo), x0:min(width, right + halo)])
            if out is None:  # the dtype is autocast's
                out = result.new_empty(*result.shape[:2], height * factor, width * factor)
            out[..., top * factor:bottom * factor, left * factor:right * factor] = result[
                ..., (top - y0) * factor:(bottom - y0) * factor, (left - x0) * factor:(right - x0) * factor]
    return out
