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
                frame warped along the flow matches the current one; where the
                flow has nothing to hold on to (a flat sky), the camera's motion;
    input    -- the network sees the frame blended with the previous (steadied)
                input carried along that flow, by a share of strength x trust:
                grain and compression noise do not reach it, real changes do;
    features -- inside the network, its `encode` half's features (a style
                network's at a quarter of the frame's size, an upscaler's at the
                frame's) blended the same way; a style network's with two
                keyframes' features, each moved once along the motion composed
                since (KeyframeBlend), rather than a running mean of every past
                frame's; its `render` half then paints one set of crisp strokes
                (or detail) from them. Blending the output instead averages two
                frames' strokes into a softer picture (docs/temporal.md).

Both blends are anchored to the current frame (TemporalBlend): what is carried
counts only where it agrees with the frame's own values to within a few times
the frame's own flicker. A recursive carry that trusts its history further
piles up the small error of every resampling along the motion, and on a flat
sky under a handheld drift that became streaks, while a thin line the motion's
trust missed was painted over for several frames.

Where an object moves fast, appears or is uncovered, the weight falls to zero
and the fresh frame shows; so there is no ghosting behind motion, and the share
of each new frame stops a long static shot drifting. Motion and the input
blend run on the CPU in the decoding thread, overlapped with the network.
"""
from __future__ import annotations

import functools
import math
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
# A pixel that the camera's motion explains within this much trust of what its own flow brings
# moves with the camera: a flow guessed across a flat sky moves strokes there that nothing in the
# picture moves, while the camera's motion, fitted where the picture has texture, is what moves
# the whole view (docs/temporal.md: the true warping error of a handheld drift 16.9 -> 10.3).
CAMERA_PREFERENCE = 0.05
# Where the gray frame's gradient (3x3 Sobel) is this strong, the flow has texture to hold on to.
TEXTURE_GRADIENT = 16.0
# Carried values that differ from the current frame's by more than this many times the frame's own
# flicker are new content, or a carry gone astray: the frame's own values show (TemporalBlend).
AGREEMENT_TOLERANCE = 3.0
# The flicker the agreement is measured in is at least this share of the previous frame's: a
# repeated frame (film transferred with pulldown, animation on twos) changes by almost nothing, and
# in units of almost nothing all history would disagree and the picture would jump back.
FLICKER_MEMORY = 0.5
# About how many pixels the flicker is measured on (_flicker_pixels).
FLICKER_PIXELS = 60_000
# Every how many frames the features' blend takes a new keyframe (KeyframeBlend), and over how
# many it cross-fades to it: longer moves strokes more slowly from one set to the next (16 flickered
# less than 8 on four of the five clips of docs/temporal.md), shorter keeps a path's composed motion short.
KEY_INTERVAL = 16
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

    Where the camera's motion explains the pixel as well as its own estimated
    flow (or the flow fails its checks), the pixel moves with the camera: flat
    areas (sky, walls) give optical flow nothing to hold on to, and there the
    motion of the whole view is the likeliest answer (no motion at all, for a
    camera on a tripod or when the frame gives no fit)."""
    height, width = now.shape
    grid_x, grid_y = pixel_grid(height, width)
    map_x, map_y = grid_x + backward[..., 0], grid_y + backward[..., 1]

    def sample(image: np.ndarray, flow: np.ndarray | None = None) -> np.ndarray:
        """image (at `before`'s time) moved along a backward flow (by default the estimated one) onto `now`."""
        maps = (map_x, map_y) if flow is None else (grid_x + flow[..., 0], grid_y + flow[..., 1])
        return cv2.remap(image, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

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
    reliable = inside & consistent & ~boundary
    weight[~reliable] = 0
    camera = camera_motion(backward, reliable & (weight > 0.5), now)
    with_camera = photometric_match(sample(before, camera), now)
    np.copyto(backward, camera, where=(with_camera > weight - CAMERA_PREFERENCE)[..., None])
    weight = np.maximum(weight, with_camera)
    if weight.mean() < SCENE_CUT_TRUST:
        weight[:] = 0  # a cut: what matches here matches by chance
    return backward, cv2.GaussianBlur(weight, (5, 5), 1.0)  # soft edges: no seams where trust changes


def camera_motion(backward: np.ndarray, reliable: np.ndarray, now: np.ndarray) -> np.ndarray:
    """The camera's motion as a backward flow field: one similarity (shift, rotation, zoom) fitted by
    RANSAC to the flow where it is reliable and the picture has texture, every 4th pixel; zero where
    too little of the frame agrees on one (a tripod shot agrees on zero)."""
    height, width = now.shape
    every_4th = np.s_[::4, ::4]
    gradient_x, gradient_y = _sobel_at_every_4th(now)
    pick = reliable[every_4th] & (np.hypot(gradient_x, gradient_y) > TEXTURE_GRADIENT)
    if pick.sum() >= 50:
        grid_x, grid_y = (grid[every_4th] for grid in pixel_grid(height, width))
        points = np.stack([grid_x[pick], grid_y[pick]], -1)
        similarity, inliers = cv2.estimateAffinePartial2D(points, points + backward[every_4th][pick], method=cv2.RANSAC,
                                                          ransacReprojThreshold=0.5)
        if similarity is not None and inliers.mean() > 0.3:
            # Each pixel's offset (similarity x [x, y, 1] - [x, y]): a column term plus a row term.
            (a, b, shift_x), (c, d, shift_y) = similarity
            xs, ys = np.arange(width), np.arange(height)
            field = np.empty((height, width, 2), np.float32)
            field[..., 0] = ((a - 1) * xs)[None, :] + (b * ys + shift_x)[:, None]
            field[..., 1] = (c * xs)[None, :] + ((d - 1) * ys + shift_y)[:, None]
            return field
    return np.zeros_like(backward)


def _sobel_at_every_4th(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel gradients (x, y) of a uint8 frame at every 4th pixel each way, its edges mirrored as
    cv2.Sobel's are: the same values (sums of integers, exact in float32) for a sixteenth of the work."""
    padded = cv2.copyMakeBorder(gray, 1, 1, 1, 1, cv2.BORDER_REFLECT_101).astype(np.float32)
    height, width = gray.shape

    def at(dy: int, dx: int) -> np.ndarray:
        """Each sampled pixel's neighbour at (dy, dx), -1..1."""
        return padded[1 + dy:1 + dy + height:4, 1 + dx:1 + dx + width:4]

    gradient_x = (at(-1, 1) - at(-1, -1)) + 2 * (at(0, 1) - at(0, -1)) + (at(1, 1) - at(1, -1))
    gradient_y = (at(1, -1) - at(-1, -1)) + 2 * (at(1, 0) - at(-1, 0)) + (at(1, 1) - at(-1, 1))
    return gradient_x, gradient_y


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    return vectors[..., 0] * vectors[..., 0] + vectors[..., 1] * vectors[..., 1]


@functools.lru_cache(maxsize=4)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's x and y (float32), cached: callers must not change them in place."""
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

    def __init__(self, strength: float = DEFAULT_STRENGTH, feature_stride: int = FEATURE_STRIDE):
        """feature_stride: how many times smaller than the frame the network's features are (its
        `feature_stride`: a style network's 4, an upscaler's 1)."""
        if not 0 <= strength <= 1:
            raise VidstyleError(f"temporal strength must be within 0..1, not {strength:g}")
        self.motion = MotionTracker()
        self.steady_input = TemporalBlend(strength * INPUT_SHARE, stride=1)
        # An upscaler's features (stride 1) keep the running mean: at the frame's own size a second
        # resampling costs most, and keyframes were measured on style networks only.
        features = KeyframeBlend if feature_stride > 1 else TemporalBlend
        self.steady_features = features(strength, stride=feature_stride)

    def prepare(self, frames: np.ndarray) -> tuple[np.ndarray, list[Motion | None]]:
        """(N, H, W, 3) uint8 frames in order: the batch for the network, and each one's motion."""
        motions = [self.motion(frame) for frame in frames]
        steadied = self.steady_input(torch.from_numpy(frames).permute(0, 3, 1, 2), motions)
        return steadied.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy(), motions

    def feature_blend(self, motions: list[Motion | None]) -> Callable[[torch.Tensor], torch.Tensor]:
        """For a batch's frames, the function that blends their features (Stylizer's `between`)."""
        return functools.partial(self.steady_features, motions=motions)


class TemporalBlend:
    """Blends each frame's values (the network's input, or its encoder's features: (N, C, h, w),
    covering the frame at 1/`stride` of its size) with the previous frame's blended values,
    carried along the motion, by `strength` x trust x agreement.

    The blend is anchored to the current frame: agreement falls from 1 to 0 as the
    carried values depart from the current ones by more than the frame's own values
    change from the previous frame's (the mean square over trusted pixels: the
    flicker). So the output stays within about the flicker's size of what the
    frame alone gives: the small error of each carry (resampling, a sub-pixel flow
    guessed on a flat sky) cannot pile up into streaks or a smeared copy of the
    past, and a thin line the motion's trust missed shows at once.

    Stateful: feed it the frames of one run of consecutive frames in order; a frame
    without motion (the first, or after a seek) starts afresh. Values beyond the
    motions given (a compiled run's short last batch, padded with repeats) pass
    unchanged and leave no history."""

    def __init__(self, strength: float, stride: int):
        self.strength = strength
        self.stride = stride
        self.previous: torch.Tensor | None = None  # (1, C, h, w): the last frame's blended values
        self.previous_own: torch.Tensor | None = None  # its values before blending, the channels _flicker reads
        self.flicker: torch.Tensor | None = None  # the last frame's flicker, for FLICKER_MEMORY

    def __call__(self, values: torch.Tensor, motions: list[Motion | None]) -> torch.Tensor:
        # Blended in a copy (the caller keeps its values): a frame's few channels interleaved, as the
        # input comes, which OpenCV resamples in one pass; many channels (features) as planes, which it
        # resamples one by one with no transposing copy (_resample), and which the blend's arithmetic
        # then reads in one layout: mixed layouts cost the feature blend a third of its time.
        layout = torch.preserve_format if values.shape[1] <= 4 else torch.contiguous_format
        blended = values.to(torch.float32, memory_format=layout, copy=True)
        for index, motion in enumerate(motions):
            current = blended[index:index + 1]
            own = current[:, ::_flicker_step(current)].clone()  # before blending: what _flicker reads
            if motion is not None and self.continues(current) and self.strength > 0:
                height, width = current.shape[-2:]
                positions, weight = _at_size(motion, height, width, self.stride)
                positions = torch.from_numpy(positions).to(current.device)[None]
                trust = torch.from_numpy(weight).to(current.device)[None, None]
                carried, carried_trust = self.carry(positions, trust)
                change = carried.sub_(current)  # carried is the carry's own: changed in place
                sample = _flicker_pixels(height, width)
                flicker = _flicker(_resample(self.previous_own, positions[sample].contiguous()).sub_(own[sample]),
                                   trust[sample])
                if self.flicker is not None:
                    flicker = torch.maximum(flicker, FLICKER_MEMORY * self.flicker)
                share = _agreement(change, flicker).mul_(carried_trust).mul_(self.strength)
                steadied = _add_scaled(current, share, change)
                self.flicker = flicker
                self.remember(steadied, current, start=False)
                current.copy_(steadied)
            else:
                self.flicker = None
                self.remember(current.clone(), current, start=True)
            self.previous_own = own
        if not values.is_floating_point():
            return blended
        return torch.empty_like(values).copy_(blended)  # the caller's dtype and layout, in one pass

    def continues(self, values: torch.Tensor) -> bool:
        """Whether there is a past to carry into these values."""
        return self.previous is not None and self.previous.shape == values.shape

    def carry(self, positions: torch.Tensor, trust: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the past brings to this frame from the motion's `positions` (where each pixel was in
        the previous frame), a tensor of its own, and how far to trust it ((1, 1, h, w)): here, the
        previous frame's blended values."""
        return _resample(self.previous, positions), trust

    def remember(self, blended: torch.Tensor, own: torch.Tensor, start: bool) -> None:
        """Keep what the next frame's `carry` needs from this frame's `blended` values (the caller's
        no longer) and its `own` (overwritten once this returns); `start`: this frame began a run,
        nothing was carried into it."""
        self.previous = blended


class KeyframeBlend(TemporalBlend):
    """TemporalBlend for the network's features, carried from keyframes instead of from the
    previous frame: every KEY_INTERVAL frames a frame's own features become a keyframe, and
    what is carried into a frame is the last two keyframes, each moved once along the motion
    composed since it was taken, cross-faded from the older to the newer over the interval.

    A recursive carry keeps a running mean of every past frame's strokes, each resampled again
    at every frame: where grain redraws the strokes (a wall under a slow pan) the mean of many
    sets is a softer picture than any one (style loss x1.13 of the per-frame output's on the
    thin-line wall). Two whole sets, each resampled once, keep it crisp (x1.025); what a trust
    broke along the way (an occlusion, new content) is not carried from that keyframe."""

    def __init__(self, strength: float, stride: int):
        super().__init__(strength, stride)
        self.keys: list[Keyframe] = []  # the older and the newer
        self.age = 0  # frames since the newer was taken

    def continues(self, values: torch.Tensor) -> bool:
        return bool(self.keys) and self.keys[0].values.shape == values.shape

    def carry(self, positions: torch.Tensor, trust: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for key in self.keys:
            key.follow(positions, trust)
        newer = min(1.0, self.age / KEY_INTERVAL) if len(self.keys) == 2 else 1.0
        shares = [(1 - newer) * self.keys[0].trust, newer * self.keys[-1].trust][-len(self.keys):]
        keyed = sum(shares)
        # The shares normalised on one channel, then each keyframe's features scaled in place.
        shares = [share / keyed.clamp(min=1e-6) for share in shares]
        carried = self.keys[0].carried().mul_(shares[0])
        for share, key in zip(shares[1:], self.keys[1:]):
            carried.addcmul_(share, key.carried())
        return carried, keyed

    def remember(self, blended: torch.Tensor, own: torch.Tensor, start: bool) -> None:
        self.age = 0 if start else self.age + 1
        if start:
            self.keys = [Keyframe(own.clone())]
        elif self.age >= KEY_INTERVAL:
            self.keys, self.age = [self.keys[-1], Keyframe(own.clone())], 0


class Keyframe:
    """A frame's own features and, for the frame now being blended, where each of its pixels was in
    that keyframe (composed along the motions since) and how far that path is trusted."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        height, width = values.shape[-2:]
        # The path, as one tensor resampled in one call: x and y in the keyframe, then the trust.
        grid = torch.from_numpy(np.stack(pixel_grid(height, width)))[None]
        self.path = torch.cat((grid, torch.ones(1, 1, height, width)), 1).to(values.device)

    @property
    def positions(self) -> torch.Tensor:
        return self.path[:, :2]

    @property
    def trust(self) -> torch.Tensor:
        return self.path[:, 2:]

    def follow(self, positions: torch.Tensor, trust: torch.Tensor) -> None:
        """One more frame: each pixel was at `positions` in the frame before, so in the keyframe where
        that point was. A path is trusted as far as its least trusted step, and not at all once it left the frame."""
        moved = _resample(self.path, positions, cubic=False)
        height, width = positions.shape[-2:]
        # Within the frame, to a ten-thousandth of its half-size (grid_sample's units) for rounding.
        x, y, margin_x, margin_y = positions[:, :1], positions[:, 1:], 5e-5 * (width - 1), 5e-5 * (height - 1)
        inside = (x >= -margin_x) & (x <= width - 1 + margin_x) & (y >= -margin_y) & (y <= height - 1 + margin_y)
        torch.minimum(moved[:, 2:] * inside, trust, out=moved[:, 2:])
        self.path = moved

    def carried(self) -> torch.Tensor:
        return _resample(self.values, self.positions)


def _resample(values: torch.Tensor, positions: torch.Tensor, cubic: bool = True) -> torch.Tensor:
    """values (1, C, h, w) float32 sampled at `positions` ((1, 2, h', w'): x and y in pixels), bicubically
    (else bilinearly), edges repeated: a new (1, C, h', w') tensor in the values' layout."""
    height, width = values.shape[-2:]
    if values.device.type != "cpu":
        grid = torch.stack((positions[0, 0] * (2 / max(width - 1, 1)) - 1,
                            positions[0, 1] * (2 / max(height - 1, 1)) - 1), dim=-1)[None]
        return F.grid_sample(values, grid, mode="bicubic" if cubic else "bilinear", padding_mode="border",
                             align_corners=True)
    # On a CPU OpenCV's remap gives the same values (within 0.001 of 255) in about 0.6 of grid_sample's
    # bicubic time: the stage is a large share of a compact network's frame (docs/temporal.md).
    map_x, map_y = positions[0].numpy()  # float maps (contiguous planes): not rounded to 1/32 of a pixel
    interpolation = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    interleaved = values[0].permute(1, 2, 0)
    if values.shape[1] <= 4 and interleaved.is_contiguous():
        # A frame's channels interleaved (the input's layout): one pass, 0.6 of three planes' time.
        moved = cv2.remap(interleaved.numpy(), map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
        return torch.from_numpy(moved.reshape(*map_x.shape, -1)).permute(2, 0, 1)[None]
    # Many channels, four at a time interleaved, the most OpenCV resamples bicubically in one pass:
    # with the two transposing copies, 0.8 of the time plane by plane (64 channels at 160x90, one
    # thread: 4.5 against 6.3 ms), and the same values to the bit.
    channels, (height, width) = values.shape[1], map_x.shape
    groups = -(-channels // 4)
    planes = F.pad(values[0], (0, 0, 0, 0, 0, 4 * groups - channels)) if channels % 4 else values[0]
    quads = planes.reshape(groups, 4, *values.shape[-2:]).permute(0, 2, 3, 1).contiguous().numpy()
    moved = np.empty((groups, height, width, 4), quads.dtype)
    for quad, out in zip(quads, moved):
        cv2.remap(quad, map_x, map_y, interpolation, dst=out, borderMode=cv2.BORDER_REPLICATE)
    moved = torch.from_numpy(moved).permute(0, 3, 1, 2).reshape(4 * groups, height, width)
    return moved[:channels].contiguous()[None]


def _flicker_step(values: torch.Tensor) -> int:
    """Every how many channels the flicker is measured on: 16 of the features' 128 estimate their
    mean as well and cost an eighth of carrying them all."""
    return max(1, values.shape[1] // 16)


def _flicker_pixels(height: int, width: int) -> tuple:
    """The pixels the flicker is measured on: every pixel of a few (features), every step-th pixel each
    way of many (a frame), so that about FLICKER_PIXELS are read. It is a mean over the frame: at
    640x360 a quarter of the pixels gives it within 0.2% (median over 40 frames of each real clip; every
    frame within 10%), the steadied input within one level at 0.3% of its pixels or fewer, for a
    quarter of the input blend's second resampling."""
    step = math.ceil(math.sqrt(height * width / FLICKER_PIXELS))
    return np.s_[..., ::step, ::step]


def _flicker(change: torch.Tensor, trust: torch.Tensor) -> torch.Tensor:
    """How far the frame's own values move from the previous frame's where the motion is
    trusted ((1, 1, h, w)): the mean square of the change over channels and trusted pixels."""
    trusted = (trust[0, 0] > 0.5).to(change.dtype)  # a mask's product, not its index: a third of the time
    squares, count = _mean_square(change)[0, 0], trusted.sum()
    return ((squares * trusted).sum() / count if count > 0 else squares.mean()).clamp(min=1e-8)


def _agreement(change: torch.Tensor, flicker: torch.Tensor) -> torch.Tensor:
    """Per pixel (1, 1, h, w), 1 where the carried values differ from the current ones by
    flicker's size, falling to 0 beyond AGREEMENT_TOLERANCE times it (a Gaussian on their
    distance in units of the flicker)."""
    distance = _mean_square(change).div_(flicker)
    # Over a pixel's neighbours: decided pixel by pixel, the gate patches carried and fresh strokes
    # together (udnie on big_buck_bunny, last third: style loss x1.080 -> x1.070).
    distance = _neighbour_mean(distance)
    return torch.exp(distance * (-0.5 / AGREEMENT_TOLERANCE ** 2))


def _add_scaled(values: torch.Tensor, share: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """values + share x change, share (1, 1, h, w) for every channel: a new tensor in values' layout."""
    if values.is_contiguous():
        return torch.addcmul(values, share, change)
    # A frame's channels interleaved: torch spreads a plane over them at a third of the speed of the
    # same sum written in (N, H, W, C) order (640x360, one thread: 1.8 against 0.64 ms, the same values).
    last = (0, 2, 3, 1)
    return torch.addcmul(values.permute(last), share.permute(last), change.permute(last)).permute(0, 3, 1, 2)


def _mean_square(values: torch.Tensor) -> torch.Tensor:
    """The mean of the squares over the channels of values (1, C, h, w): (1, 1, h, w)."""
    channels = values.shape[1]
    if channels > 4:
        return values.square().mean(1, keepdim=True)
    # A frame's few channels, interleaved: torch reduces across them at a quarter of the speed of adding them.
    total = values[:, :1].square()
    for channel in range(1, channels):
        total.addcmul_(values[:, channel:channel + 1], values[:, channel:channel + 1])
    return total.div_(channels)


def _neighbour_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of each pixel's 3x3 neighbours within the picture, of (1, 1, h, w) values."""
    if values.device.type != "cpu":
        return F.avg_pool2d(values, 3, stride=1, padding=1, count_include_pad=False)
    # OpenCV's box filter: the same mean in about a tenth of avg_pool2d's time on a CPU.
    sums = cv2.boxFilter(values[0, 0].numpy(), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return torch.from_numpy(sums / _neighbour_counts(*sums.shape))[None, None]


@functools.lru_cache(maxsize=4)
def _neighbour_counts(height: int, width: int) -> np.ndarray:
    """How many of each pixel's 3x3 neighbours are inside an image of height x width (float32)."""
    ones = np.ones((height, width), dtype=np.float32)
    return cv2.boxFilter(ones, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)


def _at_size(motion: Motion, height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the motion's flow takes each pixel of values at 1/stride of the frame's size ((2, height,
    width): x and y in their pixels), and its weight, both averaged down to height x width. Features
    cover the frame padded to the network's size multiple: beyond the frame's share of them, the
    flow and weight at the edges are repeated."""
    frame_height, frame_width = motion.weight.shape
    inner = (min(width, max(1, round(frame_width / stride))), min(height, max(1, round(frame_height / stride))))
    if inner == (frame_width, frame_height):
        flow, weight = motion.flow, motion.weight
    else:
        flow = cv2.resize(motion.flow, inner, interpolation=cv2.INTER_AREA) * np.float32(1 / stride)
        weight = cv2.resize(motion.weight, inner, interpolation=cv2.INTER_AREA)
    if (height, width) != weight.shape:
        pad = ((0, height - inner[1]), (0, width - inner[0]))
        flow, weight = np.pad(flow, pad + ((0, 0),), mode="edge"), np.pad(weight, pad, mode="edge")
    positions = np.empty((2, height, width), np.float32)
    for axis, grid in enumerate(pixel_grid(height, width)):
        np.add(grid, flow[..., axis], out=positions[axis])
    return positions, weight
