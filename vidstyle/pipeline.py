"""Stylize or upscale a video or a still image: the one pipeline function that
the CLI and the workers both call.

A video flows through three stages joined by bounded queues, so memory does not
grow with the video's length and the network never waits on I/O:

    reader thread  -- demux + decode (PyAV) -> batches of RGB frames, audio packets
    calling thread -- the network on each batch (vidstyle.inference): a style,
                      an upscaler (output `factor` times the size), or both
    writer thread  -- encode + mux (PyAV): video re-encoded, audio copied

The output goes to a hidden temporary file beside the destination and is renamed
into place only when complete.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidstyle import exposure, formats
from vidstyle.errors import VidstyleError
from vidstyle.inference import BT601_LUMA, Controls, Stylizer, default_batch_size, luma_weights
from vidstyle.temporal import DEFAULT_STRENGTH, Motion, TemporalConsistency

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
COLOUR_TAGS = ("colorspace", "color_primaries", "color_trc")
UNSPECIFIED = 2  # FFmpeg's value for an absent colour tag
QUEUE_BATCHES = 3  # batches in flight between two stages: enough to absorb jitter
# A segment of a split job first stylizes this many frames before its span (not
# written), so its temporal blend starts with the history a single run would have.
WARMUP_FRAMES = 32
log = logging.getLogger("vidstyle")

# Called with (frames done, frames expected or 0 if unknown) after every batch; raising from it
# (a cancelled job, say) stops the run and removes the partial output.
ProgressCallback = Callable[[int, int], None]


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
    temporal_strength: float = DEFAULT_STRENGTH,
    before_commit: Callable[[], None] | None = None,
    sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS,
    controls: Controls = Controls(),
) -> Path:
    """Stylize a video or image at `input_path` into `output_path` and return it; the
    output is `stylizer.factor` times the input's size (an upscaler's factor, else 1).

    `partial_token` names the temporary file (random by default): a job that is
    redelivered after its worker died passes its job id, so the new attempt
    replaces the dead one's partial file instead of leaving a second one.
    With `span`, only those frames, and no audio: one segment of a job split
    over several workers, joined later by vidstyle.segments.
    `temporal_strength` (0..1; 0 turns it off) is how much of each video frame's
    network input and features comes from the previous frame's, carried along the
    motion (vidstyle.temporal).
    `before_commit` is called just before the rename; raising from it (a worker
    whose job was handed to another, say) discards the output instead.
    An image sequence (`shot/frame_%04d.png`, in or out) plays at `sequence_fps`.
    `controls`: strength and colour preservation (vidstyle.inference.Controls), in the
    YCbCr matrix of the input (its colour tag; BT.601 for stills and untagged video)."""
    input_path, output_path = Path(input_path), Path(output_path)
    check_input(input_path)
    if not is_image(input_path):
        output_encoder(input_path, output_path, encode.codec, sequence_fps)
    elif formats.is_sequence(output_path):
        raise VidstyleError(f"a still image comes out as one image, not a sequence: {output_path}")
    renamed = check_output(output_path, force)
    if not renamed.parent.is_dir() or not os.access(renamed.parent, os.W_OK):
        raise VidstyleError(f"cannot write to output directory {renamed.parent} (missing or not writable)")
    written = partial_sequence if formats.is_sequence(output_path) else partial_file
    with written(output_path, partial_token, before_commit) as partial:
        if is_image(input_path):
            _stylize_image(input_path, partial, output_path.suffix, stylizer, replace(controls, luma=BT601_LUMA))
            if on_progress:
                on_progress(1, 1)
        else:
            _stylize_video(input_path, partial, stylizer, batch_size, encode, on_progress, span, temporal_strength,
                           sequence_fps, controls)
    return output_path


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


def _stylize_image(input_path: Path, partial: Path, suffix: str, stylizer: Stylizer, controls: Controls) -> None:
    # A 16-bit PNG or TIFF is decoded by FFmpeg (Pillow reads 8 bits of it, or none), and
    # written back 16-bit where the output's format holds it.
    deep = formats.deep_image(input_path)
    if deep is not None:
        pixels, alpha = formats.rgb_pixels(deep), formats.used_alpha(deep)
    else:
        try:
            with Image.open(input_path) as opened:
                # Phones store portrait photos sideways plus an EXIF flag: apply it.
                image = ImageOps.exif_transpose(opened)
                pixels = np.array(image.convert("RGB"))
                alpha = _transparency(image)
        except (UnidentifiedImageError, OSError) as exc:
            raise VidstyleError(f"not a readable image: {input_path}") from exc
    stylized = stylizer(pixels[None], controls)[0]
    if alpha is not None:
        alpha = _matching_alpha(alpha, stylized)
    image_format = Image.registered_extensions().get(suffix.lower())
    if alpha is not None and image_format not in ALPHA_IMAGE_FORMATS:
        log.warning(f"{image_format or suffix} holds no transparency: {input_path.name}'s is dropped")
        alpha = None
    if deep is not None and image_format in formats.DEEP_IMAGE_ENCODERS:
        formats.write_image(partial, formats.DEEP_IMAGE_ENCODERS[image_format], stylized, alpha, bit_depth=16)
        return
    out = Image.fromarray(stylized)
    if alpha is not None:  # the stylized colour, under the input's own transparency
        out.putalpha(Image.fromarray(((alpha.astype(np.uint32) + 128) // 257).astype(np.uint8)))
    try:
        out.save(partial, format=image_format, quality=95)
    except (KeyError, ValueError) as exc:
        raise VidstyleError(f"cannot write an image with suffix '{suffix}' (use .jpg, .png, .webp or .tif)") from exc


ALPHA_IMAGE_FORMATS = {"PNG", "WEBP", "TIFF"}


def _matching_alpha(alpha: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The input's alpha plane at the output's size: upscaled as the colour is (bicubic) where it is larger."""
    height, width = rgb.shape[:2]
    if alpha.shape == (height, width):
        return alpha
    return cv2.resize(alpha, (width, height), interpolation=cv2.INTER_CUBIC)


def _transparency(image: Image.Image) -> np.ndarray | None:
    """The image's alpha channel (uint16, as formats.alpha_plane), if it has one that is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return np.asarray(alpha, np.uint16) * 257 if alpha.getextrema()[0] < 255 else None


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
    motions: list[Motion | None] | None = None  # each frame's motion from the one before, with temporal blending
    warmup: bool = False  # frames before a segment's span: stylized for the blend's history, not written
    alpha: list[np.ndarray] | None = None  # each input frame's alpha plane, where the output keeps it
    gains: np.ndarray | None = None  # each frame's exposure gain (vidstyle.exposure), undone after the network


def _stylize_video(
    input_path: Path,
    partial: Path,
    stylizer: Stylizer,
    batch_size: int | None,
    encode: EncodeOptions,
    on_progress: ProgressCallback | None,
    span: Span | None = None,
    temporal_strength: float = DEFAULT_STRENGTH,
    sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS,
    controls: Controls = Controls(),
) -> None:
    info = probe_video(input_path, sequence_fps)
    controls = replace(controls, luma=luma_weights(info.colour.get("colorspace")))
    temporal = TemporalConsistency(temporal_strength) if temporal_strength > 0 else None
    expected = span.frames if span else info.frames
    batch_size = batch_size or default_batch_size(stylizer.device, info.height * stylizer.factor,
                                                  info.width * stylizer.factor)
    stylizer.expect(expected, info.height, info.width, batch_size)  # compile only where it pays
    stage = _Stage()
    source = open_input(input_path, sequence_fps)
    try:
        sink = formats.open_output(partial, info.first_number)
    except (av.error.FFmpegError, ValueError) as exc:
        source.close()
        raise VidstyleError(f"cannot write {partial.suffix or 'this kind of'} files: {exc}") from exc
    threads = []
    try:
        video_in = source.streams.video[0]
        audio_in = [] if span else list(source.streams.audio)
        subtitles_in = [] if span else list(source.streams.subtitles)
        video_out = _add_video_stream(sink, video_in, info, encode, stylizer.factor)
        keep_alpha = info.transparent and formats.has_alpha(video_out.pix_fmt)
        audio_out = {s.index: add_audio_stream(sink, s) for s in audio_in}
        audio_out.update({s.index: add_subtitle_stream(sink, s) for s in subtitles_in})  # copied like audio
        threads.append(stage.run(lambda: _read(source, video_in, audio_in + subtitles_in, batch_size, span, temporal,
                                               stage, keep_alpha),
                                 f"cannot decode {input_path}: corrupt or truncated"))
        # A segment's clock starts at 0: an MP4 stream starting later gets an edit
        # list in milliseconds, which would shift every timestamp by a rounding.
        pts_offset = span.start or 0 if span else 0
        threads.append(stage.run(lambda: _write(sink, video_out, audio_out, info.colour.get("colorspace"), pts_offset, stage),
                                 "cannot encode the output"))
        done = 0
        while (item := stage.get(stage.decoded)) is not END:
            if isinstance(item, _FrameBatch):
                item.pixels = stylizer(item.pixels, controls, temporal and temporal.feature_blend(item.motions))
                item.pixels = exposure.restore(item.pixels, item.gains)
                if item.warmup:
                    continue
                done += len(item.pts)
            stage.put(stage.stylized, item)
            if on_progress and isinstance(item, _FrameBatch):
                on_progress(done, expected and max(done, expected))  # 0: not known (MKV, WebM, FLV)
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


def _add_video_stream(sink, video_in, info: VideoInfo, encode: EncodeOptions, factor: int = 1):
    """The output's video stream, for frames `factor` times the input's size (an upscale's)."""
    encoder = formats.video_encoder(Path(sink.name), encode.codec)
    width, height = info.width * factor, info.height * factor
    formats.check_frame_size(encoder, width, height)
    stream = sink.add_stream(encoder, rate=info.rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = formats.pixel_format(encoder, width, height, info.bit_depth, info.transparent)
    # Keep the input's clock so every frame keeps its exact timestamp (VFR too).
    stream.codec_context.time_base = video_in.time_base
    stream.time_base = video_in.time_base
    stream.options = formats.encoder_options(encoder, stream.pix_fmt, encode.crf, encode.preset,
                                            formats.container_for(Path(sink.name)))
    if encoder.endswith("_nvenc"):
        _check_hardware_encoder(encoder, width, height, stream.pix_fmt)
    if info.transparent and not formats.has_alpha(stream.pix_fmt):
        log.warning(f"{video_in.container.name}: its transparency (alpha channel) is dropped: {encoder} in "
                    f"{formats.container_for(Path(sink.name)).name} holds none (use prores_ks, libvpx-vp9, PNG or TIFF)")
    # The input's tags, the file's (title, creation time...) and its video stream's (language...).
    sink.metadata.update(formats.kept_metadata(video_in.container.metadata))
    stream.metadata.update(formats.kept_metadata(video_in.metadata))
    if info.rotation:
        stream.set_display_rotation(info.rotation)
    for tag, value in info.colour.items():
        setattr(stream.codec_context, tag, value)
    return stream


def _check_hardware_encoder(codec: str, width: int, height: int, pix_fmt: str) -> None:
    """Open the encoder once before any work: without its GPU and driver it fails at
    once with a clear message, not after the first batch with an errno."""
    context = av.CodecContext.create(codec, "w")  # freed with the object
    context.width, context.height, context.pix_fmt, context.time_base = width, height, pix_fmt, Fraction(1, 25)
    try:
        context.open()
    except (av.error.FFmpegError, OSError) as exc:
        raise VidstyleError(f"the {codec} encoder cannot run here: it needs an NVIDIA GPU with NVENC and its driver "
                            f"({getattr(exc, 'strerror', None) or exc}); use --codec libx264") from exc


DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@dataclass
class AudioRoute:
    """Where an input audio (or subtitle) stream's packets go in the output: copied, re-encoded,
    or nowhere (stream None: the output cannot take it, see add_audio_stream)."""

    stream: av.stream.Stream | None
    transcode: bool
    skipped: int = 0  # packets that would not decode

    def mux(self, sink, packet: av.Packet) -> None:
        if self.stream is None:
            return
        if not self.transcode:
            packet.stream = self.stream
            sink.mux(packet)
            return
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            # A damaged packet costs a moment of silence, not the video.
            self.skipped += 1
            if self.skipped == 1:
                log.warning(f"audio stream {packet.stream.index}: skipping packets that do not decode")
            return
        for samples in decoded:
            sink.mux(self.stream.encode(samples))

    def flush(self, sink) -> None:
        if self.stream is not None and self.transcode:
            sink.mux(self.stream.encode())


def add_audio_stream(sink, audio_in) -> AudioRoute:
    """Copy the audio packets when the container holds the codec, else re-encode
    them (vidstyle.formats); audio the output cannot take is dropped with a warning,
    and the video still comes out."""
    what = f"audio stream {audio_in.index} ({audio_in.codec_context.name})"
    try:
        encoder = formats.audio_encoder(Path(sink.name), audio_in)
    except VidstyleError as exc:
        log.warning(f"{exc}: {what} dropped")
        return AudioRoute(None, transcode=False)
    if encoder is None:
        stream = sink.add_stream_from_template(audio_in)
        stream.metadata.update(formats.kept_metadata(audio_in.metadata))
        return AudioRoute(stream, transcode=False)
    if not _decodes(audio_in):
        log.warning(f"cannot decode {what} to re-encode it for {formats.container_for(Path(sink.name)).name}: dropped")
        return AudioRoute(None, transcode=False)
    layout = audio_in.layout
    if layout.name.endswith("channels"):  # an unnamed channel order, which encoders refuse
        layout = DEFAULT_LAYOUTS.get(len(layout.channels), layout)
    stream = sink.add_stream(encoder, rate=formats.audio_rate(encoder, audio_in.rate), layout=layout)
    stream.metadata.update(formats.kept_metadata(audio_in.metadata))  # its language, above all
    return AudioRoute(stream, transcode=True)


def add_subtitle_stream(sink, subtitles_in) -> AudioRoute:
    """Subtitle packets are copied where the container holds their codec, else dropped with a warning."""
    if not formats.copies_subtitles(Path(sink.name), subtitles_in):
        log.warning(f"{formats.container_for(Path(sink.name)).name} cannot hold {formats.subtitle_codec(subtitles_in)} "
                    f"subtitles: subtitle stream {subtitles_in.index} dropped")
        return AudioRoute(None, transcode=False)
    stream = sink.add_stream_from_template(subtitles_in)
    stream.metadata.update(formats.kept_metadata(subtitles_in.metadata))
    return AudioRoute(stream, transcode=False)


def _decodes(audio_in, packets: int = 16) -> bool:
    """Whether the stream's first packets decode to sound (read from a second handle on the file)."""
    try:
        with av.open(audio_in.container.name) as probe:
            for index, packet in enumerate(probe.demux(probe.streams[audio_in.index])):
                if packet.size and packet.decode():
                    return True
                if index >= packets:
                    break
    except av.error.FFmpegError:
        pass
    return False


def _read(source, video_in, audio_in, batch_size: int, span: Span | None, temporal: TemporalConsistency | None,
          stage: _Stage, keep_alpha: bool = False) -> None:
    for batch in _decoded_batches(source, video_in, audio_in, batch_size, span, temporal, keep_alpha):
        stage.put(stage.decoded, batch)
    stage.put(stage.decoded, END)


def _decoded_batches(
    source, video_in, audio_in, batch_size: int, span: Span | None = None, temporal: TemporalConsistency | None = None,
    keep_alpha: bool = False,
) -> Iterator[object]:
    """Audio packets as they come, and batches of decoded frames (within span, if given),
    with their exposure lifted (vidstyle.exposure) and prepared by the temporal stage if
    given. With it, a span that does not start the video is preceded by a warm-up batch
    of the frames before it. `keep_alpha`: each batch carries its frames' alpha planes too."""
    alphas: list[np.ndarray] = []
    pixels: list[np.ndarray] = []
    pts: list[int] = []
    start, end = (span.start, span.end) if span else (None, None)
    warmup: collections.deque = collections.deque(maxlen=WARMUP_FRAMES if temporal else 0)
    if start is not None:
        # To the keyframe at or before start (or before the warm-up frames).
        source.seek(start - warmup.maxlen * _frame_step(video_in), stream=video_in)

    def batch(frames: list[np.ndarray], frame_pts: list[int], is_warmup: bool = False) -> _FrameBatch:
        frame_alphas = alphas[:len(frame_pts)] if keep_alpha else None
        del alphas[:len(frame_pts)]
        network_input, gains = exposure.lift(np.stack(frames))
        if temporal is None:
            return _FrameBatch(network_input, frame_pts, video_in.time_base, alpha=frame_alphas, gains=gains)
        network_input, motions = temporal.prepare(network_input)
        return _FrameBatch(network_input, frame_pts, video_in.time_base, motions, is_warmup, frame_alphas, gains)

    for item in _demuxed(source, video_in, audio_in):
        if isinstance(item, av.Packet):
            yield item
            continue
        frame_pts, frame = item
        # Frames come in presentation order: past the end, the span is complete.
        if end is not None and frame_pts >= end:
            break
        if start is not None and frame_pts < start:
            warmup.append(frame)  # a frame of the previous span, decoded on the way
            continue
        if warmup:
            frames = [formats.rgb_pixels(earlier) for earlier in warmup]
            warmup.clear()
            for first in range(0, len(frames), batch_size):
                yield batch(frames[first:first + batch_size], [], is_warmup=True)
        pixels.append(formats.rgb_pixels(frame))
        pts.append(frame_pts)
        if keep_alpha:
            alphas.append(formats.alpha_plane(frame))
        if len(pixels) == batch_size:
            yield batch(pixels, pts)
            pixels, pts = [], []
    if pixels:
        yield batch(pixels, pts)


def _frame_step(video_in) -> int:
    """One frame's duration at the nominal rate, in the stream's time base (1 without one)."""
    if not video_in.time_base:
        return 1
    return max(1, round(1 / (video_in.average_rate or 25) / video_in.time_base))


def _demuxed(source, video_in, audio_in) -> Iterator[av.Packet | tuple[int, av.VideoFrame]]:
    """Audio (and subtitle) packets, and (pts, frame) for each decoded video frame."""
    last_pts = None
    step = _frame_step(video_in)
    # AVI stores one time per frame slot, in decoding order: with B-frames the
    # decoder hands frames back with each other's times. Frames come out in
    # presentation order, so the n-th frame takes the n-th slot instead.
    slots: collections.deque[int] | None = collections.deque() if source.format.name == "avi" else None
    decoder = formats.video_decoder(video_in)
    for packet in source.demux(video_in, *audio_in):
        if packet.stream.type != "video":  # audio and subtitles
            if packet.dts is not None:  # the demuxer's final empty packet has none
                yield packet
            continue
        if slots is not None and packet.size and packet.dts is not None:
            slots.append(packet.dts)
        for frame in formats.decoded(packet, decoder):
            if slots is None:
                pts = frame.pts
            else:
                pts = slots.popleft() if slots else None
            # Some containers omit timestamps: continue the clock at the nominal rate.
            last_pts = pts if pts is not None else (last_pts + step if last_pts is not None else 0)
            yield last_pts, frame


def _write(
    sink, video_out, audio_out: dict[int, AudioRoute], colorspace: int | None, pts_offset: int, stage: _Stage
) -> None:
    while (item := stage.get(stage.stylized)) is not END:
        if isinstance(item, _FrameBatch):
            for index, (rgb, pts) in enumerate(zip(item.pixels, item.pts)):
                alpha = _matching_alpha(item.alpha[index], rgb) if item.alpha else None
                frame = formats.video_frame(rgb, video_out.codec_context, colorspace, alpha)
                frame.pts, frame.time_base = pts - pts_offset, item.time_base
                sink.mux(video_out.encode(frame))
            continue
        audio_out[item.stream.index].mux(sink, item)
    sink.mux(video_out.encode())
    for route in audio_out.values():
        route.flush(sink)
