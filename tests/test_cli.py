"""The `vidstyle` command as a user runs it: real child processes, real files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import TEST_STYLE, decode, run_cli
from vidstyle.styles import BUILTIN_DIR
from vidstyle.sample import make_sample_video


def assert_clean_failure(result, *fragments: str) -> None:
    """Non-zero exit, one line on stderr that names the problem (after any
    progress bar a run had shown), no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("vidstyle:")] == lines[-1:], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_submit_writes_the_default_output_and_prints_its_path(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "movie.mp4", width=64, height=48, frames=10)
    result = run_cli("submit", source, "--style", TEST_STYLE)
    assert result.returncode == 0, result.stderr
    output = tmp_path / f"movie.{TEST_STYLE}.mp4"
    assert result.stdout.strip() == str(output)
    assert decode(output)["frames"] == 10


def test_submit_a_photo(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(source)
    result = run_cli("submit", source, "--style", TEST_STYLE)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / f"photo.{TEST_STYLE}.jpg") as out:
        assert (out.format, out.size) == ("JPEG", (60, 40))


def test_styles_lists_the_search_path() -> None:
    result = run_cli("styles")
    assert result.returncode == 0
    assert TEST_STYLE in result.stdout
    # Each style's measured quality and flicker, whatever they are now, as its card states them.
    udnie_line = next(line for line in result.stdout.splitlines() if line.startswith("udnie "))
    evaluation = json.loads((BUILTIN_DIR / "udnie.json").read_text())["evaluation"]
    assert f"L-BFGS equivalent {evaluation['median_lbfgs_iterations_from_noise']:g}" in udnie_line
    assert f"flicker {evaluation['mean_flicker_ratio']:g}" in udnie_line
    # An upscaler's figures (the test's own x4 card, conftest.TEST_UPSCALER_CARD), one line per record.
    upscaler_lines = result.stdout.split("x4 upscaler", 1)[1].splitlines()
    assert upscaler_lines[1:3] == ["    Set5 published network: psnr 30.5, ssim 0.85", "    Set5 published bicubic: psnr 28.4, ssim 0.81"]


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _truncated(path: Path) -> Path:
    full = make_sample_video(path.with_name("full.mp4"), width=64, height=48, frames=24)
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return path


def _not_a_video(path: Path) -> Path:
    path.write_text("this is a shopping list, not a film\n")
    return path


@pytest.mark.parametrize(
    "make_input, expected",
    [
        (lambda tmp: tmp / "missing.mp4", "not found"),
        (lambda tmp: _not_a_video(tmp / "notes.mp4"), "not a video"),
        (lambda tmp: _audio_only(tmp / "song.m4a"), "no video stream"),
        (lambda tmp: _truncated(tmp / "cut.mp4"), "corrupt"),
    ],
    ids=["missing", "not-a-video", "audio-only", "truncated"],
)
def test_bad_input_fails_cleanly_and_leaves_nothing(tmp_path: Path, make_input, expected: str) -> None:
    source = make_input(tmp_path)
    before = set(tmp_path.iterdir())
    assert_clean_failure(run_cli("submit", source, "--style", TEST_STYLE), expected)
    assert set(tmp_path.iterdir()) == before


def test_unknown_style_lists_the_available_ones(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=2, audio=False)
    assert_clean_failure(run_cli("submit", source, "--style", "no-such-style"), "no-such-style", TEST_STYLE)


def test_corrupt_weights_file(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=2, audio=False)
    weights = tmp_path / "broken.pth"
    weights.write_bytes(b"\x00" * 100)
    assert_clean_failure(run_cli("submit", source, "--style", weights), "broken.pth")


def test_unwritable_output_directory(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=2, audio=False)
    assert_clean_failure(run_cli("submit", source, "--style", TEST_STYLE, "-o", tmp_path / "no" / "such" / "dir.mp4"), "output directory")


def test_existing_output_needs_force(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=2, audio=False)
    (tmp_path / "out.mp4").write_bytes(b"keep me")
    assert_clean_failure(run_cli("submit", source, "--style", TEST_STYLE, "-o", tmp_path / "out.mp4"), "--force")
    assert (tmp_path / "out.mp4").read_bytes() == b"keep me"


def test_styles_path_from_the_config_file(tmp_path: Path, style_dir: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'styles_path = ["{style_dir}"]\n')
    env = {k: v for k, v in os.environ.items() if k != "VIDSTYLE_STYLES_PATH"}
    env["VIDSTYLE_CONFIG"] = str(config)
    result = subprocess.run([sys.executable, "-m", "vidstyle.cli", "styles"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith(f"{TEST_STYLE} ") and str(style_dir) in line for line in result.stdout.splitlines())


def test_interrupted_run_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "long.mp4", width=320, height=240, frames=400)
    # Ctrl-C's default action, even where the suite runs as a background job (which ignores SIGINT).
    child = subprocess.Popen([sys.executable, "-m", "vidstyle.cli", "submit", source, "--style", TEST_STYLE, "--batch-size", "1"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".long.*.partial-*")):  # the partial output exists: the run is under way
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert stderr.strip().splitlines()[-1] == "vidstyle: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]


def test_nvenc_without_an_nvidia_gpu_is_one_line(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=4)
    result = run_cli("submit", source, "--style", TEST_STYLE, "--codec", "h264_nvenc")
    if result.returncode == 0:
        pytest.skip("this machine has an NVIDIA encoder")
    assert_clean_failure(result, "needs an NVIDIA GPU with NVENC")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
