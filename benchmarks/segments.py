"""One video on one worker against the same video split over two.

    python benchmarks/segments.py [--frames 288] [--size 320x180] [--segment-seconds 2.5] [--compile]

Starts its own redis-server (on a free port, in a temporary folder) and
`vidstyle worker` processes, each limited to one CPU thread (OMP_NUM_THREADS=1),
so on a 2-core machine two workers have a core each. All figures come from one run:

1. 1 worker, not split: wall time from submit to the job's end;
2. 1 worker, split into segments: the same, to show what splitting costs;
3. 2 workers, split: the same, its speed-up over 1, and the join step's share
   of the total (the job record's join_seconds);
4. that the split output has the source's frames and timestamps.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 12 s with a keyframe a second: four segments of 3 s, two for each worker.
    p.add_argument("--frames", type=int, default=288, help="frames in the clip, at 24 fps [288]")
    p.add_argument("--size", default="320x180", help="WIDTHxHEIGHT [320x180]")
    p.add_argument("--segment-seconds", default="2.5", help="segment length for the split runs [2.5]")
    p.add_argument("--compile", action="store_true", help="let workers torch.compile (each pays it once)")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def main() -> None:
    args = parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-segments-"))
    storage = workdir / "storage"
    storage.mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, VIDSTYLE_BROKER_URL=url, VIDSTYLE_STORAGE=str(storage), OMP_NUM_THREADS="1",
               VIDSTYLE_COMPILE="1" if args.compile else "0")
    os.environ.update(env)
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                                     "--save", ""], stdout=subprocess.DEVNULL)
    workers: list[subprocess.Popen] = []
    try:
        from vidstyle.workers.jobs import FINAL_STATES, SUCCEEDED, JobStore, connect
        from vidstyle.sample import make_sample_video
        from vidstyle.workers.client import submit_job

        store = JobStore(connect(url))
        while True:
            try:
                store.redis.ping()
                break
            except Exception:
                time.sleep(0.1)
        # A keyframe every second, as a camera or a streaming encode would have.
        clip = make_sample_video(storage / "clip.mp4", width=width, height=height, frames=args.frames,
                                 keyframes=list(range(0, args.frames, 24)))
        style = "bench"
        styles = workdir / "styles"
        styles.mkdir()
        import torch

        from vidstyle.model import TransformerNet
        from vidstyle.styles import save_style

        torch.manual_seed(0)
        save_style(TransformerNet(), styles / f"{style}.pth", {"name": style, "format": "vidstyle-style/1"})
        env["VIDSTYLE_STYLES_PATH"] = os.environ["VIDSTYLE_STYLES_PATH"] = str(styles)

        def start_worker(name: str) -> None:
            process = subprocess.Popen([sys.executable, "-m", "vidstyle.cli", "worker", "--name", f"{name}@%h"],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            workers.append(process)
            while not any(w.name.startswith(f"{name}@") for w in store.live_workers()):
                time.sleep(0.2)

        def run(label: str, segment_seconds: str) -> tuple[float, object]:
            output = storage / f"out-{label}.mp4"
            started = time.perf_counter()
            job = submit_job(clip, style, output=output, segment_seconds=segment_seconds)
            while (job := store.get(job.id)).state not in FINAL_STATES:
                time.sleep(0.1)
            wall = time.perf_counter() - started
            if job.state != SUCCEEDED:
                raise SystemExit(f"{label}: job {job.state}: {job.error}")
            if frame_times(output) != frame_times(clip):
                raise SystemExit(f"{label}: output frames or timestamps differ from the source")
            print(f"{label}: {wall:.1f} s  ({args.frames / wall:.2f} frames/s"
                  + (f", {job.segments} segments, join {job.join_seconds:.2f} s" if job.segments else ", not split") + ")",
                  flush=True)
            return wall, job

        print(f"vidstyle segment benchmark: {args.frames} frames {width}x{height}, workers of 1 thread each, "
              f"compile {'on' if args.compile else 'off'}, CPU count {os.cpu_count()}", flush=True)
        start_worker("w1")
        run("warm-up (1 worker)", "off")  # the worker loads the style once
        one, _ = run("1 worker, not split", "off")
        one_split, _ = run("1 worker, split", args.segment_seconds)
        start_worker("w2")
        run("warm-up (2 workers)", args.segment_seconds)  # the second worker loads the style too
        two, job = run("2 workers, split", args.segment_seconds)
        print(f"speed-up of 2 workers over 1 (not split): {one / two:.2f}x; splitting costs 1 worker "
              f"{one_split / one - 1:+.1%}; the join is {job.join_seconds / two:.1%} of the 2-worker total")
    finally:
        for process in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)
        redis_server.terminate()
        redis_server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
