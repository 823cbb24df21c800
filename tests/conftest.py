"""Shared fixtures: a test style made from a seeded random network, and real clips made with PyAV."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidstyle.model import TransformerNet
from vidstyle.styles import save_style

# Compilation costs tens of seconds per frame size; the tests check the logic, not speed.
os.environ["VIDSTYLE_COMPILE"] = "0"
TEST_STYLE = "testnet"


@pytest.fixture(scope="session", autouse=True)
def style_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one style of random weights (the output still differs visibly
    from the input), on the style search path of this process and its children."""
    folder = tmp_path_factory.mktemp("styles")
    torch.manual_seed(0)
    save_style(TransformerNet(), folder / f"{TEST_STYLE}.pth", {"name": TEST_STYLE, "format": "vidstyle-style/1"})
    os.environ["VIDSTYLE_STYLES_PATH"] = str(folder)
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the real `vidstyle` command in a child process."""
    return subprocess.run([sys.executable, "-m", "vidstyle.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def decode(path: Path) -> dict:
    """Everything the tests check about a video file, read back with PyAV."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio
        frames, samples = [], {s.index: 0 for s in audio}
        for packet in container.demux(video, *audio):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    frames.append(frame)
                else:
                    samples[packet.stream.index] += frame.samples
        return {
            "frames": len(frames),
            "size": (frames[0].width, frames[0].height),
            "times": [float(f.time) for f in frames],
            "rotation": frames[0].rotation,
            "pixels": np.stack([f.to_ndarray(format="rgb24") for f in frames]),
            "audio_durations": [samples[s.index] / s.rate for s in audio],
            "audio_codecs": [s.codec_context.name for s in audio],
        }
