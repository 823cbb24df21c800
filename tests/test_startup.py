"""Compile only where it pays, and keep what was compiled: the decision, the settings
and the cache folder (no test compiles: conftest sets VIDSTYLE_COMPILE=0)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from test_pipeline import IdentityStylizer
from vidstyle import inference
from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer, should_compile
from vidstyle.model import TransformerNet
from vidstyle.pipeline import stylize_file
from vidstyle.sample import make_sample_video

CPU = torch.device("cpu")


def test_compiling_pays_only_for_long_clips_unless_forced() -> None:
    assert not should_compile(1, 360, 640, CPU)  # a still
    assert not should_compile(72, 360, 640, CPU)  # a short clip: eager is sooner done
    assert should_compile(1000, 360, 640, CPU)
    assert not should_compile(0, 360, 640, CPU)  # unknown length (MKV without a duration)
    assert should_compile(1, 360, 640, CPU, forced=True)
    assert not should_compile(100_000, 1080, 1920, CPU, forced=False)


def between_break_evens() -> int:
    """A 640x360 frame count for which compiling pays only when the cache holds the graph."""
    per_frame = inference.GAIN_SECONDS_PER_MEGAPIXEL["cpu"] * 640 * 360 / 1e6
    return round((inference.COMPILE_SECONDS["cpu"] + inference.CACHED_COMPILE_SECONDS["cpu"]) / 2 / per_frame)


def test_a_cached_compile_pays_sooner() -> None:
    assert not should_compile(between_break_evens(), 360, 640, CPU)
    assert should_compile(between_break_evens(), 360, 640, CPU, cached=True)


@pytest.mark.parametrize(("value", "forced"), [("0", False), ("1", True), ("auto", None)])
def test_vidstyle_compile_forces_either_way(monkeypatch: pytest.MonkeyPatch, value: str, forced: bool | None) -> None:
    monkeypatch.setenv("VIDSTYLE_COMPILE", value)
    stylizer = Stylizer(TransformerNet(), CPU)
    assert stylizer.forced_compile is forced
    assert stylizer.expect(100_000, 360, 640, 4) is (forced is not False)
    assert Stylizer(TransformerNet(), CPU, compile=True).forced_compile  # --compile wins over the variable


def test_a_bad_vidstyle_compile_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSTYLE_COMPILE", "yes")
    with pytest.raises(VidstyleError, match="VIDSTYLE_COMPILE must be 0, 1 or auto"):
        Stylizer(TransformerNet(), CPU)


def test_cache_dir_setting_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIDSTYLE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inference.cache_dir() == tmp_path / "xdg" / "vidstyle"
    monkeypatch.setenv("VIDSTYLE_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert inference.use_cache_dir() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine" / "inductor")


def test_compiled_batches_keep_one_shape_and_are_remembered_in_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("VIDSTYLE_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    stylizer = Stylizer(TransformerNet(), CPU, compile=True, precision="fp32")
    stylizer.compiled_net = stylizer.eager_net  # stands in for torch.compile's wrapper: same shapes in, same out
    assert stylizer.expect(7, 18, 22, 4)
    frames = np.random.default_rng(0).integers(0, 256, (3, 18, 22, 3), dtype=np.uint8)  # a short last batch
    got = stylizer(frames)
    assert got.shape == frames.shape
    assert stylizer.compiled_shapes == {(4, 20, 24)}  # padded to the batch size and a multiple of 4
    eager = Stylizer(TransformerNet(), CPU, compile=False, precision="fp32")
    eager.eager_net = stylizer.eager_net
    assert np.abs(got.astype(int) - eager(frames).astype(int)).max() <= 1
    assert len(list((tmp_path / "compiled").iterdir())) == 1
    # A later process finds the shape in the cache: compiling it then pays sooner.
    monkeypatch.setenv("VIDSTYLE_COMPILE", "auto")
    later = Stylizer(TransformerNet(), CPU, precision="fp32")
    assert later.expect(between_break_evens(), 360, 640, 4) is False
    later._remember_compiled((4, 360, 640))
    again = Stylizer(TransformerNet(), CPU, precision="fp32")
    assert again.expect(between_break_evens(), 360, 640, 4)
    assert again.compiles(360, 640) and not again.compiles(600, 400)  # a still after the clip runs eager


class RecordingStylizer(IdentityStylizer):
    def expect(self, frames: int, height: int, width: int, batch_size: int) -> bool:
        self.expected = (frames, height, width, batch_size)
        return False


def test_the_pipeline_tells_the_stylizer_what_is_coming(tmp_path: Path) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=5, audio=False)
    stylizer = RecordingStylizer()
    stylize_file(source, tmp_path / "out.mp4", stylizer, batch_size=2, temporal_strength=0)
    assert stylizer.expected == (5, 48, 64, 2)


def test_warm_sizes_parse_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSTYLE_WARM_SIZES", "1920x1080, 1280X720")
    assert inference.warm_sizes() == [(1920, 1080), (1280, 720)]
    monkeypatch.setenv("VIDSTYLE_WARM_SIZES", "1080p")
    with pytest.raises(VidstyleError, match="not WIDTHxHEIGHT"):
        inference.warm_sizes()
