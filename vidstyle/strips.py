"""Frames too large to stylize whole (8K on a CPU, large batches on a small GPU),
stylized exactly, a strip of rows at a time.

Instance normalisation takes its statistics over the whole frame, so tiles sent
through the network one by one come out with seams and colour shifts between
them. Instead the network runs one layer at a time over the whole frame: each
convolution is computed a horizontal strip of output rows at a time (reading
its input rows plus the kernel's halo, reflection padded exactly as the
whole-frame layer pads), each InstanceNorm accumulates its statistics over the
whole activation and then normalises it in place. Only the activations
themselves are kept whole (a 32-channel 8K activation is 2 GB in bfloat16);
what runs out of memory in a whole-frame pass is the convolutions' working
memory, which here is bounded by the strip. The result equals the whole-frame
network's up to float rounding.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vidstyle.model import CompactTransformerNet, ConvLayer, ResidualBlock, CompactResidualBlock, TransformerNet

# Output pixels per strip: tens of MB of working memory per layer.
STRIP_PIXELS = 1 << 18


def stylize_in_strips(net: TransformerNet | CompactTransformerNet, x: torch.Tensor, strip_pixels: int = STRIP_PIXELS,
                      between: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """net(x) for (N, 3, H, W) x, with the working memory of a strip of strip_pixels output pixels per layer;
    `between` (the temporal stage's feature blend) takes the encoder's features, as in Stylizer."""
    features = _run(_layers([net.encoder]), x, strip_pixels)
    if between is not None:
        features = between(features)
    return _run(_layers([net.residuals, net.decoder]), features, strip_pixels)


def _layers(modules: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """The network's layers in order, Sequentials opened."""
    for module in modules:
        if isinstance(module, nn.Sequential):
            yield from _layers(module)
        else:
            yield module


def _run(layers: Iterable[nn.Module], x: torch.Tensor, strip_pixels: int) -> torch.Tensor:
    upsample = 1
    for layer in layers:
        if isinstance(layer, nn.Upsample):
            # Folded into the next convolution's reads: the upsampled activation is 4x the memory.
            upsample = int(layer.scale_factor)
        elif isinstance(layer, (ConvLayer, nn.Conv2d)):
            x, upsample = _conv_in_strips(layer, x, upsample, strip_pixels), 1
        elif isinstance(layer, nn.PixelShuffle):  # moves pixels, computes nothing: whole
            x = layer(x)
        elif isinstance(layer, nn.InstanceNorm2d):
            _instance_norm_(layer, x, strip_pixels)
        elif isinstance(layer, nn.ReLU):
            x.relu_()
        elif isinstance(layer, (ResidualBlock, CompactResidualBlock)):
            x = x + _run(_layers([layer.body]), x, strip_pixels)
        else:
            raise TypeError(f"stylize_in_strips does not know the layer {layer!r}")
    return x


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside 0..size-1 mirrored as nn.ReflectionPad2d mirrors them (edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _conv_in_strips(layer: ConvLayer | nn.Conv2d, x: torch.Tensor, upsample: int, strip_pixels: int) -> torch.Tensor:
    """layer(upsample_nearest(x)), a strip of output rows at a time; a ConvLayer reflection padded,
    an nn.Conv2d zero padded by its own padding (CompactTransformerNet's)."""
    reflect = isinstance(layer, ConvLayer)
    conv = layer.conv if reflect else layer
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    pad = layer.pad.padding[0] if reflect else conv.padding[0]
    height, width = x.shape[-2] * upsample, x.shape[-1] * upsample
    out_height = (height + 2 * pad - kernel) // stride + 1
    rows_per_strip = max(1, strip_pixels // ((width + 2 * pad - kernel) // stride + 1))
    out = None
    for first in range(0, out_height, rows_per_strip):
        last = min(out_height, first + rows_per_strip)
        # Rows of the padded (and upsampled) input that this strip's outputs read.
        rows = torch.arange(first * stride, (last - 1) * stride + kernel) - pad
        if reflect:
            rows = _reflect(rows, height)
        above, below = int((rows < 0).sum()), int((rows >= height).sum())  # zero padding's rows
        rows = rows[(rows >= 0) & (rows < height)]
        strip = x.index_select(2, (rows // upsample).to(x.device))
        if upsample > 1:
            strip = strip.repeat_interleave(upsample, dim=3)
        if reflect:
            result = conv(F.pad(strip, (pad, pad, 0, 0), mode="reflect"))
        else:  # zero rows beyond the top and bottom; the columns zero padded by the convolution itself
            result = F.conv2d(F.pad(strip, (0, 0, above, below)), conv.weight, conv.bias, stride, (0, pad),
                              groups=conv.groups)
        if out is None:  # the dtype is autocast's
            out = result.new_empty(*result.shape[:2], out_height, result.shape[3])
        out[:, :, first:last] = result
    return out


def _instance_norm_(norm: nn.InstanceNorm2d, x: torch.Tensor, strip_pixels: int) -> None:
    """norm(x) in place: statistics over the whole activation (strips summed in float32,
    strips added up in float64), applied a strip at a time."""
    n, channels, height, width = x.shape
    rows = max(1, strip_pixels // width)
    sums = torch.zeros(n, channels, dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(sums)
    for first in range(0, height, rows):
        part = x[:, :, first:first + rows].float()
        sums += part.sum((2, 3))
        squares += part.square().sum((2, 3))
    count = height * width
    mean = sums / count
    variance = (squares / count - mean.square()).clamp_(min=0)  # biased, as InstanceNorm2d
    scale = torch.rsqrt(variance + norm.eps)
    shift = -mean * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    scale, shift = scale.float()[..., None, None], shift.float()[..., None, None]
    for first in range(0, height, rows):
        part = x[:, :, first:first + rows]
        part.copy_(part.float() * scale + shift)
