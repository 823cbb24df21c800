"""The single-machine pipeline, checked by decoding what it writes."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_STYLE, decode
from vidstyle.errors import VidstyleError
from vidstyle.inference import SpaceToDepthConv, Stylizer, SubpixelUpsampleConv, resolve_device
from vidstyle.model import CompactTransformerNet, TransformerNet
from vidstyle.pipeline import QUEUE_BATCHES, _FrameBatch, _Stage, stylize_file
from vidstyle.sample import make_sample_video
from vidstyle.segments import join_segments, plan_spans
from vidstyle.strips import stylize_in_strips
from vidstyle.styles import find_style


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    return Stylizer(find_style(TEST_STYLE).load_network(), resolve_device("cpu"), compile=False)


def assert_stylized_copy(source: Path, result: Path) -> dict:
    """Same frames, size, timestamps, rotation and audio as the source; pixels changed."""
    before, after = decode(source), decode(result)
    assert after["frames"] == before["frames"]
    assert after["size"] == before["size"]
    assert after["times"] == pytest.approx(before["times"], abs=1e-3)
    assert after["rotation"] == before["rotation"]
    assert len(after["audio_durations"]) == len(before["audio_durations"])
    assert after["audio_durations"] == pytest.approx(before["audio_durations"], abs=0.05)
    change = np.abs(after["pixels"].astype(int) - before["pixels"].astype(int)).mean()
    assert change > 20, f"the network barely changed the frames (mean |diff| {change:.1f})"
    return after


@pytest.mark.parametrize(
    "clip",
    [
        dict(width=96, height=64, frames=20),
        dict(width=97, height=61, frames=9),  # odd size: 4:4:4 keeps it exact
        dict(width=64, height=48, frames=12, rotation=90),
        dict(width=64, height=48, frames=14, variable_frame_rate=True),
    ],
    ids=["plain", "odd-size", "rotated", "variable-frame-rate"],
)
def test_video_keeps_frames_size_timestamps_rotation_and_audio(tmp_path: Path, stylizer: Stylizer, clip: dict) -> None:
    source = make_sample_video(tmp_path / "in.mp4", **clip)
    result = stylize_file(source, tmp_path / "out.mp4", stylizer, batch_size=4)
    assert_stylized_copy(source, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_audio_the_output_container_cannot_hold_is_reencoded(tmp_path: Path, stylizer: Stylizer) -> None:
    # 8-bit PCM fits an AVI but not an MP4: the audio has to be re-encoded (to AAC).
    source = make_sample_video(tmp_path / "in.avi", width=64, height=48, frames=12, codec="mpeg4", audio_codec="pcm_u8")
    result = stylize_file(source, tmp_path / "out.mp4", stylizer)
    after = assert_stylized_copy(source, result)
    assert after["audio_codecs"] == ["aac"]


def test_audio_is_copied_without_reencoding(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=8)
    result = stylize_file(source, tmp_path / "out.mkv", stylizer)
    with av.open(str(source)) as a, av.open(str(result)) as b:
        packets = [[bytes(p) for p in c.demux(audio=0) if p.size] for c in (a, b)]
    assert packets[0] == packets[1]


def test_still_image_keeps_size_and_format(tmp_path: Path, stylizer: Stylizer) -> None:
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 71, 3), dtype=np.uint8)).save(source)
    result = stylize_file(source, tmp_path / "photo.testnet.png", stylizer)
    with Image.open(result) as out:
        assert (out.format, out.size) == ("PNG", (71, 45))


def test_existing_output_is_kept_without_force(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=4, audio=False)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(VidstyleError, match="--force"):
        stylize_file(source, target, stylizer)
    assert target.read_bytes() == b"precious"
    stylize_file(source, target, stylizer, force=True)
    assert decode(target)["frames"] == 4


def test_failure_midway_leaves_no_output_and_no_partial_file(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=16)

    class Cancelled(Exception):
        pass

    def cancel_after_first_batch(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        stylize_file(source, tmp_path / "out.mp4", stylizer, batch_size=4, on_progress=cancel_after_first_batch)
    assert [p.name for p in tmp_path.iterdir()] == ["in.mp4"]


def test_the_decoding_thread_works_ahead_by_batches_whatever_the_audio_packets_between_them() -> None:
    stage, batch = _Stage(), _FrameBatch(np.zeros((1, 8, 8, 3), np.uint8), [0], Fraction(1, 24))
    for _ in range(QUEUE_BATCHES):
        for packet in range(40):  # about a second of AAC between two batches
            stage.put(stage.decoded, packet)
        stage.put(stage.decoded, batch)
    assert not stage.decoded.room.acquire(blocking=False)  # full: a further batch waits for the network
    items = [stage.get(stage.decoded) for _ in range(41)]
    assert items[-1] is batch and stage.decoded.room.acquire(blocking=False)  # taken: room for one more


def test_freed_memory_is_reused_not_mapped_afresh_for_every_frame() -> None:
    """A frame's buffers, freed and allocated again for the next frame, cost no page faults the second time."""
    script = """
import resource, sys
import numpy as np
from vidstyle.memory import keep_freed_memory
if not keep_freed_memory():
    sys.exit(3)
def frame():
    buffers = [np.ones(5 << 20, np.float32) for _ in range(3)]  # three 20 MB buffers
frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    if run.returncode == 3:
        pytest.skip("not glibc: the platform's allocator decides")
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 1000  # glibc by default: about 20,000 (the heap's top trimmed after every frame)


def test_space_to_depth_output_conv_matches_the_plain_layer() -> None:
    torch.manual_seed(0)
    layer = TransformerNet().decoder[-1]
    x = torch.randn(2, 32, 37, 54)
    with torch.no_grad():
        assert torch.allclose(SpaceToDepthConv(layer)(x), layer(x), atol=1e-3)


def test_subpixel_upsample_conv_matches_upsample_then_conv() -> None:
    torch.manual_seed(0)
    upsample, conv_norm_relu = TransformerNet().decoder[0]
    x = torch.randn(2, 128, 13, 22)
    with torch.no_grad():
        assert torch.allclose(SubpixelUpsampleConv(conv_norm_relu[0])(x), conv_norm_relu[0](upsample(x)), atol=1e-3)


@pytest.mark.parametrize("size", [(64, 48), (67, 45)])
@pytest.mark.parametrize("whole_frame_pixels", [None, 0], ids=["whole", "strips"])
@pytest.mark.parametrize("network", [TransformerNet, CompactTransformerNet, partial(CompactTransformerNet, dense=True)],
                         ids=["full", "compact", "compact-dense"])
def test_stylizer_matches_the_network_at_any_size(size: tuple[int, int], whole_frame_pixels: int | None,
                                                   network: Callable[[], torch.nn.Module]) -> None:
    torch.manual_seed(0)
    net = network().eval()
    width, height = size
    frames = np.random.default_rng(0).integers(0, 255, (2, height, width, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        pad = (0, -width % 4, 0, -height % 4)
        expected = net(torch.nn.functional.pad(x, pad, mode="replicate"))[..., :height, :width]
    expected = expected.clamp(0, 255).round().permute(0, 2, 3, 1).numpy()
    got = Stylizer(net, resolve_device("cpu"), compile=False, precision="fp32", whole_frame_pixels=whole_frame_pixels)(frames)
    assert got.shape == frames.shape
    assert np.abs(got.astype(float) - expected).max() <= 1


@pytest.mark.parametrize("size", [(70, 44), (96, 64)])
@pytest.mark.parametrize("network", ["full", "compact"])
def test_strips_compute_the_whole_network(size: tuple[int, int], network: str) -> None:
    # Trained weights: their instance-norm statistics are what tiles would get wrong.
    net = find_style("udnie", network).load_network()
    width, height = size
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        whole = net(x)
        # Strips of a few rows: every layer is cut many times, at borders and in the middle.
        strips = stylize_in_strips(net, x.clone(), strip_pixels=3 * width)
    assert strips.shape == whole.shape
    assert (strips - whole).abs().max() < 1e-3 and whole.std() > 10


class IdentityStylizer:
    """Stands in for the network so that a test can see the pipeline's own fidelity."""

    device = torch.device("cpu")
    factor = 1
    has_features = False  # no encoder: the temporal stage only steadies its input
    feature_stride = 1

    def expect(self, frames: int, height: int, width: int, batch_size: int) -> bool:
        return False

    def __call__(self, frames: np.ndarray, controls: object = None, between: object = None) -> np.ndarray:
        return frames


@pytest.mark.parametrize("colorspace", [None, 1], ids=["untagged", "bt709"])
def test_colours_survive_the_round_trip(tmp_path: Path, colorspace: int | None) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=128, height=96, frames=6, audio=False, colorspace=colorspace)
    result = stylize_file(source, tmp_path / "out.mp4", IdentityStylizer())
    with av.open(str(source)) as a, av.open(str(result)) as b:
        first_in, first_out = next(a.decode(video=0)), next(b.decode(video=0))
        assert first_out.colorspace == first_in.colorspace
        error = np.abs(first_in.to_ndarray(format="rgb24").astype(int) - first_out.to_ndarray(format="rgb24").astype(int))
    assert error.mean() < 2.5  # what one more x264 generation at CRF 18 costs, no colour shift


@pytest.mark.parametrize("clip", [
    dict(width=96, height=64, variable_frame_rate=True, rotation=90),
    dict(width=95, height=63, colorspace=1),  # odd size: 4:4:4; BT.709 tags
    dict(width=96, height=64, audio_codec="mp3"),
])
def test_segments_joined_equal_a_single_run(stylizer: Stylizer, tmp_path: Path, clip: dict) -> None:
    source = make_sample_video(tmp_path / "in.mp4", frames=72, keyframes=[0, 11, 23, 24, 40, 57], **clip)
    spans = plan_spans(source, segment_seconds=0.5)
    assert len(spans) >= 3 and sum(span.frames for span in spans) == 72
    segments = [(stylize_file(source, tmp_path / f"segment{i}.mp4", stylizer, span=span), span)
                for i, span in enumerate(spans)]
    join_segments(source, segments, tmp_path / "joined.mp4")
    single = stylize_file(source, tmp_path / "single.mp4", stylizer)

    joined, whole = decode(tmp_path / "joined.mp4"), decode(single)
    assert joined["times"] == whole["times"] == decode(source)["times"]  # exactly, frame by frame
    assert (joined["size"], joined["rotation"], joined["audio_codecs"]) == (whole["size"], whole["rotation"], whole["audio_codecs"])
    assert joined["audio_durations"] == whole["audio_durations"]
    # Encoded apart, the segments' rate control differs a little from one run's.
    assert np.abs(joined["pixels"].astype(int) - whole["pixels"]).mean() < 1.0
    assert first_frame_format(tmp_path / "joined.mp4") == first_frame_format(single)


def first_frame_format(path: Path) -> tuple:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.format.name, int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc)
