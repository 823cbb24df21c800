"""The grid strength (trainer/upscale_eval.py's grid_strength) of the installed upscalers, each run
with both upsamplings, on real photos: the detector's positive and negative controls.

    python benchmarks/upscale_grid.py [--set ../shared/sr/Set14] [--photos ../shared/datasets/photos --limit 6] [--threads 1]

The upsampling is not in the weights, so the installed x4 run with nearest upsampling is the
x4 as it was trained (a fine hatching at 2 and 4 pixels), and the x8 with nearest is the x8
before its bilinear fine-tune (an 8-pixel block grid); the other pairings are untrained for
their upsampling, there to be seen. Each photo is cropped to multiples of the factor and
degraded as the network was trained (vidstyle.trainer.upscale.degrade). The row "ideal" is the
detail a perfect upscaler would add, the photo minus the bicubic upscale of its degraded copy:
the figure of a detail with the photos' own structure and no grid.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean

import torch

from vidstyle.trainer.data import find_images, read_rgb, to_tensor
from vidstyle.trainer.upscale import bicubic_upscale, degrade
from vidstyle.trainer.upscale_eval import GRID_THRESHOLD, grid_strength, read_test_set, upscaler_with
from vidstyle.model import UPSAMPLINGS
from vidstyle.styles import BUILTIN_UPSCALERS_DIR

FACTORS = (4, 8)


def photos(folder: Path, limit: int, factor: int) -> list[torch.Tensor]:
    """The first `limit` photos of a folder, cropped to multiples of the factor."""
    images = [to_tensor(read_rgb(path)).unsqueeze(0) for path in find_images(folder)[:limit]]
    return [image[..., : image.shape[-2] // factor * factor, : image.shape[-1] // factor * factor] for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=Path("../shared/sr/Set14"), help="A folder of NAME_HR.png photos.")
    parser.add_argument("--photos", type=Path, help="Also the first --limit photos of this folder.")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'factor':<7} {'network':<24} {'photos':<14} {'mean':>6} {'min':>6} {'max':>6}  (threshold {GRID_THRESHOLD:g})")
    for factor in FACTORS:
        groups = {args.set.name: [hr for _, hr, _ in read_test_set(args.set, factor)]}
        if args.photos:
            groups[args.photos.name] = photos(args.photos, args.limit, factor)
        weights = BUILTIN_UPSCALERS_DIR / f"x{factor}.pth"
        nets = {f"x{factor} forced to {mode}": upscaler_with(weights, factor, mode) for mode in UPSAMPLINGS}
        for group, images in groups.items():
            smalls = [degrade(hr, factor) for hr in images]
            with torch.no_grad():
                bases = [bicubic_upscale(small, factor) for small in smalls]
                rows = {"ideal (photo - bicubic)": [hr - base for hr, base in zip(images, bases)]}
                rows.update({name: [net(small) - base for small, base in zip(smalls, bases)] for name, net in nets.items()})
            for name, details in rows.items():
                grids = [grid_strength(detail, factor) for detail in details]
                print(f"x{factor:<6} {name:<24} {group:<14} {fmean(grids):>6.2f} {min(grids):>6.2f} {max(grids):>6.2f}", flush=True)


if __name__ == "__main__":
    main()
