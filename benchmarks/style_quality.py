"""Quality and flicker of installed styles, side by side, measured in one run.

    python benchmarks/style_quality.py --styles udnie,the-scream [--images 8] [--clips 3] [--threads 1]

For each style: `vidstyle eval quality` on the first --images of the photos
its trainer held out (the last --held-out of --photos, by path; centre crops at
--size), and `vidstyle eval flicker` on --clips handheld camera clips made from
other held-out photos (vidstyle.sample.make_camera_video). Prints the medians
of the L-BFGS-equivalent iterations (from white noise, from the photo), the
median objective and its unweighted style term, and the flicker ratio on each clip and their mean. With
--record, the figures also go into each style's model card ("evaluation").
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from statistics import fmean, median

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", required=True, help="comma-separated style names or .pth files")
    p.add_argument("--photos", type=Path, default=SHARED / "datasets" / "photos")
    p.add_argument("--style-images", type=Path, default=SHARED / "styles", help="folder of STYLE_IMAGE files named in the model cards")
    p.add_argument("--vgg-weights", type=Path, default=SHARED / "models" / "vgg16-imagenet-caffe-features.pth")
    p.add_argument("--held-out", type=int, default=50)
    p.add_argument("--images", type=int, default=8, help="photos for the quality measurement [8]")
    p.add_argument("--clips", type=int, default=3, help="camera clips for the flicker measurement [3]")
    p.add_argument("--frames", type=int, default=48, help="frames per clip [48]")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-iterations", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--record", action="store_true", help="write the figures into each style's model card")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainer.data import find_images
    from trainer.evaluate import evaluate_flicker, evaluate_quality, median_iterations
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.sample import make_camera_video
    from vidstyle.styles import find_style

    held_out = find_images(args.photos)[-args.held_out:]
    # Clips from the far end of the held-out photos, so they differ from the quality photos.
    clip_photos = held_out[::-1][: args.clips]
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-style-quality-"))
    clips = [make_camera_video(photo, workdir / f"{photo.stem}.mp4", frames=args.frames) for photo in clip_photos]
    print(f"quality: {args.images} held-out photos at {args.size} px, L-BFGS up to {args.max_iterations} iterations; "
          f"flicker: {len(clips)} camera clips of {args.frames} frames ({', '.join(p.stem for p in clip_photos)})")
    rows = []
    for name in args.styles.split(","):
        style = find_style(name)
        row = {"style": style.name}
        if not args.skip_quality:
            results = evaluate_quality(style, args.style_images / style.card["style_image"], args.photos, args.vgg_weights,
                                       size=args.size, limit=args.images, max_iterations=args.max_iterations,
                                       held_out=args.held_out)
            row |= {"objective": median(r.objective for r in results), "style_loss": median(r.style_loss for r in results),
                    "noise": median_iterations([r.from_noise for r in results], args.max_iterations),
                    "content": median_iterations([r.from_content for r in results], args.max_iterations)}
        stylizer = Stylizer(style.load_network(), resolve_device(None), compile=False)
        row["flicker"] = [evaluate_flicker(clip, stylizer).ratio for clip in clips]
        rows.append(row)
        print(row, flush=True)
        if args.record:
            card_path = style.weights_path.with_suffix(".json")
            card = json.loads(card_path.read_text())
            card["evaluation"] = {
                "command": "python benchmarks/style_quality.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
                    ("images", args.images), ("clips", args.clips), ("frames", args.frames), ("size", args.size),
                    ("max_iterations", args.max_iterations), ("held_out", args.held_out))),
                "quality_photos": args.images, "size": args.size,
                **({"median_objective": round(row["objective"], 1), "median_style_loss": round(row["style_loss"]),
                    "median_lbfgs_iterations_from_noise": row["noise"],
                    "median_lbfgs_iterations_from_photo": row["content"]} if "objective" in row else {}),
                "flicker_clips": {clip.stem: round(ratio, 2) for clip, ratio in zip(clips, row["flicker"])},
                "mean_flicker_ratio": round(fmean(row["flicker"]), 2),
            }
            card_path.write_text(json.dumps(card, indent=2) + "\n")
    print()
    print(f"{'style':<16} {'objective':>10} {'style loss':>10} {'L-BFGS noise':>13} {'L-BFGS photo':>13}  flicker per clip (mean)")
    for row in rows:
        quality = (f"{row['objective']:>10.4g} {row['style_loss']:>10.4g} {row['noise']:>13g} {row['content']:>13g}"
                   if "objective" in row else f"{'-':>10} {'-':>10} {'-':>13} {'-':>13}")
        flicker = ", ".join(f"{ratio:.2f}" for ratio in row["flicker"])
        print(f"{row['style']:<16} {quality}  {flicker} ({fmean(row['flicker']):.2f})")


if __name__ == "__main__":
    main()
