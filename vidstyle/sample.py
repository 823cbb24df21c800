"""Synthetic test clips, written with PyAV: moving shapes and a sine tone, a
slow camera move over a photo, and the two kinds of handheld footage where a
temporal blend that trusts its history too far damages the picture (a flat
compressed sky under a sub-pixel drift; thin lines moved and uncovered).

Used by the README's first command (so a fresh machine needs no download), by
the tests, which need odd sizes, rotation metadata and variable frame rates,
and by flicker measurements, which need natural image content in motion.
"""
from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from vidstyle.errors import VidstyleError


def sample_frame(index: int, width: int, height: int) -> np.ndarray:
    """A frame with colour gradients, a moving disc and moving stripes: enough
    structure that a style network visibly changes it."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = index / 10.0
    red = 127 + 127 * np.sin(xs / 23.0 + t)
    green = 127 + 127 * np.sin(ys / 17.0 - t * 0.7)
    blue = 127 + 127 * np.sin((xs + ys) / 31.0 + t * 1.3)
    frame = np.stack([red, green, blue], axis=-1)
    cx, cy = width * (0.5 + 0.3 * np.sin(t)), height * (0.5 + 0.3 * np.cos(t * 0.8))
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 < (min(width, height) / 5) ** 2
    frame[disc] = (250, 240, 40)
    return np.clip(frame, 0, 255).astype(np.uint8)


def make_sample_video(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    frames: int = 48,
    fps: int = 24,
    audio: bool = True,
    rotation: int = 0,
    variable_frame_rate: bool = False,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    audio_codec: str = "aac",
    audio_rate: int = 44100,
    colorspace: int | None = None,
    keyframes: list[int] | None = None,
) -> Path:
    """Write a clip; with `variable_frame_rate` every third frame is held for twice
    as long; `colorspace` (an FFmpeg AVColorSpace, e.g. 1 for BT.709) tags the
    stream and converts RGB with that matrix; `keyframes` (frame indices, x264
    only) are the only keyframes, wherever they fall."""
    path = Path(path)
    time_base = Fraction(1, fps * 2)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = pix_fmt or ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p")
        video.codec_context.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        if colorspace is not None:
            video.codec_context.colorspace = video.codec_context.color_primaries = video.codec_context.color_trc = colorspace
        if keyframes is not None:
            video.options = {"x264-params": "keyint=infinite:scenecut=0", "forced-idr": "1"}
        sound = None
        if audio:
            sound = container.add_stream(audio_codec, rate=audio_rate, layout="stereo")
        ticks = 0
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(sample_frame(index, width, height), format="rgb24")
            if colorspace is not None:
                frame = frame.reformat(format=video.pix_fmt, dst_colorspace=colorspace)
            frame.pts, frame.time_base = ticks, time_base
            if keyframes is not None and index in keyframes:
                frame.pict_type = av.video.frame.PictureType.I
            ticks += 4 if variable_frame_rate and index % 3 == 2 else 2
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            _write_tone(container, sound, seconds=float(ticks * time_base))
    return path


def make_camera_video(photo: str | Path, path: str | Path, *, frames: int = 48, fps: int = 24, seed: int = 0) -> Path:
    """A clip of a handheld camera moving over a photo: a pan across a quarter
    of it, a 10% zoom, a 2 degree roll, a little shake and sensor noise, at
    75% of the photo's size (even, for 4:2:0), encoded as a phone would (CRF 20)."""
    try:
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
    except OSError as exc:
        raise VidstyleError(f"cannot read image {photo}: {exc}") from exc
    width, height = int(image.width * 0.75) // 2 * 2, int(image.height * 0.75) // 2 * 2
    rng = np.random.default_rng(seed)
    shake = np.cumsum(rng.normal(0, 0.6, (frames, 2)), axis=0)  # a random walk, in pixels
    path = Path(path)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "20"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            progress = index / max(1, frames - 1)
            zoom, angle = 1 - 0.1 * progress, np.radians(2 * progress)
            centre_x = image.width * (0.5 + 0.25 * (progress - 0.5)) + shake[index, 0]
            centre_y = image.height * (0.5 + 0.08 * (progress - 0.5)) + shake[index, 1]
            # Output pixel (x, y) shows the photo at centre + zoom * R(angle) * (x - w/2, y - h/2).
            a, b = zoom * np.cos(angle), -zoom * np.sin(angle)
            d, e = zoom * np.sin(angle), zoom * np.cos(angle)
            coefficients = (a, b, centre_x - a * width / 2 - b * height / 2,
                            d, e, centre_y - d * width / 2 - e * height / 2)
            view = np.asarray(image.transform((width, height), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC))
            noisy = np.clip(view + rng.normal(0, 2.0, view.shape), 0, 255).astype(np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")))
        container.mux(video.encode())
    return path


def make_drift_video(path: str | Path, *, width: int = 640, height: int = 360, frames: int = 90, fps: int = 30,
                     seed: int = 0) -> Path:
    """Handheld footage of a flat overcast sky: faint clouds, a small aircraft crossing
    it, a treeline along the bottom, the camera drifting by a random walk of sub-pixel
    steps, sensor grain, and H.264 at a phone's bitrate, whose blocks show on the sky."""
    rng = np.random.default_rng(seed)
    margin = 48
    canvas_h, canvas_w = height + 2 * margin, width + 2 * margin
    ys = np.linspace(0, 1, canvas_h, dtype=np.float32)[:, None, None]
    sky = np.array([172, 178, 188], np.float32) + ys * np.array([34, 31, 26], np.float32)
    sky = np.broadcast_to(sky, (canvas_h, canvas_w, 3)) + 8 * _smooth_noise(rng, canvas_h, canvas_w, 50)[..., None] \
        + 4 * _smooth_noise(rng, canvas_h, canvas_w, 12)[..., None]
    horizon = canvas_h - margin - int(0.14 * height) + (8 * _smooth_noise(rng, 1, canvas_w, 12)[0]).astype(int)
    rows = np.arange(canvas_h)[:, None]
    trees = rows >= horizon[None, :]
    foliage = np.array([48, 62, 40], np.float32) + 18 * rng.random((canvas_h, canvas_w, 1), np.float32)
    scene = np.where(trees[..., None], foliage, sky)
    shake = np.cumsum(rng.normal(0, 0.45, (frames, 2)), axis=0).clip(-margin + 4, margin - 4)
    return _write_rgb_video(path, (_drift_frame(scene, index, shake[index], margin, width, height, rng)
                                   for index in range(frames)), width, height, fps, crf=27)


def _drift_frame(scene: np.ndarray, index: int, shake: np.ndarray, margin: int, width: int, height: int,
                 rng: np.random.Generator) -> np.ndarray:
    world = scene.copy()
    x, y = int(margin + width * 0.15 + 1.5 * index), int(margin + height * 0.3)
    world[y - 2:y + 3, x - 12:x + 12] = (70, 72, 78)  # fuselage
    world[y - 7:y + 8, x - 2:x + 3] = (70, 72, 78)  # wings
    shift = np.float32([[1, 0, -margin - shake[0]], [0, 1, -margin - shake[1]]])
    view = cv2.warpAffine(world, shift, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.clip(view + rng.normal(0, 3.5, view.shape), 0, 255).astype(np.uint8)


THIN_LINE_REVEAL = 30  # the frame at which make_thin_line_video uncovers its second cable


def make_thin_line_video(path: str | Path, *, width: int = 640, height: int = 640, frames: int = 90, fps: int = 30,
                         seed: int = 0) -> Path:
    """A phone clip of a room: a plastered wall with thin dark cables hanging down it and
    the camera panning slowly (half a pixel a frame, with handheld jitter). One cable is
    in view from the start; a second, at `thin_line_columns(...)[1]`, is uncovered at
    frame THIN_LINE_REVEAL by the wall-coloured panel in front of it sliding away."""
    rng = np.random.default_rng(seed)
    wall = np.array([196, 184, 164], np.float32) + 10 * _smooth_noise(rng, height, width + 64, 8)[..., None] \
        + 5 * _smooth_noise(rng, height, width + 64, 40)[..., None]
    first, second = (int(width * 0.3), int(width * 0.62))
    panel = wall[:, second - 30:second + 30].copy()  # the wall without the cable, slid away at the reveal
    for column in (first, second):
        wall[:, column] -= 30  # a thin, faint cable: a pixel wide, 30 levels darker than the wall
    jitter = np.cumsum(rng.normal(0, 0.25, (frames, 2)), axis=0).clip(-6, 6)

    def frame(index: int) -> np.ndarray:
        world = wall.copy()
        slide = max(0, index - THIN_LINE_REVEAL + 1) * 40
        if slide < 60:
            world[:, second - 30 + slide:second + 30] = panel[:, :60 - slide] if slide else panel
        pan = 0.5 * index
        shift = np.float32([[1, 0, pan + jitter[index, 0]], [0, 1, jitter[index, 1]]])
        view = cv2.warpAffine(world, shift, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        return np.clip(view + rng.normal(0, 2.0, view.shape), 0, 255).astype(np.uint8)

    return _write_rgb_video(path, (frame(index) for index in range(frames)), width, height, fps, crf=23)


def thin_line_columns(width: int, index: int) -> tuple[float, float]:
    """Where make_thin_line_video's two cables are (their left column) in frame `index`, within a pixel."""
    return tuple(column + 0.5 * index for column in (int(width * 0.3), int(width * 0.62)))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Random structure about `scale` pixels across, mean 0 and standard deviation 1."""
    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), scale)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def _write_rgb_video(path: str | Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int,
                     crf: int) -> Path:
    path = Path(path)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())
    return path


def _write_tone(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    """A 440 Hz tone as long as the video, in 1024-sample frames."""
    rate, chunk = stream.rate, 1024
    total = int(seconds * rate)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
