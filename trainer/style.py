"""Style training's objective for the shared loop of vidstyle.trainer.train: TransformerNet against
content, Gram-matrix style, total variation and optionally temporal stability losses."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.data import load_style_image, sha256_file
from vidstyle.trainer.losses import (
    content_loss,
    describe_motion,
    gram_matrix,
    loss_units,
    stability_loss,
    style_loss,
    total_variation,
)
from vidstyle.trainer.vgg import CONTENT_LAYER, LossNetwork
from vidstyle.errors import VidstyleError
from vidstyle.model import TransformerNet
from vidstyle.styles import Style, find_style


STYLE_FORMAT = "vidstyle-style/1"
# Settings of a style run a resumed run must share with its checkpoint.
STYLE_IDENTITY = ("content_weight", "style_weight", "tv_weight", "stability_weight", "stability_motion")


class StyleObjective:
    """The style image's Grams, the loss terms of a batch of photos, samples and the card's style entries."""

    resize_crops = True
    network_class: type[torch.nn.Module] = TransformerNet  # what a run from random weights trains
    parent_network: str | None = None  # which of --init-from's networks a fine-tuning starts from (find_style)

    def __init__(self, config: TrainConfig, loss_net: LossNetwork, device: torch.device):
        if config.style_image is None:
            raise VidstyleError("style training needs a style image")
        self.config = config
        self.loss_net = loss_net
        self.style_size = config.style_size or 2 * config.schedule()[0][0]
        self.parent = parent_style(config.init_from, self.parent_network)
        style = load_style_image(config.style_image, self.style_size).to(device)
        with torch.no_grad():
            self.style_grams = [gram_matrix(features) for features in loss_net(style)]
        self.weights = {"content": config.content_weight, "style": config.style_weight, "tv": config.tv_weight,
                        "stability": config.stability_weight}
        self.identity = {key: getattr(config, key) for key in STYLE_IDENTITY} | {
            "style_size": self.style_size,
            "style_image_sha256": sha256_file(config.style_image),
            "init_from": self.parent and sha256_file(self.parent.weights_path),
        }

    def network(self) -> TransformerNet:
        return self.parent.load_network().train() if self.parent else self.network_class()

    def loss_terms(self, net: TransformerNet, images: torch.Tensor, autocast: torch.autocast, iteration: int) -> dict[str, torch.Tensor]:
        return perceptual_terms(net, self.loss_net, images, self.style_grams, autocast, self.config)

    def save_samples(self, net: TransformerNet, photos: torch.Tensor, path: Path) -> None:
        with torch.no_grad():
            stylized = net(photos).clamp(0, 255)
        # Rows of (original, stylized).
        save_image(torch.stack([photos, stylized], dim=1).flatten(0, 1) / 255, path, nrow=2)

    def card(self) -> dict:
        config = self.config
        return {
            "format": STYLE_FORMAT,
            "name": config.name,
            "style_image": Path(config.style_image).name,
            "style_image_sha256": self.identity["style_image_sha256"],
            "style_size": self.style_size,
            "initialized_from": self.parent and {
                "name": self.parent.name, "weights_sha256": self.identity["init_from"],
                "iterations": self.parent.card.get("iterations"),
            },  # the parent's recipe is already the start of this card's "recipe"
        } | loss_weights_card(config)

    def started_from(self) -> str:
        """The recipe's opening words for a fine-tuning run: where its weights came from."""
        parent = self.parent
        return (f"Started from the weights of style {parent.name} "
                f"({parent.card.get('iterations', 'unknown')} iterations: {parent.card.get('recipe', 'no recipe in its card')}) "
                if parent else "")

    def recipe(self, precision: str) -> str:
        config = self.config
        text = (f"{self.started_from()}Johnson et al. (2016) perceptual-loss training of vidstyle's TransformerNet: "
                f"{config.describe_schedule('random resized crops')}; "
                f"style image long side {self.style_size} px, VGG-16 losses, networks in {precision}.")
        if config.stability_weight > 0:
            text += f" Temporal stability term: {describe_motion(config.stability_motion)}."
        return text


def loss_weights_card(config: TrainConfig) -> dict:
    """A style training's loss weights and their units, as its model card states them."""
    return {
        "content_weight": config.content_weight,
        "style_weight": config.style_weight,
        "tv_weight": config.tv_weight,
        "stability_weight": config.stability_weight,
        "stability_motion": config.stability_motion if config.stability_weight > 0 else None,
        "loss_units": loss_units(config.stability_motion),
    }


def perceptual_terms(
    stylize: Callable[[torch.Tensor], torch.Tensor], loss_net: LossNetwork, images: torch.Tensor,
    style_grams: list[torch.Tensor], autocast: torch.autocast, config: TrainConfig,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of stylize(images), in the units of vidstyle.trainer.losses; the
    stability term only when it has a weight. With a teacher (distillation, vidstyle.trainer.distill),
    also how far the output is from teacher(images): in pixels (mean squared difference), and in the
    loss network's features the style term reads (the sum over its layers of their mean squared
    difference), from the same forward pass as the style term.

    Only the networks run under autocast: the loss terms (Grams above all,
    sums over 10^4..10^5 products) are computed in float32.
    """
    def stylized_in_autocast(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            return stylize(x).float()

    stylized = stylized_in_autocast(images)
    with torch.no_grad():
        content_target = loss_features(loss_net, images, autocast, CONTENT_LAYER + 1)[CONTENT_LAYER]
    features = loss_features(loss_net, stylized, autocast, len(style_grams))
    terms = {
        "content": content_loss(features[CONTENT_LAYER], content_target),
        "style": style_loss(features, style_grams),
        "tv": total_variation(stylized),
    }
    if teacher is not None:
        with torch.no_grad():
            with autocast:
                taught = teacher(images).float()
            taught_features = loss_features(loss_net, taught, autocast, len(style_grams))
        terms["teacher_pixels"] = F.mse_loss(stylized, taught)
        terms["teacher_features"] = sum(content_loss(mine, theirs) for mine, theirs in zip(features, taught_features))
    if config.stability_weight > 0:
        terms["stability"] = stability_loss(stylized_in_autocast, images, stylized, config.stability_motion)
    return terms


def loss_features(loss_net: LossNetwork, x: torch.Tensor, autocast: torch.autocast, num_layers: int) -> list[torch.Tensor]:
    """The loss network's features of x, computed under autocast, in float32."""
    with autocast:
        return [f.float() for f in loss_net(x, num_layers=num_layers)]


def parent_style(init_from: str | None, network: str | None = None) -> Style | None:
    """The trained style a fine-tuning run starts from; its `network` as find_style takes it."""
    if init_from is None:
        return None
    parent = find_style(init_from, network)
    if parent.card.get("format", STYLE_FORMAT) != STYLE_FORMAT:
        raise VidstyleError(f"--init-from {init_from}: model card format {parent.card['format']!r} is not {STYLE_FORMAT}")
    return parent
