"""The artists' controls' figures, measured in one run.

    python benchmarks/controls.py [--style udnie] [--iterations 10] [--size 512] [--threads 2]

1. What --strength and --preserve-colors cost: the Stylizer on batches of a real
   clip's frames (--clip at --clip-size, eager, best of --repeats), plain and
   with both controls, taken in turn, and the ratio.
2. Optimising a still (`submit --style-image`): seconds per L-BFGS iteration at
   --size px (a held-out photo after the style's painting; a run of 1 iteration
   subtracted, so loading is not counted), and the objective before and after
   --iterations.
3. `vidstyle export`: the style exported at 64x64, run by onnxruntime on a real
   frame at --clip-size; the largest difference from PyTorch's float32 output
   in 8-bit levels, and the time per frame of each.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--style", default="udnie")
    p.add_argument("--style-images", type=Path, default=SHARED / "styles")
    p.add_argument("--photo", type=Path, default=SHARED / "datasets" / "photos" / "n09332890_lakeside.jpg")
    p.add_argument("--vgg-weights", type=Path, default=SHARED / "models" / "vgg16-imagenet-caffe-features.pth")
    p.add_argument("--clip", type=Path, default=SHARED / "videos" / "chaplin.mp4")
    p.add_argument("--clip-size", default="640x360")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads [1: this shared machine's measurements]")
    return p.parse_args()


def best_seconds(runs: list, repeats: int) -> list[float]:
    """The best time of each run, the runs taken in turn `repeats` times (so a change of load hits all alike)."""
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, taken in zip(runs, times):
            started = time.perf_counter()
            run()
            taken.append(time.perf_counter() - started)
    return [min(taken) for taken in times]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime
    from PIL import Image

    from vidstyle.trainer.evaluate import decoded_frames
    from vidstyle.trainer.gatys import optimise_image
    from vidstyle.formats import parse_size
    from vidstyle.export import FramesInFramesOut, export_style
    from vidstyle.inference import Controls, Stylizer, resolve_device
    from vidstyle.styles import find_style

    style = find_style(args.style)
    frames = np.stack(list(decoded_frames(args.clip, limit=args.batch, size=parse_size(args.clip_size))))

    stylizer = Stylizer(style.load_network(), resolve_device("cpu"), compile=False)
    stylizer(frames)  # warm-up
    plain, controlled = best_seconds([lambda: stylizer(frames),
                                      lambda: stylizer(frames, Controls(strength=0.5, preserve_colors=True))], args.repeats)
    print(f"1. Stylizer, {len(frames)} frames of {args.clip.name} at {args.clip_size}, eager, best of {args.repeats}: "
          f"plain {plain:.3f} s, strength 0.5 + preserve-colors {controlled:.3f} s: x{controlled / plain:.3f}")

    photo = Image.open(args.photo).convert("RGB")
    scale = args.size / max(photo.size)
    photo = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS))
    painting = args.style_images / style.card["style_image"]
    seconds = {}
    for iterations in (1, args.iterations):  # the difference leaves out loading VGG and the painting's Grams
        started = time.perf_counter()
        result = optimise_image(photo, painting, args.vgg_weights, iterations)
        seconds[iterations] = time.perf_counter() - started
    per_iteration = (seconds[args.iterations] - seconds[1]) / (args.iterations - 1)
    print(f"2. optimising {args.photo.name} at {photo.shape[1]}x{photo.shape[0]} after {painting.name}: "
          f"{per_iteration:.2f} s per L-BFGS iteration ({torch.get_num_threads()} thread(s)); objective "
          f"{result.start_objective:.4g} -> {result.final_objective:.4g} in {args.iterations} iterations")

    with tempfile.TemporaryDirectory() as folder:
        path = export_style(style.load_network(), Path(folder) / f"{style.name}.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = frames[:1].transpose(0, 3, 1, 2).astype(np.float32)
    network = FramesInFramesOut(style.load_network().eval())
    with torch.no_grad():
        expected = network(torch.from_numpy(image)).numpy()
        exported = session.run(None, {"image": image})[0]
        torch_seconds, onnx_seconds = best_seconds([lambda: network(torch.from_numpy(image)),
                                                    lambda: session.run(None, {"image": image})], args.repeats)
    difference = np.abs(exported.round() - expected.round())
    print(f"3. ONNX (exported at 64x64) on a {args.clip_size} frame of {args.clip.name}: max difference "
          f"{difference.max():g} levels of 255 (mean {difference.mean():.2g}) from PyTorch float32; per frame "
          f"onnxruntime {onnx_seconds:.3f} s, PyTorch eager float32 {torch_seconds:.3f} s")


if __name__ == "__main__":
    main()
