"""Time to the first result: `vidstyle submit` from the command to its output, and to its first stylized batch.

    python benchmarks/startup.py [--long-frames 1000] [--long-only] [--style udnie] [--keep]

Every case is a fresh process running the real command (`vidstyle submit INPUT
--style STYLE`, 640x360 inputs made here: a PNG still, a 72-frame clip and a long
one), with its own compile cache folder (VIDSTYLE_CACHE_DIR):

- cold: an empty cache folder;
- warm: the folder a forced-compile run of the same frame and batch size filled
  (the long clip reuses the 72-frame clip's: same 640x360 batches of 4);

and three settings: the default (vidstyle decides), --no-compile, --compile.
The child runs vidstyle.cli's main with Stylizer.__call__ wrapped to note when
its first batch returns; both times count from the parent's launch of the child.

Targets (issue 23): the still within 1.2x the eager time; the 72-frame clip no
slower than eager, cold or warm; the long clip within 10% of the warm compiled
run. All figures come from one run; the ratios are what to compare on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 640, 360
SETTINGS = {"default": [], "no-compile": ["--no-compile"], "compile": ["--compile"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short-frames", type=int, default=72, help="frames of the short clip [72]")
    p.add_argument("--long-frames", type=int, default=1000, help="frames of the long clip [1000]")
    p.add_argument("--style", default="udnie", help="style to apply [udnie]")
    p.add_argument("--long-only", action="store_true",
                   help="only the long clip's cases (its warm cache from a forced compile of the short clip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    return p.parse_args(argv)


def child(started: float, report: str, cli_args: list[str]) -> None:
    """Run `vidstyle` with these arguments here; write when its first batch came back, and whether it compiled."""
    from vidstyle import cli, inference

    call = inference.Stylizer.__call__
    seen: dict = {}

    def noting_first_batch(self, frames, *controls):
        out = call(self, frames, *controls)
        if "first_batch" not in seen:
            seen.update(first_batch=time.time() - started, compiled=self.compiles(*frames.shape[1:3]))
            Path(report).write_text(json.dumps(seen))
        return out

    inference.Stylizer.__call__ = noting_first_batch
    sys.argv = ["vidstyle", *cli_args]
    cli.main()


def run_case(input_path: Path, output: Path, setting: str, cache: Path, style: str) -> dict:
    report = output.with_suffix(".json")
    env = {**os.environ, "VIDSTYLE_CACHE_DIR": str(cache)}
    env.pop("VIDSTYLE_COMPILE", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    started = time.time()
    subprocess.run([sys.executable, __file__, "--child", str(started), str(report),
                    "submit", str(input_path), "--style", style, "-o", str(output), "--force", *SETTINGS[setting]],
                   env=env, check=True)
    total = time.time() - started
    return {"total": total, **json.loads(report.read_text())}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # internal: one case, `--child STARTED REPORT vidstyle-arguments...`
        child(float(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    args = parse_args()
    from PIL import Image

    from vidstyle.sample import make_sample_video, sample_frame

    workdir = Path(tempfile.mkdtemp(prefix="vidstyle-startup-"))
    still = workdir / "still.png"
    Image.fromarray(sample_frame(0, WIDTH, HEIGHT)).save(still)
    inputs = {
        "still": still,
        f"{args.short_frames} frames": make_sample_video(workdir / "short.mp4", frames=args.short_frames),
        f"{args.long_frames} frames": make_sample_video(workdir / "long.mp4", frames=args.long_frames),
    }
    # (input, setting, cache): "cold" is a new empty folder; "warm" is the folder the input's
    # (or, for the long clip, the short clip's) cold forced-compile run left.
    plan = [(list(inputs)[1], "compile", "cold")] if args.long_only else []
    for name in [] if args.long_only else list(inputs)[:2]:
        plan += [(name, "no-compile", "cold"), (name, "default", "cold"), (name, "compile", "cold"),
                 (name, "default", "warm"), (name, "compile", "warm")]
    long_name = list(inputs)[2]
    plan += [(long_name, "no-compile", "cold"), (long_name, "default", "cold"),
             (long_name, "default", "warm"), (long_name, "compile", "warm")]
    warm_folder = {}
    results = {}
    print(f"{'input':<12} {'setting':<11} {'cache':<5} {'compiled':<8} {'first batch s':>13} {'output s':>9}", flush=True)
    for index, (name, setting, cache) in enumerate(plan):
        folder = workdir / f"cache-{index}"
        if cache == "warm":
            folder = warm_folder[name if name in warm_folder else list(inputs)[1]]
        elif setting == "compile":
            warm_folder[name] = folder
        suffix = ".png" if name == "still" else ".mp4"
        result = run_case(inputs[name], workdir / f"out-{index}{suffix}", setting, folder, args.style)
        results[name, setting, cache] = result
        print(f"{name:<12} {setting:<11} {cache:<5} {str(result['compiled']):<8} {result['first_batch']:>13.1f} "
              f"{result['total']:>9.1f}", flush=True)

    def ratio(name: str, a: tuple[str, str], b: tuple[str, str]) -> float:
        return results[(name, *a)]["total"] / results[(name, *b)]["total"]

    short_name = list(inputs)[1]
    eager = ("no-compile", "cold")
    print("\nratios of the time to the output (one run):")
    if not args.long_only:
        print(f"  still, default / --no-compile: {ratio('still', ('default', 'cold'), eager):.2f} (target <= 1.2)")
        print(f"  still, --compile cold / --no-compile: {ratio('still', ('compile', 'cold'), eager):.2f}, "
              f"warm: {ratio('still', ('compile', 'warm'), eager):.2f}")
        for cache in ("cold", "warm"):
            print(f"  {short_name}, default {cache} / --no-compile: {ratio(short_name, ('default', cache), eager):.2f} "
                  f"(target <= 1.0); --compile {cache}: {ratio(short_name, ('compile', cache), eager):.2f}")
    for cache in ("cold", "warm"):
        print(f"  {long_name}, default {cache} / --compile warm: "
              f"{ratio(long_name, ('default', cache), ('compile', 'warm')):.2f} (target <= 1.1)")
    print(f"  {long_name}, --no-compile / --compile warm: {ratio(long_name, eager, ('compile', 'warm')):.2f}")

    def throughput(case: tuple[str, str]) -> float:  # frames/s after the first batch of 4
        result = results[(long_name, *case)]
        return (args.long_frames - 4) / (result["total"] - result["first_batch"])

    for cache in ("cold", "warm"):
        print(f"  {long_name}, frames/s after the first batch, default {cache} / --compile warm: "
              f"{throughput(('default', cache)) / throughput(('compile', 'warm')):.2f} (target >= 0.9)")
    if args.keep:
        print(f"kept {workdir}")
    else:
        import shutil
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
