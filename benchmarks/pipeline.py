"""How close the whole video pipeline comes to the speed of the network alone.

    python benchmarks/pipeline.py [--frames 24] [--batch-size 4] [--no-compile] [--precision auto] [--device cpu]

All figures are measured in one run, at 640x360, on a synthetic sample clip
(vidstyle.sample.make_sample_video, with audio):

1. network-only: frames/s of Stylizer.__call__ on the clip's own frames, decoded
   into memory beforehand, in the batches the pipeline would use; after a
   warm-up call whose time (torch.compile happens there) is reported apart.
2. end-to-end: frames/s of vidstyle.pipeline.stylize_file on the same clip with
   the same (already warm) Stylizer, so compilation is excluded; plus a cold
   first run in a fresh process (fresh compile cache) for the honest total.
3. the precision the network ran in and, when reduced (bfloat16 on CPUs with
   native bf16, float16 on CUDA), how far its output is from float32's (PSNR);
   the ratio of end-to-end to network-only (target >= 0.90), and ours against a reference figure for
   lengstrom/fast-style-transfer's transform_video (a constant from an earlier
   measurement on this machine, not measured here).
4. peak resident memory of a submit-like run (a child process that builds a
   Stylizer and calls stylize_file) on a short and a 3x longer clip: memory
   must not grow with the length of the video (target: difference < 50 MB).
   The short clip is longer than x264's 40-frame lookahead, which fills during
   the first frames. These children run with MALLOC_MMAP_THRESHOLD_=1048576:
   glibc then hands every large buffer back to the OS when it is freed, so the
   peak measures what the pipeline holds, repeatable to the MB, instead of how
   its arenas happened to fragment (tens of MB either way from run to run). The setting also
   turns off vidstyle.memory's, which keeps freed buffers for the next frame.

Network-only and end-to-end are measured alternately --repeats times; the
headline figures are the best of those (least disturbed by other processes
sharing the CPU, as timeit advises), the medians and every value are printed too.
The network has random weights (torch.manual_seed(0)) unless --style is given:
its speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 640, 360
# lengstrom/fast-style-transfer (TensorFlow) transform_video.py on this machine,
# end to end, 640x360: measured once earlier, NOT in this run.
REFERENCE_FPS = 2.65
TARGET_RATIO = 0.90
TARGET_RSS_GROWTH_MB = 50.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=24, help="frames in the sample clip [24]")
    p.add_argument("--batch-size", type=int, default=None, help="frames per network batch [vidstyle's default for the device]")
    p.add_argument("--no-compile", action="store_true", help="run the network without torch.compile")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N [cpu]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32"],
                   help="auto: reduced precision where the device has it natively; fp32: float32 throughout [auto]")
    p.add_argument("--style", default=None, help="use this style's weights instead of random ones")
    p.add_argument("--repeats", type=int, default=3, help="alternating network-only / end-to-end measurements [3]")
    p.add_argument("--rss-frames", type=int, nargs=2, default=(48, 144), metavar=("SHORT", "LONG"),
                   help="frames of the two clips for the peak-memory runs [48 144]")
    p.add_argument("--rss-repeats", type=int, default=2,
                   help="child runs per clip length, alternating short and long; medians are compared [2]")
    p.add_argument("--compile-rss", action="store_true", help="torch.compile in the peak-memory runs too (slow)")
    p.add_argument("--skip-cold", action="store_true", help="skip the cold first run in a fresh process")
    p.add_argument("--skip-rss", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (clips, outputs) and print its path")
    # Internal: one submit-like run in this (child) process; prints one JSON line.
    p.add_argument("--child-run", metavar="CLIP", help=argparse.SUPPRESS)
    p.add_argument("--child-output", help=argparse.SUPPRESS)
    p.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident set size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> str:
    """The commit of the vidstyle being measured, + '-dirty' if its sources differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vidstyle"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def build_network(style: str | None):
    import torch

    from vidstyle.model import TransformerNet

    if style:
        from vidstyle.styles import find_style

        return find_style(style).load_network()
    torch.manual_seed(0)
    return TransformerNet()


def child_run(args: argparse.Namespace) -> None:
    """What `vidstyle submit` does, timed, then the peak RSS: one JSON line on stdout."""
    started = time.perf_counter()
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.pipeline import stylize_file

    stylizer = Stylizer(build_network(args.style), resolve_device(args.device), compile=args.child_compile)
    ready = time.perf_counter()
    first_batch: list[float] = []
    frames = [0]
    peak_after: dict[int, float] = {}  # frames done -> peak RSS so far

    def on_progress(done: int, total: int) -> None:
        if not first_batch:
            first_batch.append(time.perf_counter() - ready)
        frames[0] = done
        peak_after[done] = peak_rss_mb()

    stylize_file(args.child_run, args.child_output, stylizer, batch_size=args.batch_size, force=True, on_progress=on_progress)
    finished = time.perf_counter()
    print(json.dumps({
        "frames": frames[0], "setup_s": ready - started, "stylize_s": finished - ready,
        "first_batch_s": first_batch[0] if first_batch else None, "peak_rss_mb": peak_rss_mb(),
        "peak_after": peak_after,
    }), flush=True)


def run_child(args: argparse.Namespace, clip: Path, output: Path, compile: bool, env: dict[str, str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-run", str(clip), "--child-output", str(output),
           "--device", args.device]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if compile:
        cmd.append("--child-compile")
    if args.style:
        cmd += ["--style", args.style]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child run on {clip.name} failed with status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def decode_frames(clip: Path):
    import av
    import numpy as np

    with av.open(str(clip)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_run:
        child_run(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-bench-"))
    os.environ["VIDSTYLE_PRECISION"] = args.precision  # for the child runs too
    # A private compile cache, so the warm-up and the cold first run compile from
    # scratch as on a fresh machine, not from an earlier run's cache.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "inductor-cache"))
    child_env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor-cache-cold"))

    import av
    import torch
    from tqdm import tqdm

    from vidstyle.inference import Stylizer, autocast_dtype, default_batch_size, resolve_device
    from vidstyle.pipeline import stylize_file
    from vidstyle.sample import make_sample_video

    device = resolve_device(args.device)
    compile = not args.no_compile
    print("vidstyle pipeline benchmark")
    print(f"  torch {torch.__version__}, PyAV {av.__version__}, Python {platform.python_version()}")
    print(f"  torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), os.cpu_count: {os.cpu_count()}")
    print(f"  CPU: {cpu_model()}")
    print(f"  vidstyle at {code_version()}")
    if device.type == "cuda":
        print(f"  GPU: {torch.cuda.get_device_name(device)}")
    print(f"  load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    batch_size = args.batch_size or default_batch_size(device, HEIGHT, WIDTH)
    dtype = autocast_dtype(device)
    precision = "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    print(f"  device {device}, {WIDTH}x{HEIGHT}, {args.frames} frames, batch size {batch_size}, "
          f"compile {'on' if compile else 'off'}, {precision}, weights {args.style or 'random (seed 0)'}")
    print(flush=True)

    clip = make_sample_video(workdir / "clip.mp4", width=WIDTH, height=HEIGHT, frames=args.frames, audio=True)
    frames = decode_frames(clip)
    n = len(frames)
    batches = [frames[i:i + batch_size] for i in range(0, n, batch_size)]

    stylizer = Stylizer(build_network(args.style), device, compile=compile)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Warm-up: the first call compiles; a short last batch is another shape
    # (dynamic=False compiles once per shape), so warm that up too.
    t = time.perf_counter()
    stylizer(batches[0])
    sync()
    warmup_s = time.perf_counter() - t
    extra_warmup_s = 0.0
    if len(batches[-1]) != len(batches[0]):
        t = time.perf_counter()
        stylizer(batches[-1])
        sync()
        extra_warmup_s = time.perf_counter() - t

    def network_only() -> float:
        t = time.perf_counter()
        for batch in tqdm(batches, desc="network-only", unit="batch", leave=False):
            stylizer(batch)
        sync()
        return time.perf_counter() - t

    run_index = [0]

    def end_to_end() -> float:
        run_index[0] += 1
        output = workdir / f"out-{run_index[0]}.mp4"
        with tqdm(total=n, desc="end-to-end", unit="frame", leave=False) as bar:
            def on_progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            t = time.perf_counter()
            stylize_file(clip, output, stylizer, batch_size=batch_size, force=True, on_progress=on_progress)
            elapsed = time.perf_counter() - t
        with av.open(str(output)) as out:
            written = sum(1 for _ in out.demux(out.streams.video[0]) if _.size)
            has_audio = bool(out.streams.audio)
        if written != n or not has_audio:
            raise SystemExit(f"end-to-end output has {written} video frames (expected {n}), audio: {has_audio}")
        output.unlink()
        return elapsed

    net_times, e2e_times = [], []
    for _ in range(max(1, args.repeats)):
        net_times.append(network_only())
        e2e_times.append(end_to_end())

    cold = None
    if not args.skip_cold:
        print("cold first run in a fresh process ...", file=sys.stderr, flush=True)
        cold = run_child(args, clip, workdir / "out-cold.mp4", compile, child_env)

    rss = None
    if not args.skip_rss:
        rss = {count: [] for count in args.rss_frames}
        clips = {count: make_sample_video(workdir / f"rss-{count}.mp4", width=WIDTH, height=HEIGHT, frames=count, audio=True)
                 for count in args.rss_frames}
        for repeat in range(max(1, args.rss_repeats)):
            for count in args.rss_frames:
                print(f"peak-memory run, {count} frames ({repeat + 1}/{args.rss_repeats}) ...", file=sys.stderr, flush=True)
                rss[count].append(run_child(args, clips[count], workdir / f"rss-out-{count}.mp4", args.compile_rss,
                                            dict(child_env, MALLOC_MMAP_THRESHOLD_="1048576")))

    fidelity = None
    if dtype is not None:
        # The same frames through the same weights in float32 (eager): what reduced precision changes.
        import numpy as np

        exact = Stylizer(build_network(args.style), device, compile=False, precision="fp32")(batches[0]).astype(np.float64)
        error = exact - stylizer(batches[0])
        fidelity = (10 * np.log10(255 ** 2 / max(np.mean(error ** 2), 1e-12)), np.abs(error).max(), np.mean(error != 0))

    net_fps = [n / s for s in net_times]
    e2e_fps = [n / s for s in e2e_times]
    net_best, e2e_best = max(net_fps), max(e2e_fps)
    ratio = e2e_best / net_best
    median_ratio = statistics.median(e2e_fps) / statistics.median(net_fps)
    pair_ratios = [e / w for e, w in zip(e2e_fps, net_fps)]

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print()
    print("== results (measured in this run unless marked) ==")
    print(f"warm-up (first call{', torch.compile' if compile else ''}): {warmup_s:.1f} s for {len(batches[0])} frames"
          + (f"; +{extra_warmup_s:.1f} s for the last batch of {len(batches[-1])}" if extra_warmup_s else ""))
    if fidelity is not None:
        print(f"{precision} vs float32 output: PSNR {fidelity[0]:.1f} dB, max abs difference {fidelity[1]:.0f} levels, "
              f"{fidelity[2]:.1%} of values differ  ({len(batches[0])} frames)")
    print(f"network-only: {net_best:.2f} frames/s  (best of {len(net_fps)}: {listed(net_fps)}; median {statistics.median(net_fps):.2f})")
    print(f"end-to-end: {e2e_best:.2f} frames/s  (warm Stylizer, best of {len(e2e_fps)}: {listed(e2e_fps)}; "
          f"median {statistics.median(e2e_fps):.2f})")
    print(f"ratio: {ratio:.2f}  (end-to-end / network-only, best/best; median/median {median_ratio:.2f}; "
          f"per pair: {listed(pair_ratios)}; target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    if cold is not None:
        print(f"first run incl. compile: {cold['stylize_s']:.1f} s for {cold['frames']} frames = "
              f"{cold['frames'] / cold['stylize_s']:.2f} frames/s  (fresh process and compile cache; first batch after "
              f"{cold['first_batch_s']:.1f} s; whole process {cold['process_s']:.1f} s incl. imports and setup)")
    print(f"reference: {REFERENCE_FPS:.2f} frames/s  (lengstrom/fast-style-transfer transform_video, TensorFlow, "
          f"end to end on this machine: a constant from an earlier measurement, NOT measured in this run)")
    print(f"vs reference: {e2e_best / REFERENCE_FPS:.2f}x  (our warm end-to-end / reference)"
          + (f"; first run incl. compile: {cold['frames'] / cold['stylize_s'] / REFERENCE_FPS:.2f}x" if cold else ""))
    if rss is not None:
        # Each figure is a whole process's peak; the same run repeated scatters by
        # tens of MB (the transient peak of the network's activations lands on
        # top of whatever heap glibc retained from earlier batches), hence the
        # repeats, medians, and the within-one-process comparison below.
        mode = "compile on" if args.compile_rss else "compile off"
        (short_n, shorts), (long_n, longs) = sorted(rss.items())
        medians = {}
        for count, runs in ((short_n, shorts), (long_n, longs)):
            peaks = [r["peak_rss_mb"] for r in runs]
            medians[count] = statistics.median(peaks)
            fps = statistics.median(r["frames"] / r["stylize_s"] for r in runs)
            print(f"peak RSS, {count} frames: {medians[count]:.0f} MB  (median of {len(peaks)}: "
                  f"{', '.join(f'{p:.0f}' for p in peaks)}; {mode}, {fps:.2f} frames/s)")
        growth = medians[long_n] - medians[short_n]
        pairs = [(a["peak_rss_mb"], b["peak_rss_mb"]) for a, b in zip(shorts, longs)]
        print(f"peak RSS difference: {growth:+.1f} MB  (medians, {long_n} - {short_n} frames; target < {TARGET_RSS_GROWTH_MB:.0f} MB: "
              f"{'met' if growth < TARGET_RSS_GROWTH_MB else 'NOT met'}; pairwise "
              f"{', '.join(f'{b - a:+.0f}' for a, b in pairs)})")
        # The same comparison inside each long run's one process: its peak after
        # the first SHORT frames against its peak at the end.
        within = []
        for run in longs:
            marks = sorted((int(k), v) for k, v in run["peak_after"].items())
            at_short = next((v for k, v in marks if k >= short_n), None)
            if at_short is not None:
                within.append((at_short, marks[-1][1]))
        if within:
            print(f"peak RSS within each {long_n}-frame run, after {short_n} frames -> at the end: "
                  + ", ".join(f"{a:.0f} -> {b:.0f} MB ({b - a:+.0f})" for a, b in within))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.keep:
        print(f"files kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
