"""The artists' controls: strength, colours kept, any painting on a still, export to ONNX."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from conftest import TEST_STYLE, decode, run_cli
from test_trainer import inputs  # noqa: F401  (a fixture: tiny photos, a style image, a random VGG)
from vidstyle.trainer.data import load_sample_photos
from vidstyle.trainer.evaluate import PerceptualObjective
from vidstyle.trainer.gatys import objective_card, optimise_image, optimise_still
from vidstyle.trainer.vgg import load_loss_network
from vidstyle.errors import VidstyleError
from vidstyle.export import FramesInFramesOut, export_onnx
from vidstyle.inference import Controls, Stylizer, resolve_device
from vidstyle.model import TransformerNet, UpscalerNet
from vidstyle.media import EncodeOptions
from vidstyle.pipeline import stylize_file
from vidstyle.preview import GAP
from vidstyle.sample import make_sample_video
from vidstyle.styles import find_style

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_VGG = SHARED / "models" / "vgg16-imagenet-caffe-features.pth"
REAL_PHOTO = SHARED / "datasets" / "photos" / "n09332890_lakeside.jpg"
BT601 = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # RGB -> YCbCr


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    return Stylizer(find_style(TEST_STYLE).load_network(), resolve_device("cpu"), compile=False)


@pytest.fixture(scope="module")
def midtone_stylizer() -> Stylizer:
    """Random weights whose output is textured colour around mid-grey (the test style's is near
    black): changing a photo's luminance to it mostly stays inside the RGB cube."""
    torch.manual_seed(0)
    net = TransformerNet()
    with torch.no_grad():
        net.decoder[-1].conv.weight.mul_(60)
        net.decoder[-1].conv.bias.fill_(128)
    return Stylizer(net, resolve_device("cpu"), compile=False)


def muted_photo(path: Path, width: int = 48, height: int = 40) -> Path:
    """Smooth colours away from black and white, so that a changed luminance rarely leaves the RGB cube."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([90 + 60 * x, 110 + 50 * y, 150 - 40 * x * y], axis=-1)
    Image.fromarray(rgb.round().astype(np.uint8)).save(path)
    return path


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def ycbcr(rgb: np.ndarray) -> np.ndarray:
    """BT.601, a still's matrix: Y, Cb, Cr (without the offsets)."""
    return rgb @ BT601.T


def test_preserve_colors_keeps_the_photos_chroma_and_the_styles_luminance(tmp_path: Path,
                                                                         midtone_stylizer: Stylizer) -> None:
    photo = muted_photo(tmp_path / "photo.png")
    plain = read_rgb(stylize_file(photo, tmp_path / "plain.png", midtone_stylizer))
    kept = read_rgb(stylize_file(photo, tmp_path / "kept.png", midtone_stylizer, controls=Controls(preserve_colors=True)))
    source = ycbcr(read_rgb(photo))
    # Where the sum stays inside the RGB cube (clamping there is what changes chroma).
    inside = ((kept > 0) & (kept < 255)).all(-1)
    assert inside.mean() > 0.8
    assert np.abs(ycbcr(kept)[..., 1:] - source[..., 1:])[inside].max() <= 1.0
    assert np.abs(ycbcr(kept)[..., 0] - ycbcr(plain)[..., 0])[inside].max() <= 1.0
    assert np.abs(ycbcr(plain)[..., 1:] - source[..., 1:]).mean() > 10  # the style's own colours differ


def test_preserve_colors_in_a_video_uses_its_own_matrix(tmp_path: Path, midtone_stylizer: Stylizer) -> None:
    # BT.709-tagged: the luminance kept must be BT.709's, as the encoder stores it (with BT.601's
    # weights the luma planes below differ by about 6 levels). Lossless x264: only rounding differs.
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=6, audio=False, colorspace=1)
    lossless = EncodeOptions(crf=0)
    plain = stylize_file(source, tmp_path / "plain.mp4", midtone_stylizer, temporal_strength=0, encode=lossless)
    kept = stylize_file(source, tmp_path / "kept.mp4", midtone_stylizer, temporal_strength=0, encode=lossless,
                        controls=Controls(preserve_colors=True))
    planes = {name: yuv_planes(path) for name, path in (("in", source), ("plain", plain), ("kept", kept))}
    difference = lambda a, b, plane: np.abs(planes[a][plane] - planes[b][plane]).mean()  # noqa: E731
    assert difference("kept", "in", "chroma") < 2 < 10 < difference("plain", "in", "chroma")
    assert difference("kept", "plain", "luma") < 1.5


def yuv_planes(path: Path) -> dict[str, np.ndarray]:
    """The luma and both chroma planes of every frame, as stored (8-bit levels)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="yuv444p").astype(np.float64) for f in container.decode(video=0)]
    planes = np.stack(frames)  # (N, 3, H, W)
    return {"luma": planes[:, 0], "chroma": planes[:, 1:]}


@pytest.mark.skipif(not (REAL_VGG.is_file() and REAL_PHOTO.is_file()), reason="needs ../shared's VGG-16 and photos")
def test_strength_is_monotone_in_the_style_loss(tmp_path: Path) -> None:
    # Needs a trained style, its painting and a real photo: built-in udnie, ../shared/styles/udnie.jpg,
    # a held-out photo at 128 px (udnie was trained at 256; much smaller, its output is less like it).
    udnie = find_style("udnie")
    objective = PerceptualObjective(udnie.card, SHARED / "styles" / "udnie.jpg", load_loss_network(REAL_VGG))
    stylizer = Stylizer(udnie.load_network(), resolve_device("cpu"), compile=False)
    photo = tmp_path / "photo.png"
    Image.fromarray(load_sample_photos([REAL_PHOTO], 128)[0].permute(1, 2, 0).byte().numpy()).save(photo)
    outputs = {s: stylize_file(photo, tmp_path / f"s{s}.png", stylizer, controls=Controls(strength=s))
               for s in (0.0, 0.25, 0.5, 0.75, 1.0)}
    plain = stylize_file(photo, tmp_path / "plain.png", stylizer)
    assert np.array_equal(read_rgb(outputs[0.0]), read_rgb(photo))
    assert np.array_equal(read_rgb(outputs[1.0]), read_rgb(plain))
    target = objective.content_target(as_tensor(read_rgb(photo)))
    with torch.no_grad():
        losses = [objective.terms(as_tensor(read_rgb(outputs[s])), target)["style"].item() for s in sorted(outputs)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float()


def test_strength_zero_gives_the_video_back(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=6, audio=False)
    result = stylize_file(source, tmp_path / "out.mp4", stylizer, temporal_strength=0, controls=Controls(strength=0))
    half = stylize_file(source, tmp_path / "half.mp4", stylizer, temporal_strength=0, controls=Controls(strength=0.5))
    original, unstyled, halfway = (decode(p)["pixels"].astype(int) for p in (source, result, half))
    assert np.abs(unstyled - original).mean() < 2.5  # one more x264 generation at CRF 18
    assert np.abs(halfway - original).mean() > 10


def test_preview_has_a_row_per_strength_and_colours_kept(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=8, audio=False)
    done = run_cli("preview", source, "--styles", TEST_STYLE, "--frames", "2", "--height", "32",
                   "--strength", "0.25,0.5,1", "--preserve-colors", "-o", tmp_path / "sheet.png")
    assert done.returncode == 0, done.stderr
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB")).astype(int)
    rows = [sheet[GAP + i * (32 + GAP):GAP + i * (32 + GAP) + 32, -(2 * (43 + GAP)):] for i in range(7)]
    assert sheet.shape[0] == 7 * (32 + GAP) + GAP  # the frames, then 3 strengths x (plain, colours kept)
    change = [np.abs(row - rows[0]).mean() for row in rows[1::2]]  # plain rows against the originals
    assert change[0] < change[1] < change[2]
    bad = run_cli("preview", source, "--styles", TEST_STYLE, "--strength", "0.5,2")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "0..1" in bad.stderr


def test_optimisation_lowers_the_objective(inputs: dict[str, Path]) -> None:  # noqa: F811
    photo = np.asarray(Image.open(inputs["photos"] / "group0" / "photo0.jpg").convert("RGB"))
    for init in ("photo", "noise"):
        result = optimise_image(photo, inputs["style"], inputs["vgg"], iterations=8, init=init)
        assert result.pixels.shape == photo.shape
        assert result.final_objective < result.start_objective, init
    card = objective_card(max(photo.shape[:2]))
    objective = PerceptualObjective(card, inputs["style"], load_loss_network(inputs["vgg"]))
    target = objective.content_target(as_tensor(photo.astype(np.float64)))
    with torch.no_grad():
        assert objective(as_tensor(result.pixels.astype(np.float64)), target).item() == \
            pytest.approx(result.final_objective, rel=1e-4)


def test_submit_optimise_writes_a_still_and_refuses_videos(tmp_path: Path,
                                                           inputs: dict[str, Path]) -> None:  # noqa: F811
    photo = muted_photo(tmp_path / "photo.png")
    done = run_cli("submit", photo, "--style-image", inputs["style"], "--optimise", "--vgg-weights", inputs["vgg"],
                   "--size", "32", "--iterations", "3")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "photo.style.png"
    assert done.stdout.strip() == str(written) and Image.open(written).size == (32, 27)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "photo.style.png"]  # nothing half-written

    clip = make_sample_video(tmp_path / "clip.mp4", width=32, height=24, frames=2, audio=False)
    with pytest.raises(VidstyleError) as refused:
        optimise_still(clip, tmp_path / "clip.style.mp4", inputs["style"], vgg_weights=inputs["vgg"])
    assert "\n" not in str(refused.value)
    assert f"vidstyle train {inputs['style']} --dataset PHOTOS" in str(refused.value)
    assert str(refused.value).endswith(f"--vgg-weights {inputs['vgg']}")
    assert not (tmp_path / "clip.style.mp4").exists()


def real_frame(tmp_path: Path, width: int, height: int) -> np.ndarray:
    """A decoded frame of a clip made with PyAV: (1, 3, H, W) float32 RGB 0..255."""
    clip = make_sample_video(tmp_path / "frame.mp4", width=width, height=height, frames=3, audio=False)
    with av.open(str(clip)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return rgb.transpose(2, 0, 1)[None].astype(np.float32)


def run_onnx(path: Path, image: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


def test_export_runs_in_onnxruntime_at_other_sizes(tmp_path: Path) -> None:
    # Exported at 64x64 (vidstyle.export), run at an odd size the network must pad and crop.
    done = run_cli("export", TEST_STYLE, "-o", tmp_path / "style.onnx")
    assert done.returncode == 0, done.stderr
    frame = real_frame(tmp_path, 71, 45)
    with torch.no_grad():
        expected = FramesInFramesOut(find_style(TEST_STYLE).load_network())(torch.from_numpy(frame)).numpy()
    exported = run_onnx(tmp_path / "style.onnx", frame)
    assert exported.shape == frame.shape
    assert np.abs(exported.round() - expected.round()).max() <= 1  # 8-bit levels
    assert np.abs(expected - frame).mean() > 10
    with pytest.raises(VidstyleError, match="output exists"):
        export_onnx(UpscalerNet(), torch.zeros(2, 3, 8, 8), tmp_path / "style.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.mp4", "style.onnx"]  # nothing half-written


def test_any_module_exports_the_same_way(tmp_path: Path) -> None:
    # An upscaler as the built-in x4 is made (bilinear, the phase comb): another module, another
    # example size, an output four times larger.
    torch.manual_seed(0)
    upscaler = UpscalerNet(factor=4, channels=8, blocks=1, upsampling="bilinear", comb=True).eval()
    export_onnx(upscaler, torch.rand(2, 3, 16, 16) * 255, tmp_path / "upscaler.onnx")
    frame = real_frame(tmp_path, 30, 22)
    with torch.no_grad():
        expected = upscaler(torch.from_numpy(frame)).numpy()
    exported = run_onnx(tmp_path / "upscaler.onnx", frame)
    assert exported.shape == (1, 3, 88, 120)
    assert np.abs(exported - expected).max() < 0.5

