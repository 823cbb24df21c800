"""Flicker of styles on real footage, frame by frame (no temporal blending), measured in one run.

    python benchmarks/real_flicker.py --styles udnie,runs/x/udnie.pth [--frames 90] [--threads 1] [--record]

For each real clip (default: the three in ../shared/videos), the first --frames
frames scaled to 640x360, and each style: the warping error ratio of Lai et
al. (2018), with the flicker measurement of trainer/evaluate.py (stylized frame
t+1 warped onto t along the input frames' optical flow, occluded pixels left
out by a forward-backward check, mean squared difference divided by the
input's own) but with OpenCV's Farneback flow, so that the figure does not
depend on the DIS flow a temporal blend may use. With --record, the ratios go
into each style's model card ("real_clip_flicker").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean

import cv2
import numpy as np
import torch
from tqdm import tqdm

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIPS = ("chaplin.mp4", "big_buck_bunny_0_30.webm", "fire2.mp4")
# Farneback's usual settings: pyramid scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


class FarnebackFlow:
    """cv2.calcOpticalFlowFarneback behind the calc() of OpenCV's DIS objects."""

    def calc(self, first: np.ndarray, second: np.ndarray, flow: np.ndarray | None) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(first, second, flow, *FARNEBACK)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", required=True, help="comma-separated style names or .pth files")
    p.add_argument("--videos", type=Path, nargs="*", default=[SHARED / "videos" / name for name in CLIPS])
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--record", action="store_true", help="write the ratios into each style's model card")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    from trainer.evaluate import WarpingError, decoded_frames
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import find_style

    clips = {video.name: np.stack([cv2.resize(frame, (args.width, args.height), interpolation=cv2.INTER_AREA)
                                   for frame in decoded_frames(video, args.frames)]) for video in args.videos}
    print(f"flicker: first {args.frames} frames of {', '.join(clips)} at {args.width}x{args.height}, Farneback flow, "
          f"per-frame stylization")
    rows = []
    for name in args.styles.split(","):
        style = find_style(name)
        stylizer = Stylizer(style.load_network(), resolve_device(None), compile=False)
        row = {"style": name, "ratios": {}}
        for clip, frames in clips.items():
            stylized = np.concatenate([stylizer(frames[i : i + args.batch_size])
                                       for i in tqdm(range(0, len(frames), args.batch_size), desc=f"{name} {clip}")])
            error = WarpingError()
            error.flow = FarnebackFlow()
            for t in range(len(frames) - 1):
                error.add((frames[t], frames[t + 1]), (stylized[t], stylized[t + 1]))
            row["ratios"][clip] = error.result(len(frames)).ratio
        rows.append(row)
        print(row, flush=True)
        if args.record:
            card_path = style.weights_path.with_suffix(".json")
            card = json.loads(card_path.read_text())
            card["real_clip_flicker"] = {
                "command": f"python benchmarks/real_flicker.py --frames {args.frames} --width {args.width} "
                           f"--height {args.height}",
                "what": "warping error ratio (Lai et al. 2018), Farneback flow, forward-backward occlusion mask, "
                        "per-frame stylization",
                "clips": {clip: round(ratio, 2) for clip, ratio in row["ratios"].items()},
                "mean": round(fmean(row["ratios"].values()), 2),
            }
            card_path.write_text(json.dumps(card, indent=2) + "\n")
    print()
    print(f"{'style':<40} " + " ".join(f"{clip:>26}" for clip in clips) + f" {'mean':>7}")
    for row in rows:
        print(f"{row['style']:<40} " + " ".join(f"{row['ratios'][clip]:>26.2f}" for clip in clips)
              + f" {fmean(row['ratios'].values()):>7.2f}")
    if len(rows) > 1:
        for row in rows[1:]:
            print(f"{row['style'] + ' / ' + rows[0]['style']:<40} "
                  + " ".join(f"{row['ratios'][clip] / rows[0]['ratios'][clip]:>26.2f}x" for clip in clips))


if __name__ == "__main__":
    main()
