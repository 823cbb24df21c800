"""Compile only where it pays, and keep what was compiled: the decision, the settings
and the cache folder (one test compiles; conftest sets VIDSTYLE_COMPILE=0 for the rest)."""
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
from vidstyle.model import TransformerNet, UpscalerNet
from vidstyle.pipeline import stylize_file
from vidstyle.sample import make_sample_video
from vidstyle.styles import find_style

CPU = torch.device("cpu")


def test_compiling_pays_only_for_long_clips_unless_forced() -> None:
    assert not should_compile(1, 360, 640, CPU)  # a still
    assert not should_compile(72, 360, 640, CPU)  # a short clip: eager is sooner done
    assert should_compile(1000, 360, 640, CPU)
    assert not should_compile(0, 360, 640, CPU)  # unknown length (MKV without a duration)
    assert should_compile(1, 360, 640, CPU, forced=True)
    assert not should_compile(100_000, 1080, 1920, CPU, forced=False)
    # A compact network runs no faster compiled on a CPU: only when forced.
    assert not should_compile(100_000, 360, 640, CPU, network="CompactTransformerNet")
    assert should_compile(2, 360, 640, CPU, forced=True, network="CompactTransformerNet")


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


def test_compiled_batches_keep_one_shape_and_are_remembered_in_the_process_and_the_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIDSTYLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(inference, "COMPILED_IN_PROCESS", set())
    torch.manual_seed(0)
    stylizer = Stylizer(TransformerNet(), CPU, compile=True, precision="fp32")
    stylizer.compiled_net = stylizer.eager_net  # stands in for torch.compile's wrapper: same shapes in, same out
    assert stylizer.expect(7, 18, 22, 4)
    frames = np.random.default_rng(0).integers(0, 256, (3, 18, 22, 3), dtype=np.uint8)  # a short last batch
    got = stylizer(frames)
    assert got.shape == frames.shape
    # Padded to the batch size and a multiple of 4.
    assert inference.COMPILED_IN_PROCESS == {stylizer._compiled_key((4, 20, 24))}
    eager = Stylizer(TransformerNet(), CPU, compile=False, precision="fp32")
    eager.eager_net = stylizer.eager_net
    assert np.abs(got.astype(int) - eager(frames).astype(int)).max() <= 1
    assert len(list((tmp_path / "compiled").iterdir())) == 1
    monkeypatch.setenv("VIDSTYLE_COMPILE", "auto")
    later = Stylizer(TransformerNet(), CPU, precision="fp32")
    assert later.expect(between_break_evens(), 360, 640, 4) is False
    later._remember_compiled((4, 360, 640))
    # Another style's network in this process: its kind's graph is compiled already, so even a few frames use it.
    assert Stylizer(TransformerNet(), CPU, precision="fp32").expect(10, 360, 640, 4)
    # A later process finds the shape in the on-disk cache: compiling it then pays sooner.
    inference.COMPILED_IN_PROCESS.clear()
    assert not Stylizer(TransformerNet(), CPU, precision="fp32").expect(10, 360, 640, 4)
    again = Stylizer(TransformerNet(), CPU, precision="fp32")
    assert again.expect(between_break_evens(), 360, 640, 4)
    assert again.compiles(360, 640) and not again.compiles(600, 400)  # a still after the clip runs eager
    # An upscaler is a graph of its own, and so is one of another depth or upsampling; weights are not.
    keys = {Stylizer(net, CPU, precision="fp32")._compiled_key((4, 360, 640)) for net in (
        TransformerNet(), UpscalerNet(4), UpscalerNet(4), UpscalerNet(4, blocks=6), UpscalerNet(4, upsampling="bilinear"))}
    assert len(keys) == 4


def test_one_compiled_graph_serves_every_style(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The one test that really compiles (tens of seconds): a second style's network runs in the
    first one's compiled graph, with its own weights, and compiles nothing."""
    monkeypatch.setenv("VIDSTYLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(inference, "COMPILED_IN_PROCESS", set())
    torch._dynamo.reset()
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    first, second = (Stylizer(find_style(name).load_network(), CPU, compile=True, precision="fp32")
                     for name in ("udnie", "the-scream"))
    first.expect(2, 16, 16, 2)
    first(frames)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the two halves, compiled
    second.expect(2, 16, 16, 2)
    got = second(frames)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    eager = Stylizer(TransformerNet(), CPU, compile=False, precision="fp32")
    eager.eager_net = second.eager_net
    assert np.abs(got.astype(int) - eager(frames).astype(int)).max() <= 1
    assert np.abs(got.astype(int) - first(frames).astype(int)).max() > 10  # its weights, not the first's


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
