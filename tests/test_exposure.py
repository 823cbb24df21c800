"""Exposure matching: dim frames are stylized as if well exposed, then brought back down."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidstyle import exposure

from conftest import run_cli


def textured_photo(height: int = 48, width: int = 64) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    photo = np.stack([128 + 100 * np.sin(xs / 5) * np.cos(ys / 7), 128 + 90 * np.sin((xs + ys) / 9),
                      128 + 80 * np.cos(xs / 11 - ys / 4)], axis=-1)
    return photo.clip(0, 255).astype(np.uint8)


def test_well_exposed_frames_pass_untouched_and_dim_ones_are_lifted_and_restored() -> None:
    photo = textured_photo()
    frames = np.stack([photo, (photo * 0.25).round().astype(np.uint8), np.zeros_like(photo)])
    lifted, gains = exposure.lift(frames)
    assert gains[0] == 1.0 and gains[2] == exposure.MAX_GAIN
    assert np.array_equal(lifted[0], photo)
    # A quarter of the light: its highlights are lifted to a photo's (the 99th percentile of luma).
    luma = lifted[1].astype(np.float32) @ exposure.BT601_LUMA
    assert np.percentile(luma, exposure.HIGHLIGHT_PERCENTILE) == pytest.approx(exposure.HIGHLIGHT_LEVEL, abs=6)
    assert np.abs(exposure.restore(lifted, gains)[1].astype(int) - frames[1]).max() <= 1
    bright = frames[:1]
    assert exposure.restore(bright, gains[:1]) is bright  # nothing to undo: no copy


@pytest.mark.parametrize("temporal", ["--temporal", "--no-temporal"])
def test_a_fade_from_black_comes_out_as_a_fade(tmp_path: Path, temporal: str) -> None:
    """A style network normalises away a frame's brightness (instance norm), so unmatched,
    every frame of a fade comes out equally bright. Matched, the stylized frames' brightness
    follows the input's, frame by frame."""
    photo = textured_photo()
    light = [0.15, 0.25, 0.35, 0.45, 0.6, 1.0, 1.0]
    shot = tmp_path / "shot"
    shot.mkdir()
    for number, level in enumerate(light, start=1):
        Image.fromarray((photo * level).round().astype(np.uint8)).save(shot / f"f_{number:02d}.png")
    result = run_cli("submit", shot / "f_%02d.png", "--style", "udnie", temporal, "-o", tmp_path / "out" / "f_%02d.png")
    assert result.returncode == 0, result.stderr
    brightness = np.array([np.asarray(Image.open(tmp_path / "out" / f"f_{n:02d}.png")).mean() for n in range(1, 8)])
    # Frames 1 to 5 are dim (their highlights below a photo's): lifted, stylized, brought back down.
    relative = brightness[:5] / brightness[4]
    assert relative == pytest.approx(np.array(light[:5]) / light[4], rel=0.15)
    assert brightness[0] < 0.3 * brightness[-1]
