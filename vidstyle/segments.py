"""Splitting one long video over many workers, and joining the pieces.

A video is cut into spans that start at keyframes, so each decodes on its own;
each span is stylized into a video-only segment file by the usual pipeline
(`stylize_file(..., span=...)`); the join then copies the segments' encoded
packets, in order and without re-encoding, into one file, with the source's
audio muxed in once. Every frame keeps the source's own timestamp, so the
joined file has exactly the frames and times a single-worker run would have.
"""
from __future__ import annotations

import bisect
import heapq
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from vidstyle.errors import VidstyleError
from vidstyle.formats import kept_metadata
from vidstyle.media import Span, open_input
from vidstyle.passthrough import add_audio_stream

# Automatic segment length: every worker gets about two segments (so a slow one
# is not the last to finish alone), but no segment is so short that loading the
# network and warming the GPU outweigh it, nor so long that a lost one costs much.
MIN_AUTO_SEGMENT_SECONDS = 30.0
MAX_AUTO_SEGMENT_SECONDS = 300.0
SEGMENTS_PER_WORKER = 2


def auto_segment_seconds(duration_seconds: float, workers: int) -> float:
    return min(MAX_AUTO_SEGMENT_SECONDS,
               max(MIN_AUTO_SEGMENT_SECONDS, duration_seconds / (SEGMENTS_PER_WORKER * max(1, workers))))


def plan_spans(path: Path, segment_seconds: float | None = None, workers: int = 1) -> list[Span]:
    """Spans of about segment_seconds (None: auto_segment_seconds for the video's
    length and this many workers), cut at keyframes; one span if the video has
    no timestamps to cut by or is too short to split."""
    with open_input(path) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        frame_pts, keyframes = [], []
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if packet.pts is None:
                return [Span(None, None, stream.frames)]
            frame_pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    if not frame_pts:
        raise VidstyleError(f"no video frames in {path}")
    frame_pts.sort()
    if segment_seconds is None:
        segment_seconds = auto_segment_seconds(float((frame_pts[-1] - frame_pts[0]) * time_base), workers)
    length = Fraction(segment_seconds) / time_base
    cuts, last_cut = [], frame_pts[0]
    for keyframe in sorted(keyframes):
        if keyframe - last_cut >= length:
            cuts.append(keyframe)
            last_cut = keyframe
    # A short tail joins the previous segment: half a segment is not worth a task.
    if cuts and frame_pts[-1] - cuts[-1] < length / 2:
        cuts.pop()
    bounds = [None, *cuts, None]
    return [Span(start, end, _count_between(frame_pts, start, end)) for start, end in zip(bounds, bounds[1:])]


def _count_between(sorted_pts: list[int], start: int | None, end: int | None) -> int:
    low = 0 if start is None else bisect.bisect_left(sorted_pts, start)
    high = len(sorted_pts) if end is None else bisect.bisect_left(sorted_pts, end)
    return high - low


def join_segments(source_path: Path, segments: list[tuple[Path, Span]], output_path: Path) -> None:
    """Concatenate the segments' video packets (no re-encoding) with the source's
    audio (copied, or re-encoded where the container needs it) into output_path.

    segments: each segment file with the span it holds; a segment's clock
    starts at 0 (see the pipeline), the join puts it back at the span's start.
    """
    with open_input(source_path) as source:
        source_time_base = source.streams.video[0].time_base
    opened = [(open_input(path), span.start or 0) for path, span in segments]
    try:
        with open_input(source_path) as source, av.open(str(output_path), "w") as sink:
            video_out = sink.add_stream_from_template(opened[0][0].streams.video[0])
            sink.metadata.update(kept_metadata(source.metadata))
            video_out.metadata.update(kept_metadata(source.streams.video[0].metadata))
            audio_routes = {s.index: add_audio_stream(sink, s) for s in source.streams.audio}
            video = _video_packets([(segment, start * source_time_base) for segment, start in opened])
            audio = (p for p in source.demux(*source.streams.audio) if p.dts is not None) if audio_routes else iter(())
            # Interleaved by time, as a muxer expects and players stream best.
            for packet in heapq.merge(video, audio, key=_packet_time):
                if packet.stream.type == "video":
                    packet.stream = video_out
                    sink.mux(packet)
                else:
                    audio_routes[packet.stream.index].mux(sink, packet)
            for route in audio_routes.values():
                route.flush(sink)
    finally:
        for segment, _ in opened:
            segment.close()


def _packet_time(packet: av.Packet) -> Fraction:
    return (packet.dts if packet.dts is not None else packet.pts) * packet.time_base


def _video_packets(segments: list[tuple[av.container.InputContainer, Fraction]]) -> Iterator[av.Packet]:
    """The segments' packets in order, each moved to its start time (seconds),
    with decode timestamps kept strictly increasing across the joins (each
    encoder starts its own B-frame delay)."""
    last_dts = None
    for segment, start_seconds in segments:
        stream = segment.streams.video[0]
        offset = start_seconds / stream.time_base
        if offset.denominator != 1:
            raise VidstyleError(f"segment time base {stream.time_base} cannot express its start {start_seconds} s exactly")
        for packet in segment.demux(stream):
            if not packet.size:
                continue
            packet.pts += int(offset)
            if packet.dts is not None:
                packet.dts += int(offset)
            if last_dts is not None and packet.dts is not None:
                dts = packet.dts * packet.time_base
                if dts <= last_dts:
                    packet.dts = int(last_dts / packet.time_base) + 1
            if packet.dts is not None:
                last_dts = packet.dts * packet.time_base
            yield packet
