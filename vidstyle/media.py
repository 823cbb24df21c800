"""A run's files: checking its input and output before any work, opening and probing
the input, and writing the output atomically (a hidden partial file, renamed into
place when complete). The pipeline, the workers, the trainer's evaluations and the
export all go through here.
"""
from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidstyle import formats
from vidstyle.errors import VidstyleError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
COLOUR_TAGS = ("colorspace", "color_primaries", "color_trc")
UNSPECIFIED = 2  # FFmpeg's value for an absent colour tag


@dataclass(frozen=True)
class EncodeOptions:
    codec: str | None = None  # None: the output container's default (vidstyle.formats)
    crf: int = 18
    preset: str = "medium"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int  # from the container, or estimated from duration x rate
    rate: Fraction
    rotation: int
    audio_streams: int
    # The input's colour tags (colorspace, color_primaries, color_trc) where it has
    # them: frames are converted to RGB with its matrix and back with the same one.
    colour: dict[str, int]
    bit_depth: int = 8  # of the input's samples: 10-bit input stays 10-bit where the encoder allows
    transparent: bool = False  # its first frame has see-through pixels (an alpha channel that is used)
    first_number: int = 1  # an image sequence's first frame number, which an output sequence keeps


@dataclass(frozen=True)
class Span:
    """A run of a video's frames, by presentation timestamp in its video stream's
    time base: start <= pts < end (None: from the first frame / to the last).
    A span that starts at a keyframe decodes on its own (vidstyle.segments)."""

    start: int | None
    end: int | None
    frames: int  # how many frames it holds, for progress


def default_output_path(input_path: Path, style_name: str) -> Path:
    """movie.mp4 + udnie -> movie.udnie.mp4 (x4: movie.x4.mp4, udnie.x4: movie.udnie.x4.mp4), beside the input;
    shot/f_%04d.png -> shot.udnie/f_%04d.png."""
    if formats.is_sequence(input_path):
        folder = input_path.parent.resolve()
        return folder.with_name(f"{folder.name}.{style_name}") / input_path.name
    return input_path.with_name(f"{input_path.stem}.{style_name}{input_path.suffix}")


def is_image(path: Path) -> bool:
    """A still image (an image sequence, shot/frame_%04d.png, is a video)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not formats.is_sequence(path)


@dataclass(frozen=True)
class Still:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    alpha: np.ndarray | None  # (H, W) uint16 (formats.alpha_plane's scale), where not fully opaque
    deep: bool  # more than 8 bits a sample: written back so where the output's format holds it


def read_still(path: Path, reduce_to: int | None = None) -> Still:
    """A still image as the network takes it: EXIF orientation applied, any mode (greyscale,
    palette, CMYK, 16-bit) made 8-bit RGB, its transparency apart. reduce_to: a JPEG may be
    decoded at a fraction of its size (1/2 to 1/8) that still has at least this many pixels a side."""
    # A 16-bit PNG or TIFF is decoded by FFmpeg (Pillow reads 8 bits of it, or none).
    deep = formats.deep_image(path)
    if deep is not None:
        return Still(formats.rgb_pixels(deep), formats.used_alpha(deep), deep=True)
    try:
        with warnings.catch_warnings():
            # A large scan is a user's file, not an attack: Pillow's warning past 89 Mpixels is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            if reduce_to:
                opened.draft("RGB", (reduce_to, reduce_to))
            # Phones store portrait photos sideways plus an EXIF flag: apply it.
            image = ImageOps.exif_transpose(opened)
            return Still(np.array(image.convert("RGB")), _transparency(image), deep=False)
    except Image.DecompressionBombError as exc:
        raise VidstyleError(f"{path} has more pixels than vidstyle reads ({exc})") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise VidstyleError(f"not a readable image: {path}") from exc


def _transparency(image: Image.Image) -> np.ndarray | None:
    """The image's alpha channel (uint16, as formats.alpha_plane), if it has one that is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return np.asarray(alpha, np.uint16) * 257 if alpha.getextrema()[0] < 255 else None


def check_input(input_path: Path) -> None:
    """A one-line error for an input that is not there (for a sequence: no file matches it, or some are missing)."""
    if formats.is_sequence(input_path):
        formats.sequence_numbers(input_path)
    elif input_path.is_dir():
        raise VidstyleError(f"input is a directory, not a video or image: {input_path}")
    elif not input_path.is_file():
        raise VidstyleError(f"input not found: {input_path}")


def check_output(output_path: Path, force: bool) -> Path:
    """A one-line error, before any work, for an output that exists (without `force`); the path
    that is renamed into place: the file, or an image sequence's folder (see partial_sequence)."""
    if not formats.is_sequence(output_path):
        if output_path.exists() and not force:
            raise VidstyleError(f"output exists: {output_path} (use --force to overwrite)")
        return output_path
    folder = output_path.parent
    if folder.resolve() == Path.cwd().resolve() or not folder.name:
        raise VidstyleError(f"an image sequence is written into a folder of its own: -o FOLDER/{output_path.name}")
    present = list(folder.iterdir()) if folder.is_dir() else []
    others = sorted(f.name for f in present if formats.frame_number(f.name, output_path) is None)
    if others:
        raise VidstyleError(f"{folder} holds other files ({', '.join(others[:3])}); an image sequence replaces "
                            f"its folder whole: name a new or empty one")
    if present and not force:
        raise VidstyleError(f"output exists: {folder} holds frames of {output_path.name} (use --force to replace them)")
    return folder


def output_encoder(input_path: Path, output_path: Path, codec: str | None,
                   sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS) -> str:
    """The video encoder for output_path (vidstyle.formats), checked before any work:
    an unknown suffix or a codec its container cannot hold fails here, though a
    bad input (a song, a broken file) is told as such first."""
    try:
        return formats.video_encoder(output_path, codec)
    except VidstyleError:
        probe_video(input_path, sequence_fps)
        raise


def partial_path(output_path: Path, token: str) -> Path:
    return output_path.with_name(f".{output_path.stem}.partial-{token}{output_path.suffix}")


@contextmanager
def partial_file(output_path: Path, token: str | None = None,
                 before_commit: Callable[[], None] | None = None) -> Iterator[Path]:
    """A hidden temporary name beside output_path to write to; renamed to
    output_path when the block completes (after `before_commit`, if given), removed if it fails."""
    partial = partial_path(output_path, token or secrets.token_hex(4))
    try:
        yield partial
        if before_commit:
            before_commit()
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def partial_sequence(output_pattern: Path, token: str | None = None,
                     before_commit: Callable[[], None] | None = None) -> Iterator[Path]:
    """partial_file for an image sequence: its frames go into a hidden folder beside
    the output's folder, which is renamed into place when all are written (after
    `before_commit`, if given; an earlier sequence there, with --force, is moved aside
    first and removed after); removed if the run fails, so the folder holds all the
    frames or none of this run's."""
    folder = output_pattern.parent
    token = token or secrets.token_hex(4)
    partial, replaced = (folder.with_name(f".{folder.name}.{what}-{token}") for what in ("partial", "replaced"))
    shutil.rmtree(partial, ignore_errors=True)  # a dead attempt's (a redelivered job's)
    partial.mkdir()
    try:
        yield partial / output_pattern.name
        if before_commit:
            before_commit()
        earlier = folder.is_dir() and any(folder.iterdir())
        if earlier:
            os.replace(folder, replaced)
        try:
            os.replace(partial, folder)  # (over an empty folder, too)
        except OSError:
            if earlier:
                os.replace(replaced, folder)  # the earlier sequence stays
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)


def probe_video(path: Path, sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS) -> VideoInfo:
    """What the pipeline needs to know before it starts; raises VidstyleError for non-videos."""
    with open_input(path, sequence_fps) as container:
        # An audio file's cover art is a one-picture "video" stream: not a video.
        if not any(not s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video):
            raise VidstyleError(f"no video stream in {path}" + (" (only cover art)" if container.streams.video else ""))
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        frames = stream.frames
        if not frames and stream.duration and stream.time_base:
            frames = round(float(stream.duration * stream.time_base * rate))
        decoder = formats.video_decoder(stream)
        try:
            first = next((frame for packet in container.demux(stream) for frame in formats.decoded(packet, decoder)), None)
        except av.error.FFmpegError as exc:
            raise VidstyleError(f"cannot decode {path}: corrupt or truncated ({exc.strerror or exc})") from exc
        if first is None:
            raise VidstyleError(f"no decodable video frames in {path}")
        _check_complete(container, path)
        return VideoInfo(
            width=first.width, height=first.height, frames=frames or 0, rate=Fraction(rate),
            rotation=round(first.rotation or 0), audio_streams=len(container.streams.audio),
            colour={k: int(getattr(first, k)) for k in COLOUR_TAGS if int(getattr(first, k)) != UNSPECIFIED},
            bit_depth=max(component.bits for component in first.format.components),
            transparent=any(c.is_alpha for c in first.format.components)
            and int(first.to_ndarray(format="rgba")[..., 3].min()) < 255,
            first_number=formats.sequence_numbers(path)[0] if formats.is_sequence(path) else 1,
        )


# A file whose packets stop this long before the duration its header states was cut short.
TRUNCATION_SLACK_SECONDS = 0.5


def _check_complete(container: av.container.InputContainer, path: Path) -> None:
    """Refuse a file cut short (a copy or download that stopped): its packets end
    before the duration its header states. Files without a stated duration (a live
    recording) cannot be checked and are taken as they are."""
    if not container.duration:
        return
    stated = container.duration / av.time_base + (container.start_time or 0) / av.time_base
    last = 0.0
    try:
        container.seek(max(0, container.duration - 2 * av.time_base) + (container.start_time or 0))  # a keyframe before
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base:
                last = max(last, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    except av.error.FFmpegError:
        return  # no seeking in this file (or damaged near its end): nothing to compare
    if last < stated - TRUNCATION_SLACK_SECONDS:
        raise VidstyleError(f"{path} is truncated: its data stops at {last:.1f} s of the {stated:.1f} s its header states")


def open_input(path: Path, sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS) -> av.container.InputContainer:
    try:
        if formats.is_sequence(path):
            return formats.open_sequence(path, sequence_fps)
        return av.open(str(path), "r")
    except av.error.PermissionError as exc:
        raise VidstyleError(f"cannot read {path}: permission denied") from exc
    except av.error.FFmpegError as exc:
        raise VidstyleError(f"not a video file, or corrupt: {path} ({exc.strerror or exc})") from exc
