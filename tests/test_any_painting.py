"""Any painting in one pass: the any-painting network through the same pipeline, CLI and fleet as the styles."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import decode, run_cli
from test_cli import assert_clean_failure
from test_controls import run_onnx
from test_fleet import Fleet, fleet, tiny_clip  # noqa: F401
from vidstyle.export import FramesInFramesOut
from vidstyle.model import ArbitraryStyleNet, StylePredictor
from vidstyle.paintings import MIN_PAINTING_SIDE, read_painting
from vidstyle.pipeline import stylize_file
from vidstyle.inference import Stylizer
from vidstyle.sample import make_sample_video
from vidstyle.styles import Painting, find_treatment
from vidstyle.workers.jobs import FAILED, SUCCEEDED


def stripes(path: Path, size: tuple[int, int] = (96, 64), mode: str = "RGB", period: int = 8) -> Path:
    """A painting of coloured diagonal stripes: strokes enough for a style code."""
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    band = ((x + y) // period) % 3
    rgb = np.stack([band == 0, band == 1, band == 2], -1).astype(np.uint8) * 200 + 30
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def dots(path: Path) -> Path:
    """Another painting: dark dots on a pale ground."""
    x, y = np.meshgrid(np.arange(80), np.arange(80))
    dark = ((x % 10 - 5) ** 2 + (y % 10 - 5) ** 2) < 9
    Image.fromarray(np.where(dark[..., None], [20, 20, 60], [240, 230, 200]).astype(np.uint8)).save(path)
    return path


def test_the_baked_network_is_the_conditioned_one() -> None:
    torch.manual_seed(0)
    net = ArbitraryStyleNet()
    torch.nn.init.normal_(net.head.weight, std=0.05)  # as trained: the code moves the norms
    painting, frame = torch.rand(1, 3, 64, 48) * 255, torch.rand(2, 3, 32, 40) * 255
    with torch.no_grad():
        code = net.style_code(painting)
        assert code.shape == (1, StylePredictor.code_size)
        conditioned = net(frame, code)
        baked = net.for_painting(painting)(frame)
        other = net.for_painting(painting * 0.2)(frame)
    assert torch.allclose(baked, conditioned, atol=1e-3 * baked.abs().max())
    assert (baked - other).abs().mean() > 0.02 * baked.abs().mean()  # the painting, not only the weights, decides


def test_the_painting_s_code_is_computed_once_per_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    forward = StylePredictor.forward
    monkeypatch.setattr(StylePredictor, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    clip = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=10, audio=False)
    net = find_treatment(painting=stripes(tmp_path / "stripes.png")).load_network()
    stylize_file(clip, tmp_path / "out.mp4", Stylizer(net, torch.device("cpu")), batch_size=3)
    assert len(calls) == 1
    assert decode(tmp_path / "out.mp4")["frames"] == 10


def test_submit_with_any_painting_stylizes_a_video_keeping_its_audio(tmp_path: Path) -> None:
    clip = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=8)
    painting = stripes(tmp_path / "stripes.png")
    done = run_cli("submit", clip, "--style-image", painting)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "clip.stripes.mp4"
    assert done.stdout.strip() == str(written)
    original, styled = decode(clip), decode(written)
    assert (styled["frames"], styled["size"], styled["times"]) == (8, (64, 48), original["times"])
    assert styled["audio_durations"] == pytest.approx(original["audio_durations"], abs=0.05)
    assert abs(styled["pixels"].astype(int) - original["pixels"]).mean() > 10

    # Another painting, another look.
    other = run_cli("submit", clip, "--style-image", dots(tmp_path / "dots.png"), "--no-temporal")
    assert other.returncode == 0, other.stderr
    assert abs(decode(tmp_path / "clip.dots.mp4")["pixels"].astype(int) - styled["pixels"]).mean() > 5


@pytest.mark.parametrize("case, expected", [
    ("missing", "painting not found"),
    ("text", "not a readable image"),
    ("tiny", "too small to carry a style"),
])
def test_a_bad_painting_is_one_line_before_any_frame(tmp_path: Path, case: str, expected: str) -> None:
    clip = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=4, audio=False)
    painting = tmp_path / "painting.png"
    if case == "text":
        painting.write_text("not an image")
    elif case == "tiny":
        Image.new("RGB", (1, 1), "red").save(painting)
    done = run_cli("submit", clip, "--style-image", painting)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.mp4"] + (["painting.png"] if case != "missing" else []))


def test_any_kind_of_painting_file_is_read_as_a_user_would_expect(tmp_path: Path) -> None:
    base = read_painting(stripes(tmp_path / "rgb.png"), 256)
    assert base.shape == (1, 3, 171, 256)
    # Greyscale and CMYK: converted, the same picture.
    grey = read_painting(stripes(tmp_path / "grey.png", mode="L"), 256)
    assert grey.shape == base.shape and torch.equal(grey[:, 0], grey[:, 1])
    cmyk = read_painting(stripes(tmp_path / "cmyk.jpg", mode="CMYK"), 256)
    assert (cmyk - base).abs().mean() < 12  # JPEG's loss only
    # Transparent: over a white page.
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :48] = [200, 30, 30, 255]
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    shown = read_painting(tmp_path / "alpha.png", 96)
    assert shown[0, :, 10, 10].tolist() == [200, 30, 30] and shown[0, :, 10, 80].tolist() == [255, 255, 255]
    # 16 bits a sample: the picture, not its low byte.
    deep = (np.asarray(Image.open(tmp_path / "rgb.png")).astype(np.uint16) * 257)
    frame = av.VideoFrame.from_ndarray(deep, format="rgb48le")
    with av.open(str(tmp_path / "deep.png"), "w") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 96, 64, "rgb48be"
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert (read_painting(tmp_path / "deep.png", 256) - base).abs().max() <= 1
    # A huge scan: read at the size the network takes, fast, without a warning.
    huge = Image.new("RGB", (12000, 8000), (90, 120, 200))
    huge.paste((250, 200, 20), (0, 0, 6000, 8000))
    huge.save(tmp_path / "scan.jpg", quality=80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = read_painting(tmp_path / "scan.jpg", 256)
    assert scan.shape == (1, 3, 171, 256) and scan[0, 2, 80, 200] > 150 and scan[0, 2, 80, 20] < 100
    assert MIN_PAINTING_SIDE > 1


def test_a_still_an_export_and_a_preview_take_any_painting(tmp_path: Path) -> None:
    painting = stripes(tmp_path / "stripes.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(tmp_path / "photo.png")
    # In float32 both ways: on a CPU with native bf16 the command's default precision differs by a few levels.
    done = run_cli("submit", tmp_path / "photo.png", "--style-image", painting, "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    still = np.asarray(Image.open(tmp_path / "photo.stripes.png"))
    expected = Stylizer(Painting(painting).load_network(), torch.device("cpu"), precision="fp32")(
        np.array(Image.open(tmp_path / "photo.png"))[None])[0]
    assert still.shape == (40, 60, 3) and np.abs(still.astype(int) - expected).max() <= 2

    sheet = run_cli("preview", tmp_path / "photo.png", "--style-image", painting, "--height", "32",
                    "-o", tmp_path / "sheet.png")
    assert sheet.returncode == 0, sheet.stderr
    assert Image.open(tmp_path / "sheet.png").height > 32

    # Exported with the painting's code baked in: the same pixels from onnxruntime.
    exported = run_cli("export", "--style-image", painting, "-o", tmp_path / "stripes.onnx")
    assert exported.returncode == 0, exported.stderr
    frame = np.array(Image.open(tmp_path / "photo.png")).transpose(2, 0, 1)[None].astype(np.float32)
    with torch.no_grad():
        expected = FramesInFramesOut(Painting(painting).load_network())(torch.from_numpy(frame)).numpy()
    assert np.abs(run_onnx(tmp_path / "stripes.onnx", frame) - expected).max() < 0.5


def test_a_painting_job_on_the_fleet_matches_the_embedded_run(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    fleet.start_worker("w1")
    source = tiny_clip(fleet.storage / "movie.mp4")
    painting = stripes(tmp_path / "stripes.png")  # outside the storage root: a copy travels with the job
    done = fleet.cli("submit", source, "--style-image", painting, "--queue", fleet.queue, "--no-temporal", "--wait")
    assert done.returncode == 0, done.stderr
    job_id, output = done.stdout.split()
    status = json.loads(fleet.cli("status", job_id, "--json").stdout)
    assert status["state"] == SUCCEEDED and status["painting_name"] == "stripes.png"
    def embedded(painting: Path, name: str) -> dict:
        stylizer = Stylizer(Painting(painting).load_network(), torch.device("cpu"))
        return decode(stylize_file(source, tmp_path / name, stylizer, temporal_strength=0))

    fleet_frames, here_frames = decode(Path(output)), embedded(painting, "here.mp4")
    other_frames = embedded(dots(tmp_path / "dots.png"), "dots.mp4")
    assert (fleet_frames["frames"], fleet_frames["times"]) == (here_frames["frames"], here_frames["times"])
    # The same painting's look: bf16's rounding follows the worker's thread count and H.264 spreads it, so the
    # fleet's pixels are compared with the gap another painting makes, not with zero.
    def gap(a: dict, b: dict) -> float:
        return float(np.abs(a["pixels"].astype(int) - b["pixels"]).mean())

    assert gap(fleet_frames, here_frames) < 0.25 * gap(other_frames, here_frames), (
        gap(fleet_frames, here_frames), gap(other_frames, here_frames))
    assert "stripes" in fleet.cli("list").stdout

    # The painting's copy vanished from storage before a worker took the job: it fails with that line.
    stored = fleet.storage / status["painting"]
    fleet.stop_all()
    again = fleet.cli("submit", source, "--style-image", painting, "--queue", fleet.queue, "-o",
                      fleet.storage / "again.mp4")
    assert again.returncode == 0, again.stderr
    stored.unlink()
    fleet.start_worker("w2")
    job = fleet.wait_for([again.stdout.strip()])[again.stdout.strip()]
    assert job.state == FAILED and "painting not found" in job.error
    assert_clean_failure(fleet.cli("watch", job.id), "failed", "painting not found")
    assert not (fleet.storage / "again.mp4").exists()
