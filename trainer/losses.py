"""The loss terms of Johnson et al. (2016), plus an optional temporal stability term.

Their units are stated once, in LOSS_UNITS, which every model card quotes so
that anyone can recompute a logged objective.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from vidstyle.model import gaussian_blur

_UNITS = (
    "images RGB 0..255; "
    "content: mean squared difference of VGG-16 relu2_2 features; "
    "style: sum over relu1_2, relu2_2, relu3_3, relu4_3 of the squared Frobenius norm of the Gram difference, "
    "Grams divided by C*H*W, averaged over the batch; "
    "tv: sum of absolute differences between horizontally and vertically neighbouring pixel values, "
    "per image, averaged over the batch; "
    "stability: mean squared difference in 0..255 pixel units between {next_frame} and warp(stylize(x)) "
    "over the pixels the warp sampled from inside the image; "
    "terms are unweighted, total = sum of weight * term"
)
# What the stability term's moved frame is, per --stability-motion. "affine" is the
# motion of the styles trained before "nonrigid" existed; their cards quote its text.
STABILITY_MOTIONS = ("affine", "nonrigid")
_NEXT_FRAME = {"affine": "stylize(warp(x)+noise)", "nonrigid": "stylize(camera(warp(x)))"}
LOSS_UNITS = _UNITS.format(next_frame=_NEXT_FRAME["affine"])
# Default weights of the terms, shared by training (vidstyle.trainer.config) and still optimisation (vidstyle.trainer.gatys).
CONTENT_WEIGHT = 1.0
STYLE_WEIGHT = 2e-4
TV_WEIGHT = 1e-3  # about 0.3% of the gradient of the other terms at 128 px: a light touch
# A grid peak's power within twice its neighbourhood's, pooled over a batch of crops, is a photo's own
# detail (Set14: 0 to 0.03 for the photos' detail, 0.01 to 0.24 for the gridded x4's; docs/super-resolution.md).
GRID_EXCESS = 2.0
GRID_RADIUS = 6  # the neighbourhood of each grid peak, in frequency bins either way
STABILITY_WEIGHT = 200.0  # every built-in style's: flicker 0.22x for 1.08x the style loss (docs/training.md)


def periodic_power(image: torch.Tensor) -> torch.Tensor:
    """The power spectrum of the periodic component of a (H, W) image (Moisan 2011): the plain
    FFT treats the image as tiled, and the jumps at its borders leak power along both axes,
    through the peaks of a horizontal or vertical grid."""
    u = image.double()
    height, width = u.shape
    jumps = torch.zeros_like(u)
    jumps[0] += u[-1] - u[0]
    jumps[-1] -= u[-1] - u[0]
    jumps[:, 0] += u[:, -1] - u[:, 0]
    jumps[:, -1] -= u[:, -1] - u[:, 0]
    rows = torch.cos(2 * math.pi * torch.arange(height, dtype=u.dtype) / height)[:, None]
    columns = torch.cos(2 * math.pi * torch.arange(width, dtype=u.dtype) / width)[None]
    laplacian = 2 * rows + 2 * columns - 4
    laplacian[0, 0] = 1
    smooth = torch.fft.fft2(jumps) / laplacian
    smooth[0, 0] = 0
    return (torch.fft.fft2(u) - smooth).abs() ** 2


def grid_peaks(power: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (H, W) power spectrum, H and W multiples of period: the power at each peak of a grid of
    that period, (k H/period, l W/period) but DC, and the mean power of the GRID_RADIUS bins around it."""
    height, width = power.shape
    offsets = torch.arange(-GRID_RADIUS, GRID_RADIUS + 1)
    around = torch.ones(len(offsets), len(offsets), dtype=torch.bool)
    around[GRID_RADIUS, GRID_RADIUS] = False
    peaks, neighbourhoods = [], []
    for k, l in itertools.product(range(period), repeat=2):
        if k or l:
            block = power[((k * height // period + offsets) % height)[:, None], (l * width // period + offsets) % width]
            peaks.append(block[GRID_RADIUS, GRID_RADIUS])
            neighbourhoods.append(block[around].mean())
    return torch.stack(peaks), torch.stack(neighbourhoods)


def grid_excess(detail: torch.Tensor, period: int) -> torch.Tensor:
    """The training term against a grid in an upscaler's detail (N, C, H, W): the power spectrum of
    its grey level, pooled over the batch (a single crop's peaks are too noisy to tell a grid from a
    photo's own detail), at each grid peak beyond GRID_EXCESS times the power around it, summed over
    the peaks: a squared amplitude in 0..255 units."""
    power = torch.stack([periodic_power(image) for image in detail.float().mean(1)]).mean(0)
    peaks, around = grid_peaks(power, period)
    return ((peaks - GRID_EXCESS * around).clamp(min=0).sum() / power.numel() ** 2).float()


# A texture of one fine scale (the x4's weave of strokes 2.6 px apart) is a peak in the ratio of the
# detail's radial power spectrum to the true detail's; a photo's own detail has none (docs/super-resolution.md).
TEXTURE_BAND_EDGES = torch.arange(0.04, 0.5001, 0.02)  # cycles per pixel: periods of 2 to 25 pixels
TEXTURE_EXCESS = 1.5  # a band's ratio beyond this times the bands' median is a peak
TEXTURE_BANDS = (f"{TEXTURE_BAND_EDGES[1] - TEXTURE_BAND_EDGES[0]:.2g} cycles per pixel from "
                 f"{TEXTURE_BAND_EDGES[0]:.2g} to {TEXTURE_BAND_EDGES[-1]:.2g}")  # in words, for cards and reports


def texture_peaks(detail: torch.Tensor, true_detail: torch.Tensor) -> torch.Tensor:
    """The training term against a texture of one fine scale in an upscaler's detail (N, C, H, W):
    the power of its grey level in radial frequency bands over the true detail's, pooled over the
    batch, each band's ratio beyond TEXTURE_EXCESS times the median band's, averaged over the bands.
    Linear in the power: a log ratio's gradient grows without bound as the detail fades, and a
    fine-tune with it faded the detail to nothing."""
    def band_power(images: torch.Tensor) -> torch.Tensor:
        power = torch.stack([periodic_power(image) for image in images.float().mean(1)]).mean(0)
        height, width = power.shape
        radius = (torch.fft.fftfreq(height)[:, None] ** 2 + torch.fft.fftfreq(width)[None] ** 2).sqrt()
        band = torch.bucketize(radius, TEXTURE_BAND_EDGES.double())
        inside = (band > 0) & (band < len(TEXTURE_BAND_EDGES))
        return torch.zeros(len(TEXTURE_BAND_EDGES) + 1, dtype=power.dtype).index_add(
            0, band[inside], power[inside])[1:-1]

    ratio = band_power(detail) / (band_power(true_detail) + 1e-6)
    return (ratio - TEXTURE_EXCESS * ratio.detach().median()).clamp(min=0).mean().float()


def loss_units(motion: str) -> str:
    """The units text a model card quotes, for a run with this --stability-motion."""
    return _UNITS.format(next_frame=_NEXT_FRAME[motion])


# The random motion and sensor noise of the stability term: small, like consecutive video frames.
MAX_SHIFT_PX = 8.0
MAX_ZOOM = 0.03
MAX_ROTATION_DEG = 2.0
NOISE_STD = 0.02 * 255
# "nonrigid" adds what real footage has and a camera pan over a photo lacks (after Wang et al. 2020,
# ReReVST): parts of the scene moving on their own (a smooth random flow, a coarse grid of random
# displacements upsampled and blurred), light changing locally, motion or focus blur, and compression.
FLOW_CELLS = (4, 8)  # the coarse grid has this many cells a side, drawn per batch
MAX_FLOW_PX = 3.0  # per image a peak displacement drawn up to this
MAX_GAIN = 0.06  # brightness: a smooth gain field within 1 +- this ...
MAX_OFFSET = 6.0  # ... and an offset field within +- this many levels, over a 2x2-cell grid
BLUR_PROBABILITY = 0.3
BLUR_SIGMA_PX = (0.4, 1.2)
COMPRESSION_PROBABILITY = 0.5
COMPRESSION_SCALE = (0.1, 0.5)  # times JPEG's quality-50 table: JPEG quality about 95 down to 75
# JPEG's luminance quantisation table (ITU-T T.81, Annex K) at quality 50.
JPEG_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)


def describe_motion(motion: str) -> str:
    """The stability term's motion in words, for the model card's recipe."""
    text = (f"random affine motion (shift up to {MAX_SHIFT_PX:g} px, zoom up to {MAX_ZOOM:.0%}, "
            f"rotation up to {MAX_ROTATION_DEG:g} deg) plus Gaussian noise of std {NOISE_STD:g}")
    if motion == "nonrigid":
        text += (f", composed with a smooth non-rigid flow (a random grid of {FLOW_CELLS[0]} to {FLOW_CELLS[1]} cells "
                 f"a side, displacements up to {MAX_FLOW_PX:g} px, upsampled and blurred), a smooth brightness change "
                 f"(gain 1 +- {MAX_GAIN:g}, offset +- {MAX_OFFSET:g} levels), Gaussian blur of sigma "
                 f"{BLUR_SIGMA_PX[0]:g} to {BLUR_SIGMA_PX[1]:g} px on {BLUR_PROBABILITY:.0%} of the crops and 8x8 "
                 f"block DCT quantisation (JPEG's table times {COMPRESSION_SCALE[0]:g} to {COMPRESSION_SCALE[1]:g}) "
                 f"on {COMPRESSION_PROBABILITY:.0%}")
    return text


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


def _uniform(*shape: int) -> torch.Tensor:
    """Uniform in -1..1, from the CPU generator: a run is reproducible on any device,
    and a resumed run draws what an uninterrupted one would have."""
    return torch.rand(*shape) * 2 - 1


def _between(low: float, high: float, batch: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch)


def random_affine(batch: int, height: int, width: int) -> torch.Tensor:
    """Per-image affine transforms (N, 2, 3) for F.affine_grid: shift, zoom and rotation."""
    angle = _uniform(batch) * math.radians(MAX_ROTATION_DEG)
    scale = 1 + _uniform(batch) * MAX_ZOOM
    shift = _uniform(batch, 2) * MAX_SHIFT_PX
    cos, sin = scale * angle.cos(), scale * angle.sin()
    # affine_grid works in coordinates normalised to -1..1 per axis; this is a
    # rotation in pixel space conjugated into them, so it stays a rotation on non-square images.
    aspect = width / height
    return torch.stack([
        torch.stack([cos, -sin / aspect, shift[:, 0] * 2 / width], dim=1),
        torch.stack([sin * aspect, cos, shift[:, 1] * 2 / height], dim=1),
    ], dim=1)


def blur_each(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W) blurred by a Gaussian of its own sigma (N,) in pixels; edges replicated."""
    return torch.cat([gaussian_blur(image[None], float(sigma)) for image, sigma in zip(images, sigmas)])


def smooth_field(nodes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A coarse grid of values (N, C, g+1, g+1) at the corners of g x g cells, made a smooth (N, C, H, W) field:
    upsampled bilinearly, then blurred over a third of a cell. Both average the nodes, so the
    field stays within their range."""
    cells = nodes.shape[-1] - 1
    field = F.interpolate(nodes, size=(height, width), mode="bilinear", align_corners=True)
    return gaussian_blur(field, min(height, width) / cells / 3)


def random_flow(batch: int, height: int, width: int) -> torch.Tensor:
    """Smooth random displacements (N, 2, H, W) in pixels (x, then y), each image's within
    +- its own peak, drawn up to MAX_FLOW_PX."""
    cells = int(torch.randint(FLOW_CELLS[0], FLOW_CELLS[1] + 1, (1,)))
    peak = torch.rand(batch) * MAX_FLOW_PX
    return smooth_field(_uniform(batch, 2, cells + 1, cells + 1) * peak[:, None, None, None], height, width)


def random_motion(batch: int, height: int, width: int, motion: str = "nonrigid") -> torch.Tensor:
    """A sampling grid (N, H, W, 2) for F.grid_sample: random affine motion, composed
    with a random smooth flow for "nonrigid" (the flow displaces where each pixel samples from)."""
    affine = random_affine(batch, height, width)
    grid = F.affine_grid(affine, [batch, 1, height, width], align_corners=False)
    if motion == "nonrigid":
        flow = random_flow(batch, height, width)
        scale = torch.tensor([2 / width, 2 / height])  # pixels -> normalised coordinates
        grid = grid + flow.permute(0, 2, 3, 1) * scale
    return grid


def warp(images: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resampled along a sampling grid, and a (N, 1, H, W) mask of pixels sampled from inside the image."""
    grid = grid.to(images)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    return warped, inside.to(images.dtype)


def _dct_matrix(size: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix: coefficients = D @ block @ D.T."""
    k, x = torch.arange(size, dtype=torch.float32)[:, None], torch.arange(size, dtype=torch.float32)[None]
    matrix = torch.cos(math.pi * (2 * x + 1) * k / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def block_quantise(images: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy step on each channel: 8x8 block DCT coefficients rounded to JPEG's table times
    each image's scale (N,). The grid of blocks is fixed to the frame, as an encoder's is."""
    n, c, h, w = images.shape
    pad_h, pad_w = -h % 8, -w % 8
    padded = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images
    blocks = padded.reshape(n, c, (h + pad_h) // 8, 8, (w + pad_w) // 8, 8).transpose(3, 4)
    dct = _dct_matrix().to(images)
    steps = (JPEG_TABLE.to(images) * scale.to(images)[:, None, None, None, None, None]).clamp(min=1e-3)
    coefficients = dct @ (blocks - 128) @ dct.T
    restored = dct.T @ (torch.round(coefficients / steps) * steps) @ dct + 128
    return restored.transpose(3, 4).reshape(padded.shape)[..., :h, :w]


def camera_effects(frames: torch.Tensor, motion: str = "nonrigid") -> torch.Tensor:
    """What a camera adds between two frames besides motion: sensor noise, and for "nonrigid"
    local light changes, occasional blur and compression."""
    n, c, h, w = frames.shape
    frames = frames + torch.randn(frames.shape).to(frames) * NOISE_STD
    if motion == "nonrigid":
        gain = 1 + smooth_field(_uniform(n, 1, 3, 3) * MAX_GAIN, h, w).to(frames)
        offset = smooth_field(_uniform(n, 1, 3, 3) * MAX_OFFSET, h, w).to(frames)
        frames = frames * gain + offset
        blurred = (torch.rand(n) < BLUR_PROBABILITY).to(frames.device)
        frames = torch.where(blurred[:, None, None, None],
                             blur_each(frames, _between(*BLUR_SIGMA_PX, n)), frames)
        compressed = (torch.rand(n) < COMPRESSION_PROBABILITY).to(frames.device)
        frames = torch.where(compressed[:, None, None, None],
                             block_quantise(frames.clamp(0, 255), _between(*COMPRESSION_SCALE, n)), frames)
    return frames.clamp(0, 255)


def stability_loss(
    stylize: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, stylized: torch.Tensor,
    motion: str = "nonrigid",
) -> torch.Tensor:
    """Penalises the network for reacting to a small motion of the scene other than by moving along.

    stylized is stylize(images), already computed for the other terms;
    gradients flow through both branches. motion is one of STABILITY_MOTIONS.
    """
    n, _, h, w = images.shape
    grid = random_motion(n, h, w, motion)
    moved, inside = warp(images, grid)
    next_frame = camera_effects(moved, motion)
    expected, _ = warp(stylized, grid)
    squared = (stylize(next_frame) - expected) ** 2 * inside
    return squared.sum() / (inside.sum() * images.shape[1]).clamp(min=1)
