"""Any painting on a still, by optimisation (Gatys et al. 2015; `vidstyle submit --style-image P
--optimise`): no network; the image itself is optimised with L-BFGS against the training
objective of `vidstyle train` (the same content, style and total-variation terms, units,
default weights and VGG-16 weights). Seconds per iteration rather than milliseconds per
frame: the best a still can get, where the any-painting network is the fast way.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vidstyle.trainer.evaluate import PerceptualObjective, lbfgs_steps
from vidstyle.trainer.losses import CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT
from vidstyle.trainer.vgg import load_loss_network
from vidstyle.errors import VidstyleError
from vidstyle.inference import Controls, apply_controls_to_pixels
from vidstyle.media import check_output, is_image, partial_file
from vidstyle.preview import sample_frames

INITS = ("photo", "noise")


@dataclass
class Optimised:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    start_objective: float
    final_objective: float


def objective_card(size: int) -> dict:
    """The objective's weights, as a model card states them: the trainer's defaults, the
    style image at the optimised image's own size (its strokes at the scale they would have there)."""
    return {"content_weight": CONTENT_WEIGHT, "style_weight": STYLE_WEIGHT, "tv_weight": TV_WEIGHT, "style_size": size}


def train_command(style_image: Path, vgg_weights: Path | None, size: int) -> str:
    """The `vidstyle train` command for a network of the same painting, objective and VGG weights."""
    card = objective_card(size)
    parts = ["vidstyle", "train", str(style_image), "--dataset", "PHOTOS", "--style-size", str(size),
             "--content-weight", f"{card['content_weight']:g}", "--style-weight", f"{card['style_weight']:g}",
             "--tv-weight", f"{card['tv_weight']:g}"]
    if vgg_weights:
        parts += ["--vgg-weights", str(vgg_weights)]
    return shlex.join(parts)


def optimise_image(photo: np.ndarray, style_image: Path, vgg_weights: Path | None, iterations: int, init: str = "photo",
                   seed: int = 0) -> Optimised:
    """photo, (H, W, 3) uint8 RGB, restyled after style_image by `iterations` of L-BFGS
    from the photo itself or from white noise, with a progress bar."""
    if init not in INITS:
        raise VidstyleError(f"--init must be one of {', '.join(INITS)}, not {init!r}")
    content = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float().contiguous()
    objective = PerceptualObjective(objective_card(max(photo.shape[:2])), style_image, load_loss_network(vgg_weights))
    target = objective.content_target(content)
    if init == "photo":
        image = content.clone()
    else:
        image = torch.rand(content.shape, generator=torch.Generator().manual_seed(seed)) * 255
    image.requires_grad_(True)
    start, best, best_image = None, math.inf, image.detach()
    # Without a line search a step sometimes overshoots (the objective jumps, then recovers):
    # the result is the best image seen, the last one (after `iterations` steps) included.
    with tqdm(total=iterations, unit="it", desc=f"optimising after {style_image.name}") as bar:
        for iteration, value, evaluated in lbfgs_steps(lambda x: objective(x, target), image):
            start = value if start is None else start
            if value < best:
                best, best_image = value, evaluated
            if iteration == iterations or not math.isfinite(value):
                break
            bar.update()
            bar.set_postfix_str(f"objective {value:.4g}")
    result = best_image.clamp(0, 255).round()
    with torch.no_grad():
        final = objective(result, target).item()
    return Optimised(result[0].permute(1, 2, 0).to(torch.uint8).numpy(), start, final)


def optimise_still(input_path: Path, output_path: Path, style_image: Path, *, vgg_weights: Path | None = None,
                   size: int = 512, iterations: int = 100, init: str = "photo", controls: Controls = Controls(),
                   force: bool = False) -> Path:
    """`vidstyle submit PHOTO --style-image PAINTING`: the photo, its long side resized to `size`,
    optimised after the painting, with the artist's controls; written atomically to output_path."""
    if not is_image(input_path):
        raise VidstyleError("optimising takes minutes per frame, so it is for stills: for a video, drop --optimise "
                            "(the any-painting network, one pass a frame), or train a style for this painting: "
                            f"{train_command(style_image, vgg_weights, size)}")
    if not style_image.is_file():
        raise VidstyleError(f"style image not found: {style_image}")
    image_format = Image.registered_extensions().get(output_path.suffix.lower())
    if image_format not in ("JPEG", "PNG", "WEBP", "TIFF"):
        raise VidstyleError(f"cannot write an image with suffix '{output_path.suffix}' (use .jpg, .png, .webp or .tif)")
    check_output(output_path, force)
    photo = Image.fromarray(sample_frames(input_path, 1)[0])
    scale = size / max(photo.size)
    photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                         Image.Resampling.LANCZOS)
    pixels = np.asarray(photo)
    result = optimise_image(pixels, style_image, vgg_weights, iterations, init)
    with partial_file(output_path) as partial:
        Image.fromarray(apply_controls_to_pixels(pixels, result.pixels, controls)).save(partial, format=image_format,
                                                                                         quality=95)
    return output_path
