"""What goes into which output file: vidstyle's one policy for containers,
video encoders (their pixel formats, settings and limits) and audio.

The output container follows the output path's suffix; the video encoder
follows the container unless the user names one (checked against what the
container holds); audio is copied when the container holds its codec, else
re-encoded to the container's own audio codec, else dropped with a warning.
Subtitles are copied where the container holds their codec, else dropped with
a warning. An image sequence (`shot/frame_%04d.png`) is a container too: the
frames' format follows the suffix, and the frames have no audio or subtitles.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
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
    subtitles: tuple[str, ...] = ()  # subtitle codecs it holds, copied as they are; others are dropped


_MP4 = Container("MP4", ("h264", "hevc", "av1", "vp9", "mpeg4"), ("aac", "mp3", "opus", "flac", "ac3", "eac3", "alac"),
                 subtitles=("mov_text",))
_TS = Container("MPEG-TS", ("h264", "hevc"), ("aac", "mp3", "mp2", "ac3", "eac3", "opus"),
                subtitles=("dvb_subtitle", "dvb_teletext"))
CONTAINERS: dict[str, Container] = {
    ".mp4": _MP4,
    ".mov": Container("MOV", ("h264", "hevc", "prores", "av1", "mpeg4", "mjpeg"),
                      ("aac", "mp3", "alac", "ac3", "eac3", "flac", "opus", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_s24be"),
                      subtitles=("mov_text",)),
    ".mkv": Container("Matroska", ("h264", "hevc", "vp9", "av1", "prores", "mpeg4", "mjpeg", "ffv1"),
                      ("aac", "opus", "vorbis", "mp3", "flac", "ac3", "eac3", "dts", "truehd", "alac", "mp2",
                       "pcm_s16le", "pcm_s24le", "pcm_f32le"),
                      subtitles=("subrip", "ass", "ssa", "webvtt", "hdmv_pgs_subtitle", "dvd_subtitle", "dvb_subtitle")),
    ".webm": Container("WebM", ("vp9", "av1"), ("opus", "vorbis"), subtitles=("webvtt",)),
    ".avi": Container("AVI", ("h264", "mpeg4", "mjpeg"), ("mp3", "ac3", "mp2", "pcm_s16le", "pcm_u8"),
                      b_frames=False),
    ".ts": _TS, ".mts": _TS, ".m2ts": _TS,
    ".flv": Container("FLV", ("h264",), ("aac",)),
    ".gif": Container("GIF", ("gif",), ()),
}

# The encoders vidstyle chooses from and names in its messages (any other FFmpeg
# encoder, h264_nvenc say, works too where the container holds its codec).
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1", "prores": "prores_ks", "gif": "gif",
            "png": "png", "tiff": "tiff", "mjpeg": "mjpeg"}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
MIN_SIDE = {"libx265": 16, "libsvtav1": 4}  # smaller frames make the encoder refuse to open
# x264's speed presets, fastest first; other encoders get the same rank on their own scale.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


# Tags a muxer writes about itself or its file type: the output's muxer writes its own.
MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "handler_name", "vendor_id", "duration",
              "alpha_mode"}


def kept_metadata(tags: dict[str, str]) -> dict[str, str]:
    """The input's own tags (title, creation time, language...) to carry over to the output."""
    return {key: value for key, value in tags.items() if key.lower() not in MUXER_TAGS}


# Image sequences (FFmpeg's image2 muxer and demuxer): one file per frame, named by a
# printf pattern (`frame_%04d.png`), no audio. Their frames have no times of their own:
# a sequence read in plays at --fps (DEFAULT_SEQUENCE_FPS, film's rate, as VFX shots are).
_PNG_SEQUENCE, _TIFF_SEQUENCE = Container("PNG sequence", ("png",), ()), Container("TIFF sequence", ("tiff",), ())
_JPEG_SEQUENCE = Container("JPEG sequence", ("mjpeg",), ())
SEQUENCES: dict[str, Container] = {".png": _PNG_SEQUENCE, ".tif": _TIFF_SEQUENCE, ".tiff": _TIFF_SEQUENCE,
                                   ".jpg": _JPEG_SEQUENCE, ".jpeg": _JPEG_SEQUENCE}
SEQUENCE_NUMBER = re.compile(r"%(0?\d*)d")
DEFAULT_SEQUENCE_FPS = Fraction(24)
# Rates written as decimals that mean NTSC's exact ones (x 1000/1001).
NTSC_RATES = {"23.976": Fraction(24000, 1001), "29.97": Fraction(30000, 1001), "47.952": Fraction(48000, 1001),
              "59.94": Fraction(60000, 1001), "119.88": Fraction(120000, 1001)}


def is_sequence(path: Path) -> bool:
    """Whether path names an image sequence: one frame-number pattern in its name, an image suffix."""
    return len(SEQUENCE_NUMBER.findall(path.name)) == 1 and path.suffix.lower() in SEQUENCES


def sequence_numbers(pattern: Path) -> list[int]:
    """The frame numbers of the files that `pattern` names, in order; VidstyleError if
    there are none or some are missing between the first and the last (FFmpeg would stop
    at the gap, and a shot with a hole is not a shot to pass off as whole)."""
    if not pattern.parent.is_dir():
        raise VidstyleError(f"no image sequence {pattern}: folder {pattern.parent} not found")
    numbers = sorted(n for f in pattern.parent.iterdir() if (n := frame_number(f.name, pattern)) is not None)
    if not numbers:
        raise VidstyleError(f"no files match the image sequence {pattern}")
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        shown = ", ".join(pattern.name % n for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise VidstyleError(f"image sequence {pattern} has gaps: {shown} missing (between frames {numbers[0]} and {numbers[-1]})")
    return numbers


def frame_number(name: str, pattern: Path) -> int | None:
    """The frame number of the file called `name` if it is one of pattern's frames (frame_0007.png: 7), else None."""
    before, _, after = SEQUENCE_NUMBER.split(pattern.name, maxsplit=1)
    digits = name[len(before):len(name) - len(after)]
    if not (name.startswith(before) and name.endswith(after) and digits.isdigit()):
        return None
    return int(digits) if pattern.name % int(digits) == name else None


def parse_fps(text: str | None) -> Fraction:
    """An image sequence's frame rate from `--fps` (24, 25, 23.976, 24000/1001); None or '': 24."""
    if not text:
        return DEFAULT_SEQUENCE_FPS
    try:
        rate = NTSC_RATES.get(text) or Fraction(text)
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if not 0 < rate <= 1000:
        raise VidstyleError(f"--fps must be a frame rate such as 24, 23.976 or 24000/1001, not '{text}'")
    return rate


def parse_size(text: str) -> tuple[int, int]:
    """A --size option's WIDTHxHEIGHT: '640x360' -> (640, 360)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise VidstyleError(f"--size must look like 640x360, not '{text}'") from exc
    return width, height


def open_sequence(pattern: Path, fps: Fraction) -> av.container.InputContainer:
    """An image sequence as a video stream at `fps`, from its first existing frame number."""
    first = sequence_numbers(pattern)[0]
    return av.open(str(pattern), "r", format="image2", options={"framerate": str(fps), "start_number": str(first)})


def open_output(path: Path, first_number: int = 1) -> av.container.OutputContainer:
    """The output file, or (an image sequence) its frames, numbered from first_number."""
    if is_sequence(path):
        return av.open(str(path), "w", format="image2", options={"start_number": str(first_number)})
    return av.open(str(path), "w")


def container_for(path: Path) -> Container:
    if is_sequence(path):
        return SEQUENCES[path.suffix.lower()]
    try:
        return CONTAINERS[path.suffix.lower()]
    except KeyError:
        raise VidstyleError(f"no video container for the suffix '{path.suffix}' of {path.name} "
                            f"(use {', '.join(CONTAINERS)}, or an image sequence such as out/frame_%04d.png)") from None


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


# The largest frames each encoder writes as a stream decoders accept: (longest side, samples a frame).
# H.264's highest level (6.2) holds 139,264 macroblocks (8192x4352) and HEVC's 35,651,584 samples, each
# at most sqrt(8 x that) a side; NVENC's H.264 stops at 4096 a side, its HEVC and AV1 at 8192; MPEG-4
# Part 2 below 8192. An upscale x4 of 1080p (7680x4320) fits every one but h264_nvenc.
MAX_FRAME = {"libx264": (16880, 139264 * 256), "libx265": (16888, 35651584), "h264_nvenc": (4096, 4096 * 4096),
             "hevc_nvenc": (8192, 8192 * 8192), "av1_nvenc": (8192, 8192 * 8192), "mpeg4": (8191, 8191 * 8191)}
LARGE_FRAME_ENCODERS = ("libx265", "libvpx-vp9", "libsvtav1")  # what to suggest instead, in this order


def check_frame_size(encoder: str, width: int, height: int) -> None:
    """Refuses, before any work, a frame size the encoder cannot write, naming one that can."""
    smallest = MIN_SIDE.get(encoder, 1)
    if width < smallest or height < smallest:
        raise VidstyleError(f"{encoder} cannot encode frames smaller than {smallest}x{smallest} (this video is "
                            f"{width}x{height}); use libx264 or libvpx-vp9")
    if not _fits(encoder, width, height):
        candidates = ("hevc_nvenc",) * encoder.endswith("_nvenc") + LARGE_FRAME_ENCODERS  # a GPU user keeps the GPU
        instead = next(other for other in candidates if _fits(other, width, height))
        side, samples = MAX_FRAME[encoder]
        raise VidstyleError(f"{encoder} cannot encode {width}x{height} frames (at most {side} pixels a side and "
                            f"{samples / 1e6:.1f} million pixels); use --codec {instead}")


def _fits(encoder: str, width: int, height: int) -> bool:
    side, samples = MAX_FRAME.get(encoder, (65536, 65536 * 65536))
    return max(width, height) <= side and width * height <= samples


# Encoders that store RGB (image sequences): (8-bit, 8-bit with alpha, 16-bit, 16-bit with alpha).
RGB_FORMATS = {"png": ("rgb24", "rgba", "rgb48be", "rgba64be"), "tiff": ("rgb24", "rgba", "rgb48le", "rgba64le")}


def pixel_format(encoder: str, width: int, height: int, bit_depth: int = 8, alpha: bool = False) -> str:
    """4:2:0 for even sizes; 4:4:4 for odd ones where the encoder has it (4:2:0
    cannot store them exactly); 10-bit for 10-bit input where the encoder has it,
    but for H.264 (whose 10-bit profile few players decode); ProRes 4:2:2 10-bit
    (4444 for odd widths); GIF a palette; PNG and TIFF RGB, 16-bit for deeper input.
    `alpha`: the input's transparency, kept where the encoder holds it (PNG, TIFF,
    ProRes 4444, VP9); see has_alpha."""
    if encoder == "gif":
        return "pal8"
    if encoder in RGB_FORMATS:
        return RGB_FORMATS[encoder][2 * (bit_depth > 8) + alpha]
    if encoder == "prores_ks":
        return "yuva444p10le" if alpha else "yuv422p10le" if width % 2 == 0 else "yuv444p10le"
    codec = av.Codec(encoder, "w")
    formats = {f.name for f in codec.video_formats or ()}
    even = width % 2 == 0 and height % 2 == 0
    chroma = "yuv444p" if not even and "yuv444p" in formats else "yuv420p"
    if encoder == "mjpeg":  # JPEG's full-range flavour
        return chroma.replace("yuv", "yuvj")
    if alpha and chroma.replace("yuv", "yuva") in formats:
        return chroma.replace("yuv", "yuva")
    if bit_depth > 8 and codec.canonical_name != "h264" and f"{chroma}10le" in formats:
        return f"{chroma}10le"
    return chroma


def has_alpha(pix_fmt: str) -> bool:
    return any(component.is_alpha for component in av.VideoFormat(pix_fmt).components)


def video_decoder(stream) -> av.CodecContext | None:
    """A decoder for the video stream other than its own where that one would lose something,
    else None: FFmpeg's VP9 decoder ignores the alpha channel that WebM stores beside VP9, libvpx's reads it."""
    tags = {key.lower(): value for key, value in stream.metadata.items()}
    if stream.codec_context.name == "vp9" and tags.get("alpha_mode") == "1":
        return av.CodecContext.create("libvpx-vp9", "r")
    return None


def decoded(packet: av.Packet, decoder: av.CodecContext | None) -> list[av.VideoFrame]:
    """The frames a video packet decodes to, by `decoder` (see video_decoder) or else its stream's own."""
    return decoder.decode(packet) if decoder is not None else packet.decode()


def rgb_pixels(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB for the network; 16-bit RGB rounded to the
    nearest 8-bit level (FFmpeg's scaler dithers it, so a frame would not come back the same)."""
    if frame.format.name.startswith(("rgb48", "rgba64", "bgr48", "bgra64")):
        deep = frame.to_ndarray(format="rgb48le").astype(np.uint32)
        return ((deep + 128) // 257).astype(np.uint8)
    return frame.to_ndarray(format="rgb24")


def alpha_plane(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame's alpha channel, (H, W) uint16 whatever its depth (8-bit a becomes a x 257)."""
    return frame.to_ndarray(format="rgba64le")[..., 3]


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
    if encoder == "prores_ks":  # fixed quality per profile: HQ for 4:2:2, 4444 for 4:4:4 (and alpha)
        return {"profile": "3" if pix_fmt.startswith("yuv422") else "4", "vendor": "apl0"}
    if encoder == "mjpeg":  # JPEG frames at about quality 95, not FFmpeg's low default bit rate
        return {"qmin": "1", "qmax": "2"}
    return {}


def _speed_rank(preset: str) -> int:
    try:
        return X264_PRESETS.index(preset)
    except ValueError:
        raise VidstyleError(f"unknown --preset '{preset}' (use one of {', '.join(X264_PRESETS)})") from None


def video_frame(rgb: np.ndarray, encoder, colorspace: int | None, alpha: np.ndarray | None = None) -> av.VideoFrame:
    """A frame for `encoder` (a codec context) from (H, W, 3) uint8 RGB: converted
    with the input's colour matrix where it has one, or (GIF) given its own
    256-colour palette. `alpha` (H, W) uint16, the input frame's, goes beside the
    colour where the encoder holds it; 16-bit output takes the 8-bit colour
    widened (x 257: 255 becomes 65535)."""
    pix_fmt = encoder.pix_fmt
    deep = max(component.bits for component in av.VideoFormat(pix_fmt).components) > 8
    if alpha is not None and has_alpha(pix_fmt):
        rgba = np.dstack([rgb.astype(np.uint16) * 257, alpha])
        return _tagged(av.VideoFrame.from_ndarray(rgba, format="rgba64le"), encoder, colorspace)
    if deep and pix_fmt.startswith("rgb"):
        return av.VideoFrame.from_ndarray(rgb.astype(np.uint16) * 257, format="rgb48le")
    if pix_fmt == "pal8":  # FFmpeg's scaler cannot make palettes; PIL's median cut can, per frame
        quantized = Image.fromarray(rgb).quantize(256)
        palette = np.array(quantized.getpalette()[:768], np.uint8).reshape(-1, 3)
        argb = np.zeros((256, 4), np.uint8)
        argb[: len(palette), 0], argb[: len(palette), 1:] = 255, palette
        return av.VideoFrame.from_ndarray((np.asarray(quantized), argb), format="pal8")
    return _tagged(av.VideoFrame.from_ndarray(rgb, format="rgb24"), encoder, colorspace)


def _tagged(frame: av.VideoFrame, encoder, colorspace: int | None) -> av.VideoFrame:
    """frame in the encoder's pixel format, converted with the input's colour matrix and tagged with it."""
    if colorspace is None:
        return frame
    frame = frame.reformat(format=encoder.pix_fmt, dst_colorspace=colorspace)
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


# Still-image formats (Pillow's names) that hold 16 bits a sample, and FFmpeg's encoders for them.
DEEP_IMAGE_ENCODERS = {"PNG": "png", "TIFF": "tiff"}


def deep_image(path: Path) -> av.VideoFrame | None:
    """The picture of a PNG or TIFF of more than 8 bits a sample, decoded by FFmpeg; None for any other image."""
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration):
        return None  # (Pillow then says whether it is an image at all)
    return frame if max(component.bits for component in frame.format.components) > 8 else None


def used_alpha(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's alpha plane (alpha_plane) if it has one that is not fully opaque."""
    if not any(component.is_alpha for component in frame.format.components):
        return None
    alpha = alpha_plane(frame)
    return alpha if int(alpha.min()) < 65535 else None


def write_image(path: Path, encoder: str, rgb: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> None:
    """One still image (PNG, TIFF) encoded by FFmpeg: (H, W, 3) uint8 colour, alpha as video_frame takes it."""
    height, width = rgb.shape[:2]
    context = av.CodecContext.create(encoder, "w")
    context.width, context.height, context.time_base = width, height, Fraction(1, 1)
    context.pix_fmt = pixel_format(encoder, width, height, bit_depth, alpha is not None)
    frame = video_frame(rgb, context, None, alpha).reformat(format=context.pix_fmt)
    path.write_bytes(b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)]))


def copies_subtitles(output_path: Path, subtitles_in) -> bool:
    """Whether the output's container holds this subtitle stream's codec (its packets are then copied)."""
    return subtitle_codec(subtitles_in) in container_for(output_path).subtitles


def subtitle_codec(subtitles_in) -> str:
    """The stream's codec by FFmpeg's codec name (subrip, whose decoder is called srt)."""
    return subtitles_in.codec_context.codec.canonical_name
