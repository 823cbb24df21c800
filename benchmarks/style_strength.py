"""How hard each style image pulls, and the style weight that gives it udnie's balance.

    python benchmarks/style_strength.py [--styles candy,wave] [--photos 8] [--threads 1]

The style term's size depends on the style image: a saturated, busy painting
is far from any photo's Gram matrices, a muted one is close. The same
--style-weight therefore wipes out the content for one style and is a faint
filter for another. This measures each style image's style loss of unstylized
held-out photos (the distance the network has to travel, in the trainer's
units, at --style-size) and prints the style weight that makes the weighted
term as large as udnie's at the weight of its recipe (the built-in udnie:
2e-4, median L-BFGS equivalent 58.5).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from statistics import median

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE_STYLE, REFERENCE_WEIGHT = "udnie", 2e-4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", help="comma-separated style image names in --style-images [all of them]")
    p.add_argument("--style-images", type=Path, default=SHARED / "styles")
    p.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "photos")
    p.add_argument("--vgg-weights", type=Path, default=SHARED / "models" / "vgg16-imagenet-caffe-features.pth")
    p.add_argument("--held-out", type=int, default=50)
    p.add_argument("--photos", type=int, default=8, help="held-out photos to measure on [8]")
    p.add_argument("--size", type=int, default=256, help="photo crop size [256]")
    p.add_argument("--style-size", type=int, default=256, help="style image long side [256]")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vidstyle.trainer.data import find_images, load_sample_photos, load_style_image
    from vidstyle.trainer.losses import gram_matrix, style_loss
    from vidstyle.trainer.vgg import load_loss_network

    images = {p.stem: p for p in find_images(args.style_images)}
    names = args.styles.split(",") if args.styles else sorted(images)
    missing = [n for n in names + [REFERENCE_STYLE] if n not in images]
    if missing:
        raise SystemExit(f"style images not found in {args.style_images}: {', '.join(missing)}")
    loss_net = load_loss_network(args.vgg_weights)
    photos = load_sample_photos(find_images(args.dataset)[-args.held_out:][: args.photos], args.size)

    with torch.no_grad():
        # The photos' features are the same for every style: computed once.
        photo_features = [loss_net(photo.unsqueeze(0)) for photo in photos]

        def photo_style_loss(name: str) -> float:
            grams = [gram_matrix(f) for f in loss_net(load_style_image(images[name], args.style_size))]
            return median(style_loss(features, grams).item() for features in photo_features)

        losses = {name: photo_style_loss(name) for name in dict.fromkeys([REFERENCE_STYLE, *names])}
    reference = losses[REFERENCE_STYLE]
    print(f"median style loss of {len(photos)} unstylized held-out photos at {args.size} px (style long side "
          f"{args.style_size}); balanced weight = {REFERENCE_WEIGHT:g} x {REFERENCE_STYLE}'s loss / the style's")
    print(f"{'style':16s} {'photo style loss':>17s} {'x ' + REFERENCE_STYLE:>9s} {'balanced weight':>16s}")
    for name in names:
        loss = losses[name]
        print(f"{name:16s} {loss:17.3e} {loss / reference:9.2f} {REFERENCE_WEIGHT * reference / loss:16.1e}")


if __name__ == "__main__":
    main()
