"""The temporal consistency stage: motion, its reliability, the blend, and the pipeline with it."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from conftest import decode
from vidstyle.trainer.evaluate import PairMotion, WarpingError
from vidstyle.pipeline import stylize_file
from vidstyle.segments import join_segments, plan_spans
from vidstyle.inference import Stylizer
from vidstyle.styles import find_style
from vidstyle.sample import THIN_LINE_REVEAL, make_thin_line_video, thin_line_columns
from vidstyle.temporal import AGREEMENT_TOLERANCE, KEY_INTERVAL, KeyframeBlend, Motion, MotionTracker, TemporalBlend, _agreement, _resample

BLENDS = [TemporalBlend, KeyframeBlend]  # the input's and the features'


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random structure at several scales: something for optical flow to hold on to."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [sum(np.sin(xs / s * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)) *
                    np.cos(ys / s * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)) for s in (5, 11, 23)) for _ in range(3)]
    return (128 + 40 * np.stack(channels, -1)).clip(0, 255).astype(np.uint8)


def grainy_clip(path: Path, frames: int = 24, width: int = 128, height: int = 96, keyframes: tuple[int, ...] = ()) -> Path:
    """A still, smooth background (a wall, a sky) with sensor grain and a square moving
    across it: where per-frame stylization boils most."""
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([60 + xs, 90 + ys, 160 - 0.5 * xs], -1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "12", "g": "240"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        for index in range(frames):
            image = background + rng.normal(0, 4, background.shape)
            left = 10 + 3 * index
            image[30:42, left:left + 12] = (230, 60, 40)
            frame = av.VideoFrame.from_ndarray(image.clip(0, 255).astype(np.uint8), format="rgb24")
            frame.pts = index
            if index in keyframes:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def pair_errors(source: Path, result: Path) -> list[float]:
    """The warping error of each consecutive pair of the result, along the source's flow."""
    inputs, outputs = decode(source)["pixels"], decode(result)["pixels"]
    errors = []
    for t in range(len(inputs) - 1):
        error = WarpingError(("output",))
        error.add({"output": (outputs[t], outputs[t + 1])}, PairMotion.measure(inputs[t], inputs[t + 1], "farneback"))
        errors.append(error.error("output"))
    return errors


def test_motion_follows_a_shift_and_distrusts_a_new_scene() -> None:
    frame = texture(120, 160)
    shifted = np.roll(frame, (2, 3), axis=(0, 1))  # content moved 3 px right, 2 px down
    tracker = MotionTracker()
    assert tracker(frame) is None  # the first frame has nothing to come from
    motion = tracker(shifted)
    inner = (slice(20, -20), slice(20, -20))
    # Backward flow: each pixel came from 3 px left and 2 px up.
    assert np.median(motion.flow[inner][..., 0]) == pytest.approx(-3, abs=0.3)
    assert np.median(motion.flow[inner][..., 1]) == pytest.approx(-2, abs=0.3)
    assert motion.weight[inner].mean() > 0.8
    cut = tracker(texture(120, 160, seed=5))  # a scene cut: nothing can be carried over
    assert cut.weight[inner].mean() < 0.2


def test_a_flat_area_moves_with_the_camera() -> None:
    """A flat, grainy sky above textured ground, the camera drifting by a fraction of a pixel:
    the flow has nothing to hold on to in the sky, and the sky takes the camera's motion (fitted
    where there is texture) rather than none, so what is carried there follows the view."""
    rng = np.random.default_rng(2)
    world = texture(200, 260).astype(np.float32)
    world[:120] = 150  # the sky: flat
    views = [cv2.warpAffine(world, np.float32([[1, 0, -20 - step], [0, 1, -20]]), (200, 160), flags=cv2.INTER_CUBIC)
             for step in (0.0, 0.6)]
    tracker = MotionTracker()
    frames = [(view + rng.normal(0, 2, view.shape)).clip(0, 255).astype(np.uint8) for view in views]
    tracker(frames[0])
    motion = tracker(frames[1])
    sky = (slice(10, 90), slice(20, -20))
    assert np.median(motion.flow[sky][..., 0]) == pytest.approx(0.6, abs=0.15)  # the view moved right: from 0.6 px right
    assert motion.weight[sky].mean() > 0.8


@pytest.mark.parametrize("blend_class", BLENDS)
def test_a_repeated_frame_keeps_what_was_carried(blend_class: type[TemporalBlend]) -> None:
    """Film transferred with pulldown, or animation on twos: a frame identical to the one before
    has almost no flicker of its own; the blend keeps the steadied picture rather than jumping
    back to the frame's own values."""
    rng = np.random.default_rng(3)
    blend = blend_class(strength=0.9, stride=1)
    frames = [torch.full((1, 3, 32, 32), 100.0) + torch.from_numpy(rng.normal(0, 3, (1, 3, 32, 32)).astype(np.float32))
              for _ in range(8)]
    frames.append(frames[-1].clone())  # the last frame, repeated
    outputs = [blend(frame, [None if index == 0 else still(32, 32)]) for index, frame in enumerate(frames)]
    assert (outputs[-1] - outputs[-2]).std() < 0.3 * (outputs[-2] - frames[-1]).std()


def udnie() -> Stylizer:
    return Stylizer(find_style("udnie").load_network(), torch.device("cpu"), compile=False)


def still(height: int, width: int, trust: float = 1.0) -> Motion:
    return Motion(np.zeros((height, width, 2), np.float32), np.full((height, width), trust, np.float32))


@pytest.mark.parametrize("blend_class", BLENDS)
def test_blend_carries_flicker_away_and_lets_real_changes_through(blend_class: type[TemporalBlend]) -> None:
    """Noise the size of the frames' own flicker is carried away; a line that appears,
    far beyond it, shows at once even where the motion trusts the past."""
    rng = np.random.default_rng(0)
    blend = blend_class(strength=0.9, stride=1)
    frames = [torch.full((1, 3, 48, 64), 100.0) + torch.from_numpy(rng.normal(0, 3, (1, 3, 48, 64)).astype(np.float32))
              for _ in range(12)]
    frames[-1][..., 30] -= 40  # a thin line, uncovered in the last frame
    outputs = [blend(frame, [None if index == 0 else still(48, 64)]) for index, frame in enumerate(frames)]
    steps = [(after - before)[..., :20].std() for before, after in zip(outputs[4:-1], outputs[5:-1])]
    assert max(steps) < 0.5 * (frames[5] - frames[4]).std()  # the noise is steadied
    line = (outputs[-1][..., 28] + outputs[-1][..., 32]) / 2 - outputs[-1][..., 30]
    # Measured 0.54 of it (its pixel's neighbours agree, and the gate decides over 3x3); a blend by
    # the motion's trust alone would carry 90% of the flat area over it, leaving 0.1.
    assert line.mean() > 0.5 * 40


@pytest.mark.parametrize("blend_class", BLENDS)
def test_blend_follows_the_motion_at_a_quarter_of_the_frame(blend_class: type[TemporalBlend]) -> None:
    """Features at a quarter of the frame's size: the frame's flow is scaled to them."""
    blend = blend_class(strength=0.9, stride=4)
    pattern = torch.from_numpy(texture(12, 16).astype(np.float32)).permute(2, 0, 1)[None]  # (1, 3, 12, 16)
    assert torch.equal(blend(pattern, [None]), pattern)  # no history yet
    # The frame (48x64, four times the features) moved 8 pixels right: the features 2.
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0] = -8.0  # each pixel was 8 pixels further left in the previous frame
    moved = torch.roll(pattern, 2, dims=3)
    fresh = moved + torch.from_numpy(np.random.default_rng(1).normal(0, 2, moved.shape).astype(np.float32))
    out = blend(fresh.clone(), [Motion(flow, np.ones((48, 64), np.float32))])
    # Where the flow stays inside the features, the blend is pulled from the fresh frame to the moved pattern.
    assert (out - moved)[..., 2:].abs().mean() < 0.6 * (fresh - moved)[..., 2:].abs().mean()
    untrusted = blend(fresh, [Motion(flow, np.zeros((48, 64), np.float32))])
    assert torch.equal(untrusted, fresh)


@pytest.mark.parametrize("blend_class", BLENDS)
def test_what_is_carried_cannot_pile_up(blend_class: type[TemporalBlend]) -> None:
    """A flat, noisy area under a sub-pixel random walk, carried 90 frames: each carry resamples
    with a small error, and a blend that trusts its history piles those up into streaks. This
    one stays within its agreement tolerance of each frame's own values, to the end."""
    rng = np.random.default_rng(3)
    blend = blend_class(strength=0.9, stride=1)
    world = torch.from_numpy(texture(80, 100).astype(np.float32)).permute(2, 0, 1)[None] * 0.1 + 100
    position = np.zeros(2)
    deviations, flickers = [], []
    previous = None
    for index in range(90):
        step = rng.normal(0, 0.4, 2)
        position += step
        theta = torch.tensor([[[1, 0, position[0] * 2 / 99], [0, 1, position[1] * 2 / 79]]], dtype=torch.float32)
        grid = torch.nn.functional.affine_grid(theta, (1, 3, 80, 100), align_corners=True)
        own = torch.nn.functional.grid_sample(world, grid, mode="bicubic", align_corners=True)[..., 8:-8, 8:-8]
        own = own + torch.from_numpy(rng.normal(0, 1.0, own.shape).astype(np.float32))
        flow = np.broadcast_to(step.astype(np.float32), (64, 84, 2)).copy()  # each pixel was `step` away before
        out = blend(own, [None if index == 0 else Motion(flow, np.ones((64, 84), np.float32))])
        if previous is not None and index >= 60:
            deviations.append((out - own).square().mean().item())
            flickers.append((own - previous).square().mean().item())
        previous = own
    assert np.mean(deviations) < np.mean(flickers)


def test_features_keep_whole_strokes_rather_than_a_mean_of_many() -> None:
    """A still shot whose strokes grain redraws every frame: the features' blend steadies them
    but keeps the strokes of one or two frames, not a running mean of many (a softer picture:
    style loss x1.13 on the thin-line wall)."""
    rng = np.random.default_rng(5)
    base = torch.from_numpy(rng.normal(0, 10, (1, 8, 24, 32)).astype(np.float32))
    frames = [base + torch.from_numpy(rng.normal(0, 3, base.shape).astype(np.float32)) for _ in range(4 * KEY_INTERVAL)]

    def run(blend: TemporalBlend) -> tuple[float, float]:
        """The outputs' redrawn strokes (their spread about the shot's mean) as a share of one frame's,
        and their frame-to-frame change as a share of the frames' own."""
        outputs = [blend(frame, [None if index == 0 else still(24, 32)]) for index, frame in enumerate(frames)]
        late = slice(KEY_INTERVAL, None)
        spread = np.mean([(out - base).std().item() for out in outputs[late]]) / 3
        steps = np.mean([(b - a).std().item() for a, b in zip(outputs[late], outputs[late][1:])]) / (3 * 2 ** 0.5)
        return spread, steps

    whole, whole_steps = run(KeyframeBlend(strength=0.9, stride=1))
    mean, mean_steps = run(TemporalBlend(strength=0.9, stride=1))
    # Measured: 0.72 of a frame's strokes kept, against the recursive blend's 0.26; each steadies
    # the frame-to-frame change to 0.15 (0.09) of the frames' own.
    assert whole > 0.6 and mean < 0.4
    assert max(whole_steps, mean_steps) < 0.3


def test_a_style_network_is_steadied_through_its_features(tmp_path: Path) -> None:
    """A real style network: the temporal stage blends its encoder features, not its output,
    and the grainy background's flicker drops."""
    stylizer = udnie()
    assert stylizer.has_features
    seen = []
    run = stylizer._run
    stylizer._run = lambda net, x, between: seen.append(between) or run(net, x, between)
    source = grainy_clip(tmp_path / "grain.mp4", frames=12)
    steady = stylize_file(source, tmp_path / "steady.mp4", stylizer)
    assert seen and all(between is not None for between in seen)
    plain = stylize_file(source, tmp_path / "plain.mp4", stylizer, temporal_strength=0)
    assert np.mean(pair_errors(source, steady)) < 0.5 * np.mean(pair_errors(source, plain))


def test_split_job_has_no_jump_at_segment_boundaries(tmp_path: Path) -> None:
    source = grainy_clip(tmp_path / "grain.mp4", frames=96, keyframes=(0, 48))
    spans = plan_spans(source, segment_seconds=1.9)
    assert [span.frames for span in spans] == [48, 48]
    stylizer = udnie()
    segments = [(stylize_file(source, tmp_path / f"segment{i}.mp4", stylizer, span=span), span)
                for i, span in enumerate(spans)]
    join_segments(source, segments, tmp_path / "joined.mp4")
    errors = pair_errors(source, tmp_path / "joined.mp4")
    # Pair 47 -> 48 crosses the boundary; the second segment warmed up on the frames before it
    # (without the warm-up, this pair's error is several times the largest within a segment).
    within = errors[1:47] + errors[48:]
    assert errors[47] <= max(within)


def line_contrast(frame: np.ndarray, column: float) -> float:
    """How much darker a vertical line at `column` is than the frame beside it, averaged down the frame:
    strokes average away, the line stays."""
    profile = frame.astype(np.float32).mean(axis=(0, 2))
    at = int(round(column))
    return (profile[at - 9:at - 4].mean() + profile[at + 5:at + 10].mean()) / 2 - profile[at - 1:at + 2].min()


def test_a_thin_line_shows_as_soon_as_it_is_uncovered(tmp_path: Path) -> None:
    """A faint cable one pixel wide, uncovered on a wall the camera pans over slowly: the
    motion's trust barely notices it, and a stage that trusts the carried wall fades it in over
    several frames. It shows at once, as in the per-frame output."""
    # Measured: 0.76, 0.72, 0.81 and 0.89 of the per-frame contrast (the features carried from the
    # previous frame instead of keyframes: 0.70, 0.88, 0.87, 0.89; the recursive stage before the
    # anchored blend: 0.49, 0.82, 0.78).
    shares = (0.6, 0.65, 0.75, 0.8)
    source = make_thin_line_video(tmp_path / "thin.mp4", width=256, height=256, frames=THIN_LINE_REVEAL + len(shares))
    stylizer = udnie()
    plain, steady = (decode(stylize_file(source, tmp_path / f"out{strength}.mp4", stylizer,
                                         temporal_strength=strength))["pixels"] for strength in (0, 0.9))
    for index, share in enumerate(shares, start=THIN_LINE_REVEAL):
        column = thin_line_columns(256, index)[1]
        assert line_contrast(plain[index], column) > 20  # the per-frame output shows it
        assert line_contrast(steady[index], column) > share * line_contrast(plain[index], column)


@pytest.mark.parametrize("channels, height, width, interleaved", [(3, 36, 64, True), (3, 36, 64, False), (64, 23, 40, False),
                                                                  (6, 23, 40, False), (1, 1, 5, False)])
def test_the_cpu_s_resampling_and_gate_compute_what_grid_sample_and_avg_pool_do(channels: int, height: int, width: int,
                                                                                interleaved: bool) -> None:
    """On a CPU the stage resamples with OpenCV's remap (a frame's interleaved channels in one pass) and
    gates with its box filter (about 0.7 of the stage's time); both must give torch's own operations'
    values, edges and motion out of the frame included; many channels four at a time, a remainder too."""
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(1, channels, height, width, generator=generator) * 255
    if interleaved:
        values = values.contiguous(memory_format=torch.channels_last)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    positions = torch.stack((xs, ys))[None] + torch.randn(1, 2, height, width, generator=generator) * 3
    grid = torch.stack((positions[0, 0] * 2 / max(width - 1, 1) - 1, positions[0, 1] * 2 / max(height - 1, 1) - 1), -1)[None]
    for cubic, mode in ((True, "bicubic"), (False, "bilinear")):
        expected = torch.nn.functional.grid_sample(values, grid, mode=mode, padding_mode="border", align_corners=True)
        moved = _resample(values, positions, cubic)
        assert torch.allclose(moved, expected, atol=1e-2)
        assert moved.is_contiguous(memory_format=torch.channels_last if interleaved else torch.contiguous_format)

    change, flicker = values - values.flip(-1), torch.tensor(300.0)
    distance = change.square().mean(1, keepdim=True) / flicker
    gate = torch.exp(torch.nn.functional.avg_pool2d(distance, 3, stride=1, padding=1, count_include_pad=False)
                   * (-0.5 / AGREEMENT_TOLERANCE ** 2))
    assert torch.allclose(_agreement(change, flicker), gate, atol=1e-6)

