"""Temporal consistency: the pipeline stage that stops stylized video from flickering.

A feed-forward style network sees each frame alone, so grain, compression
noise and small changes of light make its strokes boil from frame to frame.
This stage carries what came before forward instead (in the spirit of Chen et
al. 2017, who also blend inside the network, and the recursive blend of
Reimann et al. 2023):

    motion   -- optical flow from each input frame back to the previous one
                (OpenCV's DIS, at reduced resolution), and a per-pixel weight that
                trusts it only where the motion is reliable: the forward and
                backward flows agree, no motion boundary, and the previous input
                frame warped along the flow matches the current one;
    input    -- the network sees the frame blended with the previous (steadied)
                input carried along that flow, by a share of strength x weight: grain and
                compression noise do not reach it, real changes do;
    features -- inside a style network, the encoder's features (a quarter of the
                frame's size) blended the same way with the previous frame's; the
                rest of the network then paints one set of crisp strokes from them.
                Blending the output instead averages two frames' strokes into a
                softer picture (style loss up to 1.4 times the per-frame output's
                on the real clips; README, Temporal consistency).

Where an object moves fast, appears or is uncovered, the weight falls to zero
and the fresh frame shows; so there is no ghosting behind motion, and the share
of each new frame stops a long static shot drifting. Motion and the input
blend run on the CPU in the decoding thread, overlapped with the network.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidstyle.errors import VidstyleError
from vidstyle.model import TransformerNet

FEATURE_STRIDE = TransformerNet.feature_stride

DEFAULT_STRENGTH = 0.9
MIN_TRACKED_SIDE = 16
FLOW_LONG_SIDE = 480  # flow resolution: finer costs time and changes little in the weight
# The previous input frame, warped, may differ from the current one by grain and
# compression noise; beyond a few levels (after a light blur) it is new content.
PHOTOMETRIC_TOLERANCE = 12.0
# The network's input is steadied by this share of the strength, its features by all of it: a
# steadied input lags the picture (shipwreck on fire2: content loss 1.12 times the per-frame
# output's at the full strength, 1.09 at half; udnie's flicker there 3.74 and 3.64).
INPUT_SHARE = 0.55
# A pixel whose previous value matches within this much trust of what the flow brings is taken
# for still: a flow guessed across a flat sky moves strokes there that nothing in the picture
# moves (udnie on big_buck_bunny's slow pan over a sky: flicker 3.6 -> 2.9, losses unchanged).
STILL_PREFERENCE = 0.05
# Carried features that differ from the current frame's by more than about three times the features'
# root mean square (squared: ten times) are new content, not flicker (FeatureBlend).
FEATURE_CHANGE_TOLERANCE = 10.0
# Below this mean trust a frame is taken for a new shot (on the real clips,
# consecutive frames of one shot stay above 0.6, fast phone footage included).
SCENE_CUT_TRUST = 0.3


@dataclass
class Motion:
    """How a frame relates to the previous one, at full resolution."""

    flow: np.ndarray  # (H, W, 2) float32: where each pixel was in the previous frame, in pixels
    weight: np.ndarray  # (H, W) float32 in 0..1: how far what the previous frame carries can be trusted there


class MotionTracker:
    """The motion of each frame of a run of consecutive RGB frames from the one before (CPU, OpenCV)."""

    def __init__(self, long_side: int = FLOW_LONG_SIDE):
        self.long_side = long_side
        self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self.previous: np.ndarray | None = None  # the last frame, gray at flow resolution

    def __call__(self, frame: np.ndarray) -> Motion | None:
        """The motion from the previous frame given; None for the first, and for frames
        too small to track (DIS needs 12 pixels a side; there is nothing to steady below)."""
        height, width = frame.shape[:2]
        if min(height, width) < MIN_TRACKED_SIDE:
            self.previous = None
            return None
        scale = min(1.0, self.long_side / max(height, width))
        size = (max(MIN_TRACKED_SIDE, round(width * scale)), max(MIN_TRACKED_SIDE, round(height * scale)))
        before = self.previous
        now = self.previous = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        if before is None or before.shape != now.shape:
            return None
        return self.estimate(before, now, width, height)

    def estimate(self, before: np.ndarray, now: np.ndarray, width: int, height: int) -> Motion:
        """The motion between two gray frames at flow resolution, for frames of width x height."""
        # DIS finds no texture in dark or flat frames (a fade from black) and returns
        # noise: stretch both frames' contrast by one gain, which keeps their brightness relation.
        gain = min(8.0, 48.0 / max(1.0, float(np.std(before)), float(np.std(now))))
        low = float(min(before.min(), now.min()))
        before_flow, now_flow = (cv2.convertScaleAbs(f, alpha=gain, beta=-low * gain) for f in (before, now))
        backward = self.flow.calc(now_flow, before_flow, None)  # per pixel of now: its offset into before
        forward = self.flow.calc(before_flow, now_flow, None)
        backward, weight = reliable_motion(before, now, backward, forward)
        # Back to full resolution; flow vectors scale with the image.
        flow = cv2.resize(backward, (width, height), interpolation=cv2.INTER_LINEAR)
        flow *= np.array([width / now.shape[1], height / now.shape[0]], dtype=np.float32)
        weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
        return Motion(flow, weight)


def reliable_motion(
    before: np.ndarray, now: np.ndarray, backward: np.ndarray, forward: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The backward flow to use, and per pixel of `now` (0..1) whether it can carry the previous frame's
    steadied input and features.

    Where the pixel has not changed at all and the estimated flow explains it
    no better (or fails its checks), the flow is taken to be zero: flat areas
    (sky, walls) give optical flow nothing to hold on to, and there a still
    pixel is the likeliest answer."""
    height, width = now.shape
    grid_x, grid_y = _pixel_grid(height, width)
    map_x, map_y = grid_x + backward[..., 0], grid_y + backward[..., 1]

    def sample(image: np.ndarray) -> np.ndarray:
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    # Forward-backward check (Sundaram et al. 2010): the flows must cancel where the pixel is visible in both.
    forward_there = sample(forward)
    speed = _squared_norm(backward) + _squared_norm(forward_there)
    consistent = _squared_norm(backward + forward_there) <= 0.01 * speed + 0.5
    # Motion boundaries (Ruder et al. 2016): flow that changes sharply is where objects overlap.
    change = _squared_norm(cv2.Sobel(backward, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)) + \
        _squared_norm(cv2.Sobel(backward, cv2.CV_32F, 0, 1, ksize=1, scale=0.5))
    boundary = change > 0.01 * _squared_norm(backward) + 0.002
    # Photometric check: the previous frame, moved along the flow, must look like this one.
    weight = photometric_match(sample(before), now)
    weight[~(inside & consistent & ~boundary)] = 0
    still = photometric_match(before, now)
    use_still = still > weight - STILL_PREFERENCE
    backward = backward.copy()
    backward[use_still] = 0
    weight = np.maximum(weight, still)
    if weight.mean() < SCENE_CUT_TRUST:
        weight[:] = 0  # a cut: what matches here matches by chance
    return backward, cv2.GaussianBlur(weight, (5, 5), 1.0)  # soft edges: no seams where trust changes


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    return vectors[..., 0] * vectors[..., 0] + vectors[..., 1] * vectors[..., 1]


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))


def photometric_match(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """1 where two gray frames agree up to grain and compression noise, falling to 0 beyond it."""
    difference = cv2.GaussianBlur(cv2.absdiff(predicted, actual).astype(np.float32), (5, 5), 1.0)
    difference *= -1.0 / PHOTOMETRIC_TOLERANCE ** 2 * difference
    return cv2.exp(difference)


class TemporalConsistency:
    """The temporal stage for one run of consecutive frames of a style network, in two
    parts: `prepare` in the decoding thread (motion, and the network's input steadied
    along it), and `feature_blend`, which the Stylizer applies between the network's halves."""

    def __init__(self, strength: float = DEFAULT_STRENGTH):
        if not 0 <= strength <= 1:
            raise VidstyleError(f"temporal strength must be within 0..1, not {strength:g}")
        self.motion = MotionTracker()
        self.steady_input = TemporalBlend(strength * INPUT_SHARE)
        self.steady_features = FeatureBlend(strength)

    def prepare(self, frames: np.ndarray) -> tuple[np.ndarray, list[Motion | None]]:
        """(N, H, W, 3) uint8 frames in order: the batch for the network, and each one's motion."""
        motions = [self.motion(frame) for frame in frames]
        return self.steady_input(frames, motions), motions

    def feature_blend(self, motions: list[Motion | None]) -> Callable[[torch.Tensor], torch.Tensor]:
        """For a batch's frames, the function that blends their features (Stylizer's `between`)."""
        return functools.partial(self.steady_features, motions=motions)


class TemporalBlend:
    """Blends each frame with the previous blended frame, warped along the motion, by
    `strength` x trust (CPU, OpenCV).

    Stateful: feed it the frames of one run of consecutive frames in order;
    a frame without motion (the first, or after a seek) starts afresh."""

    def __init__(self, strength: float):
        self.strength = strength
        self.previous: torch.Tensor | None = None  # (H, W, 3) float32: the last blended frame

    def __call__(self, frames: np.ndarray, motions: list[Motion | None]) -> np.ndarray:
        """(N, H, W, 3) uint8 frames and each one's motion from the frame before; the blended frames."""
        blended = torch.from_numpy(frames).float()
        for index, motion in enumerate(motions):
            if motion is not None and self.previous is not None and self.strength > 0:
                trust = torch.from_numpy(motion.weight)[..., None]
                blended[index] += trust * self.strength * (warp(self.previous, motion.flow) - blended[index])
            self.previous = blended[index]
        return blended.clamp_(0, 255).round_().to(torch.uint8).numpy()


class FeatureBlend:
    """Blends a style network's encoder features (N, C, h, w) with the previous frame's,
    warped along the motion scaled to their size, by `strength` x trust, less where the features
    changed far more than flicker changes them (`_unchanged`): the
    network's residual blocks and decoder then paint one set of strokes that
    follows the scene, where blending two painted frames would average their strokes away.

    Stateful, like TemporalBlend, on the network's device; called with a batch's features and each frame's
    motion. Features beyond the motions given (a compiled run's short last batch,
    padded with repeats) pass unchanged and leave no history."""

    def __init__(self, strength: float):
        self.strength = strength
        self.previous: torch.Tensor | None = None  # (1, C, h, w): the last frame's blended features

    def __call__(self, features: torch.Tensor, motions: list[Motion | None]) -> torch.Tensor:
        blended = features.to(torch.float32, copy=True)  # blended in a copy: the caller keeps its features
        for index, motion in enumerate(motions):
            current = blended[index:index + 1]
            if motion is not None and self.previous is not None and self.previous.shape == current.shape:
                height, width = current.shape[-2:]
                flow, weight = _at_feature_size(motion, height, width)
                trust = torch.from_numpy(weight).to(current.device)
                grid = sampling_grid(torch.from_numpy(flow).to(current.device), height, width)
                # Bicubic: bilinear blurs the features a little more every frame they are carried (shipwreck
                # on big_buck_bunny, per-frame output = 1: content loss 1.08 bilinear, 1.07 bicubic; flicker 1.35, 1.27).
                warped = F.grid_sample(self.previous, grid[None], mode="bicubic", padding_mode="border",
                                       align_corners=True)
                current += self.strength * trust * _unchanged(warped, current) * (warped - current)
            self.previous = current.clone()
        return blended.to(features.dtype)


def _unchanged(carried: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Per feature pixel (1, 1, h, w), 1 where the carried features are close to the current frame's and
    falling to 0 where they differ by far more than flicker does: what the motion's trust missed
    (something that appeared, or a change of light) shows at once instead of lagging behind."""
    change = (carried - current).square().mean(1, keepdim=True)
    return torch.exp(change / (-FEATURE_CHANGE_TOLERANCE * current.square().mean().clamp(min=1e-6)))


def _at_feature_size(motion: Motion, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The motion's flow (in feature pixels) and weight averaged down to the features'
    height x width. The features cover the frame padded to the network's size multiple:
    beyond the frame's share of them, edges are repeated."""
    frame_height, frame_width = motion.weight.shape
    inner = (min(width, max(1, round(frame_width / FEATURE_STRIDE))), min(height, max(1, round(frame_height / FEATURE_STRIDE))))
    flow = cv2.resize(motion.flow, inner, interpolation=cv2.INTER_AREA) * np.float32(1 / FEATURE_STRIDE)
    weight = cv2.resize(motion.weight, inner, interpolation=cv2.INTER_AREA)
    pad = ((0, height - inner[1]), (0, width - inner[0]))
    return np.pad(flow, pad + ((0, 0),), mode="edge"), np.pad(weight, pad, mode="edge")


def warp(image: torch.Tensor, flow: np.ndarray) -> torch.Tensor:
    """image (H, W, C) float32 on the CPU sampled at each pixel + flow (H, W, 2), bicubic: sharper
    than bilinear, which blurs a little more every time a frame is carried forward."""
    height, width = image.shape[:2]
    grid_x, grid_y = _pixel_grid(height, width)
    warped = cv2.remap(image.numpy(), grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE)
    return torch.from_numpy(warped.reshape(image.shape)).clamp_(0, 255)


def sampling_grid(offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """grid_sample's (H, W, 2) grid (align_corners=True) that samples each pixel + offsets (H, W, 2)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=offsets.device, dtype=torch.float32),
                            torch.arange(width, device=offsets.device, dtype=torch.float32), indexing="ij")
    return torch.stack(((xs + offsets[..., 0]) * (2 / max(width - 1, 1)) - 1,
                        (ys + offsets[..., 1]) * (2 / max(height - 1, 1)) - 1), dim=-1)
