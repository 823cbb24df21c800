"""`vidstyle upscale` and `submit --upscale`: the super-resolution network through the one
pipeline, checked by decoding what it writes (random weights: sizes, frames, times and
audio do not depend on trained ones)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEVICES, TEST_FACTOR, TEST_STYLE, decode, run_cli
from vidstyle.trainer.upscale import bicubic_upscale, degrade, load_upscaler
from vidstyle.trainer.losses import grid_excess, texture_peaks
from vidstyle.trainer.upscale_eval import GRID_THRESHOLD, grid_strength, read_test_set, upscaler_with
from test_cli import assert_clean_failure
from test_temporal import grainy_clip
from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer, resolve_device
from vidstyle.model import PhaseComb, StyleThenUpscale, TransformerNet, UpscalerNet
from vidstyle.pipeline import stylize_file
from vidstyle.sample import make_sample_video
from vidstyle.styles import BUILTIN_UPSCALERS_DIR, find_treatment, find_upscaler, save_style
from vidstyle.temporal import DEFAULT_STRENGTH
from vidstyle.tiles import upscale_in_tiles


SET14 = Path(__file__).resolve().parents[2] / "shared" / "sr" / "Set14"
GRID_PHOTOS = ("img_001", "img_003", "img_005")  # where the x4 showed its grid most (docs/super-resolution.md)
# The built-in upscalers, read from their own folder: the test session's x4 (random weights) shadows them.
BUILTIN_FACTORS = sorted(int(path.stem.removeprefix("x")) for path in BUILTIN_UPSCALERS_DIR.glob("x*.pth"))


@pytest.fixture(scope="module")
def upscaler() -> Stylizer:
    return Stylizer(find_treatment(upscale=str(TEST_FACTOR)).load_network(), resolve_device("cpu"), compile=False)


@pytest.mark.parametrize(
    "clip",
    [
        dict(width=33, height=19, frames=7),  # odd: 4 times is even, so 4:2:0 holds it exactly
        dict(width=32, height=24, frames=9, rotation=90, variable_frame_rate=True),
    ],
    ids=["odd-size", "rotated-variable-frame-rate"],
)
def test_video_comes_out_factor_times_the_size_with_its_frames_times_and_audio(
        tmp_path: Path, upscaler: Stylizer, clip: dict) -> None:
    source = make_sample_video(tmp_path / "in.mp4", **clip)
    result = stylize_file(source, tmp_path / "out.mp4", upscaler, temporal_strength=0)
    before, after = decode(source), decode(result)
    assert after["size"] == (clip["width"] * TEST_FACTOR, clip["height"] * TEST_FACTOR)
    assert after["frames"] == before["frames"]
    assert after["times"] == pytest.approx(before["times"], abs=1e-3)
    assert after["rotation"] == before["rotation"]
    assert after["audio_codecs"] == before["audio_codecs"]
    assert after["audio_durations"] == pytest.approx(before["audio_durations"], abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_a_still_keeps_its_transparency_at_the_new_size(tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    alpha = np.zeros((21, 15), np.uint8)
    alpha[:, 8:] = 255  # left half see-through
    Image.fromarray(np.dstack([np.full((21, 15, 3), 90, np.uint8), alpha])).save(source)
    result = run_cli("upscale", source, "--factor", TEST_FACTOR)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / f"photo.x{TEST_FACTOR}.png") as out:
        assert (out.size, out.mode) == ((60, 84), "RGBA")
        upscaled_alpha = np.asarray(out.getchannel("A"))
    assert upscaled_alpha[:, :28].max() < 16 and upscaled_alpha[:, 36:].min() > 240


def test_a_factor_without_weights_is_refused_in_one_line(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=32, height=24, frames=3)
    result = run_cli("upscale", source, "--factor", "2")
    assert_clean_failure(result, "no x2 upscaler installed (installed: ", f"x{TEST_FACTOR}")  # (and built-in ones)
    with pytest.raises(VidstyleError, match="no x3 upscaler installed"):
        find_treatment(TEST_STYLE, "3")
    with pytest.raises(VidstyleError, match="must be a whole number or a .pth file, not 'four'"):
        find_upscaler("four")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_an_upscaler_file_without_a_card_takes_its_factor_from_its_weights(tmp_path: Path) -> None:
    save_style(UpscalerNet(2), tmp_path / "mine.pth", {})
    (tmp_path / "mine.json").unlink()
    assert find_upscaler(str(tmp_path / "mine.pth")).factor == 2
    (tmp_path / "broken.pth").write_bytes(b"not weights")
    with pytest.raises(VidstyleError, match="not a readable weights file"):
        find_upscaler(str(tmp_path / "broken.pth"))


def test_a_deepened_upscaler_starts_where_its_parent_is(tmp_path: Path) -> None:
    torch.manual_seed(0)
    parent = UpscalerNet(4).eval()
    deeper = parent.deepened(7, "nearest", comb=False).eval()
    x = torch.rand(1, 3, 9, 11) * 255
    with torch.inference_mode():
        assert torch.equal(parent(x), deeper(x))
    assert deeper.receptive_radius() == parent.receptive_radius() + 6
    save_style(deeper, tmp_path / "deep.pth", {"task": "upscale", "factor": 4})
    assert len(find_upscaler(str(tmp_path / "deep.pth")).load_network().residuals) == 7
    with pytest.raises(ValueError, match="cannot deepen 7 residual blocks to 5"):
        deeper.deepened(5, "nearest", comb=False)
    # Another upsampling: the same weights, and the card says which one they are for.
    smooth = deeper.deepened(7, "bilinear", comb=False).eval()
    assert all(torch.equal(a, b) for a, b in zip(smooth.state_dict().values(), deeper.state_dict().values()))
    save_style(smooth, tmp_path / "smooth.pth", {"task": "upscale", "factor": 4, "upsampling": "bilinear"})
    loaded = find_upscaler(str(tmp_path / "smooth.pth")).load_network()
    with torch.inference_mode():
        # fp16 on disk: equal up to its rounding, and far from the nearest-upsampling network's output
        assert (loaded(x) - smooth(x)).abs().max() < 0.05 < (loaded(x) - deeper(x)).abs().max()


@pytest.mark.parametrize("upsampling, comb", [("nearest", False), ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_tiles_equal_the_whole_frame(factor: int, upsampling: str, comb: bool) -> None:
    torch.manual_seed(factor)
    net = UpscalerNet(factor, upsampling=upsampling, comb=comb).eval()
    x = torch.rand(1, 3, 23, 17) * 255
    with torch.inference_mode():
        whole, tiled = net(x), upscale_in_tiles(net, x, side=5)  # 20 tiles of 5x5 and less
        # With the temporal stage's blend between the halves: it sees the whole frame's features.
        seen = []
        blended = upscale_in_tiles(net, x, side=5, between=lambda features: seen.append(features.shape) or features * 0.5)
        assert seen == [(1, 64, 23, 17)]
        assert torch.allclose(blended, net.render(net.encode(x) * 0.5, x), atol=1e-3)
    assert tiled.shape == whole.shape == (1, 3, 23 * factor, 17 * factor)
    assert torch.allclose(tiled, whole, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_style_then_upscale_in_parts_equals_the_whole_frame(device: str) -> None:
    """A frame too large to run whole: the style in strips, the upscale in tiles; as the CPU
    rewrites, exact up to rounding."""
    torch.manual_seed(1)
    net = StyleThenUpscale(TransformerNet(), UpscalerNet(2))
    frames = np.random.default_rng(0).integers(0, 256, (2, 19, 13, 3), np.uint8)
    with torch.inference_mode():
        reference = net.eval()(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
    reference = reference.clamp(0, 255).round().permute(0, 2, 3, 1).numpy()
    for whole_frame_pixels in (None, 1):  # 1: every frame runs in parts
        stylizer = Stylizer(copy.deepcopy(net), resolve_device(device), compile=False,
                            precision="fp32", whole_frame_pixels=whole_frame_pixels)
        out = stylizer(frames).astype(float)
        assert out.shape == (2, 38, 26, 3)
        assert np.abs(out - reference).max() <= 1 and np.abs(out - reference).mean() < 0.01


def test_an_upscaler_compiles_by_its_output_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIDSTYLE_COMPILE", "auto")
    monkeypatch.setenv("VIDSTYLE_CACHE_DIR", str(tmp_path))  # nothing compiled yet
    frames = 200  # of 320x180: pays at 1280x720 (200 x 0.30 s x 0.92 megapixels > 42 s), not at 320x180
    assert Stylizer(UpscalerNet(4), resolve_device("cpu")).expect(frames, 180, 320, 1)
    assert not Stylizer(TransformerNet(), resolve_device("cpu")).expect(frames, 180, 320, 1)


def test_submit_with_upscale_stylizes_and_upscales_in_one_pass(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "movie.mp4", width=36, height=20, frames=6)
    result = run_cli("submit", source, "--style", TEST_STYLE, "--upscale", TEST_FACTOR)
    assert result.returncode == 0, result.stderr
    output = tmp_path / f"movie.{TEST_STYLE}.x{TEST_FACTOR}.mp4"
    assert result.stdout.strip() == str(output)
    decoded = decode(output)
    assert decoded["size"] == (36 * TEST_FACTOR, 20 * TEST_FACTOR) and decoded["frames"] == 6
    assert len(decoded["audio_durations"]) == 1


def mean_grid(net: UpscalerNet) -> float:
    """The mean grid strength of net's detail on GRID_PHOTOS, degraded as it was trained."""
    photos = [hr for name, hr, _ in read_test_set(SET14, net.factor) if name.startswith(GRID_PHOTOS)]
    with torch.no_grad():
        return float(np.mean([grid_strength(net(small) - bicubic_upscale(small, net.factor), net.factor)
                              for small in (degrade(hr, net.factor) for hr in photos)]))


needs_set14 = pytest.mark.skipif(not SET14.is_dir(), reason="needs ../shared/sr/Set14's photos")


@needs_set14
@pytest.mark.parametrize("factor", BUILTIN_FACTORS)
def test_each_installed_upscaler_as_its_card_says_has_no_grid(factor: int) -> None:
    assert mean_grid(load_upscaler(BUILTIN_UPSCALERS_DIR / f"x{factor}.pth", factor)) < GRID_THRESHOLD


@needs_set14
def test_the_x4_weights_with_nearest_upsampling_are_flagged() -> None:
    """The positive control: the upsampling is not in the weights, so the x4 run with nearest
    upsampling is the x4 as first trained, with its hatching at 2 and 4 pixels."""
    assert mean_grid(upscaler_with(BUILTIN_UPSCALERS_DIR / "x4.pth", 4, "nearest")) > GRID_THRESHOLD


def test_a_grid_added_to_a_photo_like_detail_is_flagged() -> None:
    """Without ../shared: a smooth random detail scores about 1, and the same with a faint 4-pixel
    pattern many times that."""
    generator = torch.Generator().manual_seed(0)
    detail = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 260, 324, generator=generator) * 20, 5, stride=1)
    period = torch.tensor([1.0, -0.5, 0.3, -0.8])
    gridded = detail + 0.5 * period.repeat(64)[:, None] * period.repeat(80)[None]  # 256 x 320, as detail
    assert grid_strength(detail, 4) < 2 < GRID_THRESHOLD * 2 < grid_strength(gridded, 4)
    with pytest.raises(VidstyleError, match="grid strength needs a size of multiples of 4"):
        grid_strength(detail[..., :255, :], 4)


@pytest.mark.parametrize("period", [4, 8])
def test_the_phase_comb_takes_out_a_block_pattern_and_keeps_what_does_not_repeat(period: int) -> None:
    """A photo-like detail with a pattern of the block's period whose strength varies across the
    frame, as a network's does: the comb leaves no grid, almost none of the pattern, and nearly
    all of the detail."""
    generator = torch.Generator().manual_seed(period)
    detail = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 260, 324, generator=generator) * 20, 5, stride=1)
    block = torch.randn(period, period, generator=generator)
    strength = torch.linspace(0.2, 1.5, 320)[None]  # fades across the frame
    pattern = (block - block.mean()).repeat(256 // period, 320 // period) * strength
    comb = PhaseComb(period)
    assert grid_strength(comb(detail + pattern), period) < 2 < GRID_THRESHOLD * 2 < grid_strength(detail + pattern, period)
    assert comb(pattern.expand(1, 3, -1, -1)).square().mean() < 0.01 * pattern.square().mean()
    assert (comb(detail) - detail).square().mean() < 0.05 * detail.square().mean()


def test_the_training_term_against_a_grid_spares_a_photo_like_detail() -> None:
    """The grid term of train-upscaler: nothing for a batch of smooth random details, their
    peaks within their neighbourhoods' power; the squared amplitude of a faint 4-pixel pattern."""
    generator = torch.Generator().manual_seed(1)
    details = torch.nn.functional.avg_pool2d(torch.randn(4, 3, 196, 196, generator=generator) * 20, 5, stride=1)
    pattern = torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(48)  # period 2, amplitude 0.5 after the product
    gridded = details + 0.5 * pattern[:, None] * pattern[None]
    assert grid_excess(details, 4) < 0.01 < 0.1 < grid_excess(gridded, 4) < 0.5


def test_the_training_term_against_one_fine_texture_spares_a_fainter_copy_of_the_true_detail() -> None:
    """The texture term of train-upscaler: nothing for a detail whose spectrum is the true detail's
    at any strength; a faint weave 2.6 pixels apart on top of it is a peak."""
    generator = torch.Generator().manual_seed(2)
    true = torch.nn.functional.avg_pool2d(torch.randn(4, 3, 196, 196, generator=generator) * 20, 5, stride=1)
    rows, columns = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    weave = torch.sin(2 * math.pi * 0.38 * rows) + torch.sin(2 * math.pi * 0.38 * columns)
    assert texture_peaks(0.5 * true, true) == 0
    assert texture_peaks(0.5 * true + weave, true) > 1


def test_eval_flicker_upscale_reports_the_network_against_bicubic(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=5)
    result = run_cli("eval", "flicker", source, "--upscale", TEST_FACTOR, "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, flow in zip(lines, ("farneback", "dis")):
        assert line.startswith(f"x{TEST_FACTOR} upscale, {flow}: 5 frames, flicker x bicubic's: per frame ")
        assert ", temporal " in line and "(the full-size clip's own: " in line
    result = run_cli("eval", "flicker", source, "--upscale", TEST_FACTOR, "--style", TEST_STYLE)
    assert_clean_failure(result, "give either --style or --upscale")


def test_the_temporal_stage_steadies_an_upscalers_invented_detail(tmp_path: Path) -> None:
    """The built-in x4 on a still, grainy wall with a square moving across it: its features are
    blended between its halves, and the wall's frame-to-frame change drops."""
    stylizer = Stylizer(load_upscaler(BUILTIN_UPSCALERS_DIR / "x4.pth", 4), resolve_device("cpu"), compile=False)
    source = grainy_clip(tmp_path / "grain.mp4", frames=8, width=96, height=72)
    steady, plain = (decode(stylize_file(source, tmp_path / f"{name}.mp4", stylizer, temporal_strength=strength))["pixels"]
                     for name, strength in (("steady", DEFAULT_STRENGTH), ("plain", 0)))
    wall = slice(50 * 4, 72 * 4)  # below the square's rows (30..42), times the factor

    def change(frames: list[np.ndarray]) -> float:
        return float(np.mean([np.square(b[wall].astype(np.float32) - a[wall]).mean() for a, b in zip(frames, frames[1:])]))

    assert change(steady) < 0.5 * change(plain)
