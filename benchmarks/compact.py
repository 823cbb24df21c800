"""A style's compact network against its full one: speed end to end, quality and flicker (issue 35).

    python benchmarks/compact.py [--style udnie] [--sizes 640x360,1280x720] [--frames 96,24] [--repeats 2]

Speed, measured in one run: `vidstyle submit`'s pipeline (vidstyle.pipeline.stylize_file, default
settings: x264 CRF 18 preset medium, bfloat16 where the CPU computes it, eager as a short clip runs
with an empty compile cache) on the first frames of real footage (../shared/videos: chaplin at
640x360, big_buck_bunny scaled to 1280x720), for each network with and without the temporal
stage. Each case runs --repeats times, alternating, and its best is kept (the least disturbed by
anything else on the machine); the ratios compact / full are the figures to read. Run it on an
idle machine: pause other work (kill -STOP) for its few minutes, a size at a time (--sizes
640x360 --frames 96, then --sizes 1280x720 --frames 24: about 3 minutes each on 2 cores).

Quality: each style's teacher and compact network side by side, from their model cards, where
benchmarks/style_quality.py --record measured both by the same command (its `evaluation`):
L-BFGS-equivalent iterations from noise (256 px, held-out photos) and flicker with the temporal
stage on the real clips; the issue's targets are a ratio of at least 0.9 and no more flicker.
A card's figures are as old as its measurement: the built-in teachers' flicker predates today's
temporal stage (docs/compact.md has them measured again beside their students').

--sheet writes a contact sheet: three held-out photos (256 px), then each style's full network
and its compact one, row under row (docs/compact-sheet.png).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
SOURCES = {"640x360": SHARED / "videos" / "chaplin.mp4", "1280x720": SHARED / "videos" / "big_buck_bunny_0_30.webm"}
LBFGS_TARGET, SPEED_TARGET = 0.9, 4.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--style", default="udnie", help="the style whose two networks are timed [udnie]")
    p.add_argument("--sizes", default="640x360,1280x720")
    p.add_argument("--frames", default="96,24", help="frames per size, in the order of --sizes [96,24]")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quality-styles", default="udnie,the-scream,shipwreck,wave", help="styles whose two networks are compared (and drawn with --sheet)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--sheet", type=Path, help="write a contact sheet PNG of teachers and students here")
    p.add_argument("--photos", type=Path, default=SHARED / "datasets" / "photos")
    return p.parse_args()


def make_clip(source: Path, size: str, frames: int, path: Path) -> Path:
    """The first `frames` frames of source scaled to size, as H.264 at CRF 12 (no audio)."""
    import av

    width, height = (int(side) for side in size.split("x"))
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12", "preset": "fast"}
        for index, frame in enumerate(src.decode(video=0)):
            if index == frames:
                break
            out.mux(stream.encode(frame.reformat(width, height, "yuv420p")))
        out.mux(stream.encode())
    return path


def speed(args: argparse.Namespace) -> None:
    import torch

    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.pipeline import stylize_file
    from vidstyle.styles import find_style
    from vidstyle.temporal import DEFAULT_STRENGTH

    networks = {network: find_style(args.style, network) for network in ("full", "compact")}
    print(f"{args.style}: end to end frames/s, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'size':<10} {'frames':>6} {'temporal':<9} {'full':>7} {'compact':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for size, frames in zip(args.sizes.split(","), map(int, args.frames.split(","))):
            clip = make_clip(SOURCES[size], size, frames, Path(folder) / f"{size}.mp4")
            stylizers = {name: Stylizer(style.load_network(), resolve_device("cpu"), compile=False)
                         for name, style in networks.items()}
            for temporal in (True, False):
                best = {name: 0.0 for name in stylizers}
                for _ in range(args.repeats):
                    for name, stylizer in stylizers.items():
                        started = time.perf_counter()
                        stylize_file(clip, Path(folder) / f"out.{name}.mp4", stylizer, force=True,
                                     temporal_strength=DEFAULT_STRENGTH if temporal else 0.0)
                        best[name] = max(best[name], frames / (time.perf_counter() - started))
                ratio = best["compact"] / best["full"]
                print(f"{size:<10} {frames:>6} {'on' if temporal else 'off':<9} {best['full']:>7.2f} "
                      f"{best['compact']:>8.2f} {ratio:>5.2f}x", flush=True)


def quality(args: argparse.Namespace) -> None:
    from vidstyle.styles import find_style

    print(f"\nquality (model cards; benchmarks/style_quality.py --record): L-BFGS-equivalent iterations from noise "
          f"(target compact >= {LBFGS_TARGET} x teacher), flicker with the temporal stage per clip (target: no more)")
    for name in args.quality_styles.split(","):
        teacher, compact = find_style(name, "full"), find_style(name).compact()
        if compact is None:
            print(f"{name:<12} no compact network")
            continue
        figures = [style.card.get("evaluation", {}) for style in (teacher, compact)]
        iterations = [f.get("median_lbfgs_iterations_from_noise") for f in figures]
        ratio = f"{iterations[1] / iterations[0]:.2f}" if None not in iterations else "-"
        clips = sorted(set(figures[0].get("flicker_clips", {})) & set(figures[1].get("flicker_clips", {})))
        flicker = ", ".join(f"{clip.split('.')[0]} {figures[0]['flicker_clips'][clip]['temporal']:.2f} -> "
                            f"{figures[1]['flicker_clips'][clip]['temporal']:.2f}" for clip in clips)
        print(f"{name:<12} L-BFGS {iterations[0]} -> {iterations[1]} ({ratio}); flicker {flicker or '-'}")
        print(f"{'':<12} teacher: {json.dumps(figures[0].get('command'))}; compact: {json.dumps(figures[1].get('command'))}")


def sheet(args: argparse.Namespace) -> None:
    import torch

    from vidstyle.preview import contact_sheet
    from vidstyle.styles import find_style
    from vidstyle.trainer.data import find_images, load_sample_photos

    held_out = find_images(args.photos)[-50:]
    photos = load_sample_photos(held_out[::len(held_out) // 3][:3], 256)  # three: four styles stay under 4 MB

    def pictures(images: torch.Tensor) -> list:
        return list(images.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy())

    rows = [("held-out photos", pictures(photos))]
    for name in args.quality_styles.split(","):
        teacher = find_style(name, "full")
        for network, style in (("full", teacher), ("compact", teacher.compact())):
            if style is not None:
                with torch.no_grad():
                    rows.append((f"{name} {network}", pictures(style.load_network()(photos))))
    contact_sheet(rows, 256).save(args.sheet)
    print(args.sheet)


def main() -> None:
    args = parse_args()
    if not args.skip_speed:
        speed(args)
    quality(args)
    if args.sheet:
        sheet(args)


if __name__ == "__main__":
    main()
