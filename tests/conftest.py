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

from vidstyle.model import TransformerNet, UpscalerNet
from vidstyle.styles import save_style

# Compilation costs tens of seconds per frame size; the tests check the logic, not speed.
os.environ["VIDSTYLE_COMPILE"] = "0"
TEST_STYLE = "testnet"
# The devices a test that runs a network on one is repeated on: the CPU, and CUDA, skipped (and
# listed by -rs) where this machine has none.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]
TEST_FACTOR = 4
# An upscaler's model card, its evaluation laid out as `vidstyle eval upscale --record` writes it.
TEST_UPSCALER_CARD = {"task": "upscale", "factor": TEST_FACTOR, "evaluation": {"command": "vidstyle eval upscale", "scores": [
    {"set": "Set5", "inputs": "published", "method": "network", "images": 5, "psnr": 30.5, "ssim": 0.85},
    {"set": "Set5", "inputs": "published", "method": "bicubic", "images": 5, "psnr": 28.4, "ssim": 0.81},
]}}


@pytest.fixture(scope="session", autouse=True)
def style_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one style and one x4 upscaler of random weights (the style's output
    still differs visibly from the input), on the search path of this process and its
    children; the upscaler shadows a built-in one."""
    folder = tmp_path_factory.mktemp("styles")
    torch.manual_seed(0)
    save_style(TransformerNet(), folder / f"{TEST_STYLE}.pth", {"name": TEST_STYLE, "format": "vidstyle-style/1"})
    save_style(UpscalerNet(TEST_FACTOR), folder / f"x{TEST_FACTOR}.pth", TEST_UPSCALER_CARD)
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


# -- a real Redis for the fleet tests (tests/test_fleet.py) --------------------
import shutil  # noqa: E402  (this section is appended to the file's shared part)
import socket  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import redis  # noqa: E402


def free_port() -> int:
    """A TCP port nothing listens on (for a server to start on, or to find closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy, which is returned; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return result


class RedisServer:
    """The Redis the fleet tests use: VIDSTYLE_TEST_REDIS_URL's, else a redis-server
    of their own in a temporary folder, with persistence on (so it can be restarted)."""

    def __init__(self, url: str, command: list[str] | None = None):
        self.url, self.command = url, command
        self.process: subprocess.Popen | None = None

    @property
    def restartable(self) -> bool:
        return self.command is not None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_until(lambda: self._answers(client), 30, "redis-server to accept connections")

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False


def own_database(url: str) -> str:
    """A shared Redis URL for this test process: under pytest-xdist each process uses its own database
    (the URL's plus the process's number), so that one's jobs never show in another's `vidstyle list`."""
    parts = urllib.parse.urlsplit(url)
    database = int(parts.path.strip("/") or 0) + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if url := os.environ.get("VIDSTYLE_TEST_REDIS_URL"):
        yield RedisServer(own_database(url))
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: install it (apt-get install redis-server) or set VIDSTYLE_TEST_REDIS_URL")
    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    server = RedisServer(f"redis://127.0.0.1:{port}/0", [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
        "--appendonly", "yes", "--appendfsync", "always",
    ])
    server.start()
    yield server
    server.stop()
