"""The image transformation network of Johnson et al. (2016), shared by the
pipeline, the workers and the trainer.

Tensor convention, used everywhere in vidstyle: images are float tensors of
shape (N, 3, H, W), RGB channel order, values in 0..255. The network takes and
returns that convention; its output is not clamped (training wants the raw
values), so callers clamp to 0..255 before converting to 8-bit pixels.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class ConvLayer(nn.Module):
    """Reflection padding then convolution: avoids the border artefacts of zero padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class InstanceNorm(nn.InstanceNorm2d):
    """Instance normalisation (affine), computed as a group norm with one group per channel: the
    same statistics (biased variance, the same eps) and parameters, so the same state dict. PyTorch's
    CPU instance norm reshapes channels-last activations into a copy and returns them planar; its
    group norm keeps the layout and ran 6 to 16 times as fast (bfloat16 and float32, one thread,
    docs/performance.md)."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _norm(channels: int, normalize: bool) -> nn.Module:
    # Identity keeps the Sequential's indices, so state_dict keys do not depend on it.
    return InstanceNorm(channels) if normalize else nn.Identity()


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 normalize: bool = True):
        super().__init__(
            ConvLayer(in_channels, out_channels, kernel_size, stride),
            _norm(out_channels, normalize),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, normalize: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3, normalize=normalize),
            ConvLayer(channels, channels, 3),
            _norm(channels, normalize),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Sequential):
    """x2 upsampling (nearest, or bilinear for an upscaler trained so) then a 3x3 convolution:
    no checkerboard artefacts (Odena et al. 2016), unlike the transposed convolutions of the paper."""

    def __init__(self, in_channels: int, out_channels: int, normalize: bool = True, mode: str = "nearest"):
        super().__init__(
            nn.Upsample(scale_factor=2, mode=mode, align_corners=None if mode == "nearest" else False),
            ConvNormReLU(in_channels, out_channels, 3, normalize=normalize),
        )


class TransformerNet(nn.Module):
    factor = 1  # output size over input size, as UpscalerNet's
    size_multiple = 4  # two stride-2 convolutions, two x2 upsamplings: other sizes come back larger
    feature_stride = 4  # the encoder's features are a quarter of the input's height and width

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

    @classmethod
    def for_state(cls, state: dict) -> TransformerNet:
        """An untrained network of the shape a state dict holds (TransformerNet has one shape)."""
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.render(self.encode(x))

    # The two halves, for the temporal stage: it blends the encoder's features (at a quarter
    # of the frame's size) with the previous frame's, and the rest paints crisp strokes from them.
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def render(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.residuals(features))


def conv_norm_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A zero-padded 3x3 convolution, instance norm, ReLU: CompactTransformerNet's layer."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, padding=1),
                         InstanceNorm(out_channels), nn.ReLU(inplace=True))


class CompactResidualBlock(nn.Module):
    """ResidualBlock with zero-padded convolutions, each 3x3 either depthwise-separable (MobileNet's: a
    3x3 per channel then a 1x1 across channels, an eighth of the arithmetic at 64 channels) or dense
    (nine times the weights; at a quarter of the frame's size oneDNN runs it at nearly the same pace)."""

    def __init__(self, channels: int, separable: bool = True):
        super().__init__()

        def conv() -> list[nn.Module]:
            if separable:
                return [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.Conv2d(channels, channels, 1)]
            return [nn.Conv2d(channels, channels, 3, padding=1)]

        self.separable = separable
        self.body = nn.Sequential(*conv(), InstanceNorm(channels), nn.ReLU(inplace=True), *conv(), InstanceNorm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)

    def densified(self) -> CompactResidualBlock:
        """The same block with dense convolutions that compute exactly what its separable pairs do:
        a 1x1 (P, bias b) after a per-channel 3x3 (D, bias d) is the 3x3 with weights P[o, i] * D[i]
        and bias b + P d."""
        dense = CompactResidualBlock(self.body[-1].num_features, separable=False)
        layers = iter(self.body)
        with torch.no_grad():
            for target in dense.body:
                layer = next(layers)
                if isinstance(target, nn.Conv2d):
                    pointwise = next(layers)
                    weights = pointwise.weight[:, :, 0, 0]
                    target.weight.copy_(weights[:, :, None, None] * layer.weight[:, 0][None])
                    target.bias.copy_(pointwise.bias + weights @ layer.bias)
                else:
                    target.load_state_dict(layer.state_dict())
        return dense


class ShuffleToPixels(nn.PixelShuffle):
    """CompactTransformerNet's last step: each 2x2 block's 12 channels put in place, read as pixel values
    with 0 at mid grey and +-1 at the ends of 0..255 (unclamped). TransformerNet's 9x9 output layer sums
    2,592 inputs and soon reaches the pixel range; this one sums 288, and unscaled it stayed dark for
    hundreds of iterations of Adam's small steps."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 127.5 + 127.5 * super().forward(x)


def blocks_in(state: dict, first_weight: str, within: str = "residuals.") -> int:
    """The number of residual blocks in a state dict whose blocks are `{within}N`, each holding
    `first_weight` once."""
    return sum(1 for key in state if key.startswith(within) and key.endswith(first_weight))


def residual_blocks(net: nn.Module) -> dict[str, list[nn.Module]]:
    """A network's residual blocks by the name an error gives them: most networks have one run."""
    return {"residual blocks": list(net.residuals)}


def deepen_into(net: nn.Module, deeper: nn.Module, last_layer: Callable[[nn.Module], nn.Module],
                runs: Callable[[nn.Module], dict[str, list[nn.Module]]] = residual_blocks) -> nn.Module:
    """`deeper` (the same network with longer `runs` of residual blocks) with net's weights, each
    added block the identity at first: its last layer's weight and bias zero, so that the body adds nothing."""
    have, want = runs(net), runs(deeper)
    for name, blocks in have.items():
        if len(want[name]) < len(blocks):
            raise ValueError(f"cannot deepen {len(blocks)} {name} to {len(want[name])}")
    deeper.load_state_dict(net.state_dict(), strict=False)
    for name, blocks in have.items():
        for block in want[name][len(blocks):]:
            nn.init.zeros_(last_layer(block).weight)
            nn.init.zeros_(last_layer(block).bias)
    return deeper


COMPACT_BLOCKS = 5  # CompactTransformerNet's residual blocks unless a distillation asks for more


class CompactTransformerNet(nn.Module):
    """A style network for CPUs, distilled from a style's TransformerNet (vidstyle.trainer.distill):
    the same encoder/render split, feature stride and size multiple, at 19.5 kFLOP (9.8k
    multiply-adds) per pixel against TransformerNet's 308 kFLOP; 91k parameters against 1.7M.

    Where the arithmetic went, each choice measured on this project's 2-core CPU (docs/compact.md):
    - earlier downsampling: a stride-2 3x3 convolution on the input, none at full resolution;
    - 64 channels at a quarter of the size (not 128), in depthwise-separable residual blocks; with
      `dense`, dense ones (59.8 kFLOP per pixel, 412k parameters), which the CPU runs at nearly the
      same pace there and which draw what the separable ones could not (wave's foam);
    - no activation at full resolution: the last convolution, at half the size, draws each 2x2 block
      of output pixels as 12 channels, put in place by a pixel shuffle (Shi et al. 2016);
    - zero padding inside the convolutions: a separate reflection pad copies every activation and
      cost more than the convolutions themselves.
    """

    factor = 1
    size_multiple = 4  # two stride-2 convolutions, an x2 upsampling and an x2 pixel shuffle
    feature_stride = 4  # as TransformerNet's, so that the temporal stage blends either alike

    def __init__(self, blocks: int = COMPACT_BLOCKS, detail_blocks: int = 0, dense: bool = False):
        super().__init__()
        self.encoder = nn.Sequential(conv_norm_relu(3, 32, stride=2), conv_norm_relu(32, 64, stride=2))
        # `dense`: the blocks at a quarter of the size with dense 3x3 convolutions (a style the separable
        # ones cannot draw: wave's; about 15% slower end to end, docs/compact.md).
        self.residuals = nn.Sequential(*(CompactResidualBlock(64, separable=not dense) for _ in range(blocks)))
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            # The layer at half the size, then its own residual blocks (`detail_blocks`, 32 channels, about
            # 7% of the arithmetic each), which draw the fine strokes; appended inside it, so a network
            # without them keeps its state dict's keys.
            nn.Sequential(*conv_norm_relu(64, 32), *(CompactResidualBlock(32) for _ in range(detail_blocks))),
            nn.Conv2d(32, 3 * 4, 3, padding=1),
            ShuffleToPixels(),
        )

    @property
    def detail(self) -> list[CompactResidualBlock]:
        """The residual blocks at half the size."""
        return [layer for layer in self.decoder[1] if isinstance(layer, CompactResidualBlock)]

    forward = TransformerNet.forward
    encode = TransformerNet.encode
    render = TransformerNet.render

    @property
    def dense(self) -> bool:
        """Whether the blocks at a quarter of the size have dense convolutions."""
        return not self.residuals[0].separable

    @classmethod
    def for_state(cls, state: dict) -> CompactTransformerNet:
        """An untrained network of the shape a state dict holds: its numbers of residual blocks, and
        whether those at a quarter of the size are dense (a 3x3 across all channels, not one each)."""
        return cls(blocks=blocks_in(state, ".body.0.weight"),
                   detail_blocks=blocks_in(state, ".body.0.weight", within="decoder.1."),
                   dense=state["residuals.0.body.0.weight"].shape[1] > 1)

    def deepened(self, blocks: int, detail_blocks: int, dense: bool = False) -> CompactTransformerNet:
        """A copy with `blocks` residual blocks at a quarter of the size and `detail_blocks` at half,
        the added ones the identity at first (their last norm's scale and shift zero), so a distillation
        continues deeper from where its network is. A block at a quarter of the size costs about 5 ms
        per 640x360 frame (docs/compact.md: for wave it bought little). `dense`: those blocks made
        dense, computing what they did; a dense network stays dense."""
        deeper = deepen_into(self, CompactTransformerNet(blocks, detail_blocks, self.dense), lambda block: block.body[-1],
                             lambda net: residual_blocks(net) | {"detail blocks": net.detail})
        if dense and not deeper.dense:  # an added identity block densifies to the identity
            deeper.residuals = nn.Sequential(*(block.densified() for block in deeper.residuals))
        return deeper


STYLE_NETWORKS = {"full": TransformerNet, "compact": CompactTransformerNet}  # by a model card's "network"
NETWORKS = ("auto", *STYLE_NETWORKS)  # --network: "auto" runs a style's compact network where it has one


class StylePredictor(nn.Module):
    """A painting in, its style code out: the style prediction network of Ghiasi et al. (2017),
    small and trained from scratch with the transformer (no VGG weights in it).

    Four stride-2 3x3 convolutions; the code is a linear map of the mean and standard deviation
    of each channel of the last three (the feature statistics that carry a texture, after Huang
    and Belongie 2017). No normalisation: it would remove exactly those statistics.
    """

    code_size = 100  # Ghiasi et al.'s bottleneck
    widths = (32, 64, 128, 256)

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in self.widths:
            layers.append(nn.Sequential(ConvLayer(channels, width, 3, stride=2), nn.ReLU(inplace=True)))
            channels = width
        self.levels = nn.ModuleList(layers)
        self.bottleneck = nn.Linear(2 * sum(self.widths[1:]), self.code_size)

    def forward(self, painting: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) paintings, 0..255 -> (N, code_size)."""
        x, statistics = painting / 127.5 - 1, []
        for index, level in enumerate(self.levels):
            x = level(x)
            if index:
                statistics += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return self.bottleneck(torch.cat(statistics, dim=1))


class ModulatedInstanceNorm(InstanceNorm):
    """Instance normalisation with a scale and shift per image, (N, C) each, set by its caller
    (ArbitraryStyleNet) before each forward pass: each image of a batch in its own painting's style."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_features, eps=self.eps) * self.scale[:, :, None, None] + self.shift[:, :, None, None]


class ArbitraryStyleNet(nn.Module):
    """Any painting in one pass (Ghiasi et al. 2017): a TransformerNet whose instance norms take
    their scales and shifts from the painting's style code instead of from per-style weights.

    The code is computed once per painting; `for_painting` then bakes it into a plain TransformerNet,
    so the pipeline, the temporal stage, tiles and export run it as they run any style.
    """

    def __init__(self, transformer: TransformerNet | None = None):
        super().__init__()
        self.predictor = StylePredictor()
        self.transformer = transformer or TransformerNet()
        self.norms = [name for name, module in self.transformer.named_modules() if isinstance(module, nn.InstanceNorm2d)]
        channels = [self.transformer.get_submodule(name).num_features for name in self.norms]
        self.head = nn.Linear(StylePredictor.code_size, 2 * sum(channels))
        # Starts as the transformer's own style whatever the painting: its norms' parameters as the
        # head's bias, a zero weight; training then learns how paintings move them.
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.cat([parameter.flatten() for parameter in self._norm_parameters().values()]))
        # Each norm made a ModulatedInstanceNorm (same parameters, so the state dict is a TransformerNet's).
        for name, size in zip(self.norms, channels):
            parent, _, child = name.rpartition(".")
            modulated = ModulatedInstanceNorm(size)
            modulated.load_state_dict(self.transformer.get_submodule(name).state_dict())
            setattr(self.transformer.get_submodule(parent), child, modulated)
        self.splits = [size for size in channels for _ in ("weight", "bias")]

    def style_code(self, painting: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) paintings -> (N, code_size)."""
        return self.predictor(painting)

    def _norm_parameters(self) -> dict[str, torch.Tensor]:
        """The transformer's own norm weights and biases, by parameter name, in the head's order."""
        return {f"{norm}.{kind}": self.transformer.get_parameter(f"{norm}.{kind}")
                for norm in self.norms for kind in ("weight", "bias")}

    def forward(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in the styles of codes, (N, code_size) or one (1, code_size) for all."""
        parameters = self.head(codes).expand(len(x), -1).split(self.splits, dim=1)
        for index, name in enumerate(self.norms):
            norm = self.transformer.get_submodule(name)
            norm.scale, norm.shift = parameters[2 * index], parameters[2 * index + 1]
        return self.transformer(x)

    def for_painting(self, painting: torch.Tensor) -> TransformerNet:
        """A TransformerNet that paints in this (1, 3, H, W) painting's style."""
        styled = TransformerNet()
        styled.load_state_dict(self.transformer.state_dict())
        with torch.no_grad():
            baked = self.head(self.style_code(painting))[0].split(self.splits)
            for value, name in zip(baked, self._norm_parameters()):
                styled.get_parameter(name).copy_(value)
        return styled.eval()


UPSCALE_FACTORS = (2, 4, 8)
UPSAMPLINGS = ("nearest", "bilinear")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel blurred by a Gaussian of sigma pixels (3 sigma either way, at least a pixel),
    edges repeated. One sigma for the batch, a number: an exported graph keeps it as a constant."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-offsets ** 2 / (2 * max(sigma, 1e-3) ** 2))
    kernel, channels = kernel / kernel.sum(), images.shape[1]
    blurred = F.pad(images, (radius,) * 4, mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class PhaseComb(nn.Module):
    """Takes out of an upscaler's detail what repeats with the upsampling's period: the block
    grid. Each of the period x period places of a block has its local mean there (a Gaussian
    over the neighbouring blocks), less the mean of all places, subtracted. A pattern that
    repeats block after block lands in those means and goes; detail that does not repeat
    averages out over the neighbourhood and stays. The means are taken of the detail less its
    own blur (sigma half a block, which passes 99% of the grid's frequencies): a smooth ramp
    would otherwise differ from place to place too and come out in steps. Local, so tiles stay
    exact (receptive_radius counts its reach); no weights."""

    # Two blocks: on Set14 the installed x4 combed with sigma 1 lost more detail (relu2_2 distance
    # 0.667 of bicubic's, from 0.656) than with 2 (0.660); both took the grid from 7.3 to about 1.
    def __init__(self, period: int, sigma: float = 2.0):
        super().__init__()
        self.period, self.sigma = period, sigma
        # In input pixels (a block each): the ramps' blur (3 x half a block), then the means over the blocks.
        self.radius = 2 + math.ceil(3 * sigma)

    def extra_repr(self) -> str:
        return f"period={self.period}, sigma={self.sigma:g}"

    def forward(self, detail: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = detail.shape
        period, rows, columns = self.period, height // self.period, width // self.period
        fine = detail - gaussian_blur(detail, period / 2)
        # (batch, channels x places, rows, columns): each place of the block as an image of its own.
        places = fine.reshape(batch, channels, rows, period, columns, period).permute(0, 1, 3, 5, 2, 4)
        local = gaussian_blur(places.reshape(batch, channels * period * period, rows, columns), self.sigma)
        local = local.reshape(batch, channels, period * period, rows, columns)
        pattern = (local - local.mean(2, keepdim=True)).reshape(batch, channels, period, period, rows, columns)
        return detail - pattern.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height, width)


class UpscalerNet(nn.Module):
    """The super-resolution network of Johnson et al. (2016, section 4.2): a 9x9 conv,
    residual blocks at the low resolution, one x2 upsampling layer per octave of the
    factor, a 9x9 conv to RGB; trained against the same VGG-16 feature loss.

    Two departures from the paper, both for what vidstyle needs:
    - no normalisation layers: batch and instance norm tie every pixel to statistics
      of the whole frame; without them the network is local, so a frame too large for
      memory can be cut into overlapping tiles with an exact result;
    - it predicts the detail to add to a bicubic upscale rather than the whole image
      (residual learning, Kim et al. 2016), which trains in CPU hours, not GPU days.

    Same tensor convention as TransformerNet: RGB, 0..255 in and out, output unclamped.
    """

    size_multiple = 1  # no strides: any size comes back exactly `factor` times as large
    feature_stride = 1  # the features (encode) are at the input's size

    def __init__(self, factor: int = 4, channels: int = 64, blocks: int = 4, upsampling: str = "nearest",
                 comb: bool = False):
        super().__init__()
        if factor not in UPSCALE_FACTORS:
            raise ValueError(f"upscale factor must be one of {UPSCALE_FACTORS}, not {factor}")
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, not {upsampling!r}")
        self.factor = factor
        # Nearest repeats each low-resolution pixel's features over a factor x factor block, which
        # the 3x3 convolutions after it cannot fully smooth: at x8 the block grid shows. Bilinear
        # has no blocks. Not in the weights: a model card says which one its weights were trained with.
        self.upsampling = upsampling
        self.head = ConvNormReLU(3, channels, 9, normalize=False)
        self.residuals = nn.Sequential(*(ResidualBlock(channels, normalize=False) for _ in range(blocks)))
        self.upsample = nn.Sequential(*(UpsampleConvNormReLU(channels, channels, normalize=False, mode=upsampling)
                                        for _ in range(factor.bit_length() - 1)))
        self.tail = ConvLayer(channels, 3, 9)
        # Bilinear upsampling still passes a grid at the factor's period (its weights differ from
        # place to place in a block), which the feature loss puts to use; the comb takes it out.
        # Not in the weights either: the model card says.
        self.comb = PhaseComb(factor) if comb else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.render(self.encode(x), x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features at the input's size, after the residual blocks: what the temporal stage blends
        (there it steadies the invented detail most; docs/super-resolution.md)."""
        return self.residuals(self.head(x / 255.0))

    def render(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The upscaled output of input x from its features: x's bicubic upscale plus the detail."""
        base = F.interpolate(x, scale_factor=self.factor, mode="bicubic", align_corners=False)
        detail = self.tail(self.upsample(features))
        return base + 255.0 * (detail if self.comb is None else self.comb(detail))

    @staticmethod
    def blocks_in(state: dict) -> int:
        """The number of residual blocks a state dict of an UpscalerNet holds."""
        return blocks_in(state, ".body.0.0.conv.weight")

    def deepened(self, blocks: int, upsampling: str, comb: bool) -> UpscalerNet:
        """A copy with `blocks` residual blocks: these weights, then new blocks that start as the
        identity (their last convolution zero), so it begins exactly where this network is and
        fine-tuning puts the added capacity to use; with another upsampling or comb, to fine-tune to it."""
        deeper = UpscalerNet(self.factor, self.head[0].conv.out_channels, blocks, upsampling, comb)
        return deepen_into(self, deeper, lambda block: block.body[1].conv)

    def receptive_radius(self) -> int:
        """How far, in input pixels, an output pixel sees: the halo a tile needs for an exact result.
        The 9x9 head, two 3x3 convs per block, one 3x3 conv per octave (at most a pixel each) and
        the 9x9 tail at the output's scale, the comb's blocks; the bicubic base sees 2 pixels, less than these."""
        tail = -(-4 // self.factor)
        # Bilinear upsampling reads one more pixel of the scale below, at most one input pixel.
        per_octave = 1 if self.upsampling == "nearest" else 2
        comb = 0 if self.comb is None else self.comb.radius
        return 4 + 2 * len(self.residuals) + per_octave * len(self.upsample) + tail + comb


def pad_to_multiple(x: torch.Tensor, multiple: int, min_side: int = 1) -> torch.Tensor:
    """x padded at its bottom and right (edge repeated) to a multiple of `multiple` in height
    and width, and to at least min_side. Unconditional (a copy even when nothing is added):
    an exported graph (vidstyle.export) then pads at every size."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (max(min_side, side + -side % multiple) - side for side in (height, width))
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class StyleThenUpscale(nn.Module):
    """A style network, then an upscaler on its output, as one network: stylized at the
    input's size (strokes at the scale the style was trained at), then upscaled."""

    size_multiple = 1  # the style network's own padding is done here, and cropped before upscaling
    feature_stride = TransformerNet.feature_stride  # the style network's features are the ones blended

    def __init__(self, style: TransformerNet | CompactTransformerNet, upscaler: UpscalerNet):
        super().__init__()
        self.style, self.upscaler = style, upscaler
        self.factor = upscaler.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.render(self.encode(x), x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.style.encode(pad_to_multiple(x, self.style.size_multiple))

    def render(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The upscaled output of input x from its style network's features."""
        return self.upscaler(self.stylized(self.style.render(features), *x.shape[-2:]))

    @staticmethod
    def stylized(styled: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The style network's output cropped to the input's size and clamped to pixel values, as the
        upscaler saw its training images."""
        return styled[..., :height, :width].clamp(0, 255)
