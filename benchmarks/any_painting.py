"""The any-painting network measured in one run: quality on paintings it never saw, against the
dedicated networks, flicker on real footage with and without the temporal stage, and speed.

    python benchmarks/any_painting.py [--paintings 32] [--images 4] [--frames 90] [--threads 1] [--sheet docs/any-painting.png]

- quality: `vidstyle eval quality --style-image P` (L-BFGS iterations of Gatys et al.'s optimisation
  from noise that reach the network's objective, 256 px, the held-out photos) for the first
  --paintings of the paintings its model card lists as held out, and for the paintings of
  --styles beside their dedicated networks (each style's own weights, same photos);
- flicker: `vidstyle eval flicker` of --flicker-painting on the clips of ../shared/videos
  (first --frames at --clip-size), the temporal output's ratio over the per-frame output's;
- speed: `stylize_file` end to end on chaplin's first --speed-frames frames (640x360) with the
  painting and with --speed-style, alternately, best of --repeats; and a still (`vidstyle submit
  PHOTO`, the whole command) with each.
--sheet writes a contact sheet: rows of held-out paintings, columns of held-out photos.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]
BUILT_IN_STYLES = "udnie,the-scream,shipwreck,wave,extra-styles/candy.pth,extra-styles/la-muse.pth,extra-styles/mosaic.pth,extra-styles/rain-princess.pth"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paintings", type=int, default=32, help="held-out paintings measured [32]")
    p.add_argument("--painting-folder", type=Path, default=SHARED / "datasets" / "paintings")
    p.add_argument("--styles", default=BUILT_IN_STYLES, help="dedicated networks to compare with (their paintings: --style-images)")
    p.add_argument("--style-images", type=Path, default=SHARED / "styles")
    p.add_argument("--photos", type=Path, default=SHARED / "datasets" / "photos")
    p.add_argument("--held-out", type=int, default=50)
    p.add_argument("--images", type=int, default=4, help="held-out photos per painting [4]")
    p.add_argument("--vgg-weights", type=Path, default=SHARED / "models" / "vgg16-imagenet-caffe-features.pth")
    p.add_argument("--max-iterations", type=int, default=300)
    p.add_argument("--flicker-painting", type=Path, default=SHARED / "styles" / "udnie.jpg")
    p.add_argument("--clips", type=Path, nargs="+", default=sorted((SHARED / "videos").glob("*.*")))
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--clip-size", default="640x360")
    p.add_argument("--speed-clip", type=Path, default=SHARED / "videos" / "chaplin.mp4")
    p.add_argument("--speed-frames", type=int, default=48)
    p.add_argument("--speed-style", default="udnie")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["quality", "styles", "flicker", "speed"])
    p.add_argument("--sheet", type=Path, help="write the contact sheet PNG here")
    return p.parse_args()


def quality(style, painting: Path, args: argparse.Namespace) -> list[int | None]:
    from vidstyle.trainer.evaluate import evaluate_quality

    results = evaluate_quality(style, painting, args.photos, args.vgg_weights, limit=args.images,
                               max_iterations=args.max_iterations, held_out=args.held_out)
    return [r.from_noise for r in results]


def held_out_paintings(args: argparse.Namespace) -> list[Path]:
    from vidstyle.styles import ARBITRARY_WEIGHTS

    names = json.loads(ARBITRARY_WEIGHTS.with_suffix(".json").read_text())["paintings"]["held_out"]
    return [args.painting_folder / name for name in names[: args.paintings]]


def measure_quality(args: argparse.Namespace) -> None:
    from vidstyle.trainer.evaluate import median_iterations
    from vidstyle.styles import Painting

    counts = []
    for painting in held_out_paintings(args):
        mine = quality(Painting(painting), painting, args)
        counts += mine
        print(f"  {painting.name:<40} {median_iterations(mine, args.max_iterations):>6g}", flush=True)
    print(f"held-out paintings: median L-BFGS iterations from noise {median_iterations(counts, args.max_iterations):g} "
          f"over {len(counts)} (painting, photo) pairs")


def measure_styles(args: argparse.Namespace) -> None:
    from vidstyle.trainer.evaluate import median_iterations
    from vidstyle.styles import Painting, find_style

    print(f"{'painting':<24} {'any-painting':>12} {'dedicated':>10}")
    for name in args.styles.split(","):
        style = find_style(str(REPO / name) if name.endswith(".pth") else name)
        painting = args.style_images / style.card["style_image"]
        mine = median_iterations(quality(Painting(painting), painting, args), args.max_iterations)
        theirs = median_iterations(quality(style, painting, args), args.max_iterations)
        print(f"{style.name:<24} {mine:>12g} {theirs:>10g}", flush=True)


def measure_flicker(args: argparse.Namespace) -> None:
    from vidstyle.trainer.evaluate import evaluate_flicker
    from vidstyle.formats import parse_size
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import Painting

    stylizer = Stylizer(Painting(args.flicker_painting).load_network(), resolve_device(None), compile=False)
    for clip in args.clips:
        report = evaluate_flicker(clip, stylizer, limit=args.frames, size=parse_size(args.clip_size))
        figures = ", ".join(f"{flow} {report.per_frame[flow].ratio:.2f} -> {report.temporal[flow].ratio:.2f} "
                            f"(x{report.temporal[flow].ratio / report.per_frame[flow].ratio:.2f})" for flow in report.temporal)
        print(f"flicker {clip.name} ({args.flicker_painting.name}), per frame -> temporal: {figures}", flush=True)


def measure_speed(args: argparse.Namespace) -> None:
    from benchmarks.temporal import cut
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.pipeline import stylize_file
    from vidstyle.styles import Painting, find_style

    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-any-painting-"))
    clip = cut(args.speed_clip, args.speed_frames, workdir / f"clip{args.speed_clip.suffix}")
    networks = {"any painting": Painting(args.flicker_painting), args.speed_style: find_style(args.speed_style)}
    fps: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(args.repeats):
        for name, chosen in networks.items():
            started = time.perf_counter()  # the network's loading (the painting's code) included
            stylizer = Stylizer(chosen.load_network(), resolve_device("cpu"), compile=False)
            stylize_file(clip, workdir / f"out{clip.suffix}", stylizer, force=True)
            fps[name].append(args.speed_frames / (time.perf_counter() - started))
    best = {name: max(values) for name, values in fps.items()}
    print(f"speed end to end, {args.speed_frames} frames of {args.speed_clip.name}, temporal stage on: " +
          ", ".join(f"{name} {value:.2f} frames/s" for name, value in best.items()) +
          f"; ratio {best['any painting'] / best[args.speed_style]:.2f}")

    photo = sorted(args.photos.rglob("*.jpg"))[-1]
    seconds = {}
    for name, option in (("any painting", ["--style-image", str(args.flicker_painting)]),
                         (args.speed_style, ["--style", args.speed_style])):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vidstyle.cli", "submit", str(photo), *option, "-f", "-o",
                        str(workdir / "still.png")], check=True, capture_output=True)
        seconds[name] = time.perf_counter() - started
    print(f"a still ({photo.name}), the whole command: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) +
          f"; ratio {seconds['any painting'] / seconds[args.speed_style]:.2f}")


def write_sheet(args: argparse.Namespace) -> None:
    from vidstyle.trainer.data import find_images, load_sample_photos
    from vidstyle.preview import contact_sheet
    from vidstyle.styles import Painting

    photos = load_sample_photos(find_images(args.photos)[-args.held_out:][:: args.held_out // 5][:5], 256)
    rows = [("photos", [p.permute(1, 2, 0).numpy().astype(np.uint8) for p in photos])]
    for painting in held_out_paintings(args)[::4]:
        with torch.no_grad():
            stylized = Painting(painting).load_network()(photos).clamp(0, 255).round()
        thumb = Painting(painting).pixels[0].permute(1, 2, 0).numpy().astype(np.uint8)
        rows.append((painting.stem[:18], [thumb, *(s.permute(1, 2, 0).numpy().astype(np.uint8) for s in stylized)]))
    rows[0] = ("photos", [np.full((256, 256, 3), 255, np.uint8), *rows[0][1]])
    contact_sheet(rows, 160).save(args.sheet)
    print(args.sheet)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    for name, measure in (("quality", measure_quality), ("styles", measure_styles), ("flicker", measure_flicker),
                          ("speed", measure_speed)):
        if name not in args.skip:
            measure(args)
    if args.sheet:
        write_sheet(args)


if __name__ == "__main__":
    main()
