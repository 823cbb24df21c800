"""Every kind of file a user brings: one small file per container, codec, frame
size and kind of bad input, made with PyAV, stylized, and decoded again."""
from __future__ import annotations

import logging
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import TEST_STYLE, decode, run_cli
from test_cli import assert_clean_failure
from test_pipeline import IdentityStylizer
from vidstyle import cli
from vidstyle.errors import VidstyleError
from vidstyle.formats import check_frame_size, parse_fps, segment_suffix
from vidstyle.inference import Stylizer, resolve_device
from vidstyle.workers.jobs import Job
from vidstyle.media import EncodeOptions
from vidstyle.pipeline import stylize_file
from vidstyle.sample import make_sample_video, sample_frame
from vidstyle.segments import join_segments, plan_spans
from vidstyle.styles import find_style

SIZE = dict(width=64, height=48, frames=6)


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    return Stylizer(find_style(TEST_STYLE).load_network(), resolve_device("cpu"), compile=False)


def video_format(path: Path) -> tuple[str, str]:
    """(codec, pixel format) of the first video frame, as a player decodes it."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return container.streams.video[0].codec_context.codec.canonical_name, frame.format.name


def assert_same_video(source: Path, result: Path, audio: bool = True) -> dict:
    """Every frame at its time (MKV, MPEG-TS and FLV may move the whole clock so
    that no timestamp is negative: the spacing is what must stay), the size, and
    the audio (or none), with the pixels stylized."""
    before, after = decode(source), decode(result)
    assert (after["frames"], after["size"]) == (before["frames"], before["size"])
    times_in, times_out = frame_times(source, before), frame_times(result, after)
    # GIF counts hundredths of a second; FFmpeg's AVI muxer, interleaving audio, moves a frame a slot or two.
    tolerance = {".gif": 0.006, ".avi": 0.09}.get(result.suffix, 1e-3)
    assert np.all(np.diff(times_out) > 0)
    assert times_out - times_out[0] == pytest.approx(times_in - times_in[0], abs=tolerance)
    assert abs(times_out[0] - times_in[0]) < 0.1
    assert len(after["audio_durations"]) == (len(before["audio_durations"]) if audio else 0)
    assert after["audio_durations"] == pytest.approx(before["audio_durations"] if audio else [], abs=0.05)
    change = np.abs(after["pixels"].astype(int) - before["pixels"].astype(int)).mean()
    assert change > 20, f"the frames barely changed (mean |diff| {change:.1f})"
    return after


def frame_times(path: Path, decoded: dict) -> np.ndarray:
    """Each frame's time. AVI stores one slot time per frame, in decoding order, and
    FFmpeg's AVI demuxer guesses H.264's presentation times a slot late: its slots are its times."""
    if path.suffix != ".avi":
        return np.array(decoded["times"])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.array(sorted(float(p.dts * stream.time_base) for p in container.demux(stream) if p.size))


# Each container in, with a codec it commonly carries; out to the same container, by default.
@pytest.mark.parametrize("suffix, clip, encoded_as", [
    (".mp4", dict(codec="libx264"), ("h264", "yuv420p")),
    (".mov", dict(codec="prores_ks", pix_fmt="yuv422p10le", audio_codec="pcm_s16le"), ("h264", "yuv420p")),
    (".mkv", dict(codec="libx265", audio_codec="libopus", audio_rate=48000), ("h264", "yuv420p")),
    (".webm", dict(codec="libvpx-vp9", audio_codec="libopus", audio_rate=48000), ("vp9", "yuv420p")),
    (".avi", dict(codec="mpeg4", audio_codec="libmp3lame"), ("h264", "yuv420p")),
    (".ts", dict(codec="libx264"), ("h264", "yuv420p")),
    (".flv", dict(codec="libx264"), ("h264", "yuv420p")),
    (".gif", dict(codec="gif", pix_fmt="rgb8", audio=False), ("gif", "bgra")),
    (".mkv", dict(codec="libsvtav1", audio_codec="flac"), ("h264", "yuv420p")),
], ids=["mp4", "mov-prores-pcm", "mkv-hevc-opus", "webm-vp9-opus", "avi-mpeg4-mp3", "mpegts", "flv", "gif", "mkv-av1-flac"])
def test_each_container_in_comes_out_the_same(tmp_path: Path, stylizer: Stylizer, suffix: str, clip: dict,
                                              encoded_as: tuple[str, str]) -> None:
    source = make_sample_video(tmp_path / f"in{suffix}", **SIZE, **clip)
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    after = assert_same_video(source, result, audio=clip.get("audio", True))
    assert video_format(result) == encoded_as
    if clip.get("audio", True):
        assert after["audio_codecs"] == decode(source)["audio_codecs"]  # copied: every container holds its own
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, result.name])


@pytest.mark.parametrize("codec, suffix, encoded_as", [
    ("libx264", ".mp4", ("h264", "yuv420p")),
    ("libx265", ".mp4", ("hevc", "yuv420p")),
    ("libvpx-vp9", ".webm", ("vp9", "yuv420p")),
    ("libsvtav1", ".mkv", ("av1", "yuv420p")),
    ("prores_ks", ".mov", ("prores", "yuv422p10le")),
    ("gif", ".gif", ("gif", "bgra")),
])
def test_each_encoder_out(tmp_path: Path, stylizer: Stylizer, codec: str, suffix: str, encoded_as: tuple[str, str]) -> None:
    source = make_sample_video(tmp_path / "in.mp4", **SIZE, audio=False)
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer, encode=EncodeOptions(codec=codec))
    assert_same_video(source, result)
    assert video_format(result) == encoded_as


@pytest.mark.parametrize("size, suffix, encoded_as", [
    ((1, 1), ".mp4", ("h264", "yuv444p")),
    ((3, 5), ".mp4", ("h264", "yuv444p")),
    ((3, 5), ".webm", ("vp9", "yuv444p")),
    ((65, 49), ".mov", ("h264", "yuv444p")),  # odd: 4:4:4 keeps the exact size
    ((65, 49), ".mkv", ("h264", "yuv444p")),
])
def test_tiny_and_odd_frames(tmp_path: Path, stylizer: Stylizer, size: tuple[int, int], suffix: str,
                             encoded_as: tuple[str, str]) -> None:
    width, height = size
    source = make_sample_video(tmp_path / "in.mp4", width=width, height=height, frames=4)
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    before, after = decode(source), decode(result)
    assert (after["frames"], after["size"]) == (4, size)
    assert after["times"] == pytest.approx(before["times"], abs=0.1)
    assert video_format(result) == encoded_as


def test_prores_of_odd_width_is_4444(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", width=65, height=48, frames=3, audio=False)
    result = stylize_file(source, tmp_path / "out.mov", stylizer, encode=EncodeOptions(codec="prores_ks"))
    assert (decode(result)["size"], video_format(result)[1]) == ((65, 48), "yuv444p12le")  # how FFmpeg decodes 4444


def test_audio_follows_the_container(tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture) -> None:
    source = make_sample_video(tmp_path / "in.mp4", **SIZE)  # AAC
    webm = stylize_file(source, tmp_path / "out.webm", stylizer)
    assert assert_same_video(source, webm)["audio_codecs"] == ["opus"]  # re-encoded, at 48 kHz
    avi = stylize_file(source, tmp_path / "out.avi", stylizer)
    assert decode(avi)["audio_codecs"] == ["mp3float"]
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        gif = stylize_file(source, tmp_path / "out.gif", stylizer)
    assert_same_video(source, gif, audio=False)
    assert "GIF holds no audio: audio stream 1 (aac) dropped" in caplog.text


def test_audio_that_does_not_decode_is_dropped_and_the_video_comes_out(
        tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture) -> None:
    good = make_sample_video(tmp_path / "good.mp4", **SIZE)
    source = tmp_path / "in.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(good)) as template, av.open(str(source), "w") as broken:
        streams = {s.index: broken.add_stream_from_template(s) for s in template.streams}
        for packet in template.demux():
            if not packet.size:
                continue
            if packet.stream.type == "audio":  # the AAC headers say sound; the payload is noise
                packet = _with_payload(packet, rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
            packet.stream = streams[packet.stream.index]
            broken.mux(packet)
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        result = stylize_file(source, tmp_path / "out.webm", stylizer)  # WebM cannot take AAC: it must decode it
    assert_same_video(good, result, audio=False)
    assert "cannot decode audio stream 1 (aac)" in caplog.text


def _with_payload(packet: av.Packet, payload: bytes) -> av.Packet:
    replaced = av.Packet(payload)
    replaced.pts, replaced.dts, replaced.duration, replaced.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    replaced.stream = packet.stream
    return replaced


def _cover_art_only(path: Path) -> Path:
    """A song with its album cover: an audio stream and a one-picture 'video' stream."""
    with av.open(str(path), "w") as container:
        sound = container.add_stream("libmp3lame", rate=8000, layout="mono")
        cover = container.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24").reformat(format="yuvj420p")
        picture.pts = 0
        container.mux(cover.encode(picture))
        container.mux(cover.encode())
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path


def _cut(path: Path, keep: float | int, faststart: bool = False) -> Path:
    """A clip cut short: the first `keep` bytes (an int) or that fraction of them.
    `faststart`: an MP4 with its index first, as made for the web (else it is last, and cut off)."""
    full = make_sample_video(path.with_name("full" + path.suffix), width=64, height=48, frames=48)
    if faststart:
        with av.open(str(full)) as plain, av.open(str(path), "w", options={"movflags": "faststart"}) as web:
            streams = {s.index: web.add_stream_from_template(s) for s in plain.streams}
            for packet in plain.demux():
                if packet.size:
                    packet.stream = streams[packet.stream.index]
                    web.mux(packet)
        full.unlink()
        full = path
    data = full.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    if full != path:
        full.unlink()
    return path


def _with_gap(pattern: Path, *missing: int) -> Path:
    for number in missing:
        (pattern.parent / (pattern.name % number)).unlink()
    return pattern


@pytest.mark.parametrize("make_input, args, expected", [
    (lambda tmp: _cut(tmp / "empty.mp4", 0), [], "not a video file, or corrupt"),
    (lambda tmp: _cut(tmp / "header.mkv", 700), [], "no decodable video frames"),
    (lambda tmp: _cut(tmp / "half.mkv", 0.5), [], "truncated: its data stops at"),
    (lambda tmp: _cut(tmp / "half.flv", 0.5), [], "truncated: its data stops at"),
    (lambda tmp: _cut(tmp / "half.mp4", 0.5), [], "not a video file, or corrupt"),  # its index was at the end
    (lambda tmp: _cut(tmp / "web.mp4", 0.5, faststart=True), [], "truncated: its data stops at"),
    (lambda tmp: _cover_art_only(tmp / "song.mp3"), [], "(only cover art)"),
    (lambda tmp: (tmp / "shot").mkdir() or tmp / "shot", [], "is a directory"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", **SIZE), ["-o", "out.xyz"], "no video container for the suffix '.xyz'"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", **SIZE), ["-o", "out.webm", "--codec", "libx264"],
     "WebM (.webm) cannot hold h264 video ('libx264'): it takes libvpx-vp9, libsvtav1"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", width=3, height=5, frames=2), ["-o", "out.mp4", "--codec", "libx265"],
     "libx265 cannot encode frames smaller than 16x16 (this video is 3x5)"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", width=1040, height=16, frames=2),
     ["-o", "out.mp4", "--upscale", "4", "--codec", "h264_nvenc"],
     "h264_nvenc cannot encode 4160x64 frames (at most 4096 pixels a side and 16.8 million pixels); use --codec hevc_nvenc"),
    (lambda tmp: make_sequence(tmp / "shot").with_name("take_%04d.png"), ["-o", "out.mp4"],
     "no files match the image sequence"),
    (lambda tmp: _with_gap(make_sequence(tmp / "shot", frames=7), 1003, 1004), ["-o", "out.mp4"], "has gaps: frame_1003.png, frame_1004.png missing (between frames 1001 and 1007)"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", **SIZE), ["-o", "out.mp4", "--fps", "25"],
     "--fps is the rate of an image-sequence input"),
    (lambda tmp: make_sequence(tmp / "shot"), ["-o", "out.mp4", "--fps", "fast"], "--fps must be a frame rate"),
    (lambda tmp: make_sequence(tmp / "shot"), ["-o", "shot/graded_%04d.png"], "holds other files (frame_1001.png"),
    (lambda tmp: (make_sequence(tmp / "shot"), make_sequence(tmp / "out"))[0], ["-o", "out/frame_%04d.png"],
     "holds frames of frame_%04d.png (use --force to replace them)"),
    (lambda tmp: make_sample_video(tmp / "in.mp4", **SIZE), ["-o", "out.png"], "or an image sequence such as"),
], ids=["zero-bytes", "header-only", "truncated-mkv", "truncated-flv", "truncated-mp4", "truncated-mp4-faststart", "cover-art-only", "directory", "unknown-suffix",
        "codec-the-container-cannot-hold", "frames-too-small-for-the-encoder", "frames-too-large-for-the-encoder",
        "sequence-matching-no-files",
        "sequence-with-a-gap", "fps-for-a-video", "fps-not-a-rate", "sequence-into-a-folder-of-other-files",
        "sequence-output-exists", "video-to-one-image"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, make_input, args: list[str], expected: str) -> None:
    source = make_input(tmp_path)
    before = set(tmp_path.rglob("*"))
    result = run_cli("submit", source, "--style", TEST_STYLE,
                     *[tmp_path / a if a.startswith(("out.", "out/", "shot/")) else a for a in args])
    assert_clean_failure(result, expected)
    assert result.returncode == 1
    assert set(tmp_path.rglob("*")) == before


def test_an_x4_upscale_of_1080p_fits_the_software_encoders_and_not_h264_nvenc() -> None:
    for encoder in ("libx264", "libx265", "libvpx-vp9", "libsvtav1", "prores_ks", "hevc_nvenc"):
        check_frame_size(encoder, 7680, 4320)
    with pytest.raises(VidstyleError, match="use --codec hevc_nvenc"):
        check_frame_size("h264_nvenc", 7680, 4320)
    with pytest.raises(VidstyleError, match="libx264 cannot encode 15360x8640 frames .* use --codec libvpx-vp9"):
        check_frame_size("libx264", 15360, 8640)  # beyond H.264's highest level, and HEVC's


def test_an_unexpected_error_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken(**_kwargs):
        raise RuntimeError("something\nnobody expected")

    monkeypatch.setattr(cli.cli, "main", broken)
    monkeypatch.delenv("VIDSTYLE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == ("vidstyle: error: unexpected RuntimeError: something nobody expected "
                                       "(VIDSTYLE_DEBUG=1 shows the traceback)\n")
    monkeypatch.setenv("VIDSTYLE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main()


def test_codec_is_checked_before_any_work(tmp_path: Path, stylizer: Stylizer) -> None:
    source = make_sample_video(tmp_path / "in.mp4", **SIZE)
    with pytest.raises(VidstyleError, match="MPEG-TS .* cannot hold vp9"):
        stylize_file(source, tmp_path / "out.ts", stylizer, encode=EncodeOptions(codec="libvpx-vp9"))
    assert [p.name for p in tmp_path.iterdir()] == ["in.mp4"]


@pytest.mark.parametrize("codec, suffix", [("libvpx-vp9", ".webm"), ("prores_ks", ".mov")])
def test_a_split_job_joins_segments_of_any_codec(tmp_path: Path, stylizer: Stylizer, codec: str, suffix: str) -> None:
    # Segments are MP4, or MOV for what MP4 cannot hold; the join copies them into the output's container.
    source = make_sample_video(tmp_path / "in.mp4", width=64, height=48, frames=24, keyframes=[0, 8, 16])
    spans = plan_spans(source, segment_seconds=0.3)
    assert len(spans) >= 2
    encode = EncodeOptions(codec=codec)
    segments = [(stylize_file(source, tmp_path / f"segment{i}{segment_suffix(codec)}", stylizer, span=span, encode=encode), span)
                for i, span in enumerate(spans)]
    join_segments(source, segments, tmp_path / f"joined{suffix}")
    assert_same_video(source, tmp_path / f"joined{suffix}")
    assert video_format(tmp_path / f"joined{suffix}")[0] == av.Codec(codec, "w").canonical_name


@pytest.mark.parametrize("suffix, known", [(".mp4", True), (".mkv", False), (".webm", False)])
def test_progress_has_no_false_total(tmp_path: Path, stylizer: Stylizer, suffix: str, known: bool) -> None:
    # MKV and WebM state the file's duration, not a frame count: progress counts frames with no total.
    clip = dict(codec="libvpx-vp9", audio=False) if suffix == ".webm" else dict(audio=False)
    source = make_sample_video(tmp_path / f"in{suffix}", width=64, height=48, frames=8, **clip)
    reports = []
    stylize_file(source, tmp_path / f"out{suffix}", stylizer, batch_size=3, on_progress=lambda *r: reports.append(r))
    assert reports == [(3, 8 if known else 0), (6, 8 if known else 0), (8, 8 if known else 0)]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_title_creation_time_and_languages_are_kept(tmp_path: Path, stylizer: Stylizer, suffix: str) -> None:
    source = make_sample_video(tmp_path / "in.mov", **SIZE)
    tagged = tmp_path / "tagged.mkv"
    with av.open(str(source)) as plain, av.open(str(tagged), "w") as out:
        out.metadata.update(title="Shot 12", creation_time="2024-05-01T10:00:00.000000Z")
        streams = {s.index: out.add_stream_from_template(s) for s in plain.streams}
        streams[0].metadata["language"], streams[1].metadata["language"] = "fra", "deu"
        for packet in plain.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    result = stylize_file(tagged, tmp_path / f"out{suffix}", stylizer)  # WebM: the AAC is re-encoded to Opus
    with av.open(str(result)) as container:
        assert (container.metadata["title"], container.metadata["creation_time"]) == ("Shot 12", "2024-05-01T10:00:00.000000Z")
        assert [s.metadata.get("language") for s in container.streams] == ["fra", "deu"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 kB filesystem (a tmpfs; needs root, as CI runs), to fill while writing."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path, small_disk: Path) -> None:
    source = tmp_path / "noise.mp4"  # noise: about 5 kB a frame however it is encoded
    rng = np.random.default_rng(0)
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(24):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))))
        container.mux(stream.encode())
    with pytest.raises(VidstyleError, match="No space left on device"):
        stylize_file(source, small_disk / "out.mp4", IdentityStylizer())  # the network would smooth the noise away
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("codec, suffix, expected", [
    ("libx265", ".mkv", "yuv420p10le"),
    ("libsvtav1", ".mp4", "yuv420p10le"),
    ("prores_ks", ".mov", "yuv422p10le"),
    (None, ".mp4", "yuv420p"),  # H.264's 10-bit profile plays in too few places: the default stays 8-bit
])
def test_ten_bit_input_stays_ten_bit_with_its_colour_tags(tmp_path: Path, stylizer: Stylizer, codec: str | None,
                                                         suffix: str, expected: str) -> None:
    # Tagged BT.2020 (matrix, primaries; transfer 9 too, logarithmic, but the tags are what is checked).
    source = make_sample_video(tmp_path / "hdr.mkv", **SIZE, audio=False, codec="libx265", pix_fmt="yuv420p10le",
                               colorspace=9)
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer, encode=EncodeOptions(codec=codec))
    assert_same_video(source, result, audio=False)
    with av.open(str(result)) as container:
        frame = next(container.decode(video=0))
    assert (frame.format.name, int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc)) == (expected, 9, 9, 9)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("first_frame", [12, -6], ids=["video-starts-after-audio", "negative-timestamps"])
def test_video_starting_late_or_before_zero_keeps_its_times(tmp_path: Path, stylizer: Stylizer, suffix: str,
                                                            first_frame: int) -> None:
    source = tmp_path / f"in{suffix}"
    tick = Fraction(1, 24)
    with av.open(str(source), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt, video.codec_context.time_base = 64, 48, "yuv420p", tick
        sound = container.add_stream("aac", rate=48000, layout="mono")
        for index in range(12):  # from frame `first_frame` of the audio's clock (at 0)
            frame = av.VideoFrame.from_ndarray(sample_frame(index, 64, 48), format="rgb24")
            frame.pts, frame.time_base = first_frame + index, tick
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, 24000, 1024):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 48000, start
            container.mux(sound.encode(samples))
        container.mux(sound.encode())
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    assert_same_video(source, result)
    assert decode(result)["times"][0] == pytest.approx(decode(source)["times"][0], abs=1e-3)  # 0.5 s late stays late


def _see_through_frames(index: int, depth: int = 8) -> np.ndarray:
    """(48, 64, 4) RGBA: the sample picture, its left 20 columns see-through, the next 12 half transparent."""
    scale, dtype = (257, np.uint16) if depth > 8 else (1, np.uint8)
    rgba = np.dstack([sample_frame(index, 64, 48), np.full((48, 64), 255, np.uint8)]).astype(dtype) * scale
    rgba[:, :20, 3], rgba[:, 20:32, 3] = 0, 128 * scale
    return rgba


def _alpha_clip(path: Path, codec: str, pix_fmt: str, frames: int = 4) -> Path:
    """A clip with an alpha channel, the way motion graphics arrive (ProRes 4444, VP9 in WebM)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for index in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_see_through_frames(index), format="rgba")))
        container.mux(stream.encode())
    return path


def make_sequence(folder: Path, suffix: str = ".png", frames: int = 5, pix_fmt: str = "rgb24", first: int = 1001) -> Path:
    """A shot as a VFX studio hands it over: folder/frame_1001.png... (FFmpeg's image2 muxer)."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = folder / f"frame_%04d{suffix}"
    encoder = {".png": "png", ".tif": "tiff", ".jpg": "mjpeg"}[suffix]
    with av.open(str(pattern), "w", format="image2", options={"start_number": str(first)}) as container:
        stream = container.add_stream(encoder, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for index in range(frames):
            deep = "48" in pix_fmt or "64" in pix_fmt
            rgba = _see_through_frames(index, 16 if deep else 8)
            source = av.VideoFrame.from_ndarray(rgba, format="rgba64le" if deep else "rgba")
            container.mux(stream.encode(source.reformat(format=pix_fmt)))
        container.mux(stream.encode())
    return pattern


def read_frames(paths: list[Path], decoder: str | None = None) -> list[av.VideoFrame]:
    """Every frame of these files, in order (a sequence's files, or one video); `decoder` instead of the stream's own."""
    frames = []
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            context = av.CodecContext.create(decoder, "r") if decoder else None
            frames += [f for p in container.demux(stream) for f in (context.decode(p) if context else p.decode())]
    return frames


@pytest.mark.parametrize("make_input, output, codec, decoder, kept", [
    (lambda tmp: _alpha_clip(tmp / "logo.mov", "prores_ks", "yuva444p10le"), "out.mov", "prores_ks", None, "yuva444p12le"),
    (lambda tmp: _alpha_clip(tmp / "logo.mov", "prores_ks", "yuva444p10le"), "out.webm", None, "libvpx-vp9", "yuva420p"),
    (lambda tmp: _alpha_clip(tmp / "logo.webm", "libvpx-vp9", "yuva420p"), "out.mov", "prores_ks", None, "yuva444p12le"),
    (lambda tmp: make_sequence(tmp / "shot", pix_fmt="rgba"), "out/frame_%04d.png", None, None, "rgba"),
    (lambda tmp: _alpha_clip(tmp / "logo.webm", "libvpx-vp9", "yuva420p"), "out/frame_%04d.tif", None, None, "rgba"),
    (lambda tmp: _alpha_clip(tmp / "logo.mov", "prores_ks", "yuva444p10le"), "out.mp4", None, None, None),
    (lambda tmp: make_sequence(tmp / "shot", pix_fmt="rgba"), "out/frame_%04d.jpg", None, None, None),
], ids=["prores4444-to-prores", "prores4444-to-vp9", "vp9-alpha-to-prores", "png-sequence", "vp9-alpha-to-tiff-sequence",
        "to-h264-dropped", "to-jpeg-sequence-dropped"])
def test_alpha_is_carried_through_or_dropped_with_a_warning(
        tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture, make_input, output: str, codec: str | None,
        decoder: str | None, kept: str | None) -> None:
    source = make_input(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        result = stylize_file(source, tmp_path / output, stylizer, encode=EncodeOptions(codec=codec))
    paths = sorted(result.parent.iterdir()) if "%" in output else [result]
    frames = read_frames(paths, decoder)
    assert len(frames) == (5 if "shot" in str(source) else 4)
    expected = _see_through_frames(0)
    colour = frames[0].to_ndarray(format="rgb24").astype(int)
    assert np.abs(colour[:, 32:] - expected[:, 32:, :3]).mean() > 20  # stylized where it is seen
    if kept is None:
        assert "its transparency (alpha channel) is dropped" in caplog.text
        assert not any(c.is_alpha for c in frames[0].format.components)
        return
    assert frames[0].format.name == kept and caplog.text == ""
    for frame in frames:  # unchanged, to within one level (the 10-bit and 4:2:0 round trips)
        assert np.abs(frame.to_ndarray(format="rgba")[..., 3].astype(int) - expected[..., 3]).max() <= 1


def test_an_opaque_alpha_channel_is_no_transparency(tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        stylize_file(make_sample_video(tmp_path / "in.gif", **SIZE, codec="gif", pix_fmt="rgb8", audio=False),
                     tmp_path / "out.gif", stylizer)  # GIF decodes with an alpha channel, but an opaque one: no warning
    assert caplog.text == ""


@pytest.mark.parametrize("suffix, pix_fmt, out_suffix, expected", [
    (".png", "rgb24", ".png", "rgb24"),
    (".tif", "rgb24", ".tif", "rgb24"),
    (".jpg", "yuvj420p", ".jpg", "yuvj420p"),
    (".png", "rgb48be", ".png", "rgb48be"),  # 16-bit stays 16-bit
    (".tif", "rgb48le", ".png", "rgb48be"),
    (".png", "rgb48be", ".tif", "rgb48le"),
    (".png", "rgb48be", ".jpg", "yuvj420p"),  # JPEG holds 8 bits
], ids=["png", "tiff", "jpeg", "png16", "tiff16-to-png16", "png16-to-tiff16", "png16-to-jpeg"])
def test_an_image_sequence_in_comes_out_frame_for_frame(tmp_path: Path, suffix: str, pix_fmt: str, out_suffix: str,
                                                         expected: str) -> None:
    # Without the network and its temporal blend (they would hide a frame out of place or a lost bit): exact where lossless.
    pattern = make_sequence(tmp_path / "shot", suffix, pix_fmt=pix_fmt)
    result = stylize_file(pattern, tmp_path / "graded" / f"frame_%04d{out_suffix}", IdentityStylizer(), temporal_strength=0)
    names = sorted(p.name for p in result.parent.iterdir())
    assert names == [f"frame_{n}{out_suffix}" for n in range(1001, 1006)]  # the shot's own frame numbers
    before, after = read_frames(sorted(pattern.parent.iterdir())), read_frames([result.parent / n for n in names])
    assert [(f.width, f.height, f.format.name) for f in after] == [(64, 48, expected)] * 5
    deep = "48" in expected
    for source, frame in zip(before, after):
        wanted = source.to_ndarray(format="rgb48le" if deep else "rgb24").astype(int)
        got = frame.to_ndarray(format="rgb48le" if deep else "rgb24").astype(int)
        if ".jpg" in (suffix, out_suffix):
            assert np.abs(got - wanted).mean() < 5  # JPEG's losses (4:2:0 chroma)
        else:
            assert np.array_equal(got, wanted)  # 16-bit: the 8-bit network's colour widened, here exactly the input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graded", "shot"]  # no hidden partial folder left


@pytest.mark.parametrize("fps, step", [(None, Fraction(1, 24)), ("25", Fraction(1, 25)), ("23.976", Fraction(1001, 24000))])
def test_a_sequence_plays_at_its_fps_and_a_video_becomes_a_sequence(tmp_path: Path, stylizer: Stylizer, fps: str | None,
                                                                    step: Fraction) -> None:
    pattern = make_sequence(tmp_path / "shot", frames=6)
    video = stylize_file(pattern, tmp_path / "shot.mov", stylizer, sequence_fps=parse_fps(fps))
    assert decode(video)["times"] == pytest.approx([float(i * step) for i in range(6)], abs=1e-4)
    frames = stylize_file(video, tmp_path / "back" / "f_%03d.png", stylizer)  # a video's frames from 1
    assert sorted(p.name for p in frames.parent.iterdir()) == [f"f_{n:03d}.png" for n in range(1, 7)]


def test_a_sequence_job_carries_its_fps(tmp_path: Path, stylizer: Stylizer) -> None:
    # The fleet's record of it: what the worker passes to stylize_file.
    job = Job(id="j", input="shot/frame_%04d.png", output="out.mp4", style=TEST_STYLE, queue="q", codec="libx264", crf=18,
              preset="medium", sequence_fps=str(parse_fps("23.976")))
    assert parse_fps(Job.from_record(job.to_record()).sequence_fps) == Fraction(24000, 1001)
    assert parse_fps(Job.from_record({**job.to_record(), "sequence_fps": ""}).sequence_fps) == 24


def test_a_sequence_output_is_replaced_whole_or_not_at_all(tmp_path: Path, stylizer: Stylizer) -> None:
    pattern = make_sequence(tmp_path / "shot", frames=5)
    output = tmp_path / "out" / "frame_%04d.png"
    stylize_file(make_sequence(tmp_path / "longer", frames=7), output, stylizer)

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a run stopped half way leaves the earlier sequence as it was
        stylize_file(pattern, output, stylizer, force=True, batch_size=2, on_progress=cancel)
    assert len(list(output.parent.iterdir())) == 7
    stylize_file(pattern, output, stylizer, force=True)  # the new one, and none of the old frames beside it
    assert len(list(output.parent.iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["longer", "out", "shot"]


def _subtitled(path: Path, codec: str, texts: list[bytes]) -> Path:
    """The sample clip plus an English subtitle stream of `codec`, one cue every 0.2 s."""
    plain = make_sample_video(path.with_name("plain.mp4"), **SIZE)
    with av.open(str(plain)) as source, av.open(str(path), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        subtitles = out.add_stream(codec)
        subtitles.codec_context.time_base = Fraction(1, 1000)
        subtitles.codec_context.subtitle_header = b"[Script Info]\nScriptType: v4.00+\n"  # the encoders want one
        subtitles.metadata["language"] = "eng"
        for packet in source.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        for index, text in enumerate(texts):
            cue = av.Packet(text)
            cue.stream, cue.time_base, cue.pts, cue.dts, cue.duration = subtitles, Fraction(1, 1000), index * 200, index * 200, 150
            out.mux(cue)
    plain.unlink()
    return path


def subtitle_cues(path: Path) -> list[tuple[str, str, list[tuple[bytes, float]]]]:
    with av.open(str(path)) as container:
        return [(s.codec_context.codec.canonical_name, s.metadata.get("language"),
                 [(bytes(p), round(float(p.pts * p.time_base), 3)) for p in container.demux(s) if p.size > 2])
                for s in container.streams.subtitles]  # (an empty mov_text cue, 2 bytes, only clears the screen)


@pytest.mark.parametrize("codec, texts, suffix, copied", [
    ("subrip", [b"Hello", b"World"], ".mkv", True),
    ("mov_text", [b"\x00\x05Hello", b"\x00\x05World"], ".mov", True),
    ("mov_text", [b"\x00\x05Hello", b"\x00\x05World"], ".mp4", True),
    ("subrip", [b"Hello", b"World"], ".mp4", False),  # MP4 holds only mov_text
    ("mov_text", [b"\x00\x05Hello", b"\x00\x05World"], ".webm", False),
], ids=["srt-in-mkv", "mov_text-mp4-to-mov", "mov_text-in-mp4", "srt-to-mp4-dropped", "mov_text-to-webm-dropped"])
def test_subtitles_are_copied_where_the_container_holds_them(tmp_path: Path, stylizer: Stylizer,
                                                             caplog: pytest.LogCaptureFixture, codec: str,
                                                             texts: list[bytes], suffix: str, copied: bool) -> None:
    source = _subtitled(tmp_path / ("in.mkv" if codec == "subrip" else "in.mp4"), codec, texts)
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    assert_same_video(source, result)
    if copied:
        assert subtitle_cues(result) == subtitle_cues(source) and caplog.text == ""
        assert [text for text, _ in subtitle_cues(result)[0][2]] == texts
    else:
        assert subtitle_cues(result) == []
        assert f"cannot hold {codec} subtitles: subtitle stream 2 dropped" in caplog.text


@pytest.mark.parametrize("suffix, keeps_alpha", [(".png", True), (".webp", True), (".tif", True), (".jpg", False)])
def test_a_still_image_s_transparency_is_kept_where_its_format_holds_it(
        tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture, suffix: str, keeps_alpha: bool) -> None:
    rgba = np.dstack([sample_frame(0, 64, 48), np.full((48, 64), 255, np.uint8)])
    rgba[:, :20, 3], rgba[:, 20:40, 3] = 0, 128  # a see-through and a half-transparent band
    source = tmp_path / "logo.png"
    Image.fromarray(rgba).save(source)
    with caplog.at_level(logging.WARNING, logger="vidstyle"):
        result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    with Image.open(result) as out:
        out.load()
    colour = np.asarray(out.convert("RGB")).astype(int)
    assert np.abs(colour[:, 40:] - rgba[:, 40:, :3]).mean() > 20  # stylized
    if keeps_alpha:
        assert out.mode == "RGBA" and np.array_equal(np.asarray(out.getchannel("A")), rgba[..., 3])
        assert caplog.text == ""
    else:
        assert out.mode == "RGB" and "JPEG holds no transparency: logo.png's is dropped" in caplog.text


@pytest.mark.parametrize("suffix, expected", [(".png", "rgba64be"), (".tif", "rgba64le"), (".webp", None), (".jpg", None)])
def test_a_sixteen_bit_still_stays_sixteen_bit_where_its_format_holds_it(tmp_path: Path, stylizer: Stylizer,
                                                                       suffix: str, expected: str | None) -> None:
    rgba = _see_through_frames(0, depth=16)
    rgba[:, 32:40, 3] = 1234  # a level that 8 bits cannot hold
    source = tmp_path / "matte.png"
    with av.open(str(source), "w", format="image2", options={"update": "1"}) as container:  # PyAV's PNG encoder: 16-bit
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgba64be"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba64le")))
        container.mux(stream.encode())
    result = stylize_file(source, tmp_path / f"out{suffix}", stylizer)
    out = read_frames([result])[0]
    colour = out.to_ndarray(format="rgb24").astype(int)
    assert np.abs(colour[:, 40:] - (rgba[:, 40:, :3] >> 8)).mean() > 20  # stylized
    if expected is None:  # 8-bit formats: the 8-bit image, its alpha in WebP (8-bit) and not in JPEG
        assert max(c.bits for c in out.format.components) == 8
        return
    assert out.format.name == expected
    assert np.array_equal(out.to_ndarray(format="rgba64le")[..., 3], rgba[..., 3])  # every bit of the alpha
    assert np.all(out.to_ndarray(format="rgba64le")[..., :3] % 257 == 0)  # the network's 8-bit colour, widened


def test_submit_an_image_sequence_at_its_fps(tmp_path: Path) -> None:
    pattern = make_sequence(tmp_path / "shot", frames=4)
    result = run_cli("submit", pattern, "--style", TEST_STYLE, "--fps", "25")
    assert result.returncode == 0, result.stderr
    default = tmp_path / "shot.testnet" / "frame_%04d.png"  # a sequence beside the shot, named after the style
    assert result.stdout.strip() == str(default)
    assert sorted(p.name for p in default.parent.iterdir()) == [f"frame_{n}.png" for n in range(1001, 1005)]
    video = run_cli("submit", pattern, "--style", TEST_STYLE, "--fps", "25", "-o", tmp_path / "shot.mp4")
    assert video.returncode == 0, video.stderr
    assert decode(tmp_path / "shot.mp4")["times"] == pytest.approx([0, 0.04, 0.08, 0.12], abs=1e-4)
