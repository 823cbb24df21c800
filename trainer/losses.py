"""The loss terms of Johnson et al. (2016), plus an optional temporal stability term.

Their units are stated once, in LOSS_UNITS, which every model card quotes so
that anyone can recompute a logged objective.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOSS_UNITS = (
    "images RGB 0..255; "
    "content: mean squared difference of VGG-16 relu2_2 features; "
    "style: sum over relu1_2, relu2_2, relu3_3, relu4_3 of the squared Frobenius norm of the Gram difference, "
    "Grams divided by C*H*W, averaged over the batch; "
    "tv: sum of absolute differences between horizontally and vertically neighbouring pixel values, "
    "per image, averaged over the batch; "
    "stability: mean squared difference in 0..255 pixel units between stylize(warp(x)+noise) and warp(stylize(x)) "
    "over the pixels the warp sampled from inside the image; "
    "terms are unweighted, total = sum of weight * term"
)

# The random motion and sensor noise of the stability term: small, like consecutive video frames.
MAX_SHIFT_PX = 8.0
MAX_ZOOM = 0.03
MAX_ROTATION_DEG = 2.0
NOISE_STD = 0.02 * 255


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def content_loss(output_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output_features, target_features)


def style_loss(output_features: list[torch.Tensor], style_grams: list[torch.Tensor]) -> torch.Tensor:
    """style_grams: one (1, C, C) Gram per layer, broadcast over the batch."""
    return sum(
        ((gram_matrix(features) - target) ** 2).sum(dim=(1, 2)).mean()
        for features, target in zip(output_features, style_grams)
    )


def total_variation(images: torch.Tensor) -> torch.Tensor:
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    return (horizontal + vertical).mean()


def random_motion(batch: int, height: int, width: int) -> torch.Tensor:
    """Per-image affine transforms (N, 2, 3) for F.affine_grid: shift, zoom and rotation.

    Drawn from the CPU generator so that a run is reproducible on any device
    and a resumed run draws what an uninterrupted one would have.
    """
    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape) * 2 - 1

    angle = uniform(batch) * math.radians(MAX_ROTATION_DEG)
    scale = 1 + uniform(batch) * MAX_ZOOM
    shift = uniform(batch, 2) * MAX_SHIFT_PX
    cos, sin = scale * angle.cos(), scale * angle.sin()
    # affine_grid works in coordinates normalised to -1..1 per axis; this is a
    # rotation in pixel space conjugated into them, so it stays a rotation on non-square images.
    aspect = width / height
    return torch.stack([
        torch.stack([cos, -sin / aspect, shift[:, 0] * 2 / width], dim=1),
        torch.stack([sin * aspect, cos, shift[:, 1] * 2 / height], dim=1),
    ], dim=1)


def warp(images: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resampled by the motion, and a (N, 1, H, W) mask of pixels sampled from inside the image."""
    grid = F.affine_grid(motion.to(images), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    return warped, inside.to(images.dtype)


def stability_loss(
    stylize: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, stylized: torch.Tensor
) -> torch.Tensor:
    """Penalises the network for reacting to a small camera motion other than by moving along.

    stylized is stylize(images), already computed for the other terms;
    gradients flow through both branches.
    """
    n, _, h, w = images.shape
    motion = random_motion(n, h, w)
    moved, inside = warp(images, motion)
    noisy = (moved + torch.randn(images.shape).to(images) * NOISE_STD).clamp(0, 255)
    expected, _ = warp(stylized, motion)
    squared = (stylize(noisy) - expected) ** 2 * inside
    return squared.sum() / (inside.sum() * images.shape[1]).clamp(min=1)
