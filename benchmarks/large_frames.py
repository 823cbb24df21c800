"""Peak memory and time of one large frame stylized whole and in strips (vidstyle.strips),
or upscaled whole and in tiles (vidstyle.tiles, with --upscale).

    python benchmarks/large_frames.py [--sizes 3840x2160,7680x4320] [--whole-up-to 9000000] [--style udnie]
                                      [--upscale 4|x4.pth]

Each measurement runs in a fresh child process (peak resident memory is the
child's ru_maxrss): a held-out photo, resized to the frame size, through
Stylizer with whole_frame_pixels forcing one path or the other (eager, the
machine's default precision). Sizes above --whole-up-to pixels are run in
strips only: whole they need more memory than this machine should be asked
for (BYTES_PER_PIXEL estimates 1 kB per pixel: 34 GB for 8K). Where both ran,
prints the ratios and how far the strips' output is from the whole frame's
(max and mean absolute difference in 8-bit levels).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="3840x2160,7680x4320", help="WIDTHxHEIGHT,... [3840x2160,7680x4320]")
    p.add_argument("--whole-up-to", type=int, default=9_000_000, help="largest frame (pixels) also run whole [9000000]")
    p.add_argument("--style", default="udnie", help="a style, or 'none' with --upscale [udnie]")
    p.add_argument("--upscale", help="then upscale by this factor (or upscaler weights file); sizes are the input's")
    p.add_argument("--photo", type=Path, default=None, help="[the last photo of ../shared/datasets/photos]")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", nargs=4, metavar=("PATH", "WIDTH", "HEIGHT", "PATHWAY"), help=argparse.SUPPRESS)
    return p.parse_args()


def child(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import find_treatment

    if args.threads:
        torch.set_num_threads(args.threads)
    output, width, height, pathway = Path(args.child[0]), int(args.child[1]), int(args.child[2]), args.child[3]
    frame = np.asarray(Image.open(args.photo).convert("RGB").resize((width, height), Image.BICUBIC))[None]
    network = find_treatment(None if args.style == "none" else args.style, args.upscale).load_network()
    stylizer = Stylizer(network, resolve_device("cpu"), compile=False,
                        whole_frame_pixels=None if pathway == "whole" else 0)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    stylized = stylizer(frame)
    seconds = time.perf_counter() - started
    np.save(output, stylized)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "before_mb": baseline_mb}))


def measure(args: argparse.Namespace, workdir: Path, width: int, height: int, pathway: str) -> dict:
    output = workdir / f"{width}x{height}-{pathway}.npy"
    command = [sys.executable, __file__, "--style", args.style, "--photo", str(args.photo),
               "--child", str(output), str(width), str(height), pathway]
    if args.upscale:
        command += ["--upscale", args.upscale]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1]) | {"output": output}


def main() -> None:
    args = parse_args()
    if args.photo is None:
        args.photo = sorted((SHARED / "datasets" / "photos").rglob("*.jpg"))[-1]
    if args.child:
        child(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-large-frames-"))
    print(f"style {args.style}, upscale {args.upscale or 'none'}, photo {args.photo.name}, eager, "
          f"one frame per child process")
    for size in args.sizes.split(","):
        width, height = (int(n) for n in size.split("x"))
        parts = "tiles" if args.upscale else "strips"
        pathways = ["whole", parts] if width * height <= args.whole_up_to else [parts]
        runs = {pathway: measure(args, workdir, width, height, pathway) for pathway in pathways}
        for pathway, run in runs.items():
            print(f"{size:>10} {pathway:<6} {run['seconds']:7.1f} s  peak RSS {run['peak_rss_mb']:7.0f} MB "
                  f"(before the frame {run['before_mb']:.0f} MB)")
        if len(runs) == 2:
            whole, split = runs["whole"], runs[parts]
            difference = np.abs(np.load(whole["output"]).astype(int) - np.load(split["output"]).astype(int))
            print(f"{size:>10} {parts}/whole: time {split['seconds'] / whole['seconds']:.2f}x, "
                  f"peak RSS {split['peak_rss_mb'] / whole['peak_rss_mb']:.2f}x; "
                  f"output difference max {difference.max()} levels, mean {difference.mean():.3f}")
        for run in runs.values():
            run["output"].unlink()


if __name__ == "__main__":
    main()
