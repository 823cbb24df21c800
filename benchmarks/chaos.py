"""The fleet losing nodes: jobs on workers that are killed while they run, and a Redis restart.

    python benchmarks/chaos.py [--jobs 40] [--workers 3] [--per-host 1] [--size 128x96]
                               [--short-frames 48] [--long-frames 192] [--fault-interval 20:40] [--seed 0]

Starts its own redis-server (append-only on, on a free port, in a temporary
folder) and `vidstyle worker` processes of 1 CPU thread each, with the default
fleet settings (presence lapse, recovery interval, visibility timeout); with
--per-host N, N workers share each name, as N workers started on one host without
--name do, and a killed worker's host starts its replacement under its name. Two runs
of the same jobs, a quarter of them long enough to be split into segments:

1. without faults: the wall time to compare with;
2. with faults: every 20 to 40 s one worker's whole process group is SIGKILLed
   (as when a node dies) and a new worker is started; once, mid-run, Redis
   itself is restarted.

It checks, and prints: every job succeeded, each of its units (whole job, or
segments and join) completed exactly once; every output has its input's frames
and timestamps, and its audio; no partial or segment file is left; the time
from each kill to each of the killed worker's units running again (median,
max); the wall time of the faulty run against the clean one. Exit status 1 if
a check fails.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import redis


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=40, help="jobs per run [40]")
    p.add_argument("--workers", type=int, default=3, help="workers, 1 thread each [3]")
    p.add_argument("--per-host", type=int, default=1, help="workers sharing each name, as on one host [1]")
    p.add_argument("--size", default="128x96", help="WIDTHxHEIGHT of the clips [128x96]")
    p.add_argument("--short-frames", type=int, default=48, help="frames of a short clip, at 24 fps [48]")
    p.add_argument("--long-frames", type=int, default=192, help="frames of a long clip, split in 2 s segments [192]")
    p.add_argument("--fault-interval", default="20:40", help="seconds between kills, MIN:MAX [20:40]")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def describe(path: Path) -> tuple[list[float], list[float]]:
    """Frame timestamps, and the duration of each audio stream."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], list(container.streams.audio)
        times, samples = [], {s.index: 0 for s in audio}
        for packet in container.demux(video, *audio):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    times.append(float(frame.time))
                else:
                    samples[packet.stream.index] += frame.samples
        return sorted(times), [samples[s.index] / s.rate for s in audio]


class Redis:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                        "--save", "", "--appendonly", "yes"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()  # flushes the append-only file
        self.process.wait(timeout=60)


class Fleet:
    """Worker processes by label (their log's name); in the job store each goes by its id, NAME#RANDOM."""

    def __init__(self, env: dict[str, str], logs: Path, store) -> None:
        self.env, self.logs, self.store = env, logs, store
        self.processes: dict[str, subprocess.Popen] = {}
        self.names: dict[str, str] = {}
        self.count = 0

    def start_worker(self, name: str | None = None) -> str:
        self.count += 1
        name = name or f"w{self.count}@chaos"
        label = f"{self.count:03d}-{name}"
        log = open(self.logs / f"{label}.log", "w")
        self.processes[label] = subprocess.Popen(
            [sys.executable, "-m", "vidstyle.cli", "worker", "--name", name], env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.names[label] = name
        log.close()
        return label

    def worker_id(self, label: str) -> str | None:
        """The id of the worker started as `label`, once it is live."""
        pid = self.processes[label].pid
        return next((w.name for w in self.store.live_workers() if w.pid == pid), None)

    def wait_live(self, labels: list[str]) -> None:
        while not all(self.worker_id(label) for label in labels):
            time.sleep(0.2)

    def kill(self, label: str) -> None:
        process = self.processes.pop(label)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            process.wait(timeout=120)
        self.processes.clear()


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers and Redis on the way out
    rng = random.Random(args.seed)
    width, height = (int(v) for v in args.size.split("x"))
    low, high = (float(v) for v in args.fault_interval.split(":"))
    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-chaos-"))
    storage, logs, styles = workdir / "storage", workdir / "logs", workdir / "styles"
    for folder in (storage, logs, styles):
        folder.mkdir()
    server = Redis(workdir)
    server.start()
    env = dict(os.environ, VIDSTYLE_BROKER_URL=server.url, VIDSTYLE_STORAGE=str(storage), OMP_NUM_THREADS="1",
               VIDSTYLE_COMPILE="0", VIDSTYLE_STYLES_PATH=str(styles))
    os.environ.update(env)
    import torch

    from vidstyle.workers.jobs import FINAL_STATES, SUCCEEDED, JobStore, connect
    from vidstyle.model import TransformerNet
    from vidstyle.sample import make_sample_video
    from vidstyle.styles import save_style
    from vidstyle.workers.client import submit_job

    torch.manual_seed(0)
    save_style(TransformerNet(), styles / "chaos.pth", {"name": "chaos", "format": "vidstyle-style/1"})
    store = JobStore(connect(server.url))
    long_jobs = args.jobs // 4
    clips = []
    for i in range(args.jobs):
        long = i % 4 == 0 and len([c for c in clips if c[1]]) < long_jobs
        frames = args.long_frames if long else args.short_frames
        clips.append((make_sample_video(storage / f"clip{i:02d}.mp4", width=width, height=height, frames=frames,
                                        keyframes=list(range(0, frames, 24))), long))
    sources = {clip: describe(clip) for clip, _ in clips}
    print(f"vidstyle chaos benchmark: {args.jobs} jobs ({long_jobs} split into 2 s segments) of {width}x{height}, "
          f"{args.short_frames} or {args.long_frames} frames with audio; {args.workers} workers of 1 thread, "
          f"{args.per_host} per host; "
          f"faults every {low:g}-{high:g} s; CPU count {os.cpu_count()}; logs in {logs}", flush=True)
    failures: list[str] = []

    def run(label: str, faults: bool) -> tuple[float, list[dict]]:
        out = storage / label
        out.mkdir()
        fleet = Fleet(env, logs, store)
        try:
            return drive(label, out, fleet, faults)
        finally:
            fleet.stop()

    def drive(label: str, out: Path, fleet: Fleet, faults: bool) -> tuple[float, list]:
        fleet.wait_live([fleet.start_worker(f"vidstyle@host{i // args.per_host}") for i in range(args.workers)])
        started = time.monotonic()
        job_ids = [submit_job(clip, "chaos", output=out / f"{clip.stem}.out.mp4",
                              segment_seconds="2" if long else "auto").id for clip, long in clips]
        kills, restarted = [], not faults
        next_fault = time.monotonic() + rng.uniform(low, high)
        while True:
            try:
                jobs = [store.get(job_id) for job_id in job_ids]
                done = sum(job.state in FINAL_STATES for job in jobs)
            except redis.RedisError:
                time.sleep(0.2)  # Redis is restarting
                continue
            if done == len(jobs):
                break
            if faults and time.monotonic() >= next_fault:
                chosen = rng.choice(sorted(fleet.processes))
                victim = fleet.worker_id(chosen)
                units = [member for member in store.active_units()
                         if store.unit_fields(*member.split("|"))["worker"] == victim]
                fleet.kill(chosen)
                kills.append((time.time(), victim, units))
                print(f"  {time.monotonic() - started:6.1f} s: killed {victim or chosen} running {units or 'nothing'}; "
                      f"started {fleet.start_worker(fleet.names[chosen])} ({done}/{len(jobs)} jobs ended)", flush=True)
                next_fault = time.monotonic() + rng.uniform(low, high)
            if not restarted and done >= len(jobs) // 2:
                server.stop()
                server.start()
                restarted = True
                print(f"  {time.monotonic() - started:6.1f} s: restarted Redis ({done}/{len(jobs)} jobs ended)", flush=True)
            time.sleep(0.5)
        wall = time.monotonic() - started
        check(label, out, job_ids, kills)
        return wall, kills

    def check(label: str, out: Path, job_ids: list[str], kills: list) -> None:
        histories = {job_id: store.attempt_history(job_id) for job_id in job_ids}
        for (clip, _), job_id in zip(clips, job_ids):
            job = store.get(job_id)
            if job.state != SUCCEEDED:
                failures.append(f"{label}: job {job_id} ({clip.name}) {job.state}: {job.error}")
                continue
            completed: dict[str, int] = {}
            for attempt in histories[job_id]:
                if attempt["outcome"] == SUCCEEDED:
                    completed[attempt["unit"]] = completed.get(attempt["unit"], 0) + 1
            if any(count > 1 for count in completed.values()):
                failures.append(f"{label}: job {job_id}: a unit completed more than once: {completed}")
            times, audio = describe(storage / job.output)
            source_times, source_audio = sources[clip]
            if times != source_times:
                failures.append(f"{label}: job {job_id}: {len(times)} frames, not the input's {len(source_times)} "
                                "with its timestamps")
            if len(audio) != len(source_audio) or any(abs(a - b) > 0.05 for a, b in zip(audio, source_audio)):
                failures.append(f"{label}: job {job_id}: audio {audio} against the input's {source_audio}")
        expected = sorted(f"{clip.stem}.out.mp4" for clip, _ in clips)
        left = sorted(p.name for p in out.iterdir())
        if left != expected:
            failures.append(f"{label}: files other than the outputs: {sorted(set(left) - set(expected))}")
        recovered = []
        for killed_at, victim, units in kills:
            for member in units:
                job_id, unit = member.split("|")
                later = [a["started_at"] for a in histories[job_id] if a["unit"] == unit and a["started_at"] > killed_at]
                if later:
                    recovered.append(min(later) - killed_at)
                elif store.get(job_id).state == SUCCEEDED and not any(
                        a["unit"] == unit and a["worker"] == victim and a["outcome"] == SUCCEEDED for a in histories[job_id]):
                    failures.append(f"{label}: {member} of killed {victim} never ran again")
        if recovered:
            print(f"{label}: kill to rerun, {len(recovered)} units of {len(kills)} killed workers: "
                  f"median {statistics.median(recovered):.1f} s, max {max(recovered):.1f} s", flush=True)
            if max(recovered) > 30:
                failures.append(f"{label}: a unit waited {max(recovered):.1f} s after its worker was killed (target 30 s)")
        lost = sum(a["outcome"] == "worker lost" for history in histories.values() for a in history)
        print(f"{label}: {sum(store.get(j).state == SUCCEEDED for j in job_ids)}/{len(job_ids)} jobs succeeded, "
              f"{lost} attempts lost with their workers", flush=True)

    try:
        clean, _ = run("clean", faults=False)
        print(f"clean: {clean:.1f} s", flush=True)
        faulty, kills = run("chaos", faults=True)
        print(f"chaos: {faulty:.1f} s with {len(kills)} kills and a Redis restart: {faulty / clean:.2f}x the clean run",
              flush=True)
    finally:
        try:
            server.stop()
        except Exception:
            pass
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("all checks passed: every job succeeded once, frame-exact with audio, nothing left behind")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
