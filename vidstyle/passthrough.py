"""The streams a video carries beside its frames, audio and subtitles: copied into
the output where its container holds their codec, else re-encoded (audio) or
dropped with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av

from vidstyle import formats
from vidstyle.errors import VidstyleError

log = logging.getLogger("vidstyle")


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
