"""Stylize or upscale a video or a still image: the one pipeline function that
the CLI and the workers both call.

A video flows through three stages joined by bounded queues, so memory does not
grow with the video's length and the network never waits on I/O:

    reader thread  -- demux + decode (PyAV) -> batches of RGB frames, audio packets
    calling thread -- the network on each batch (vidstyle.inference): a style,
                      an upscaler (output `factor` times the size), or both
    writer thread  -- encode + mux (PyAV): video re-encoded, audio copied

The output goes to a hidden temporary file beside the destination and is renamed
into place only when complete (vidstyle.media); audio and subtitles are carried
through by vidstyle.passthrough.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from vidstyle import exposure, formats
from vidstyle.errors import VidstyleError
from vidstyle.inference import BT601_LUMA, Controls, Stylizer, default_batch_size, luma_weights
from vidstyle.media import (EncodeOptions, Span, VideoInfo, check_input, check_output, is_image, open_input,
                            output_encoder, partial_file, partial_sequence, probe_video, read_still)
from vidstyle.passthrough import AudioRoute, add_audio_stream, add_subtitle_stream
from vidstyle.temporal import DEFAULT_STRENGTH, Motion, TemporalConsistency

QUEUE_BATCHES = 3  # batches in flight between two stages: enough to absorb jitter
# A segment of a split job first stylizes this many frames before its span (not
# written), so its temporal blend starts with the history a single run would have.
WARMUP_FRAMES = 32
log = logging.getLogger("vidstyle")

# Called with (frames done, frames expected or 0 if unknown) after every batch; raising from it
# (a cancelled job, say) stops the run and removes the partial output.
ProgressCallback = Callable[[int, int], None]



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


def _stylize_image(input_path: Path, partial: Path, suffix: str, stylizer: Stylizer, controls: Controls) -> None:
    still = read_still(input_path)
    pixels, alpha = still.pixels, still.alpha
    stylized = stylizer(pixels[None], controls)[0]
    if alpha is not None:
        alpha = _matching_alpha(alpha, stylized)
    image_format = Image.registered_extensions().get(suffix.lower())
    if alpha is not None and image_format not in ALPHA_IMAGE_FORMATS:
        log.warning(f"{image_format or suffix} holds no transparency: {input_path.name}'s is dropped")
        alpha = None
    if still.deep and image_format in formats.DEEP_IMAGE_ENCODERS:
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


class _Stop(Exception):
    """Another stage failed or the run was interrupted: unwind quietly."""


class _BatchQueue:
    """The queue between two stages. It holds at most QUEUE_BATCHES frame batches; the audio and
    subtitle packets between them do not count: a second of AAC is 43 packets, and counted they
    left room for one batch, so the decoding thread could not work ahead of the network (with the
    temporal stage's motion in it, the network waited on it for a sixth of its time)."""

    def __init__(self, batches: int) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.room = threading.Semaphore(batches)


class _Stage:
    """Bounded queues between the stages plus the first error any stage raised."""

    def __init__(self) -> None:
        self.decoded = _BatchQueue(QUEUE_BATCHES)
        self.stylized = _BatchQueue(QUEUE_BATCHES)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stopping.set()

    def put(self, q: _BatchQueue, item: object) -> None:
        if isinstance(item, _FrameBatch):
            while not q.room.acquire(timeout=0.1):
                if self.stopping.is_set():
                    raise _Stop
        if self.stopping.is_set():
            raise _Stop
        q.items.put(item)

    def get(self, q: _BatchQueue) -> object:
        while not self.stopping.is_set():
            try:
                item = q.items.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, _FrameBatch):
                q.room.release()
            return item
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
    temporal = TemporalConsistency(temporal_strength, stylizer.feature_stride) if temporal_strength > 0 else None
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
