"""Stylize a video or a still image: the one pipeline function that the CLI and
the workers both call.

A video flows through three stages joined by bounded queues, so memory does not
grow with the video's length and the network never waits on I/O:

    reader thread  -- demux + decode (PyAV) -> batches of RGB frames, audio packets
    calling thread -- the style network on each batch (vidstyle.inference)
    writer thread  -- encode + mux (PyAV): video re-encoded, audio copied

The output goes to a hidden temporary file beside the destination and is renamed
into place only when complete.
"""
from __future__ import annotations

import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer, default_batch_size

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
COLOUR_TAGS = ("colorspace", "color_primaries", "color_trc")
UNSPECIFIED = 2  # FFmpeg's value for an absent colour tag
QUEUE_BATCHES = 3  # batches in flight between two stages: enough to absorb jitter

# Called with (frames done, frames expected) after every batch; raising from it
# (a cancelled job, say) stops the run and removes the partial output.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class EncodeOptions:
    codec: str = "libx264"
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


@dataclass(frozen=True)
class Span:
    """A run of a video's frames, by presentation timestamp in its video stream's
    time base: start <= pts < end (None: from the first frame / to the last).
    A span that starts at a keyframe decodes on its own (vidstyle.segments)."""

    start: int | None
    end: int | None
    frames: int  # how many frames it holds, for progress


def default_output_path(input_path: Path, style_name: str) -> Path:
    """movie.mp4 + udnie -> movie.udnie.mp4, beside the input."""
    return input_path.with_name(f"{input_path.stem}.{style_name}{input_path.suffix}")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def stylize_file(
    input_path: str | Path,
    output_path: str | Path,
    stylizer: Stylizer,
    *,
    batch_size: int | None = None,
    encode: EncodeOptions = EncodeOptions(),
    force: bool = False,
    on_progress: ProgressCallback | None = None,
    partial_token: str | None = None,
    span: Span | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Stylize a video or image at `input_path` into `output_path` and return it.

    `partial_token` names the temporary file (random by default): a job that is
    redelivered after its worker died passes its job id, so the new attempt
    replaces the dead one's partial file instead of leaving a second one.
    With `span`, only those frames, and no audio: one segment of a job split
    over several workers, joined later by vidstyle.segments.
    `before_commit` is called just before the rename; raising from it (a worker
    whose job was handed to another, say) discards the output instead."""
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise VidstyleError(f"input not found: {input_path}")
    if output_path.exists() and not force:
        raise VidstyleError(f"output exists: {output_path} (use --force to overwrite)")
    if not output_path.parent.is_dir() or not os.access(output_path.parent, os.W_OK):
        raise VidstyleError(f"cannot write to output directory {output_path.parent} (missing or not writable)")
    with partial_file(output_path, partial_token, before_commit) as partial:
        if is_image(input_path):
            _stylize_image(input_path, partial, output_path.suffix, stylizer)
            if on_progress:
                on_progress(1, 1)
        else:
            _stylize_video(input_path, partial, stylizer, batch_size, encode, on_progress, span)
    return output_path


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


def _stylize_image(input_path: Path, partial: Path, suffix: str, stylizer: Stylizer) -> None:
    try:
        with Image.open(input_path) as image:
            # Phones store portrait photos sideways plus an EXIF flag: apply it.
            pixels = np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise VidstyleError(f"not a readable image: {input_path}") from exc
    out = Image.fromarray(stylizer(pixels[None])[0])
    try:
        out.save(partial, format=Image.registered_extensions().get(suffix.lower()), quality=95)
    except (KeyError, ValueError) as exc:
        raise VidstyleError(f"cannot write an image with suffix '{suffix}' (use .jpg, .png or .webp)") from exc


def probe_video(path: Path) -> VideoInfo:
    """What the pipeline needs to know before it starts; raises VidstyleError for non-videos."""
    with open_input(path) as container:
        if not container.streams.video:
            raise VidstyleError(f"no video stream in {path}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        frames = stream.frames
        if not frames and stream.duration and stream.time_base:
            frames = round(float(stream.duration * stream.time_base * rate))
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VidstyleError(f"cannot decode {path}: corrupt or truncated ({exc.strerror or exc})") from exc
        if first is None:
            raise VidstyleError(f"no decodable video frames in {path}")
        return VideoInfo(
            width=first.width, height=first.height, frames=frames or 0, rate=Fraction(rate),
            rotation=round(first.rotation or 0), audio_streams=len(container.streams.audio),
            colour={k: int(getattr(first, k)) for k in COLOUR_TAGS if int(getattr(first, k)) != UNSPECIFIED},
        )


def open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except av.error.FFmpegError as exc:
        raise VidstyleError(f"not a video file, or corrupt: {path} ({exc.strerror or exc})") from exc


class _Stop(Exception):
    """Another stage failed or the run was interrupted: unwind quietly."""


class _Stage:
    """Bounded queues between the stages plus the first error any stage raised."""

    def __init__(self) -> None:
        self.decoded: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.stylized: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stopping.set()

    def put(self, q: queue.Queue, item: object) -> None:
        while not self.stopping.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def get(self, q: queue.Queue) -> object:
        while not self.stopping.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stop

    def run(self, target: Callable[[], None], ffmpeg_failure: str) -> threading.Thread:
        """Run `target` in a thread; an FFmpeg error there becomes `ffmpeg_failure` plus its reason."""

        def guarded() -> None:
            try:
                target()
            except _Stop:
                pass
            except av.error.FFmpegError as exc:
                self.fail(VidstyleError(f"{ffmpeg_failure} ({exc.strerror or exc})"))
            except BaseException as exc:  # handed to the calling thread, which re-raises it
                self.fail(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        return thread


END = None  # sentinel that closes a queue


@dataclass
class _FrameBatch:
    pixels: np.ndarray  # (N, H, W, 3) uint8 RGB
    pts: list[int]
    time_base: Fraction


def _stylize_video(
    input_path: Path,
    partial: Path,
    stylizer: Stylizer,
    batch_size: int | None,
    encode: EncodeOptions,
    on_progress: ProgressCallback | None,
    span: Span | None = None,
) -> None:
    info = probe_video(input_path)
    expected = span.frames if span else info.frames
    batch_size = batch_size or default_batch_size(stylizer.device, info.height, info.width)
    stage = _Stage()
    source = open_input(input_path)
    try:
        sink = av.open(str(partial), "w")
    except (av.error.FFmpegError, ValueError) as exc:
        source.close()
        raise VidstyleError(f"cannot write {partial.suffix or 'this kind of'} files: {exc}") from exc
    threads = []
    try:
        video_in = source.streams.video[0]
        audio_in = [] if span else list(source.streams.audio)
        video_out = _add_video_stream(sink, video_in, info, encode)
        audio_out = {s.index: add_audio_stream(sink, s) for s in audio_in}
        threads.append(stage.run(lambda: _read(source, video_in, audio_in, batch_size, span, stage), f"cannot decode {input_path}: corrupt or truncated"))
        # A segment's clock starts at 0: an MP4 stream starting later gets an edit
        # list in milliseconds, which would shift every timestamp by a rounding.
        pts_offset = span.start or 0 if span else 0
        threads.append(stage.run(lambda: _write(sink, video_out, audio_out, info.colour.get("colorspace"), pts_offset, stage),
                                 "cannot encode the output"))
        done = 0
        while (item := stage.get(stage.decoded)) is not END:
            if isinstance(item, _FrameBatch):
                item.pixels = stylizer(item.pixels)
                done += len(item.pts)
            stage.put(stage.stylized, item)
            if on_progress and isinstance(item, _FrameBatch):
                on_progress(done, max(done, expected))
        stage.put(stage.stylized, END)
    except _Stop:
        pass
    except BaseException as exc:
        stage.fail(exc)
    finally:
        for thread in threads:
            thread.join()
        source.close()
        _close(sink, stage)
    if stage.error is not None:
        raise stage.error


def _close(container: av.container.OutputContainer, stage: _Stage) -> None:
    """Close the output; closing writes its index, so a failure fails a run that had none."""
    try:
        container.close()
    except av.error.FFmpegError as exc:
        if stage.error is None:  # after a failure the half-written file is deleted next anyway
            stage.fail(VidstyleError(f"cannot finish writing the output ({exc.strerror or exc})"))


def _add_video_stream(sink, video_in, info: VideoInfo, encode: EncodeOptions):
    try:
        stream = sink.add_stream(encode.codec, rate=info.rate)
    except (av.error.FFmpegError, ValueError) as exc:
        raise VidstyleError(f"unknown video codec '{encode.codec}'") from exc
    stream.width, stream.height = info.width, info.height
    # H.264 4:2:0 cannot store odd sizes at all; 4:4:4 keeps the exact size.
    even = info.width % 2 == 0 and info.height % 2 == 0
    formats = {f.name for f in stream.codec_context.codec.video_formats or ()}
    stream.pix_fmt = "yuv420p" if even or "yuv444p" not in formats else "yuv444p"
    # Keep the input's clock so every frame keeps its exact timestamp (VFR too).
    stream.codec_context.time_base = video_in.time_base
    stream.time_base = video_in.time_base
    if encode.codec.startswith("libx26"):
        stream.options = {"crf": str(encode.crf), "preset": encode.preset}
    elif encode.codec.endswith("_nvenc"):
        # NVENC's constant-quality mode is the nearest to x264's CRF.
        stream.options = {"rc": "vbr", "cq": str(encode.crf), "preset": encode.preset}
        _check_hardware_encoder(encode.codec, info, stream.pix_fmt)
    if info.rotation:
        stream.set_display_rotation(info.rotation)
    for tag, value in info.colour.items():
        setattr(stream.codec_context, tag, value)
    return stream


def _check_hardware_encoder(codec: str, info: VideoInfo, pix_fmt: str) -> None:
    """Open the encoder once before any work: without its GPU and driver it fails at
    once with a clear message, not after the first batch with an errno."""
    context = av.CodecContext.create(codec, "w")  # freed with the object
    context.width, context.height, context.pix_fmt, context.time_base = info.width, info.height, pix_fmt, Fraction(1, 25)
    try:
        context.open()
    except (av.error.FFmpegError, OSError) as exc:
        raise VidstyleError(f"the {codec} encoder cannot run here: it needs an NVIDIA GPU with NVENC and its driver "
                            f"({getattr(exc, 'strerror', None) or exc}); use --codec libx264") from exc


DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@dataclass
class AudioRoute:
    """Where an input audio stream's packets go in the output, and whether they are re-encoded."""

    stream: av.audio.stream.AudioStream
    transcode: bool

    def mux(self, sink, packet: av.Packet) -> None:
        if self.transcode:
            for samples in packet.decode():
                sink.mux(self.stream.encode(samples))
        else:
            packet.stream = self.stream
            sink.mux(packet)

    def flush(self, sink) -> None:
        if self.transcode:
            sink.mux(self.stream.encode())


def add_audio_stream(sink, audio_in) -> AudioRoute:
    """Copy the audio packets when the container accepts the codec, else re-encode."""
    if audio_in.codec_context.name in sink.supported_codecs:
        return AudioRoute(sink.add_stream_from_template(audio_in), transcode=False)
    layout = audio_in.layout
    if layout.name.endswith("channels"):  # an unnamed channel order, which encoders refuse
        layout = DEFAULT_LAYOUTS.get(len(layout.channels), layout)
    stream = sink.add_stream(sink.default_audio_codec, rate=audio_in.rate, layout=layout)
    return AudioRoute(stream, transcode=True)


def _read(source, video_in, audio_in, batch_size: int, span: Span | None, stage: _Stage) -> None:
    for batch in _decoded_batches(source, video_in, audio_in, batch_size, span):
        stage.put(stage.decoded, batch)
    stage.put(stage.decoded, END)


def _decoded_batches(source, video_in, audio_in, batch_size: int, span: Span | None = None) -> Iterator[object]:
    """Audio packets as they come, and batches of decoded frames (within span, if given)."""
    pixels: list[np.ndarray] = []
    pts: list[int] = []
    start, end = (span.start, span.end) if span else (None, None)
    if start is not None:
        source.seek(start, stream=video_in)  # to the keyframe at or before start
    for item in _demuxed(source, video_in, audio_in):
        if isinstance(item, av.Packet):
            yield item
            continue
        frame_pts, frame = item
        # Frames come in presentation order: past the end, the span is complete.
        if end is not None and frame_pts >= end:
            break
        if start is not None and frame_pts < start:
            continue  # a frame of the previous span, decoded on the way
        pixels.append(frame.to_ndarray(format="rgb24"))
        pts.append(frame_pts)
        if len(pixels) == batch_size:
            yield _FrameBatch(np.stack(pixels), pts, video_in.time_base)
            pixels, pts = [], []
    if pixels:
        yield _FrameBatch(np.stack(pixels), pts, video_in.time_base)


def _demuxed(source, video_in, audio_in) -> Iterator[av.Packet | tuple[int, av.VideoFrame]]:
    """Audio packets, and (pts, frame) for each decoded video frame."""
    last_pts = None
    step = max(1, round(1 / (video_in.average_rate or 25) / video_in.time_base)) if video_in.time_base else 1
    for packet in source.demux(video_in, *audio_in):
        if packet.stream.type == "audio":
            if packet.dts is not None:  # the demuxer's final empty packet has none
                yield packet
            continue
        for frame in packet.decode():
            # Some containers omit timestamps: continue the clock at the nominal rate.
            last_pts = frame.pts if frame.pts is not None else (last_pts + step if last_pts is not None else 0)
            yield last_pts, frame


def _write(
    sink, video_out, audio_out: dict[int, AudioRoute], colorspace: int | None, pts_offset: int, stage: _Stage
) -> None:
    while (item := stage.get(stage.stylized)) is not END:
        if isinstance(item, _FrameBatch):
            for rgb, pts in zip(item.pixels, item.pts):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if colorspace is not None:
                    frame = frame.reformat(format=video_out.pix_fmt, dst_colorspace=colorspace)
                frame.pts, frame.time_base = pts - pts_offset, item.time_base
                sink.mux(video_out.encode(frame))
            continue
        audio_out[item.stream.index].mux(sink, item)
    sink.mux(video_out.encode())
    for route in audio_out.values():
        route.flush(sink)
