"""Super-resolution's objective for the shared loop of vidstyle.trainer.train (Johnson et al. 2016,
section 4.2): UpscalerNet learns to undo a blur and downsampling, judged by VGG-16's
relu2_2 features, total variation and a small per-pixel term."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.data import sha256_file
from vidstyle.trainer.losses import (TEXTURE_BANDS, TEXTURE_EXCESS, blur_each, content_loss, grid_excess, texture_peaks,
                                     total_variation)
from vidstyle.trainer.vgg import CONTENT_LAYER, LossNetwork
from vidstyle.errors import VidstyleError
from vidstyle.model import UPSCALE_FACTORS, UpscalerNet, gaussian_blur
from vidstyle.styles import Upscaler


UPSCALER_FORMAT = "vidstyle-upscaler/1"
BLUR_SIGMA_PX = 1.0  # the paper's
DOWNSAMPLING = "then bicubic downsampling by the factor (antialiased, torch's interpolate), rounded to 8-bit values"
DEGRADATION = f"Gaussian blur of sigma {BLUR_SIGMA_PX:g} px, {DOWNSAMPLING}"


def degradation(max_blur: float | None) -> str:
    """The card's words for a run's training inputs (TrainConfig.max_blur)."""
    if max_blur is None:
        return DEGRADATION
    return f"Gaussian blur of a sigma drawn uniformly from 0..{max_blur:g} px per crop, {DOWNSAMPLING}"
UPSCALE_LOSS_UNITS = (
    "images RGB 0..255; feature: mean squared difference of VGG-16 relu2_2 features of the output and the "
    "high-resolution crop; pixel: mean squared difference in 0..255 pixel units; tv: sum of absolute differences "
    "between horizontally and vertically neighbouring pixel values, per image, averaged over the batch; "
    "grid: the power spectrum of the detail's grey level (output minus the bicubic upscale of the input), pooled "
    "over the batch, at each peak of a grid at the factor's period beyond twice the mean power of the 6 bins either "
    "way around it, summed over the peaks, divided by (H*W)^2 (a squared amplitude in 0..255 units); "
    f"texture: the detail's grey-level power in radial bands of {TEXTURE_BANDS}, pooled over "
    f"the batch, over the true detail's (the crop minus the same bicubic upscale), each band's ratio beyond "
    f"{TEXTURE_EXCESS:g} times the median band's, averaged over the bands (a ratio of powers); "
    "terms are unweighted, total = sum of weight * term"
)
# Settings of a super-resolution run a resumed run must share with its checkpoint.
UPSCALE_IDENTITY = ("factor", "content_weight", "pixel_weight", "tv_weight", "grid_weight", "texture_weight", "max_blur")
# Default weights, with the feature term's weight 1: see docs/super-resolution.md.
UPSCALE_PIXEL_WEIGHT = 30.0
UPSCALE_TV_WEIGHT = 0.005
UPSCALE_GRID_WEIGHT = 0.0  # off until a run shows what it costs (docs/super-resolution.md)
UPSCALE_TEXTURE_WEIGHT = 0.0  # off: measured only as a fine-tune of a trained x4 so far (docs/super-resolution.md)
CROPS = "random crops at the photos' own scale"


def _card_of(weights: Path) -> dict:
    card_path = weights.with_suffix(".json")
    try:
        return json.loads(card_path.read_text()) if card_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise VidstyleError(f"model card {card_path} is not valid JSON: {exc}") from exc


def degrade(images: torch.Tensor, factor: int, sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """The low-resolution input of each high-resolution image (N, 3, H, W), H and W multiples of
    factor: a blur (the paper's sigma, or each image's of sigmas (N,)) and bicubic downsampling,
    quantised as a saved 8-bit image would be."""
    blurred = gaussian_blur(images, BLUR_SIGMA_PX) if sigmas is None else blur_each(images, sigmas)
    small = F.interpolate(blurred, scale_factor=1 / factor, mode="bicubic", align_corners=False, antialias=True)
    return small.clamp(0, 255).round()


def bicubic_upscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The baseline: the bicubic upscale UpscalerNet adds its detail to."""
    return F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)


def relu2_2(loss_net: LossNetwork, images: torch.Tensor) -> torch.Tensor:
    """The features the feature term (and the evaluation's feature distance) compares."""
    return loss_net(images, num_layers=CONTENT_LAYER + 1)[CONTENT_LAYER]


def load_upscaler(weights: Path, factor: int) -> UpscalerNet:
    """An UpscalerNet in fp32, eval mode, from a state dict file (fp16 or fp32) or a training checkpoint."""
    return Upscaler(factor, Path(weights), _card_of(Path(weights))).load_network()


class UpscaleObjective:
    """Training crops are the high-resolution targets; their degraded copies are the inputs."""

    resize_crops = False  # a crop scaled up is blurred: the network would learn to keep blur

    def __init__(self, config: TrainConfig, loss_net: LossNetwork):
        if config.factor not in UPSCALE_FACTORS:
            raise VidstyleError(f"upscale factor must be one of {', '.join(map(str, UPSCALE_FACTORS))}, not {config.factor}")
        # The network's 9x9 head pads 4 pixels by reflection: inputs need 5 at least.
        smallest = 5 * config.factor
        unfit = [size for size, _ in config.stages() if size % config.factor or size < smallest]
        if unfit:
            raise VidstyleError(f"crop sizes must be multiples of the factor {config.factor} and at least {smallest}: "
                                f"not {', '.join(map(str, unfit))}")
        self.config = config
        self.factor = config.factor
        self.loss_net = loss_net
        self.weights = {"feature": config.content_weight, "pixel": config.pixel_weight, "tv": config.tv_weight}
        if config.grid_weight:
            self.weights["grid"] = config.grid_weight
        if config.texture_weight:
            self.weights["texture"] = config.texture_weight
        # Fine-tuning: a trained upscaler's weights (.pth, its card beside it) to start from.
        self.parent = Path(config.init_from) if config.init_from else None
        self.parent_card = _card_of(self.parent) if self.parent else {}
        # Loaded once: its depth and upsampling are the defaults, and network() deepens it.
        self.parent_net = Upscaler(self.factor, self.parent, self.parent_card).load_network() if self.parent else None
        parent = self.parent_net or UpscalerNet(self.factor)
        self.blocks = config.blocks or len(parent.residuals)
        if self.blocks < len(parent.residuals):
            raise VidstyleError(f"--blocks {self.blocks}: {self.parent.name} has {len(parent.residuals)} residual "
                                f"blocks already; a fine-tune can add blocks, not remove them")
        self.upsampling = config.upsampling or parent.upsampling
        self.comb = parent.comb is not None if config.comb is None else config.comb
        self.identity = {key: getattr(config, key) for key in UPSCALE_IDENTITY} | {
            "init_from": self.parent and sha256_file(self.parent), "blocks": self.blocks, "upsampling": self.upsampling,
            "comb": self.comb}

    def network(self) -> UpscalerNet:
        if self.parent_net is None:
            return UpscalerNet(self.factor, blocks=self.blocks, upsampling=self.upsampling, comb=self.comb)
        return self.parent_net.deepened(self.blocks, self.upsampling, self.comb).train()

    def loss_terms(self, net: UpscalerNet, images: torch.Tensor, autocast: torch.autocast, iteration: int) -> dict[str, torch.Tensor]:
        """The unweighted terms; the networks run under autocast, the degradation and the terms in float32."""
        sigmas = None if self.config.max_blur is None else torch.rand(len(images)) * self.config.max_blur
        small = degrade(images, self.factor, sigmas)
        with autocast:
            upscaled = net(small).float()
        bicubic = bicubic_upscale(small, self.factor)
        with torch.no_grad(), autocast:
            target = relu2_2(self.loss_net, images).float()
        with autocast:
            features = relu2_2(self.loss_net, upscaled).float()
        return {  # the grid and texture terms take an FFT per crop: each only when it counts
            "feature": content_loss(features, target),
            "pixel": F.mse_loss(upscaled, images),
            "tv": total_variation(upscaled),
        } | ({"grid": grid_excess(upscaled - bicubic, self.factor)} if self.config.grid_weight else {}) | (
            {"texture": texture_peaks(upscaled - bicubic, images - bicubic)} if self.config.texture_weight else {})

    def save_samples(self, net: UpscalerNet, photos: torch.Tensor, path: Path) -> None:
        small = degrade(photos, self.factor)
        with torch.no_grad():
            upscaled = net(small).clamp(0, 255)
        # Rows of (bicubic, network, original).
        rows = torch.stack([bicubic_upscale(small, self.factor).clamp(0, 255), upscaled, photos], dim=1)
        save_image(rows.flatten(0, 1) / 255, path, nrow=3)

    def card(self) -> dict:
        config = self.config
        return {
            "format": UPSCALER_FORMAT,
            "task": "upscale",
            "name": config.name,
            "factor": self.factor,
            "residual_blocks": self.blocks,
            "upsampling": self.upsampling,
            "comb": self.comb,
            "degradation": degradation(config.max_blur),
            "feature_weight": config.content_weight,
            "pixel_weight": config.pixel_weight,
            "tv_weight": config.tv_weight,
            "grid_weight": config.grid_weight,
            "texture_weight": config.texture_weight,
            "loss_units": UPSCALE_LOSS_UNITS,
            "initialized_from": self.parent and {
                "file": self.parent.name, "weights_sha256": self.identity["init_from"],
                "iterations": self.parent_card.get("iterations"),
            },  # the parent's recipe is already the start of this card's "recipe"
        }

    def recipe(self, precision: str) -> str:
        start = (f"Started from the weights {self.parent.name} ({self.parent_card.get('iterations', 'unknown')} iterations: "
                 f"{self.parent_card.get('recipe', 'no recipe in its card')}) " if self.parent else "")
        return (f"{start}Johnson et al. (2016) perceptual-loss super-resolution x{self.factor} of vidstyle's UpscalerNet "
                f"({self.blocks} residual blocks, {self.upsampling} upsampling{', the phase comb' if self.comb else ''}): "
                f"{self.config.describe_schedule(CROPS)}; inputs made by {degradation(self.config.max_blur)}; "
                f"losses: VGG-16 relu2_2 features, per-pixel squared error, total variation"
                f"{', the grid term' if self.config.grid_weight else ''}"
                f"{', the texture term' if self.config.texture_weight else ''}; networks in {precision}.")
