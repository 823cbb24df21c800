"""A contact sheet to choose how to get a large stylized video from a small one.

    python benchmarks/chain_sheet.py [--video ../shared/videos/big_buck_bunny_0_30.webm] [--style udnie]
                                     [--upscale 4] [--size 640x360] [--frames 2] [-o chain.png]

A few frames of a real video, scaled to --size (the "full size"), and the same
frames made factor times smaller (the "small input"). One row per way of going
from the small input to the full size, each frame at full size, not shrunk, then
the centre of the first frame enlarged 4 times (the upscaler's detail):

    udnie then x4     `submit --style udnie --upscale 4`: stylized small, then upscaled (one pass)
    x4 then udnie     `upscale`, then `submit --style udnie`: upscaled, then stylized at full size
    udnie, bicubic    stylized small, then a bicubic upscale: what the upscaler adds
    udnie, original   the original full-size frames stylized: the reference a small input cannot have

and prints the seconds each took on this machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vidstyle.formats import parse_size
from vidstyle.inference import Stylizer, resolve_device
from vidstyle.media import partial_file
from vidstyle.preview import contact_sheet, sample_frames
from vidstyle.styles import find_treatment

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=SHARED / "videos" / "big_buck_bunny_0_30.webm")
    p.add_argument("--style", default="udnie")
    p.add_argument("--upscale", default="4", help="an installed factor or an upscaler's .pth [4]")
    p.add_argument("--size", default="640x360", help="the full size, WIDTHxHEIGHT [640x360]")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--output", "-o", type=Path, default=Path("chain.png"))
    return p.parse_args()


def resized(frames: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    return [np.array(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]


def with_zoom(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The frames, then the centre of the first, a quarter of its size, enlarged 4 times without smoothing."""
    height, width = frames[0].shape[:2]
    top, left = 3 * height // 8, 3 * width // 8
    centre = Image.fromarray(frames[0][top:top + height // 4, left:left + width // 4])
    return frames + [np.array(centre.resize((width, height), Image.Resampling.NEAREST))]


def main() -> None:
    args = parse_args()
    width, height = parse_size(args.size)
    style_only, upscale_only, chained = (find_treatment(*choice) for choice in (
        (args.style, None), (None, args.upscale), (args.style, args.upscale)))
    factor = upscale_only.upscaler.factor
    full = resized(sample_frames(args.video, args.frames), width, height)
    small = resized(full, width // factor, height // factor)
    device = resolve_device("cpu")
    stylize, upscale, both = (Stylizer(t.load_network(), device, compile=False) for t in (style_only, upscale_only, chained))

    def each(network, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [network(frame[None])[0] for frame in frames]

    ways = {
        f"{style_only.name} then x{factor}": lambda: each(both, small),
        f"x{factor} then {style_only.name}": lambda: each(stylize, each(upscale, small)),
        f"{style_only.name}, bicubic": lambda: resized(each(stylize, small), width, height),
        f"{style_only.name}, original": lambda: each(stylize, full),
    }
    rows = [(f"input {width // factor}x{height // factor}\n(bicubic x{factor})", with_zoom(resized(small, width, height)))]
    for label, run in tqdm(ways.items(), desc="ways", unit="way", leave=False):
        started = time.perf_counter()
        rows.append((label, with_zoom(run())))
        print(f"{label:<20} {(time.perf_counter() - started) / len(full):6.2f} s a frame")
    with partial_file(args.output) as partial:
        contact_sheet(rows, height).save(partial, format="PNG")
    print(args.output)


if __name__ == "__main__":
    main()
