"""What a worker's start-up compile buys its jobs: no job waits for a compile, whatever its style.

    python benchmarks/worker_startup.py [--frames 72] [--size 640x360]

Starts its own redis-server and, one after the other, three `vidstyle worker`s
(default threads) on one new compile cache folder, each given two jobs of
different styles on the same clip (made here; temporal stage on, as by default):

1. eager (VIDSTYLE_COMPILE=0): the time each job runs, to compare with;
2. VIDSTYLE_WARM_SIZES set to the clip's size, the cache empty: the time to
   start (until the worker is live: it compiles the size into the cache, then
   its pool process loads it) and each job's time;
3. the same with the cache the second worker filled: start-up is a load only.

Every figure comes from one run; compare the ratios. Redis and the workers are
helpers from benchmarks/chaos.py.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from chaos import Fleet, Redis

STYLES = [("udnie", "the-scream"), ("wave", "shipwreck"), ("udnie", "wave")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=72, help="frames of the clip, at 24 fps [72]")
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT [640x360]")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-worker-startup-"))
    storage, logs = workdir / "storage", workdir / "logs"
    storage.mkdir()
    logs.mkdir()
    server = Redis(workdir)
    server.start()
    base_env = dict(os.environ, VIDSTYLE_BROKER_URL=server.url, VIDSTYLE_STORAGE=str(storage),
                    VIDSTYLE_CACHE_DIR=str(workdir / "cache"))
    for name in ("VIDSTYLE_COMPILE", "VIDSTYLE_WARM_SIZES", "TORCHINDUCTOR_CACHE_DIR"):
        base_env.pop(name, None)
    os.environ.update(base_env)
    from vidstyle.workers.jobs import FINAL_STATES, SUCCEEDED, JobStore, connect
    from vidstyle.sample import make_sample_video
    from vidstyle.workers.client import submit_job

    store = JobStore(connect(server.url))
    clip = make_sample_video(storage / "clip.mp4", width=width, height=height, frames=args.frames)
    cases = [("eager", {"VIDSTYLE_COMPILE": "0"}),
             ("warm sizes, empty cache", {"VIDSTYLE_WARM_SIZES": args.size}),
             ("warm sizes, filled cache", {"VIDSTYLE_WARM_SIZES": args.size})]
    print(f"{args.frames} frames of {width}x{height}, CPU count {os.cpu_count()}; logs in {logs}", flush=True)
    print(f"{'worker':<26} {'start s':>8}  jobs (style: run s)", flush=True)
    job_seconds: dict[str, list[float]] = {}
    try:
        for (label, env), styles in zip(cases, STYLES):
            fleet = Fleet({**base_env, **env}, logs, store)
            started = time.monotonic()
            name = fleet.start_worker()
            fleet.wait_live([name])
            start_seconds = time.monotonic() - started
            runs = []
            for style in styles:
                job = submit_job(clip, style, output=storage / f"{label.split()[0]}-{style}.mp4", force=True,
                                 segment_seconds="off")
                while (job := store.get(job.id)).state not in FINAL_STATES:
                    time.sleep(0.2)
                if job.state != SUCCEEDED:
                    raise SystemExit(f"{label}: job {job.id} {job.state}: {job.error}")
                runs.append((style, job.finished_at - job.started_at))
            fleet.stop()
            job_seconds[label] = [seconds for _, seconds in runs]
            print(f"{label:<26} {start_seconds:>8.1f}  " + ", ".join(f"{s}: {t:.1f}" for s, t in runs), flush=True)
    finally:
        server.stop()
    eager = job_seconds["eager"]
    print("\nratios of each job's run time to the eager worker's (one run; below 1: no compile waited for):")
    for label in job_seconds:
        if label != "eager":
            print(f"  {label}: " + ", ".join(f"{t / e:.2f}" for t, e in zip(job_seconds[label], eager)))


if __name__ == "__main__":
    main()
