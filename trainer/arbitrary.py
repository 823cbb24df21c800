"""Any-painting training's objective for the shared loop of vidstyle.trainer.train: ArbitraryStyleNet
against the perceptual losses of paintings drawn at random (Ghiasi et al. 2017).

Each photo of a batch is stylized with a painting of its own, so every step compares styles: the
network learns what sets paintings apart, not an average of them. A painting is seen whole at the
style size, as `vidstyle eval quality` and `submit --style-image` see it; its Grams are computed
once, and the predictor reads it mirrored half the time (the same style). A fixed share of the
paintings, every HELD_OUT_EVERY-th by name, is never trained on: the model card lists them, for
measurements on paintings the network has not seen.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.utils import save_image
from tqdm import tqdm

from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.data import find_images, load_style_image, sha256_file
from vidstyle.trainer.losses import describe_motion, gram_matrix
from vidstyle.trainer.style import STYLE_IDENTITY, loss_weights_card, parent_style, perceptual_terms
from vidstyle.trainer.vgg import LossNetwork
from vidstyle.errors import VidstyleError
from vidstyle.model import ArbitraryStyleNet

ARBITRARY_FORMAT = "vidstyle-arbitrary/1"
HELD_OUT_EVERY = 8  # about 30 of the 257 paintings in ../shared/datasets/paintings
SAMPLE_PAINTINGS = 4


def split_paintings(folder: Path) -> tuple[list[Path], list[Path]]:
    """(training, held out) paintings under folder, sorted by name; every HELD_OUT_EVERY-th is held out."""
    paintings = find_images(folder)
    held_out = paintings[HELD_OUT_EVERY // 2 :: HELD_OUT_EVERY]
    return [p for p in paintings if p not in held_out], held_out


class ArbitraryStyleObjective:
    """A random painting's Grams and style code per batch, the loss terms, samples and the card's entries."""

    resize_crops = True

    def __init__(self, config: TrainConfig, loss_net: LossNetwork, device: torch.device):
        self.config = config
        self.loss_net = loss_net
        self.device = device
        self.style_size = config.style_size or 2 * config.schedule()[0][0]
        self.training, self.held_out = split_paintings(config.paintings)
        if not self.training:
            raise VidstyleError(f"no paintings to train on in {config.paintings}")
        self.paintings = [load_style_image(path, self.style_size).to(device)
                          for path in tqdm(self.training, desc="paintings", unit="painting")]
        with torch.no_grad():  # in float32, as a style's own training computes its Grams
            self.grams = [[gram_matrix(f) for f in loss_net(painting)] for painting in self.paintings]
        self.samples = [load_style_image(path, self.style_size)
                        for path in self.held_out[:: max(1, len(self.held_out) // SAMPLE_PAINTINGS)][:SAMPLE_PAINTINGS]]
        self.parent = parent_style(config.init_from)
        self.weights = {"content": config.content_weight, "style": config.style_weight, "tv": config.tv_weight,
                        "stability": config.stability_weight}
        names = "\n".join(path.name for path in self.training)
        self.identity = {key: getattr(config, key) for key in STYLE_IDENTITY} | {
            "style_size": self.style_size,
            "paintings": hashlib.sha256(names.encode()).hexdigest(),
            "init_from": self.parent and sha256_file(self.parent.weights_path),
        }

    def network(self) -> ArbitraryStyleNet:
        return ArbitraryStyleNet(self.parent.load_network().train() if self.parent else None)

    def loss_terms(self, net: ArbitraryStyleNet, images: torch.Tensor, autocast: torch.autocast, iteration: int) -> dict[str, torch.Tensor]:
        # Drawn from the global generator, which checkpoints restore.
        drawn = torch.randint(len(self.paintings), (len(images),)).tolist()
        mirrored = (torch.rand(len(images)) < 0.5).tolist()
        with autocast:
            codes = torch.cat([net.style_code(self.paintings[i].flip(-1) if flip else self.paintings[i])
                               for i, flip in zip(drawn, mirrored)])
        style_grams = [torch.cat(layer) for layer in zip(*(self.grams[i] for i in drawn))]
        return perceptual_terms(lambda x: net(x, codes), self.loss_net, images, style_grams, autocast, self.config)

    def save_samples(self, net: ArbitraryStyleNet, photos: torch.Tensor, path: Path) -> None:
        """Rows of (painting, then each photo in its style)."""
        size = photos.shape[-1]
        rows = []
        with torch.no_grad():
            for painting in self.samples:
                painting = painting.to(photos.device)
                stylized = net(photos, net.style_code(painting)).clamp(0, 255)
                thumbnail = TF.center_crop(TF.resize(painting, size, antialias=True), [size, size])
                rows.append(torch.cat([thumbnail, stylized]))
        save_image(torch.cat(rows) / 255, path, nrow=1 + len(photos))

    def card(self) -> dict:
        config = self.config
        return {
            "format": ARBITRARY_FORMAT,
            "name": config.name,
            "paintings": {"folder": Path(config.paintings).resolve().name, "trained_on": len(self.training),
                          "held_out_rule": f"every {HELD_OUT_EVERY}th by name from the {HELD_OUT_EVERY // 2 + 1}th",
                          "held_out": [path.name for path in self.held_out]},
            "style_size": self.style_size,
            "initialized_from": self.parent and {"name": self.parent.name, "weights_sha256": self.identity["init_from"]},
        } | loss_weights_card(config)

    def recipe(self, precision: str) -> str:
        config = self.config
        start = f"Transformer started from style {self.parent.name}'s weights. " if self.parent else ""
        text = (f"{start}Ghiasi et al. (2017) arbitrary-style training of vidstyle's ArbitraryStyleNet (a TransformerNet "
                f"whose instance norms come from a style code, and a style predictor trained from scratch): "
                f"{config.describe_schedule('random resized crops')}; each photo with one of {len(self.training)} "
                f"paintings from {Path(config.paintings).resolve().name} drawn at random, whole at a long side of "
                f"{self.style_size} px (mirrored half the time for the predictor), VGG-16 losses, networks in {precision}.")
        if config.stability_weight > 0:
            text += f" Temporal stability term: {describe_motion(config.stability_motion)}."
        return text
