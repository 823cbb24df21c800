"""The two measurements that say whether a style is good: quality and flicker.

Quality (Johnson et al. 2016, Figure 5): the network's output is scored by the
objective it was trained on, and compared with direct optimisation of that
objective by L-BFGS (Gatys et al.): how many L-BFGS iterations, from white
noise and from the content image, reach the network's value.

Flicker: the warping error of a stylized video. Stylized frame t+1 is warped
back to frame t along the optical flow of the input frames (DIS), occluded
pixels are masked by a forward-backward check, and the mean squared difference
is divided by the same error of the input video: 1.0 means the stylized video
changes no more than the input does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from trainer.data import find_images, load_sample_photos, load_style_image, sha256_file
from trainer.losses import content_loss, gram_matrix, style_loss, total_variation
from trainer.vgg import CONTENT_LAYER, LossNetwork, load_loss_network
from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer
from vidstyle.pipeline import open_input, probe_video
from vidstyle.styles import Style


@dataclass
class QualityResult:
    image: str
    objective: float  # of the network's output
    style_loss: float  # its unweighted style term: how much style, comparable between recipes
    from_noise: int | None  # L-BFGS iterations to reach it; None: not within the limit
    from_content: int | None


class PerceptualObjective:
    """The training objective of a style (without the stability term, which is
    not a property of one image): content + style + total variation, with the
    model card's weights and style image size."""

    def __init__(self, card: dict, style_image: Path, loss_net: LossNetwork):
        self.loss_net = loss_net
        self.weights = {name: card[f"{name}_weight"] for name in ("content", "style", "tv")}
        with torch.no_grad():
            self.style_grams = [gram_matrix(f) for f in loss_net(load_style_image(style_image, card["style_size"]))]

    def content_target(self, content: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.loss_net(content, num_layers=CONTENT_LAYER + 1)[CONTENT_LAYER]

    def terms(self, image: torch.Tensor, content_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms, in the trainer's units."""
        features = self.loss_net(image)
        return {"content": content_loss(features[CONTENT_LAYER], content_target),
                "style": style_loss(features, self.style_grams),
                "tv": total_variation(image)}

    def __call__(self, image: torch.Tensor, content_target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term for name, term in self.terms(image, content_target).items())


def lbfgs_iterations_to_reach(
    objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, target: float, max_iterations: int
) -> int | None:
    """L-BFGS iterations (torch's, lr 1, no line search, as the usual Gatys
    implementations) from start until the objective is at or below target."""
    image = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=1, max_iter=1, history_size=100)
    for iteration in range(max_iterations + 1):
        value = None

        def closure() -> torch.Tensor:
            nonlocal value
            optimizer.zero_grad()
            loss = objective(image)
            loss.backward()
            value = loss.item()
            return loss

        # One step evaluates the objective at the current image (iteration
        # `iteration`), then moves: the value seen is that of the image after
        # `iteration` L-BFGS iterations.
        optimizer.step(closure)
        if value <= target:
            return iteration
        if not np.isfinite(value):
            return None
    return None


def evaluate_quality(
    style: Style, style_image: Path, images: Path, vgg_weights: Path | None, size: int = 256, limit: int | None = None,
    max_iterations: int = 300, held_out: int | None = None, seed: int = 0,
) -> list[QualityResult]:
    """Scores the style's network on the photos under images (centre crops of size x size):
    the last held_out of them by path (those the trainer's --holdout left out) or all, then the first limit."""
    card = style.card
    missing = [key for key in ("content_weight", "style_weight", "tv_weight", "style_size") if key not in card]
    if missing:
        raise VidstyleError(f"style {style.name}: its model card lacks {', '.join(missing)}; cannot recompute its objective")
    if card.get("style_image_sha256") not in (None, sha256_file(style_image)):
        raise VidstyleError(f"{style_image} is not the image style {style.name} was trained on "
                            f"(its sha256 differs from the model card's)")
    paths = find_images(images)
    paths = (paths[-held_out:] if held_out else paths)[:limit]
    loss_net = load_loss_network(vgg_weights)
    if card.get("vgg_weights") not in (None, loss_net.description):
        raise VidstyleError(f"style {style.name} was trained with other VGG weights: {card['vgg_weights']}")
    objective = PerceptualObjective(card, style_image, loss_net)
    net = style.load_network().float().eval()
    generator = torch.Generator().manual_seed(seed)
    results = []
    for path in tqdm(paths, unit="image", desc=f"quality {style.name}"):
        content = load_sample_photos([path], size)
        target = objective.content_target(content)
        with torch.no_grad():
            terms = objective.terms(net(content).clamp(0, 255), target)
        value = sum(objective.weights[name] * term for name, term in terms.items()).item()
        noise = torch.rand(content.shape, generator=generator) * 255
        results.append(QualityResult(
            image=path.name, objective=value, style_loss=terms["style"].item(),
            from_noise=lbfgs_iterations_to_reach(lambda x: objective(x, target), noise, value, max_iterations),
            from_content=lbfgs_iterations_to_reach(lambda x: objective(x, target), content, value, max_iterations),
        ))
    return results


def median_iterations(counts: list[int | None], max_iterations: int) -> float:
    """Median, counting "not reached" as beyond the limit."""
    return median(max_iterations + 1 if count is None else count for count in counts)


@dataclass
class FlickerResult:
    frames: int
    stylized_error: float  # mean squared warping error, 0..255 units
    input_error: float

    @property
    def ratio(self) -> float:
        return self.stylized_error / self.input_error


def decoded_frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a video's first video stream."""
    probe_video(path)  # a missing, broken or audio-only file: the pipeline's one-line errors
    with open_input(path) as container:
        for count, frame in enumerate(container.decode(video=0)):
            if limit is not None and count >= limit:
                return
            yield frame.to_ndarray(format="rgb24")


class WarpingError:
    """Accumulates the occlusion-masked warping error of frame pairs."""

    def __init__(self) -> None:
        self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.squared_sum = {"input": 0.0, "stylized": 0.0}
        self.pixels = 0

    def add(self, inputs: tuple[np.ndarray, np.ndarray], stylized: tuple[np.ndarray, np.ndarray]) -> None:
        gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in inputs]
        forward = self.flow.calc(gray[0], gray[1], None)  # frame t -> t+1, per pixel of t
        backward = self.flow.calc(gray[1], gray[0], None)
        height, width = gray[0].shape
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]

        def back_to_t(image: np.ndarray) -> np.ndarray:
            return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        # Forward-backward check (Sundaram et al. 2010): where the flows do not
        # cancel, the pixel is occluded in t+1 or the flow is wrong.
        backward_at_t = back_to_t(backward)
        round_trip = forward + backward_at_t
        tolerance = 0.01 * ((forward ** 2).sum(-1) + (backward_at_t ** 2).sum(-1)) + 0.5
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        valid = inside & ((round_trip ** 2).sum(-1) <= tolerance)
        self.pixels += int(valid.sum())
        for name, (now, following) in (("input", inputs), ("stylized", stylized)):
            difference = now.astype(np.float32) - back_to_t(following.astype(np.float32))
            self.squared_sum[name] += float(((difference ** 2).mean(-1) * valid).sum())

    def result(self, frames: int) -> FlickerResult:
        if self.pixels == 0:
            raise VidstyleError("flicker needs at least two frames with trackable motion between them")
        return FlickerResult(frames, self.squared_sum["stylized"] / self.pixels, self.squared_sum["input"] / self.pixels)


def evaluate_flicker(video: Path, stylizer: Stylizer, batch_size: int = 4, limit: int | None = None) -> FlickerResult:
    error, previous, frames = WarpingError(), None, 0
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal previous, frames
        for frame, styled in zip(batch, stylizer(np.stack(batch))):
            if previous is not None:
                error.add((previous[0], frame), (previous[1], styled))
            previous, frames = (frame, styled), frames + 1
        batch.clear()

    with tqdm(unit="frame", desc=f"flicker {video.name}") as bar:
        for frame in decoded_frames(video, limit):
            batch.append(frame)
            if len(batch) == batch_size:
                flush()
                bar.update(batch_size)
        bar.update(len(batch))
        if batch:
            flush()
    return error.result(frames)
