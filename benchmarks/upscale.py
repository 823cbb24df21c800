"""Upscaling speed end to end against the network alone, and the memory of a 4K output frame.

    python benchmarks/upscale.py [--frames 24] [--threads 1] [--weights x4.pth] [--repeats 2] [--compile]

Both parts in one run:

1. A synthetic 320x180 clip with audio (vidstyle.sample) upscaled x4 to 1280x720:
   frames/s of the network alone (Stylizer on the clip's decoded frames, in the
   pipeline's batches) and of `stylize_file` end to end with the same, already
   warm Stylizer (decode, network, encode overlapped, audio copied), measured
   alternately --repeats times; the best of each and their ratio.
2. One 960x540 frame upscaled to 3840x2160, whole and in tiles, each in a fresh
   process (benchmarks/large_frames.py --upscale): time and peak resident memory.

Weights: --weights, else the installed x4 upscaler, else random ones
(torch.manual_seed(0)): the speed does not depend on them.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FACTOR = 320, 180, 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", help="an x4 upscaler's .pth [the installed x4, else random weights]")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the network (default: eager)")
    return p.parse_args()


def upscaler_weights(args: argparse.Namespace, workdir: Path) -> str:
    import torch

    from vidstyle.errors import VidstyleError
    from vidstyle.model import UpscalerNet
    from vidstyle.styles import find_upscaler, save_style

    if args.weights:
        return args.weights
    try:
        return str(find_upscaler(str(FACTOR)).weights_path)
    except VidstyleError:
        torch.manual_seed(0)
        path = workdir / f"x{FACTOR}.pth"
        save_style(UpscalerNet(FACTOR), path, {"task": "upscale", "factor": FACTOR})
        return str(path)


def main() -> None:
    args = parse_args()
    import torch
    from tqdm import tqdm

    from vidstyle.inference import Stylizer, default_batch_size, resolve_device
    from vidstyle.pipeline import stylize_file
    from vidstyle.sample import make_sample_video
    from vidstyle.styles import find_upscaler

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-upscale-"))
    weights = upscaler_weights(args, workdir)
    device = resolve_device("cpu")
    stylizer = Stylizer(find_upscaler(weights).load_network(), device, compile=args.compile)
    batch_size = default_batch_size(device, HEIGHT * FACTOR, WIDTH * FACTOR)
    print(f"x{FACTOR} upscaler {weights}; {WIDTH}x{HEIGHT} -> {WIDTH * FACTOR}x{HEIGHT * FACTOR}, {args.frames} frames, "
          f"batch {batch_size}, {args.threads} thread(s), {'compiled' if args.compile else 'eager'}, "
          f"{stylizer.autocast_dtype or 'float32'}", flush=True)

    clip = make_sample_video(workdir / "clip.mp4", width=WIDTH, height=HEIGHT, frames=args.frames, audio=True)
    with av.open(str(clip)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    batches = [frames[i:i + batch_size] for i in range(0, len(frames), batch_size)]
    if args.compile:
        stylizer.expect(len(frames), HEIGHT, WIDTH, batch_size)
    stylizer(batches[0])  # warm-up (and the compile, with --compile)

    def network_only() -> float:
        started = time.perf_counter()
        for batch in tqdm(batches, desc="network alone", unit="batch", leave=False):
            stylizer(batch)
        return len(frames) / (time.perf_counter() - started)

    def end_to_end() -> float:
        with tqdm(total=len(frames), desc="end to end", unit="frame", leave=False) as bar:
            started = time.perf_counter()
            stylize_file(clip, workdir / "out.mp4", stylizer, batch_size=batch_size, force=True, temporal_strength=0,
                         on_progress=lambda done, total: bar.update(done - bar.n))
            return len(frames) / (time.perf_counter() - started)

    alone, whole = [], []
    for _ in range(args.repeats):
        alone.append(network_only())
        whole.append(end_to_end())
    print(f"network alone: {max(alone):.2f} frames/s (runs: {', '.join(f'{x:.2f}' for x in alone)})")
    print(f"end to end:    {max(whole):.2f} frames/s (runs: {', '.join(f'{x:.2f}' for x in whole)}), "
          f"{max(whole) / max(alone):.2f} of the network alone", flush=True)

    print(f"\none {WIDTH * 3}x{HEIGHT * 3} frame -> {WIDTH * 3 * FACTOR}x{HEIGHT * 3 * FACTOR}, whole and in tiles:",
          flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("large_frames.py")), "--sizes", f"{WIDTH * 3}x{HEIGHT * 3}",
                    "--style", "none", "--upscale", weights, "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
