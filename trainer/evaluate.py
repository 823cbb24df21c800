"""The two measurements that say whether a style is good: quality and flicker.

Quality (Johnson et al. 2016, Figure 5): the network's output is scored by the
objective it was trained on, and compared with direct optimisation of that
objective by L-BFGS (Gatys et al.): how many L-BFGS iterations, from white
noise and from the content image, reach the network's value.

Flicker: the warping error of a stylized video (Lai et al. 2018). Stylized
frame t+1 is warped back to frame t along the optical flow of the input frames
(Farneback's), occluded pixels and motion boundaries are masked, and the mean
squared difference is divided by the same error of the input video: 1.0 means
the stylized video changes no more than the input does. It is measured frame by
frame and with the pipeline's temporal stage.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, median
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidstyle.trainer.data import find_images, load_sample_photos, load_style_image, sha256_file
from vidstyle.trainer.losses import content_loss, gram_matrix, style_loss, total_variation
from vidstyle.trainer.upscale import bicubic_upscale, degrade
from vidstyle.trainer.vgg import CONTENT_LAYER, LossNetwork, load_loss_network
from vidstyle import exposure
from vidstyle.errors import VidstyleError
from vidstyle.media import open_input, partial_file, probe_video
from vidstyle.preview import contact_sheet
from vidstyle.styles import Painting, Style
from vidstyle.temporal import DEFAULT_STRENGTH, TemporalConsistency, pixel_grid


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


def lbfgs_steps(
    objective: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor
) -> Iterator[tuple[int, float, torch.Tensor]]:
    """Optimises `image` (a leaf tensor that requires grad) in place with L-BFGS
    (torch's, lr 1, no line search, as the usual Gatys implementations), one
    iteration per item, for as long as the caller iterates: yields (iteration,
    value, evaluated), the objective's value at the image after `iteration`
    iterations and a copy of that image (the step that follows has moved `image` on)."""
    optimizer = torch.optim.LBFGS([image], lr=1, max_iter=1, history_size=100)
    for iteration in itertools.count():
        value, evaluated = None, None

        def closure() -> torch.Tensor:
            nonlocal value, evaluated
            optimizer.zero_grad()
            evaluated = image.detach().clone()
            loss = objective(image)
            loss.backward()
            value = loss.item()
            return loss

        # One step evaluates the objective at the current image, then moves it.
        optimizer.step(closure)
        yield iteration, value, evaluated


def lbfgs_iterations_to_reach(
    objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, target: float, max_iterations: int
) -> int | None:
    """L-BFGS iterations (lbfgs_steps) from start until the objective is at or below target."""
    for iteration, value, _ in lbfgs_steps(objective, start.clone().requires_grad_(True)):
        if value <= target:
            return iteration
        if not np.isfinite(value) or iteration >= max_iterations:
            return None


def evaluate_quality(
    style: Style | Painting, style_image: Path, images: Path, vgg_weights: Path | None, size: int = 256, limit: int | None = None,
    max_iterations: int = 300, held_out: int | None = None, seed: int = 0,
) -> list[QualityResult]:
    """Scores the style's network (or the any-painting network's for a Painting) on the photos under images
    (centre crops of size x size): the last held_out of them by path (those the trainer's --holdout left
    out) or all, then the first limit."""
    card = style.card
    missing = [key for key in ("content_weight", "style_weight", "tv_weight", "style_size") if key not in card]
    if missing:
        raise VidstyleError(f"style {style.name}: its model card lacks {', '.join(missing)}; cannot recompute its objective")
    if isinstance(style, Style) and card.get("style_image_sha256") not in (None, sha256_file(style_image)):
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


FLOWS = ("farneback", "dis")  # the measuring flows: neither is the temporal stage's own (DIS, fast, at 480 px)


@dataclass
class FlickerResult:
    frames: int
    stylized_error: float  # mean squared warping error, 0..255 units
    input_error: float
    # The ratio a perfectly consistent output scores: each input frame and its per-frame output
    # carried to the next frame by the same exact motion (an affine fit to the input's), both
    # measured afresh. On
    # smooth input the measuring flow is unsure while sharp strokes show every error of it,
    # so this is far above 1 there (8 to 77 on handheld footage of a wall or a sky).
    floor: float

    @property
    def ratio(self) -> float:
        return self.stylized_error / self.input_error

    @property
    def over_floor(self) -> float:
        """The flicker as a multiple of the measure's floor on this clip: 1 is perfectly consistent."""
        return self.ratio / self.floor


@dataclass
class FlickerReport:
    """A video stylized frame by frame and with the pipeline's temporal stage, side by side,
    measured along each of FLOWS."""

    per_frame: dict[str, FlickerResult]
    temporal: dict[str, FlickerResult]
    # The temporal output's content and style losses relative to the per-frame output's, the mean
    # of each measured frame's ratio (None without a loss network), over the whole clip and over its
    # last third (where what a carry piles up shows): blending that blurs, smears or ghosts raises them.
    content_ratio: float | None = None
    style_ratio: float | None = None
    last_third_content_ratio: float | None = None
    last_third_style_ratio: float | None = None


def frame_count(video: Path) -> int:
    """The video's frames: from the container, or where it does not say (WebM), by counting its
    video packets, which needs no decoding."""
    frames = probe_video(video).frames
    if frames:
        return frames
    with open_input(video) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def decoded_frames(path: Path, limit: int | None = None, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a video's first video stream, resized to size (width, height) if given."""
    probe_video(path)  # a missing, broken or audio-only file: the pipeline's one-line errors
    with open_input(path) as container:
        for count, frame in enumerate(container.decode(video=0)):
            if limit is not None and count >= limit:
                return
            pixels = frame.to_ndarray(format="rgb24")
            yield pixels if size is None else cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def frame_batches(video: Path, batch_size: int, limit: int | None = None,
                  size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """decoded_frames in (N, H, W, 3) batches of batch_size (the last may be shorter), with a progress bar."""
    with tqdm(total=min(frame_count(video), limit or sys.maxsize), unit="frame", desc=f"flicker {video.name}") as bar:
        batch: list[np.ndarray] = []
        for frame in decoded_frames(video, limit, size):
            batch.append(frame)
            if len(batch) == batch_size:
                yield np.stack(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            yield np.stack(batch)
            bar.update(len(batch))


@dataclass
class PairMotion:
    """The motion between input frames t and t+1 by one measuring flow, and where it can be trusted."""

    forward: np.ndarray  # (H, W, 2): per pixel of t, its offset into t+1
    backward: np.ndarray  # (H, W, 2): per pixel of t+1, its offset into t
    valid: np.ndarray  # (H, W) bool: visible in both, not at a motion boundary (Lai et al. 2018)

    @classmethod
    def measure(cls, before: np.ndarray, after: np.ndarray, flow: str) -> PairMotion:
        gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (before, after)]
        if flow == "farneback":
            forward, backward = (cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                                 for a, b in ((gray[0], gray[1]), (gray[1], gray[0])))
        else:
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            forward, backward = dis.calc(gray[0], gray[1], None), dis.calc(gray[1], gray[0], None)
        # Occluded pixels (forward-backward check, Sundaram et al. 2010) and motion
        # boundaries (Ruder et al. 2016) are left out, as Lai et al. do.
        backward_at_t = _sample(backward, forward)
        squared = lambda v: (v ** 2).sum(-1)  # noqa: E731
        consistent = squared(forward + backward_at_t) <= 0.01 * (squared(forward) + squared(backward_at_t)) + 0.5
        (du_dy, du_dx), (dv_dy, dv_dx) = np.gradient(forward[..., 0]), np.gradient(forward[..., 1])
        boundary = du_dx ** 2 + du_dy ** 2 + dv_dx ** 2 + dv_dy ** 2 > 0.01 * squared(forward) + 0.002
        height, width = gray[0].shape
        grid_x, grid_y = pixel_grid(height, width)
        map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        return cls(forward, backward, inside & consistent & ~boundary)


def _sample(image: np.ndarray, offsets: np.ndarray, mode: int = cv2.INTER_LINEAR) -> np.ndarray:
    """image sampled at each pixel + offsets (H, W, 2)."""
    grid_x, grid_y = pixel_grid(*offsets.shape[:2])
    return cv2.remap(image, grid_x + offsets[..., 0], grid_y + offsets[..., 1], mode, borderMode=cv2.BORDER_REPLICATE)


class WarpingError:
    """Accumulates the warping error of Lai et al. (2018) over frame pairs, for several
    videos of the same input at once (the input itself, and its stylizations), along one
    measuring flow: Farneback's or DIS's at full resolution, never the temporal stage's own
    (measured with its own flow, the blend would only be shown to agree with itself)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.squared_sum = dict.fromkeys(names, 0.0)
        self.pixels = 0

    def add(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]], motion: PairMotion) -> None:
        """pairs: for each name, its frames t and t+1; motion: the input's, by the measuring flow."""
        self.pixels += int(motion.valid.sum())
        for name, (now, following) in pairs.items():
            difference = now.astype(np.float32) - _sample(following.astype(np.float32), motion.forward)
            self.squared_sum[name] += float(((difference ** 2).mean(-1) * motion.valid).sum())

    def error(self, name: str) -> float:
        if self.pixels == 0:
            raise VidstyleError("flicker needs at least two frames with trackable motion between them")
        return self.squared_sum[name] / self.pixels


def add_pair(errors: dict[str, WarpingError], previous: dict[str, np.ndarray],
             current: dict[str, np.ndarray]) -> dict[str, PairMotion]:
    """One frame pair into each measuring flow's errors (keyed by FLOWS): previous and current hold
    frames t and t+1 by name, "input" among them, whose motion is measured; returns the motions."""
    motions = {flow: PairMotion.measure(previous["input"], current["input"], flow) for flow in errors}
    for flow, motion in motions.items():
        errors[flow].add({name: (previous[name], current[name]) for name in current}, motion)
    return motions


def carried_rigidly(frames: tuple[np.ndarray, ...], motion: PairMotion) -> tuple[np.ndarray, ...]:
    """Frames of time t carried to t+1 by one affine motion fitted to the input's flow (RANSAC): the
    next frames of a perfectly consistent video. The motion is exact, and not the measuring flow's
    own field, which the measure would find again without error."""
    height, width = motion.valid.shape
    ys, xs = np.mgrid[0:height:8, 0:width:8]
    keep = motion.valid[ys, xs]
    points = np.stack([xs[keep], ys[keep]], -1).astype(np.float32)
    if len(points) < 3:
        return frames
    affine, _ = cv2.estimateAffine2D(points, points + motion.forward[ys[keep], xs[keep]], method=cv2.RANSAC)
    if affine is None:
        return frames
    return tuple(cv2.warpAffine(frame, affine, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
                 for frame in frames)


def evaluate_flicker(
    video: Path, stylizer: Callable[..., np.ndarray], *, temporal_strength: float = DEFAULT_STRENGTH,
    batch_size: int = 4, limit: int | None = None, size: tuple[int, int] | None = None,
    objective: PerceptualObjective | None = None, loss_every: int = 8, strip: Path | None = None,
) -> FlickerReport:
    """The video stylized frame by frame and through the pipeline's temporal stage
    (stylizer: a Stylizer, or a stand-in called as stylizer(frames, between=...)):
    the warping error of each along every measuring flow, with the measure's floor
    (what a perfectly consistent output scores), their losses (with an objective,
    every loss_every-th frame) and, with strip, a PNG of frames from the start, the
    middle and the end at 100%."""
    temporal = TemporalConsistency(temporal_strength)
    errors = {flow: WarpingError(("input", "per frame", "temporal")) for flow in FLOWS}
    floors = {flow: WarpingError(("input", "per frame")) for flow in FLOWS}
    ratios: list[tuple[int, float, float]] = []  # (frame, content, style): temporal / per frame
    total = min(frame_count(video), limit or sys.maxsize)
    shown = {index: None for index in strip_frames(total)} if strip is not None else {}
    previous, frames = None, 0

    def flush(batch: np.ndarray) -> None:
        nonlocal previous, frames
        lifted, gains = exposure.lift(batch)  # as the pipeline does, with or without the temporal stage
        network_input, motions = temporal.prepare(lifted)
        steady = stylizer(network_input, between=temporal.feature_blend(motions))
        outputs = zip(batch, exposure.restore(stylizer(lifted), gains), exposure.restore(steady, gains))
        for frame, plain, steady in outputs:
            current = {"input": frame, "per frame": plain, "temporal": steady}
            if previous is not None:
                for flow, motion in add_pair(errors, previous, current).items():
                    # The floor: this frame and its output moved exactly as the input moved, then measured
                    # afresh, flow and masks, as any pair is.
                    moved = carried_rigidly((previous["input"], previous["per frame"]), motion)
                    floors[flow].add({"input": (previous["input"], moved[0]), "per frame": (previous["per frame"], moved[1])},
                                     PairMotion.measure(previous["input"], moved[0], flow))
            if objective is not None and frames % loss_every == 0:
                target = objective.content_target(_as_tensor(frame))
                plain_terms, steady_terms = (objective.terms(_as_tensor(current[name]), target)
                                             for name in ("per frame", "temporal"))
                ratios.append((frames, steady_terms["content"].item() / plain_terms["content"].item(),
                               steady_terms["style"].item() / plain_terms["style"].item()))
            if frames in shown:
                shown[frames] = current
            previous, frames = current, frames + 1

    with torch.no_grad():
        for batch in frame_batches(video, batch_size, limit, size):
            flush(batch)
    if strip is not None:
        write_flicker_strip({index: shown_frames for index, shown_frames in shown.items() if shown_frames}, strip)
    report = FlickerReport(*({flow: FlickerResult(frames, errors[flow].error(name), errors[flow].error("input"),
                                                  floors[flow].error("per frame") / floors[flow].error("input"))
                              for flow in FLOWS} for name in ("per frame", "temporal")))
    if ratios:
        # Each frame weighs the same: a sum would be ruled by the frames with the largest
        # losses (the dim frames of a fade, whose style loss is many times a bright frame's).
        last_third = [r for r in ratios if r[0] >= frames * 2 // 3] or ratios[-1:]
        report.content_ratio, report.style_ratio = (fmean(r[k] for r in ratios) for k in (1, 2))
        report.last_third_content_ratio, report.last_third_style_ratio = (fmean(r[k] for r in last_third) for k in (1, 2))
    return report


@dataclass
class UpscaleFlickerResult:
    """The warping errors (mean squared, 0..255 units) of a clip downscaled, then upscaled by the
    network frame by frame, by the network with the temporal stage, and by bicubic, beside the
    full-size clip's own, along one measuring flow."""

    frames: int
    input_error: float
    network_error: float
    temporal_error: float
    bicubic_error: float

    @property
    def over_bicubic(self) -> float:
        """The network's flicker, frame by frame, as a multiple of bicubic's: what the detail it adds costs."""
        return self.network_error / self.bicubic_error

    @property
    def temporal_over_bicubic(self) -> float:
        return self.temporal_error / self.bicubic_error

    @property
    def original_over_bicubic(self) -> float:
        """The full-size clip's own flicker as a multiple of bicubic's: what a perfect upscaler would
        score. Sharp detail shows every small error of the measuring flow, which a blur hides."""
        return self.input_error / self.bicubic_error


def evaluate_upscale_flicker(
    video: Path, upscaler: Callable[..., np.ndarray], factor: int, *, temporal_strength: float = DEFAULT_STRENGTH,
    batch_size: int = 4, limit: int | None = None, size: tuple[int, int] | None = None, strip: Path | None = None,
) -> dict[str, UpscaleFlickerResult]:
    """Per measuring flow: each frame (cropped to multiples of factor) downscaled by factor (bicubic,
    antialiased, 8-bit: vidstyle.trainer.upscale.degrade without its blur, a real small video's
    look), then upscaled by upscaler (a Stylizer of an upscaler, (N, h, w, 3) uint8 in, factor times
    larger out, called as upscaler(frames, between=...)) frame by frame and through the pipeline's
    temporal stage, with the exposure lift the pipeline gives it, and by bicubic; warped along the
    full-size input's motion, as a stylized video is. With strip, a PNG of frames from the start,
    the middle and the end at 100%: the full-size clip, per frame, temporal."""
    temporal = TemporalConsistency(temporal_strength, feature_stride=getattr(upscaler, "feature_stride", 1))
    names = ("input", "per frame", "temporal", "bicubic")
    errors = {flow: WarpingError(names) for flow in FLOWS}
    total = min(frame_count(video), limit or sys.maxsize)
    shown = {index: None for index in strip_frames(total)} if strip is not None else {}
    previous, frames = None, 0
    with torch.no_grad():
        for batch in frame_batches(video, batch_size, limit, size):
            height, width = batch.shape[1] // factor * factor, batch.shape[2] // factor * factor
            if not (height and width):
                raise VidstyleError(f"frames of {batch.shape[2]}x{batch.shape[1]} are smaller than the factor {factor}")
            full = batch[:, :height, :width]
            small = degrade(torch.from_numpy(full).permute(0, 3, 1, 2).float(), factor, torch.zeros(len(full)))
            lifted, gains = exposure.lift(_as_frames(small))
            network_input, motions = temporal.prepare(lifted)
            networks = exposure.restore(upscaler(lifted), gains)
            steadied = exposure.restore(upscaler(network_input, between=temporal.feature_blend(motions)), gains)
            bicubics = _as_frames(bicubic_upscale(small, factor))
            for current in (dict(zip(names, outputs)) for outputs in zip(full, networks, steadied, bicubics)):
                if previous is not None:
                    add_pair(errors, previous, current)
                if frames in shown:
                    shown[frames] = current
                previous, frames = current, frames + 1
    if strip is not None:
        write_flicker_strip({index: shown_frames for index, shown_frames in shown.items() if shown_frames}, strip)
    return {flow: UpscaleFlickerResult(frames, *(errors[flow].error(name) for name in names)) for flow in FLOWS}


def _as_frames(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float 0..255 as (N, H, W, 3) uint8, as a saved video holds them."""
    return images.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


STRIP_START = 12  # the first frame shown: past the first few, which the temporal stage has little history for


def strip_frames(total: int) -> list[int]:
    """The frames a strip shows: from the start, the middle and the end of a clip of `total` frames."""
    return sorted({min(STRIP_START, total // 4), total // 2, total - 1})


def _as_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float()


STRIP_CROP = (960, 540)  # at most this much of each frame (its centre), at 100%


def write_flicker_strip(frames: dict[int, dict[str, np.ndarray]], path: Path) -> Path:
    """For frames from the start, the middle and the end of a clip, a row each: input,
    per-frame output and temporal output side by side at 100% (the centre of a large
    frame): streaks, smears and lines gone missing show here, which no figure catches."""
    rows = []
    for index, outputs in sorted(frames.items()):
        height, width = outputs["input"].shape[:2]
        top, left = max(0, (height - STRIP_CROP[1]) // 2), max(0, (width - STRIP_CROP[0]) // 2)
        crops = [outputs[name][top:top + STRIP_CROP[1], left:left + STRIP_CROP[0]]
                 for name in ("input", "per frame", "temporal")]
        rows.append((f"frame {index}", [np.concatenate(crops, axis=1)]))
    with partial_file(path) as partial:
        contact_sheet(rows, thumb_height=rows[0][1][0].shape[0]).save(partial, format="PNG")
    return path
