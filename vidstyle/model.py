"""The image transformation network of Johnson et al. (2016), shared by the
pipeline, the workers and the trainer.

Tensor convention, used everywhere in vidstyle: images are float tensors of
shape (N, 3, H, W), RGB channel order, values in 0..255. The network takes and
returns that convention; its output is not clamped (training wants the raw
values), so callers clamp to 0..255 before converting to 8-bit pixels.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvLayer(nn.Module):
    """Reflection padding then convolution: avoids the border artefacts of zero padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            ConvLayer(in_channels, out_channels, kernel_size, stride),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3),
            ConvLayer(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Sequential):
    """Nearest x2 upsampling then a 3x3 convolution: no checkerboard artefacts
    (Odena et al. 2016), unlike the transposed convolutions of the paper."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvNormReLU(in_channels, out_channels, 3),
        )


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            ConvNormReLU(3, 32, 9),
            ConvNormReLU(32, 64, 3, stride=2),
            ConvNormReLU(64, 128, 3, stride=2),
        )
        self.residuals = nn.Sequential(*(ResidualBlock(128) for _ in range(5)))
        self.decoder = nn.Sequential(
            UpsampleConvNormReLU(128, 64),
            UpsampleConvNormReLU(64, 32),
            ConvLayer(32, 3, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.residuals(self.encoder(x)))
