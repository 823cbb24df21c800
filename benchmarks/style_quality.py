"""Quality and flicker of installed styles, side by side, measured in one run.

    python benchmarks/style_quality.py --styles udnie,the-scream [--images 8] [--frames 90] [--threads 1]

For each style: `vidstyle eval quality` on the first --images of the photos
its trainer held out (the last --held-out of --photos, by path; centre crops at
--size), and `vidstyle eval flicker` on real footage (--clips, by default the
three clips of ../shared/videos: old film with grain, animation with a fade over
a flat sky, a phone clip), the first --frames frames scaled to --clip-size,
frame by frame and with the temporal stage. Prints the medians of the
L-BFGS-equivalent iterations (from white noise, from the photo), the median
objective and its unweighted style term, and per clip the flicker ratio both
ways and the temporal output's content and style losses against the per-frame
output's. With --record, the figures also go into each style's model card
("evaluation").
"""
from __future__ import annotations

import argparse
import json
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
    p.add_argument("--clips", type=Path, nargs="+", default=sorted((SHARED / "videos").glob("*.*")),
                   help="videos for the flicker measurement [the clips of ../shared/videos]")
    p.add_argument("--frames", type=int, default=90, help="frames per clip [90]")
    p.add_argument("--clip-size", default="640x360", help="clips scaled to WIDTHxHEIGHT [640x360]")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-iterations", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--record", action="store_true", help="write the figures into each style's model card")
    return p.parse_args()


def clip_figures(report) -> dict:
    """A clip's flicker (Farneback's measure, and each measure's floor and the temporal output as a
    multiple of it) and the temporal output's losses against the per-frame output's."""
    farneback = report.temporal["farneback"]
    return {"per_frame": round(report.per_frame["farneback"].ratio, 2), "temporal": round(farneback.ratio, 2),
            "floor": {flow: round(r.floor, 2) for flow, r in report.temporal.items()},
            "temporal_over_floor": {flow: round(r.over_floor, 2) for flow, r in report.temporal.items()},
            "content_loss_ratio": round(report.content_ratio, 3), "style_loss_ratio": round(report.style_ratio, 3),
            "last_third_content_loss_ratio": round(report.last_third_content_ratio, 3),
            "last_third_style_loss_ratio": round(report.last_third_style_ratio, 3)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vidstyle.trainer.evaluate import PerceptualObjective, evaluate_flicker, evaluate_quality, median_iterations
    from vidstyle.trainer.vgg import load_loss_network
    from vidstyle.formats import parse_size
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import find_style

    clips, clip_size = args.clips, parse_size(args.clip_size)
    loss_net = load_loss_network(args.vgg_weights)
    print(f"quality: {args.images} held-out photos at {args.size} px, L-BFGS up to {args.max_iterations} iterations; "
          f"flicker: the first {args.frames} frames of {', '.join(c.name for c in clips)} at {args.clip_size}")
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
        objective = PerceptualObjective(style.card, args.style_images / style.card["style_image"], loss_net)
        reports = [evaluate_flicker(clip, stylizer, limit=args.frames, size=clip_size, objective=objective) for clip in clips]
        row["flicker"] = [report.temporal["farneback"].ratio for report in reports]
        row["clips"] = {clip.name: clip_figures(r) for clip, r in zip(clips, reports)}
        rows.append(row)
        print(row, flush=True)
        if args.record:
            card_path = style.weights_path.with_suffix(".json")
            card = json.loads(card_path.read_text())
            # Figures not measured in this run (--skip-quality, clips not in --clips) stay as they were.
            earlier = card.get("evaluation", {})
            measured = {name: figures for name, figures in earlier.get("flicker_clips", {}).items()
                        if isinstance(figures, dict)} | row["clips"]
            card["evaluation"] = {
                **earlier,
                "command": "python benchmarks/style_quality.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
                    ("images", args.images), ("frames", args.frames), ("clip_size", args.clip_size), ("size", args.size),
                    ("max_iterations", args.max_iterations), ("held_out", args.held_out))),
                "quality_photos": args.images, "size": args.size,
                **({"median_objective": round(row["objective"], 1), "median_style_loss": round(row["style_loss"]),
                    "median_lbfgs_iterations_from_noise": row["noise"],
                    "median_lbfgs_iterations_from_photo": row["content"]} if "objective" in row else {}),
                # Real footage, frame by frame and with the temporal stage (vidstyle eval flicker).
                "flicker_clips": measured,
                "mean_flicker_ratio": round(fmean(c["temporal"] for c in measured.values()), 2),
                "mean_flicker_ratio_per_frame": round(fmean(c["per_frame"] for c in measured.values()), 2),
            }
            card_path.write_text(json.dumps(card, indent=2) + "\n")
    print()
    print(f"{'style':<16} {'objective':>10} {'style loss':>10} {'L-BFGS noise':>13} {'L-BFGS photo':>13}  "
          f"flicker per clip with the temporal stage (mean); per frame; losses against per frame")
    for row in rows:
        quality = (f"{row['objective']:>10.4g} {row['style_loss']:>10.4g} {row['noise']:>13g} {row['content']:>13g}"
                   if "objective" in row else f"{'-':>10} {'-':>10} {'-':>13} {'-':>13}")
        flicker = ", ".join(f"{ratio:.2f}" for ratio in row["flicker"])
        per_frame = ", ".join(f"{c['per_frame']:.2f}" for c in row["clips"].values())
        losses = ", ".join(f"content x{c['content_loss_ratio']:.2f} style x{c['style_loss_ratio']:.2f}" for c in row["clips"].values())
        print(f"{row['style']:<16} {quality}  {flicker} ({fmean(row['flicker']):.2f}); {per_frame}; {losses}")


if __name__ == "__main__":
    main()
