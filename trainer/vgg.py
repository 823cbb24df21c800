"""The frozen loss network: VGG-16's convolutional layers up to relu4_3.

Pretrained VGG weights come with an input convention (channel order, value
range, mean, std) that differs between releases: the original Caffe weights
want BGR 0..255 minus a mean, torchvision's want RGB 0..1 standardised. Feeding
the wrong one still "works" but gives a different, worse loss. So every
weights file carries a JSON sidecar stating its convention, and the network
converts vidstyle's RGB 0..255 images to it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torchvision
from torch import nn

from vidstyle.trainer.data import sha256_file
from vidstyle.errors import VidstyleError
from vidstyle.settings import setting

# Indices in torchvision's vgg16().features of the ReLUs whose outputs the losses use.
FEATURE_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
CONTENT_LAYER = list(FEATURE_LAYERS).index("relu2_2")

TORCHVISION_CONVENTION = {
    "channel_order": "RGB",
    "range": "0..1",
    "mean_subtracted_rgb": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


class InputNormalization(nn.Module):
    """Converts RGB 0..255 images to a VGG input convention.

    The convention is the "input" object of a weights sidecar: channel_order
    ("RGB" or "BGR"), range ("0..255" or "0..1"), optionally
    mean_subtracted_rgb or mean_subtracted_bgr, and std (null, or one value
    per channel in channel_order), mean and std in the units of range.
    """

    def __init__(self, convention: dict):
        super().__init__()
        order = convention.get("channel_order")
        if order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, not {order!r}")
        scales = {"0..255": 1.0, "0..1": 1.0 / 255.0}
        if convention.get("range") not in scales:
            raise ValueError(f"range must be one of {', '.join(scales)}, not {convention.get('range')!r}")
        self.scale = scales[convention["range"]]
        self.to_bgr = order == "BGR"
        if "mean_subtracted_rgb" in convention:
            mean_rgb = list(convention["mean_subtracted_rgb"])
        else:
            mean_rgb = list(convention.get("mean_subtracted_bgr", [0.0, 0.0, 0.0]))[::-1]
        std = convention.get("std")
        std_rgb = [1.0, 1.0, 1.0] if std is None else (list(std)[::-1] if self.to_bgr else list(std))
        if len(mean_rgb) != 3 or len(std_rgb) != 3:
            raise ValueError("mean and std need one value per channel")
        # Normalise in RGB order, then flip: the same as flipping first with BGR-ordered constants.
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std_rgb, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        normalized = (images * self.scale - self.mean) / self.std
        return normalized.flip(1) if self.to_bgr else normalized


class LossNetwork(nn.Module):
    """Frozen VGG-16 features; maps RGB 0..255 images to [relu1_2, relu2_2, relu3_3, relu4_3]."""

    def __init__(self, features: nn.Sequential, convention: dict, description: str | dict):
        super().__init__()
        self.normalize = InputNormalization(convention)
        bounds = [0, *(index + 1 for index in FEATURE_LAYERS.values())]
        self.slices = nn.ModuleList(features[start:stop] for start, stop in zip(bounds, bounds[1:]))
        # What the model card records as vgg_weights.
        self.description = description
        self.requires_grad_(False)
        self.eval()
        # Channels-last convolutions: 7% off a distillation's 128 px iteration and 12% off a
        # 256 px one on one CPU thread in bf16 (measured A/B in one process), and what tensor
        # cores want on a GPU. Only here: the style networks ran slower in it.
        self.slices.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, num_layers: int = len(FEATURE_LAYERS)) -> list[torch.Tensor]:
        """Features of the first num_layers of FEATURE_LAYERS: fewer is cheaper when only those are needed."""
        outputs = []
        x = self.normalize(images)
        for layers in self.slices[:num_layers]:
            x = layers(x)
            outputs.append(x)
        return outputs


def load_loss_network(weights_path: Path | None = None) -> LossNetwork:
    """VGG-16 features from a state dict file with a JSON sidecar: weights_path (--vgg-weights), else
    the VIDSTYLE_VGG_WEIGHTS setting, else torchvision's IMAGENET1K_V1 weights (downloaded on first
    use). One rule for training, evaluation and optimising a still."""
    weights_path = weights_path or setting("VIDSTYLE_VGG_WEIGHTS")
    # On the meta device: the weights come from the file, so initialising (and
    # allocating the unused 500 MB classifier) would be wasted time.
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None).features[: FEATURE_LAYERS["relu4_3"] + 1]
    if weights_path is None:
        state, convention, description = _torchvision_weights()
    else:
        state, convention, description = _weights_file(Path(weights_path))
    wanted = features.state_dict().keys()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise VidstyleError(f"VGG weights {weights_path} lack {', '.join(missing)}: not a vgg16().features state dict")
    try:
        features.load_state_dict({key: state[key].float() for key in wanted}, assign=True)
    except RuntimeError as exc:
        raise VidstyleError(f"VGG weights {weights_path} do not fit vgg16().features: {str(exc).splitlines()[-1].strip()}") from exc
    return LossNetwork(features, convention, description)


def _torchvision_weights() -> tuple[dict, dict, str]:
    try:
        full = torchvision.models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except OSError as exc:  # URLError is an OSError: offline and not cached
        raise VidstyleError(f"could not get torchvision's VGG-16 weights ({exc}); pass --vgg-weights FILE") from exc
    state = {key.removeprefix("features."): value for key, value in full.items() if key.startswith("features.")}
    return state, TORCHVISION_CONVENTION, "torchvision IMAGENET1K_V1"


def _weights_file(path: Path) -> tuple[dict, dict, dict]:
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise VidstyleError(f"VGG weights not found: {path}")
    if not sidecar.is_file():
        raise VidstyleError(f"VGG weights {path} have no sidecar {sidecar} stating their input convention")
    try:
        convention = json.loads(sidecar.read_text())["input"]
        InputNormalization(convention)  # validate now, while the error can name the file
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VidstyleError(f"VGG sidecar {sidecar} has no valid 'input' convention: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, struct...) on a file that is no checkpoint
        raise VidstyleError(f"VGG weights {path} are not a readable state dict: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise VidstyleError(f"VGG weights {path} are not a state dict")
    description = {"file": path.name, "sha256": sha256_file(path), "input": convention}
    return state, convention, description

