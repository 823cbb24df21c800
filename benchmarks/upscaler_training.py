"""Seconds per training iteration of `vidstyle train-upscaler`, per factor, crop size and precision:
what sizes a curriculum to the hours there are.

    OMP_NUM_THREADS=1 python benchmarks/upscaler_training.py --vgg-weights ../shared/models/vgg16-imagenet-caffe-features.pth

Random crops stand in for photos (the cost does not depend on them); each figure is the
fastest of a few iterations after a warm-up one, on one thread unless --threads says otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import torch


@click.command()
@click.option("--vgg-weights", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--factors", default="4,8", show_default=True)
@click.option("--sizes", default="96,192", show_default=True, help="Crop sizes (high-resolution side).")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--iterations", default=3, show_default=True, help="Timed iterations per setting, after one warm-up.")
@click.option("--threads", default=1, show_default=True)
def main(vgg_weights: Path, factors: str, sizes: str, batch_size: int, iterations: int, threads: int) -> None:
    from vidstyle.trainer.config import TrainConfig
    from vidstyle.trainer.upscale import UpscaleObjective
    from vidstyle.trainer.vgg import load_loss_network
    from vidstyle.inference import has_native_bf16

    torch.set_num_threads(threads)
    loss_net = load_loss_network(vgg_weights)
    precisions = ["bf16", "fp32"] if has_native_bf16(torch.device("cpu")) else ["fp32"]
    print(f"{'factor':>6} {'crop':>5} {'precision':>9} {'s/it':>7} {'vs first':>9}")
    for factor in map(int, factors.split(",")):
        for precision in precisions:
            smallest = None
            for size in map(int, sizes.split(",")):
                config = TrainConfig(dataset=Path("."), run_dir=Path("."), output=Path("x.pth"), name="bench",
                                     factor=factor, image_size=size, pixel_weight=30.0, tv_weight=0.005)
                objective = UpscaleObjective(config, loss_net)
                net = objective.network()
                optimizer = torch.optim.Adam(net.parameters())
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
                crops = torch.rand(batch_size, 3, size, size) * 255
                times = []
                for _ in range(iterations + 1):
                    started = time.perf_counter()
                    terms = objective.loss_terms(net, crops, autocast, 1)
                    optimizer.zero_grad()
                    sum(objective.weights[name] * value for name, value in terms.items()).backward()
                    optimizer.step()
                    times.append(time.perf_counter() - started)
                seconds = min(times[1:])
                smallest = smallest or seconds
                print(f"{factor:>6} {size:>5} {precision:>9} {seconds:>7.3f} {seconds / smallest:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
