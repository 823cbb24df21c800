"""Which blend makes the best --strength: losses and a contact sheet, measured in one run.

    python benchmarks/strength_blends.py [--style udnie] [--photos A.jpg B.jpg] [--sheet blends.png] [--threads 2]

Three ways to give "S of the style", each at S = 0, 0.25, 0.5, 0.75 and 1, on a
few held-out photos (centre crops at --size) and a real video frame (the
middle frame of --clip, scaled to --clip-size):

- pixel: the input plus S times the change the style makes (what ships);
- luminance: the style's colours in full, S of its change of luminance;
- features: every instance norm of the network blended with an identity,
  S x norm(x) + (1 - S) x x, so the network's own features carry less style.

Each is scored by the style's training objective (vidstyle.trainer's
PerceptualObjective, the model card's units): the unweighted content and style
terms, as medians over the images, relative to the plain stylization's (S = 1).
A blend reads better when, for the same style loss, its content loss is lower.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from statistics import median

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Spread over the 50 the built-in styles' trainer held out (the last by path).
PHOTOS = ("n07747607_orange.jpg", "n07871810_meat_loaf.jpg", "n09288635_geyser.jpg", "n12057211_yellow_lady's_slipper.jpg")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--style", default="udnie")
    p.add_argument("--photos", type=Path, nargs="+", default=[SHARED / "datasets" / "photos" / name for name in PHOTOS],
                   help="photos the style was not trained on [four of the trainer's held-out ones]")
    p.add_argument("--size", type=int, default=256, help="photo crop size [256]")
    p.add_argument("--style-images", type=Path, default=SHARED / "styles")
    p.add_argument("--vgg-weights", type=Path, default=SHARED / "models" / "vgg16-imagenet-caffe-features.pth")
    p.add_argument("--clip", type=Path, default=SHARED / "videos" / "chaplin.mp4")
    p.add_argument("--clip-size", default="640x360")
    p.add_argument("--sheet", type=Path, help="write a contact sheet: a row per blend and strength")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads [1: this shared machine's measurements]")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from vidstyle.trainer.data import load_sample_photos
    from vidstyle.trainer.evaluate import PerceptualObjective, decoded_frames
    from vidstyle.trainer.vgg import load_loss_network
    from vidstyle.formats import parse_size
    from vidstyle.inference import Controls, apply_controls
    from vidstyle.preview import contact_sheet
    from vidstyle.styles import find_style

    style = find_style(args.style)
    objective = PerceptualObjective(style.card, args.style_images / style.card["style_image"],
                                    load_loss_network(args.vgg_weights))
    photos = list(load_sample_photos(args.photos, args.size))
    frames = list(decoded_frames(args.clip, size=parse_size(args.clip_size)))
    images = [p[None] for p in photos] + [torch.from_numpy(frames[len(frames) // 2]).permute(2, 0, 1)[None].float()]
    net = style.load_network()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]

    def feature_blend(image: torch.Tensor, strength: float) -> torch.Tensor:
        hooks = [m.register_forward_hook(lambda _m, inputs, out: strength * out + (1 - strength) * inputs[0])
                 for m in norms]
        try:
            return net(image)
        finally:
            for hook in hooks:
                hook.remove()

    def luminance_blend(image: torch.Tensor, stylized: torch.Tensor, strength: float) -> torch.Tensor:
        # The style's change minus (1 - S) of its luminance: preserve-colors' change, scaled.
        luminance_only = apply_controls(image, stylized, Controls(preserve_colors=True))
        return stylized - (1 - strength) * (luminance_only - image)

    blends = {
        "pixel": lambda image, stylized, s: apply_controls(image, stylized, Controls(strength=s)),
        "luminance": luminance_blend,
        "features": lambda image, stylized, s: feature_blend(image, s),
    }
    losses: dict[tuple[str, float], list[tuple[float, float]]] = {}
    shown: dict[tuple[str, float], list[np.ndarray]] = {}
    with torch.no_grad():
        for image in images:
            stylized = net(image)
            target = objective.content_target(image)
            for name, blend in blends.items():
                for strength in STRENGTHS:
                    out = blend(image, stylized, strength).clamp(0, 255).round()
                    terms = objective.terms(out, target)
                    losses.setdefault((name, strength), []).append((terms["content"].item(), terms["style"].item()))
                    shown.setdefault((name, strength), []).append(out[0].permute(1, 2, 0).to(torch.uint8).numpy())
    plain_content = median(c for c, _ in losses[("pixel", 1.0)])
    plain_style = median(s for _, s in losses[("pixel", 1.0)])
    print(f"{style.name}: {len(photos)} held-out photos at {args.size} px and the middle frame of {args.clip.name} "
          f"at {args.clip_size}; medians relative to the plain stylization (content {plain_content:.4g}, "
          f"style {plain_style:.4g})")
    print(f"{'blend':10s} " + " ".join(f"{'S=' + format(s, 'g'):>18s}" for s in STRENGTHS))
    print(f"{'':10s} " + " ".join(f"{'content  style':>18s}" for _ in STRENGTHS))
    for name in blends:
        cells = [f"{median(c for c, _ in losses[(name, s)]) / plain_content:8.2f} "
                 f"{median(v for _, v in losses[(name, s)]) / plain_style:8.2f} " for s in STRENGTHS]
        print(f"{name:10s} " + " ".join(f"{cell:>18s}" for cell in cells))
    if args.sheet:
        rows = [(f"{name}\nS={s:g}", shown[(name, s)][-2:]) for name in blends for s in STRENGTHS]
        contact_sheet(rows, 128).save(args.sheet)
        print(args.sheet)


if __name__ == "__main__":
    main()
