"""How good a super-resolution network is: PSNR, SSIM and VGG feature distance on test sets.

The protocol of the super-resolution literature: a set is a folder of NAME_HR.png
images, optionally with the published low-resolution inputs NAME_LR.png beside them
(Set5 and Set14 come with x4 ones). Each image is measured with two kinds of input:
the published one where its size fits the factor, and our own degradation of the
HR image (vidstyle.trainer.upscale.degrade: the one the network was trained on). Outputs are
rounded to 8 bits, as a saved image would be; PSNR and SSIM are on the luma
channel Y of ITU-R BT.601 (16..235) with `factor` pixels cropped from every border;
the feature distance is the mean squared difference of VGG-16 relu2_2 features of
the whole RGB image, the units of the training loss. Bicubic upscaling is measured
the same way, as the baseline.

The grid strength: how much regular pattern at the upsampling period (the factor, and so
its octaves) the network adds. It is measured on the network's detail layer, its output
minus the bicubic upscale of the same input, since bicubic upsampling itself leaves
spectral images at those frequencies. Of the detail's luma, the periodic component
(Moisan's periodic-plus-smooth decomposition: no leakage cross from the borders), for
every peak (k H/P, l W/P) but DC: its power against the mean power of the bins around it
(6 bins either way), averaged over the peaks, so a grid-free detail scores about 1 and a
gridded one many times that. A set's mean above 4 is a grid (GRID_THRESHOLD).

The texture: what the grid strength cannot see, a texture of one fine scale whose phase
wanders (the x4's weave of strokes 2.6 pixels apart). The network's detail power in radial
frequency bands over the true detail's (the original minus the same bicubic upscale), each
band's ratio beyond 1.5 times the median band's, averaged over the bands: train-upscaler's
texture term (vidstyle.trainer.losses.texture_peaks) on the whole image; 0 without such a peak.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vidstyle.trainer.data import read_rgb, to_tensor
from vidstyle.trainer.losses import GRID_RADIUS, content_loss, grid_peaks, periodic_power, texture_peaks
from vidstyle.trainer.upscale import bicubic_upscale, degrade, relu2_2
from vidstyle.trainer.vgg import LossNetwork
from vidstyle.errors import VidstyleError
from vidstyle.model import UpscalerNet
from vidstyle.media import partial_file
from vidstyle.preview import contact_sheet
from vidstyle.styles import Upscaler

PUBLISHED, OURS = "published", "blur+bicubic"
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004)
ZOOM = 4  # the contact sheet's crops are this much smaller than the image's short side
SHEET_HEIGHT = 192
# A set's mean, set from measurements (benchmarks/upscale_grid.py, docs/super-resolution.md): 1.6 to
# 2.6 without a grid (x8 bilinear, the x4 forced to bilinear, the photos' own detail), 6.7 to 41 with
# (x4 and x8 nearest); single images scatter more (a grid-free one up to 4.5, a gridded one down to 3.1).
GRID_THRESHOLD = 4.0


# (name, HR image, published low-resolution input or None), images (1, 3, H, W) RGB 0..255.
TestImage = tuple[str, torch.Tensor, "torch.Tensor | None"]


@dataclass
class UpscaleScores:
    """The mean over a set's images of one method on one kind of input."""

    set: str
    inputs: str  # PUBLISHED or OURS
    method: str  # "bicubic" or "network"
    images: int
    psnr: float
    ssim: float
    feature: float
    grid: float | None = None  # the network's grid strength; bicubic adds no detail to measure
    texture: float | None = None  # the training's texture term on the network's detail against the true detail


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 Y (16..235) of RGB 0..255 images (N, 3, H, W), as (N, 1, H, W)."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=images.dtype).view(1, 3, 1, 1) / 255
    return 16 + (images * weights).sum(dim=1, keepdim=True)


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = F.mse_loss(image, reference).item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ssim(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM of two (N, 1, H, W) images of range 0..255: Gaussian window 11 x 11, sigma 1.5,
    K1 0.01, K2 0.03, over the positions where the window fits (as Wang et al.'s MATLAB code)."""
    taps = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    gauss = torch.exp(-taps ** 2 / (2 * SSIM_SIGMA ** 2))
    window = (gauss[:, None] * gauss[None]) / gauss.sum() ** 2
    x, y = image.double(), reference.double()

    def mean(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window.view(1, 1, SSIM_WINDOW, SSIM_WINDOW))

    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y, cov = mean(x * x) - mu_x ** 2, mean(y * y) - mu_y ** 2, mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def grid_measurable(height: int, width: int, period: int) -> bool:
    """Whether an image of height x width has room for grid_strength's peaks and their neighbourhoods."""
    return not (height % period or width % period or min(height, width) // period <= 2 * GRID_RADIUS + 1)


def grid_strength(detail: torch.Tensor, period: int) -> float:
    """How strongly a (1, 3, H, W) detail layer (an upscaler's output minus the bicubic upscale of
    its input) repeats with `period` pixels (and its octaves): the power of its luma at each peak
    (k H/period, l W/period) but DC against the mean of the GRID_RADIUS bins around it, averaged
    over the peaks. About 1 without a grid; H and W must be multiples of period."""
    height, width = detail.shape[-2:]
    if not grid_measurable(height, width, period):
        raise VidstyleError(f"grid strength needs a size of multiples of {period}, at least "
                            f"{(2 * GRID_RADIUS + 2) * period} pixels: not {width}x{height}")
    peaks, around = grid_peaks(periodic_power(luma(detail.double())[0, 0]), period)
    return float((peaks / around).mean())


def upscaler_with(weights: Path, factor: int, upsampling: str) -> UpscalerNet:
    """An upscaler's weights run with the given upsampling, whatever its card says: the upsampling
    is not in the weights, so the x4 with "nearest" is the x4 as first trained (the detector's
    positive control), and any network can be seen with the other."""
    return Upscaler(factor, Path(weights), {"upsampling": upsampling}).load_network()


def read_test_set(folder: Path, factor: int) -> list[TestImage]:
    """(name, HR image, published LR input or None) per NAME_HR.png; HR cropped to multiples of factor."""
    paths = sorted(Path(folder).glob("*_HR.png")) if Path(folder).is_dir() else []
    if not paths:
        raise VidstyleError(f"no *_HR.png images in {folder}")
    images = []
    for path in paths:
        hr = to_tensor(read_rgb(path)).unsqueeze(0)
        height, width = hr.shape[-2:]
        hr = hr[..., : height - height % factor, : width - width % factor]
        lr_path = path.with_name(path.name.replace("_HR.png", "_LR.png"))
        lr = to_tensor(read_rgb(lr_path)).unsqueeze(0) if lr_path.is_file() else None
        fits = lr is not None and tuple(size * factor for size in lr.shape[-2:]) == tuple(hr.shape[-2:])
        images.append((path.name.removesuffix("_HR.png"), hr, lr if fits else None))
    return images


def _scores(
    output: torch.Tensor, hr: torch.Tensor, hr_features: torch.Tensor, factor: int, loss_net: LossNetwork
) -> tuple[float, float, float]:
    """(PSNR, SSIM, feature distance) of an upscaled image, rounded to 8 bits as a saved one would be."""
    output = output.clamp(0, 255).round()
    crop = (..., slice(factor, -factor), slice(factor, -factor))
    y_out, y_hr = luma(output)[crop], luma(hr)[crop]
    return psnr(y_out, y_hr), ssim(y_out, y_hr), content_loss(relu2_2(loss_net, output), hr_features).item()


def evaluate_upscaler(
    net: UpscalerNet, sets: dict[str, list[TestImage]], loss_net: LossNetwork, sheet: Path | None = None
) -> list[UpscaleScores]:
    """Scores per set (name: read_test_set's images), kind of input and method (bicubic, network);
    with sheet, a PNG of the first set's images (from the published inputs where there are):
    the same zoomed crop of bicubic | network | original."""
    factor = net.factor
    results, sheet_rows = [], []
    for set_index, (set_name, images) in enumerate(sets.items()):
        per_input: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        for name, hr, published in tqdm(images, unit="image", desc=f"x{factor} {set_name}"):
            inputs = {PUBLISHED: published, OURS: degrade(hr, factor)} if published is not None else {OURS: degrade(hr, factor)}
            with torch.no_grad():
                hr_features = relu2_2(loss_net, hr)
                for kind, small in inputs.items():
                    outputs = {"bicubic": bicubic_upscale(small, factor), "network": net(small)}
                    # An image too small for the grid's neighbourhoods has no grid figure; the set's mean skips it.
                    grid = (grid_strength(outputs["network"] - outputs["bicubic"], factor)
                            if grid_measurable(*hr.shape[-2:], factor) else None)
                    texture = texture_peaks(outputs["network"] - outputs["bicubic"], hr - outputs["bicubic"]).item()
                    details = {"bicubic": (None, None), "network": (grid, texture)}
                    for method, output in outputs.items():
                        scores = (*_scores(output, hr, hr_features, factor, loss_net), *details[method])
                        per_input.setdefault(kind, {}).setdefault(method, []).append(scores)
                    if sheet is not None and set_index == 0 and kind == next(iter(inputs)):
                        sheet_rows.append((name, _sheet_row([outputs["bicubic"], outputs["network"], hr])))
        for kind, methods in per_input.items():
            for method, scores in methods.items():
                results.append(UpscaleScores(set_name, kind, method, len(scores), *map(_mean, zip(*scores))))
    if sheet is not None:
        with partial_file(sheet) as partial:
            contact_sheet(sheet_rows, thumb_height=SHEET_HEIGHT).save(partial, format="PNG")
    return results


def _mean(values: tuple[float | None, ...]) -> float | None:
    """The mean over a set's images that have the figure; None if none has (bicubic's grid)."""
    measured = [value for value in values if value is not None]
    return fmean(measured) if measured else None


def _sheet_row(images: list[torch.Tensor]) -> list[np.ndarray]:
    """The same square crop of each image, where the original (the last) has the most detail,
    a ZOOM-th of its short side, enlarged to the sheet's height without smoothing: whole images
    at thumbnail size would all look alike."""
    arrays = [image[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy() for image in images]
    size = max(8, min(arrays[-1].shape[:2]) // ZOOM)
    stride = max(1, size // 4)
    y = luma(images[-1])[0, 0]
    detail = (y[1:, 1:] - y[:-1, 1:]).abs() + (y[1:, 1:] - y[1:, :-1]).abs()
    energy = F.avg_pool2d(detail[None, None], size, stride=stride)[0, 0]
    row, column = divmod(int(energy.argmax()), energy.shape[1])
    top, left = row * stride, column * stride
    return [np.asarray(Image.fromarray(a[top : top + size, left : left + size]).resize(
        (SHEET_HEIGHT, SHEET_HEIGHT), Image.Resampling.NEAREST)) for a in arrays]


def record_in_card(weights: Path, results: list[UpscaleScores], command: str) -> Path:
    """Add the scores to the model card beside the weights, as its "evaluation"."""
    card_path = Path(weights).with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["evaluation"] = {"command": command, "protocol": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
                          "scores": [asdict(result) for result in results]}
    with partial_file(card_path) as partial:
        Path(partial).write_text(json.dumps(card, indent=2) + "\n")
    return card_path
