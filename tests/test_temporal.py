"""The temporal consistency stage: motion, its reliability, the blend, and the pipeline with it."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import decode
from trainer.evaluate import WarpingError
from vidstyle.pipeline import stylize_file
from vidstyle.segments import join_segments, plan_spans
from vidstyle.inference import Stylizer
from vidstyle.styles import find_style
from vidstyle.temporal import FeatureBlend, Motion, MotionTracker, TemporalBlend, sampling_grid, warp


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
        error = WarpingError(("input", "output"))
        error.add({"input": (inputs[t], inputs[t + 1]), "output": (outputs[t], outputs[t + 1])})
        errors.append(error.result("output", "input", 2).stylized_error)
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


def test_blend_carries_the_previous_frame_where_trusted() -> None:
    frame = texture(48, 64)
    tracker, blend = MotionTracker(), TemporalBlend(strength=0.8)
    tracker(frame)
    still = tracker(frame)  # the same frame again: zero flow, full trust
    first = np.full((1, 48, 64, 3), 100, np.uint8)
    assert (blend(first, [None]) == first).all()
    second = blend(np.full((1, 48, 64, 3), 200, np.uint8), [still])
    assert np.abs(second.astype(int) - 120).max() <= 1  # 200 + 0.8 * (100 - 200)


def udnie() -> Stylizer:
    return Stylizer(find_style("udnie").load_network(), torch.device("cpu"), compile=False)


def test_feature_blend_follows_the_motion_at_a_quarter_of_the_frame() -> None:
    blend = FeatureBlend(strength=0.8)
    pattern = torch.from_numpy(texture(12, 16).astype(np.float32)).permute(2, 0, 1)[None]  # (1, 3, 12, 16)
    assert torch.equal(blend(pattern, [None]), pattern)  # no history yet
    # The frame (48x64, four times the features) moved 8 pixels right: the features 2.
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0] = -8.0  # each pixel was 8 pixels further left in the previous frame
    moved = torch.roll(pattern, 2, dims=3)
    fresh = 0.9 * moved  # a little darker: a change of the size flicker makes
    out = blend(fresh.clone(), [Motion(flow, np.ones((48, 64), np.float32))])
    # Where the flow stays inside the features, 80% of the moved pattern and 20% of the fresh frame.
    assert (out[..., 2:] - (0.2 * fresh + 0.8 * moved)[..., 2:]).abs().max() < 0.2
    untrusted = blend(fresh, [Motion(flow, np.zeros((48, 64), np.float32))])
    assert torch.equal(untrusted, fresh)


def test_feature_blend_lets_new_content_through_where_the_motion_trusted_the_past() -> None:
    """Something that appears on a flat area, which the motion's trust missed: its features
    differ from the carried ones by far more than flicker, and show at once instead of fading in."""
    blend = FeatureBlend(strength=0.8)
    flat = torch.zeros(1, 8, 16, 16)
    blend(flat, [None])
    appeared = flat.clone()
    appeared[..., 4:8, 4:8] = 10.0
    out = blend(appeared, [Motion(np.zeros((64, 64, 2), np.float32), np.ones((64, 64), np.float32))])
    assert out[..., 4:8, 4:8].min() > 8.0  # the plain blend: 10 - 0.8 * 10 = 2
    assert torch.equal(out[..., 8:, 8:], flat[..., 8:, 8:])


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


def test_the_feature_warp_matches_the_frame_warp() -> None:
    """The features are warped with grid_sample (any device, any channel count), frames with OpenCV."""
    image = torch.from_numpy(texture(40, 56).astype(np.float32))
    flow = np.random.default_rng(2).uniform(-2, 2, (40, 56, 2)).astype(np.float32)
    grid = sampling_grid(torch.from_numpy(flow), 40, 56)
    sampled = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid[None], mode="bicubic",
                                              padding_mode="border", align_corners=True)[0].permute(1, 2, 0)
    inner = (slice(3, -3), slice(3, -3))  # borders: the two replicate the edge a little differently
    assert (sampled.clamp(0, 255) - warp(image, flow))[inner].abs().max() < 2.0
