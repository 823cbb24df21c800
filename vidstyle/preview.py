"""Contact sheets: a few frames of a video (or one image) by every style, in one PNG.

Frames are stylized at their full size, as `submit` would, and then shrunk:
stylizing a thumbnail would change the scale of the strokes.
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from vidstyle.errors import VidstyleError
from vidstyle.inference import BT601_LUMA, Controls, Stylizer, apply_controls_to_pixels, luma_weights, resolve_device
from vidstyle.media import check_input, is_image, open_input, partial_file, probe_video, read_still
from vidstyle.styles import Painting, Style

LABEL_WIDTH = 120
GAP = 4


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    """count (H, W, 3) uint8 RGB frames spread evenly over a video, or the image itself."""
    if is_image(path):
        return [read_still(path).pixels]
    check_input(path)  # (an image sequence too)
    probe_video(path)  # a clear error for what is not a decodable video
    picked: list[np.ndarray] = []
    with open_input(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        duration = stream.duration or (container.duration or 0) / av.time_base / stream.time_base
        # Mid-interval times, so a long film does not show its black first frame.
        for fraction in [(i + 0.5) / count for i in range(count)]:
            target = start + fraction * duration
            # To the keyframe before the target, then decode up to it: a preview of a
            # two-hour film decodes a few GOPs, not the film.
            container.seek(int(target), stream=stream)
            frame = next((f for f in container.decode(stream) if f.pts is None or f.pts >= target), None)
            if frame is not None:
                picked.append(frame.to_ndarray(format="rgb24"))
    if not picked:
        raise VidstyleError(f"no decodable video frames in {path}")
    return picked


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], thumb_height: int) -> Image.Image:
    """One row per (label, frames), frames shrunk to thumb_height, labels at the left."""
    thumbs = [[Image.fromarray(f).resize((max(1, round(f.shape[1] * thumb_height / f.shape[0])), thumb_height),
                                         Image.Resampling.LANCZOS) for f in frames] for _, frames in rows]
    width = LABEL_WIDTH + max(sum(t.width + GAP for t in row) for row in thumbs)
    sheet = Image.new("RGB", (width, len(rows) * (thumb_height + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for row_index, ((label, _), row) in enumerate(zip(rows, thumbs)):
        top = GAP + row_index * (thumb_height + GAP)
        draw.text((GAP, top + thumb_height // 2), label, fill="black")
        left = LABEL_WIDTH
        for thumb in row:
            sheet.paste(thumb, (left, top))
            left += thumb.width + GAP
    return sheet


def write_preview(
    input_path: Path, output_path: Path, styles: list[Style | Painting], frames: int = 4, thumb_height: int = 180,
    device: str | None = None, strengths: tuple[float, ...] = (1.0,), preserve_colors: bool = False,
) -> Path:
    """The input's frames in the first row, then a row per style and strength (and with
    preserve_colors, each followed by the same with the input's colours kept); written atomically as PNG."""
    if not output_path.parent.is_dir() or not os.access(output_path.parent, os.W_OK):
        raise VidstyleError(f"cannot write to output directory {output_path.parent} (missing or not writable)")
    originals = sample_frames(input_path, frames)
    rows = [("original", originals)]
    luma = BT601_LUMA if is_image(input_path) else luma_weights(probe_video(input_path).colour.get("colorspace"))
    variants = [Controls(strength, keep, luma) for strength in strengths for keep in (False, True)[:1 + preserve_colors]]
    torch_device = resolve_device(device)
    for style in tqdm(styles, unit="style", desc=f"preview {input_path.name}"):
        # No compilation: it would cost more per style than these few frames take.
        stylizer = Stylizer(style.load_network(), torch_device, compile=False)
        # The network once per frame; each variant is a cheap blend of its output with the frame.
        stylized = [stylizer(frame[None])[0] for frame in originals]
        for controls in variants:
            label = style.name if strengths == (1.0,) else f"{style.name}\nstrength {controls.strength:g}"
            label += "\ncolours kept" if controls.preserve_colors else ""
            rows.append((label, [apply_controls_to_pixels(o, s, controls) for o, s in zip(originals, stylized)]))
    with partial_file(output_path) as partial:
        contact_sheet(rows, thumb_height).save(partial, format="PNG")
    return output_path
