"""Compiled with the weights as graph inputs (vidstyle's choice) against frozen into the graph.

    python benchmarks/compile_modes.py [--size 640x360] [--batch 4] [--threads 1]

For each mode, three fresh processes on one new cache folder: the first compiles
with the cache empty, the second finds it filled; each runs a first style's
network, then a second style's in the same process. Printed per process: the time
to each style's first compiled batch (bf16 where native), and the steady time per
frame after it; eager's for comparison. One run; compare within a column.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

STYLES = ("udnie", "the-scream")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT [640x360]")
    p.add_argument("--batch", type=int, default=4, help="frames per batch [4]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    return p.parse_args(argv)


def child(mode: str, args: argparse.Namespace) -> None:
    """One process: each style's first batch, then steady batches; prints one line."""
    import numpy as np
    import torch
    import torch._inductor.config as inductor_config

    from vidstyle.inference import Stylizer
    from vidstyle.styles import find_style

    torch.set_num_threads(args.threads)
    inductor_config.freezing = mode == "frozen"
    width, height = (int(v) for v in args.size.split("x"))
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
    cells = []
    for style in STYLES:
        stylizer = Stylizer(find_style(style).load_network(), torch.device("cpu"), compile=mode != "eager")
        stylizer.expect(100, height, width, args.batch)
        started = time.perf_counter()
        stylizer(frames)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(4):
            stylizer(frames)
        cells.append(f"{style} first batch {first:5.1f} s, then {(time.perf_counter() - started) / 4 / args.batch * 1000:4.0f} ms/frame")
    print(f"{mode:<8} " + "; ".join(cells), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], parse_args(sys.argv[3:]))
        return
    parse_args()  # a bad argument fails here, once, not in each child
    for mode in ("eager", "inputs", "frozen"):
        env = dict(os.environ, VIDSTYLE_CACHE_DIR=tempfile.mkdtemp(prefix=f"vidstyle-compile-{mode}-"))
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        for _ in range(1 if mode == "eager" else 2):  # empty cache, then filled
            subprocess.run([sys.executable, __file__, "--child", mode, *sys.argv[1:]], env=env, check=True)


if __name__ == "__main__":
    main()
