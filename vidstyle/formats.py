"""What goes into which output file: vidstyle's one policy for containers,
video encoders (their pixel formats, settings and limits) and audio.

The output container follows the output path's suffix; the video encoder
follows the container unless the user names one (checked against what the
container holds); audio is copied when the container holds its codec, else
re-encoded to the container's own audio codec, else dropped with a warning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidstyle.errors import VidstyleError

# SVT-AV1 prints its whole configuration to stderr on every run unless told otherwise.
os.environ.setdefault("SVT_LOG", "1")  # errors only


@dataclass(frozen=True)
class Container:
    name: str  # as users know it
    video: tuple[str, ...]  # video codecs (FFmpeg's names) it holds; the first is the default
    audio: tuple[str, ...]  # audio codecs it holds, copied as they are; others are re-encoded to the first
    # AVI stores no presentation times: B-frames (stored out of order) would play out of order.
    b_frames: bool = True


_MP4 = Container("MP4", ("h264", "hevc", "av1", "vp9", "mpeg4"), ("aac", "mp3", "opus", "flac", "ac3", "eac3", "alac"))
_TS = Container("MPEG-TS", ("h264", "hevc"), ("aac", "mp3", "mp2", "ac3", "eac3", "opus"))
CONTAINERS: dict[str, Container] = {
    ".mp4": _MP4,
    ".mov": Container("MOV", ("h264", "hevc", "prores", "av1", "mpeg4", "mjpeg"),
                      ("aac", "mp3", "alac", "ac3", "eac3", "flac", "opus", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_s24be")),
    ".mkv": Container("Matroska", ("h264", "hevc", "vp9", "av1", "prores", "mpeg4", "mjpeg", "ffv1"),
                      ("aac", "opus", "vorbis", "mp3", "flac", "ac3", "eac3", "dts", "truehd", "alac", "mp2",
                       "pcm_s16le", "pcm_s24le", "pcm_f32le")),
    ".webm": Container("WebM", ("vp9", "av1"), ("opus", "vorbis")),
    ".avi": Container("AVI", ("h264", "mpeg4", "mjpeg"), ("mp3", "ac3", "mp2", "pcm_s16le", "pcm_u8"),
                      b_frames=False),
    ".ts": _TS, ".mts": _TS, ".m2ts": _TS,
    ".flv": Container("FLV", ("h264",), ("aac",)),
    ".gif": Container("GIF", ("gif",), ()),
}

# The encoders vidstyle chooses from and names in its messages (any other FFmpeg
# encoder, h264_nvenc say, works too where the container holds its codec).
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1", "prores": "prores_ks", "gif": "gif"}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
MIN_SIDE = {"libx265": 16, "libsvtav1": 4}  # smaller frames make the encoder refuse to open
# x264's speed presets, fastest first; other encoders get the same rank on their own scale.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


# Tags a muxer writes about itself or its file type: the output's muxer writes its own.
MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "handler_name", "vendor_id", "duration"}


def kept_metadata(tags: dict[str, str]) -> dict[str, str]:
    """The input's own tags (title, creation time, language...) to carry over to the output."""
    return {key: value for key, value in tags.items() if key.lower() not in MUXER_TAGS}


def container_for(path: Path) -> Container:
    try:
        return CONTAINERS[path.suffix.lower()]
    except KeyError:
        raise VidstyleError(f"no video container for the suffix '{path.suffix}' of {path.name} "
                            f"(use {', '.join(CONTAINERS)})") from None


def video_encoder(output_path: Path, requested: str | None = None) -> str:
    """The encoder for output_path: `requested` if its container holds that codec, else its default."""
    container = container_for(output_path)
    if not requested:
        return ENCODERS[container.video[0]]
    try:
        codec = av.Codec(requested, "w").canonical_name
    except (av.error.FFmpegError, ValueError):
        raise VidstyleError(f"unknown video codec '{requested}'") from None
    if codec not in container.video:
        takes = ", ".join(ENCODERS[c] for c in container.video if c in ENCODERS)
        raise VidstyleError(f"{container.name} ({output_path.suffix}) cannot hold {codec} video ('{requested}'): "
                            f"it takes {takes}")
    return requested


def segment_suffix(encoder: str) -> str:
    """The file type of the segments of a job split over workers: MP4, which keeps
    every timestamp exactly, or MOV, which does too, for what MP4 cannot hold (ProRes, GIF)."""
    return ".mp4" if av.Codec(encoder, "w").canonical_name in CONTAINERS[".mp4"].video else ".mov"


def check_frame_size(encoder: str, width: int, height: int) -> None:
    smallest = MIN_SIDE.get(encoder, 1)
    if width < smallest or height < smallest:
        raise VidstyleError(f"{encoder} cannot encode frames smaller than {smallest}x{smallest} (this video is "
                            f"{width}x{height}); use libx264 or libvpx-vp9")


def pixel_format(encoder: str, width: int, height: int, bit_depth: int = 8) -> str:
    """4:2:0 for even sizes; 4:4:4 for odd ones where the encoder has it (4:2:0
    cannot store them exactly); 10-bit for 10-bit input where the encoder has it,
    but for H.264 (whose 10-bit profile few players decode); ProRes 4:2:2 10-bit
    (4444 for odd widths); GIF a palette."""
    if encoder == "gif":
        return "pal8"
    if encoder == "prores_ks":
        return "yuv422p10le" if width % 2 == 0 else "yuv444p10le"
    codec = av.Codec(encoder, "w")
    formats = {f.name for f in codec.video_formats or ()}
    even = width % 2 == 0 and height % 2 == 0
    chroma = "yuv444p" if not even and "yuv444p" in formats else "yuv420p"
    if bit_depth > 8 and codec.canonical_name != "h264" and f"{chroma}10le" in formats:
        return f"{chroma}10le"
    return chroma


def encoder_options(encoder: str, pix_fmt: str, crf: int, preset: str, container: Container) -> dict[str, str]:
    """Constant-quality settings: `crf` and x264's `preset` names, on each encoder's own scale."""
    if encoder.startswith("libx26"):
        options = {"crf": str(crf), "preset": preset, **({} if container.b_frames else {"bf": "0"})}
        return {**options, "x265-params": "log-level=error"} if encoder == "libx265" else options
    if encoder.endswith("_nvenc"):
        return {"rc": "vbr", "cq": str(crf), "preset": preset}  # NVENC's nearest to CRF
    if encoder == "libvpx-vp9":
        return {"crf": str(crf), "b": "0", "deadline": "good", "row-mt": "1",  # b=0: constant quality
                "cpu-used": str(max(0, 8 - _speed_rank(preset)))}
    if encoder == "libsvtav1":
        return {"crf": str(crf), "preset": str(13 - _speed_rank(preset))}
    if encoder == "prores_ks":  # fixed quality per profile: HQ for 4:2:2, 4444 for 4:4:4
        return {"profile": "3" if pix_fmt.startswith("yuv422") else "4", "vendor": "apl0"}
    return {}


def _speed_rank(preset: str) -> int:
    try:
        return X264_PRESETS.index(preset)
    except ValueError:
        raise VidstyleError(f"unknown --preset '{preset}' (use one of {', '.join(X264_PRESETS)})") from None


def video_frame(rgb: np.ndarray, encoder, colorspace: int | None) -> av.VideoFrame:
    """A frame for `encoder` (a codec context) from (H, W, 3) uint8 RGB: converted
    with the input's colour matrix where it has one, or (GIF) given its own
    256-colour palette."""
    pix_fmt = encoder.pix_fmt
    if pix_fmt == "pal8":  # FFmpeg's scaler cannot make palettes; PIL's median cut can, per frame
        quantized = Image.fromarray(rgb).quantize(256)
        palette = np.array(quantized.getpalette()[:768], np.uint8).reshape(-1, 3)
        argb = np.zeros((256, 4), np.uint8)
        argb[: len(palette), 0], argb[: len(palette), 1:] = 255, palette
        return av.VideoFrame.from_ndarray((np.asarray(quantized), argb), format="pal8")
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    if colorspace is None:
        return frame
    frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace)
    # Some encoders (ProRes) take the colour tags from each frame, not from the stream.
    frame.color_primaries, frame.color_trc = encoder.color_primaries, encoder.color_trc
    return frame


def audio_encoder(output_path: Path, audio_in) -> str | None:
    """None to copy the stream's packets as they are, else the encoder to re-encode it
    with; VidstyleError if the container holds no audio at all."""
    container = container_for(output_path)
    if not container.audio:
        raise VidstyleError(f"{container.name} holds no audio")
    if audio_in.codec_context.name in container.audio:
        return None
    return AUDIO_ENCODERS[container.audio[0]]


def audio_rate(encoder: str, rate: int) -> int:
    """The input's sample rate where the encoder takes it, else the nearest higher one it does (Opus: 48 kHz)."""
    rates = av.Codec(encoder, "w").audio_rates
    if not rates or rate in rates:
        return rate
    return min((r for r in rates if r >= rate), default=max(rates))
