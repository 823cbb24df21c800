"""Distillation's objective for the shared loop of vidstyle.trainer.train: a style's
CompactTransformerNet learns from its TransformerNet (the teacher).

The loss is the teacher's output, in pixels and in the loss network's features, plus the
style's own objective (content, style, total variation and stability, with the teacher's
weights): the student copies what the teacher draws where it can, and where it cannot,
it is still held to what the style asks for rather than to a blurred copy.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.data import sha256_file
from vidstyle.trainer.style import StyleObjective, perceptual_terms
from vidstyle.trainer.vgg import LossNetwork
from vidstyle.errors import VidstyleError
from vidstyle.model import COMPACT_BLOCKS, CompactTransformerNet
from vidstyle.styles import Style, find_style

# The teacher's perceptual objective, which the student is held to as well: a distillation takes
# these from the teacher's model card rather than from options.
TEACHER_SETTINGS = ("content_weight", "style_weight", "tv_weight", "stability_weight", "stability_motion", "style_size")
# Not tuned (a distillation is half an hour): the pixel term pulls the student onto the teacher's
# strokes, the feature term keeps it from blurring where it falls short. On udnie they ended at 2%
# and 37% of the total loss.
TEACHER_PIXEL_WEIGHT = 20.0
TEACHER_FEATURE_WEIGHT = 1.0
TEACHER_LOSS_UNITS = ("teacher_pixels: mean squared difference from the teacher's output, RGB 0..255; teacher_features: "
                      "sum over relu1_2, relu2_2, relu3_3, relu4_3 of the mean squared difference of the two outputs' "
                      "VGG-16 features; unweighted, as the other terms")


def teacher_style(name: str) -> Style:
    """The full-size style a compact network is distilled from."""
    teacher = find_style(name)
    if teacher.card.get("network", "full") != "full":
        raise VidstyleError(f"style {name} is a compact network already; distill from a full one")
    return teacher


def teacher_settings(teacher: Style, style_image: Path) -> dict:
    """The TrainConfig settings of the teacher's own objective, from its model card; its
    painting must be the one it was trained on."""
    card = teacher.card
    missing = [key for key in TEACHER_SETTINGS if key not in card and key != "stability_motion"]
    if missing:
        raise VidstyleError(f"style {teacher.name}'s model card lacks {', '.join(missing)}: it cannot be distilled")
    if card.get("style_image_sha256") != sha256_file(style_image):
        raise VidstyleError(f"{style_image} is not the painting style {teacher.name} was trained on "
                            f"({card.get('style_image', 'unknown')}, by its model card's sha256)")
    return {key: card[key] for key in TEACHER_SETTINGS if card.get(key) is not None}


class DistillObjective(StyleObjective):
    """The style objective with the teacher's output as a target: its network is compact, its
    samples show the teacher beside the student, its card names the teacher."""

    parent_network = "compact"  # --init-from NAME continues NAME's compact network

    def __init__(self, config: TrainConfig, loss_net: LossNetwork, device: torch.device):
        super().__init__(config, loss_net, device)
        # Loaded once: its depth is the default, and network() deepens it.
        self.parent_net = self.parent.load_network() if self.parent else None
        start_blocks = len(self.parent_net.residuals) if self.parent_net else COMPACT_BLOCKS
        self.blocks = config.blocks or start_blocks
        start_detail_blocks = len(self.parent_net.detail) if self.parent_net else 0
        self.detail_blocks = start_detail_blocks if config.detail_blocks is None else config.detail_blocks
        for option, wanted, has in (("--blocks", self.blocks, start_blocks),
                                    ("--detail-blocks", self.detail_blocks, start_detail_blocks)):
            if wanted < has:
                raise VidstyleError(f"{option} {wanted}: the network it starts from has {has}; a distillation can "
                                    f"add blocks, not remove them")
        self.dense = config.dense_blocks or bool(self.parent_net and self.parent_net.dense)
        self.teacher = teacher_style(config.teacher)
        self.teacher_net = self.teacher.load_network().to(device).requires_grad_(False)
        self.weights |= {"teacher_pixels": config.teacher_pixel_weight, "teacher_features": config.teacher_feature_weight}
        stages = len(config.stages())
        self.teacher_stages = config.teacher_stages if config.teacher_stages is not None else max(1, stages - 1)
        self.identity |= {
            "blocks": self.blocks,
            "detail_blocks": self.detail_blocks,
            "dense_blocks": self.dense,
            "teacher_stages": self.teacher_stages,
            "teacher_sha256": sha256_file(self.teacher.weights_path),
            "teacher_pixel_weight": config.teacher_pixel_weight,
            "teacher_feature_weight": config.teacher_feature_weight,
        }

    def network(self) -> CompactTransformerNet:
        if self.parent_net is None:
            return CompactTransformerNet(self.blocks, self.detail_blocks, self.dense)
        return self.parent_net.deepened(self.blocks, self.detail_blocks, self.dense).train()

    def stability_change(self) -> str:
        """Words for a stability weight other than the teacher's (`vidstyle distill --stability-weight`)."""
        theirs = self.teacher.card["stability_weight"]
        return "" if self.config.stability_weight == theirs else f", where the teacher's is {theirs:g}"

    def loss_terms(self, net: CompactTransformerNet, images: torch.Tensor, autocast: torch.autocast, iteration: int) -> dict[str, torch.Tensor]:
        # Past its stages the teacher is not run at all: a third of an iteration's time.
        teacher = self.teacher_net if self.config.stage_at(iteration) < self.teacher_stages else None
        return perceptual_terms(net, self.loss_net, images, self.style_grams, autocast, self.config, teacher=teacher)

    def save_samples(self, net: CompactTransformerNet, photos: torch.Tensor, path: Path) -> None:
        with torch.no_grad():
            taught, stylized = self.teacher_net(photos).clamp(0, 255), net(photos).clamp(0, 255)
        # Rows of (original, teacher, student).
        save_image(torch.stack([photos, taught, stylized], dim=1).flatten(0, 1) / 255, path, nrow=3)

    def card(self) -> dict:
        return super().card() | {
            "network": "compact",
            "blocks": self.blocks,
            "detail_blocks": self.detail_blocks,
            "dense_blocks": self.dense,
            "teacher": {"name": self.teacher.name, "weights_sha256": self.identity["teacher_sha256"],
                        "iterations": self.teacher.card.get("iterations")},
            "teacher_pixel_weight": self.config.teacher_pixel_weight,
            "teacher_feature_weight": self.config.teacher_feature_weight,
            "teacher_stages": self.teacher_stages,
            "teacher_loss_units": TEACHER_LOSS_UNITS,
        }

    def recipe(self, precision: str) -> str:
        config = self.config
        return (f"{self.started_from()}Distilled from style {self.teacher.name}'s TransformerNet (weights sha256 "
                f"{self.identity['teacher_sha256'][:12]}...) into vidstyle's CompactTransformerNet with {self.blocks} "
                f"{'dense' if self.dense else 'separable'} residual blocks and {self.detail_blocks} at half the "
                f"size: the teacher's "
                f"output as a target (pixels, weight {config.teacher_pixel_weight:g}; VGG-16 relu1_2..relu4_3 "
                f"features, weight {config.teacher_feature_weight:g}; in the first {self.teacher_stages} of "
                f"{len(config.stages())} stages) plus the teacher's own objective "
                f"(content {config.content_weight:g}, style {config.style_weight:g}, tv {config.tv_weight:g}, "
                f"stability {config.stability_weight:g}{self.stability_change()}); "
                f"{config.describe_schedule('random resized crops')}; "
                f"style image long side {self.style_size} px, networks in {precision}.")
