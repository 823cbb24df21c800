"""What the temporal stage costs: end-to-end speed with it on against --no-temporal, in one run.

    python benchmarks/temporal.py [--clip ../shared/videos/chaplin.mp4] [--frames 48] [--style udnie] [--network auto] [--compile]

The clip's first --frames frames are cut into a file of their own (copied, not
re-encoded); then `stylize_file` stylizes it with the temporal stage on and
off, alternately --repeats times, with one warm Stylizer (so compilation, with
--compile, is paid before the first measurement). Prints frames/s each way
(best of the repeats, the least disturbed on a shared machine) and their ratio
(target >= 0.80), and the stage's own cost per frame: motion (DIS flow and its
reliability) and the input's blend, in the decoding thread, and the features'
blend, between the network's halves.
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def cut(clip: Path, frames: int, output: Path) -> Path:
    """The first `frames` video frames of clip (and its audio up to there), packets copied."""
    with av.open(str(clip)) as source, av.open(str(output), "w") as sink:
        video = source.streams.video[0]
        streams = {video.index: sink.add_stream_from_template(video)}
        streams |= {s.index: sink.add_stream_from_template(s) for s in source.streams.audio}
        end = None
        for packet in source.demux(video, *source.streams.audio):
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                frames -= 1
                if frames < 0:
                    end = end or packet.pts * packet.time_base
                    continue
            elif end is not None and packet.pts * packet.time_base >= end:
                continue
            packet.stream = streams[packet.stream.index]
            sink.mux(packet)
    return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=SHARED / "videos" / "chaplin.mp4")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--style", default="udnie")
    p.add_argument("--network", default="auto", help="auto|full|compact, as `submit --network`: the default times the "
                   "network a user gets (a compact one, where it qualifies, leaves the stage the larger share)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (as submit does by default)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.media import probe_video
    from vidstyle.pipeline import stylize_file
    from vidstyle.styles import find_style
    from vidstyle.temporal import DEFAULT_STRENGTH, MotionTracker, TemporalConsistency

    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-temporal-"))
    clip = cut(args.clip, args.frames, workdir / f"clip{args.clip.suffix}")
    info = probe_video(clip)
    style = find_style(args.style, args.network)
    stylizer = Stylizer(style.load_network(), resolve_device("cpu"), compile=args.compile)
    stylizer(np.zeros((1, info.height, info.width, 3), np.uint8))  # compile (if asked) before timing

    def fps(strength: float) -> float:
        started = time.perf_counter()
        stylize_file(clip, workdir / f"out{clip.suffix}", stylizer, force=True, temporal_strength=strength)
        return args.frames / (time.perf_counter() - started)

    speeds: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        speeds["off"].append(fps(0))
        speeds["on"].append(fps(DEFAULT_STRENGTH))
    on, off = max(speeds["on"]), max(speeds["off"])

    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(video=0), range(16))]
    tracker = MotionTracker()
    tracker(frames[0])
    started = time.perf_counter()
    motions = [tracker(frame) for frame in frames[1:]]
    motion_ms = (time.perf_counter() - started) / len(motions) * 1000
    stage, prepare_seconds, feature_seconds = TemporalConsistency(DEFAULT_STRENGTH, stylizer.feature_stride), [], []

    def timed(blend: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        blended = blend(features)
        feature_seconds.append(time.perf_counter() - started)
        return blended

    for frame in frames:
        started = time.perf_counter()
        batch, frame_motions = stage.prepare(frame[None])  # motion again, and the input's blend
        prepare_seconds.append(time.perf_counter() - started)
        stylizer(batch, between=functools.partial(timed, stage.feature_blend(frame_motions)))
    # The first frame has nothing to carry.
    blend_ms = sum(prepare_seconds[1:]) / len(motions) * 1000 - motion_ms
    feature_ms = sum(feature_seconds[1:]) / len(motions) * 1000

    print(f"{args.clip.name}: {args.frames} frames at {info.width}x{info.height}, style {args.style} ({style.card.get('network', 'full')} network), "
          f"{'compiled' if args.compile else 'eager'}, {torch.get_num_threads()} threads")
    print(f"  --no-temporal  {off:6.2f} frames/s   (runs: {', '.join(f'{v:.2f}' for v in speeds['off'])})")
    print(f"  temporal       {on:6.2f} frames/s   (runs: {', '.join(f'{v:.2f}' for v in speeds['on'])})")
    print(f"  ratio          {on / off:6.2f}   (target >= 0.80)")
    print(f"  stage per frame: motion {motion_ms:.1f} ms and input blend {blend_ms:.1f} ms (decoding thread), "
          f"feature blend {feature_ms:.1f} ms (between the network's halves); network + codec {1000 / off:.0f} ms")


if __name__ == "__main__":
    main()
