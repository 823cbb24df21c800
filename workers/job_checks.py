"""A job's fields checked again by the worker, by the worker's own rules, before it
touches a file for the job.

A job record is only what someone wrote to Redis: whoever holds the password can
write one. So a worker takes from it only an installed style's name (never a file),
paths that resolve under its own storage root after symlinks, an output that does
not exist yet (a worker creates outputs, it never replaces a file), and numbers in
range. `submit` applies the same rules, so that a user hears of a bad job at once.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from vidstyle import formats
from vidstyle.errors import VidstyleError
from vidstyle.trainer.data import find_images
from vidstyle.trainer.losses import STABILITY_MOTIONS
from vidstyle.workers.jobs import (AUTO, STYLE_TASK, TRAIN_STYLE_TASK, TRAIN_UPSCALER_TASK, TRAINING_TASKS, UPSCALE_TASK,
                                   Job)
from vidstyle.model import NETWORKS, UPSAMPLINGS, UPSCALE_FACTORS
from vidstyle.styles import FLEET_STYLES_FOLDER
from vidstyle.workers.storage import resolve_in_storage

MAX_BATCH_SIZE = 1024  # frames per network batch: far past any GPU's memory at video sizes
MAX_CRF = 63  # the widest scale among the encoders (VP9, AV1)
MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS = 0.1, 24 * 3600.0
MAX_SEGMENTS = 10_000  # tasks one job may put on the queue
# Job ids name files (partial outputs, segment folders) and glob patterns: no separators, no wildcards.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
QUEUE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
ENCODER_WORD = re.compile(r"[A-Za-z0-9_-]{0,32}")  # a codec or preset name; "" where there is none
# A painting travels as a copy named by its content (vidstyle.workers.client.store_painting).
PAINTINGS_FOLDER = ".paintings"
STORED_PAINTING = re.compile(re.escape(PAINTINGS_FOLDER) + r"/[0-9a-f]{64}\.[a-z0-9]{1,5}")
# A training runs in TRAINING_FOLDER/JOB_ID (checkpoints, log, sample grids) and publishes
# FLEET_STYLES_FOLDER/NAME.pth, NAME a plain name: never a path.
TRAINING_FOLDER = ".training"
STYLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_CROP_SIZE, MAX_STAGES, MAX_ITERATIONS = 4096, 16, 10_000_000


def check_fields(job: Job) -> None:
    """The job's names and numbers, each within the worker's rules; no file is touched."""
    _check_identity(job)
    if job.task not in (STYLE_TASK, UPSCALE_TASK):
        raise VidstyleError(f"task '{job.task}' is not a stylizing job's")
    if job.style and (job.style.endswith(".pth") or "/" in job.style or os.sep in job.style):
        raise VidstyleError(f"style '{job.style}' is a file; a job names an installed style")
    if job.factor and job.factor not in UPSCALE_FACTORS:
        raise VidstyleError(f"upscale factor {job.factor} is none of {', '.join(map(str, UPSCALE_FACTORS))}")
    if job.painting and not STORED_PAINTING.fullmatch(job.painting):
        raise VidstyleError(f"painting '{job.painting}' is not a painting's copy in {PAINTINGS_FOLDER}/")
    if job.style and job.painting:
        raise VidstyleError("the job names both a style and a painting")
    if job.network not in NETWORKS:
        raise VidstyleError(f"network '{job.network}' is none of {', '.join(NETWORKS)}")
    if not job.style and not job.painting and not job.factor:
        raise VidstyleError("the job names neither a style, a painting nor an upscale factor")
    for name, value in (("codec", job.codec), ("preset", job.preset)):
        if not ENCODER_WORD.fullmatch(value):
            raise VidstyleError(f"{name} '{value}' is not a {name} name")
    _in_range("crf", job.crf, 0, MAX_CRF)
    _in_range("batch size", job.batch_size, 0, MAX_BATCH_SIZE)
    _in_range("strength", job.strength, 0, 1)
    _in_range("temporal strength", job.temporal_strength, 0, 1)
    _in_range("segments", job.segments, 0, MAX_SEGMENTS)
    if job.segment_seconds not in (AUTO, "off"):
        _in_range("segment seconds", _number(job.segment_seconds, "segment seconds"),
                  MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS)
    if job.sequence_fps:
        formats.parse_fps(job.sequence_fps)


def _check_identity(job: Job) -> None:
    if not JOB_ID.fullmatch(job.id):
        raise VidstyleError(f"job id '{job.id}' is not a job id (letters, digits, '-' and '_')")
    if not QUEUE.fullmatch(job.queue):
        raise VidstyleError(f"queue '{job.queue}' is not a queue name")


def check_style_name(name: str) -> None:
    if not STYLE_NAME.fullmatch(name):
        raise VidstyleError(f"'{name}' is not a style name: letters, digits, '-' and '_' (no path, no extension)")


def published_weights(name: str) -> str:
    """Where a training publishes the network it makes, under the storage root."""
    return f"{FLEET_STYLES_FOLDER}/{name}.pth"


def _whole(low: int, high: int) -> Callable[[str, object], None]:
    def check(name: str, value: object) -> None:
        if not _integer(value) or not low <= value <= high:
            raise VidstyleError(f"recipe: {name} {value!r} is not a whole number within {low}..{high}")
    return check


def _real(low: float, high: float) -> Callable[[str, object], None]:
    def check(name: str, value: object) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or not low <= value <= high:
            raise VidstyleError(f"recipe: {name} {value!r} is not a number within {low:g}..{high:g}")
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str, object], None]:
    def check(name: str, value: object) -> None:
        if value not in choices:
            raise VidstyleError(f"recipe: {name} {value!r} is none of {', '.join(choices)}")
    return check


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise VidstyleError(f"recipe: {name} {value!r} is not true or false")


def _optional(check: Callable[[str, object], None]) -> Callable[[str, object], None]:
    return lambda name, value: None if value is None else check(name, value)


def _check_curriculum(name: str, value: object) -> None:
    if not (isinstance(value, list) and 1 <= len(value) <= MAX_STAGES
            and all(isinstance(stage, list) and len(stage) == 2 for stage in value)):
        raise VidstyleError(f"recipe: {name} is not a list of 1 to {MAX_STAGES} [crop size, iterations] stages")
    for size, iterations in value:
        _whole(16, MAX_CROP_SIZE)("crop size", size)
        _whole(1, MAX_ITERATIONS)("iterations", iterations)


def _check_init_from(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise VidstyleError(f"recipe: {name} {value!r} is not a style name")
    check_style_name(value)


# A training's recipe: TrainConfig's fields that define the run (vidstyle.trainer.config), each
# with its check. Where it runs (device, threads, run folder) is the worker's own affair.
_SHARED_RECIPE = {
    "curriculum": _check_curriculum, "batch_size": _whole(1, MAX_BATCH_SIZE), "lr": _real(0, 1),
    "final_lr": _optional(_real(0, 1)), "holdout": _whole(0, 1_000_000), "seed": _whole(0, 2**63 - 1),
    "log_every": _whole(1, MAX_ITERATIONS), "sample_every": _whole(1, MAX_ITERATIONS),
    "checkpoint_every": _whole(1, MAX_ITERATIONS), "precision": _optional(_one_of(("bf16", "fp32"))),
    "content_weight": _real(0, 1e12), "tv_weight": _real(0, 1e12),
}
RECIPE_CHECKS = {
    TRAIN_STYLE_TASK: _SHARED_RECIPE | {
        "style_size": _optional(_whole(16, 2 * MAX_CROP_SIZE)), "init_from": _optional(_check_init_from),
        "style_weight": _real(0, 1e12), "stability_weight": _real(0, 1e12),
        "stability_motion": _one_of(STABILITY_MOTIONS)},
    TRAIN_UPSCALER_TASK: _SHARED_RECIPE | {
        "pixel_weight": _real(0, 1e12), "grid_weight": _real(0, 1e12), "texture_weight": _real(0, 1e12),
        "max_blur": _optional(_real(0, 100)),
        "blocks": _optional(_whole(1, 64)), "upsampling": _optional(_one_of(UPSAMPLINGS)),
        "comb": _optional(_flag)},
}


def check_training_fields(job: Job) -> dict:
    """A training job's names and numbers, each within the worker's rules, no file touched;
    returns its recipe."""
    _check_identity(job)
    if job.task not in TRAINING_TASKS:
        raise VidstyleError(f"task '{job.task}' is not a training's")
    check_style_name(job.style)
    if job.output != published_weights(job.style):
        raise VidstyleError(f"a training publishes {published_weights(job.style)}, not '{job.output}'")
    if job.task == TRAIN_STYLE_TASK and not STORED_PAINTING.fullmatch(job.painting):
        raise VidstyleError(f"painting '{job.painting}' is not a painting's copy in {PAINTINGS_FOLDER}/")
    if job.task != TRAIN_STYLE_TASK and (job.painting or job.factor not in UPSCALE_FACTORS):
        raise VidstyleError(f"an upscaler's training names a factor ({', '.join(map(str, UPSCALE_FACTORS))}), "
                            "not a painting")
    if job.vgg_weights and not job.vgg_weights.endswith(".pth"):
        raise VidstyleError(f"VGG weights '{job.vgg_weights}' are not a .pth file")
    try:
        recipe = json.loads(job.recipe)
    except ValueError:
        recipe = None
    if not isinstance(recipe, dict) or "curriculum" not in recipe:
        raise VidstyleError("the training's recipe is not a JSON object with a curriculum")
    checks = RECIPE_CHECKS[job.task]
    for name, value in recipe.items():
        if name not in checks:
            raise VidstyleError(f"recipe: '{name[:40]}' is no setting of a {job.task} job")
        checks[name](name, value)
    return recipe


def check_dataset(name: str, root: Path, batch_size: int, holdout: int) -> Path:
    """A training's folder of photos under `root` (each photo too, after symlinks), with enough
    photos for a batch besides those held out."""
    folder = resolve_in_storage(name, root)
    photos = find_images(folder)
    for photo in photos:
        if not photo.resolve().is_relative_to(root):
            raise VidstyleError(f"photo {photo.relative_to(folder)} of '{name}' leads outside the storage root "
                                "through a symlink")
    if len(photos) - holdout < batch_size:
        raise VidstyleError(f"dataset '{name}' has {len(photos)} photos: {holdout} held out leave fewer than "
                            f"a batch of {batch_size}")
    return folder


def check_span(job: Job, index: object, span: object) -> None:
    """A segment's index and [start, end, frames] as a message carries them: within the job's split."""
    if not isinstance(index, int) or not 0 <= index < job.segments:
        raise VidstyleError(f"segment {index!r} is not one of the job's {job.segments}")
    if not (isinstance(span, list) and len(span) == 3 and all(v is None or _integer(v) for v in span[:2])
            and _integer(span[2]) and 0 <= span[2] <= job.frames_total):
        raise VidstyleError(f"segment {index}'s span {span!r} is not [start, end, frames] within the job")


def checked_paths(job: Job, root: Path) -> tuple[Path, Path]:
    """The job's input and output under `root` (after symlinks, frame by frame for an image
    sequence), its fields checked, its output not there yet."""
    check_fields(job)
    input_path, output_path = resolve_in_storage(job.input, root), resolve_in_storage(job.output, root)
    if formats.is_sequence(input_path) and input_path.parent.is_dir():
        for frame in input_path.parent.iterdir():
            if formats.frame_number(frame.name, input_path) is not None and not frame.resolve().is_relative_to(root):
                raise VidstyleError(f"frame {frame.name} of '{job.input}' leads outside the storage root through a symlink")
    check_new_output(output_path, job.output)
    return input_path, output_path


def check_new_output(path: Path, name: str) -> None:
    """Refused if the output (an image sequence: frames of it in its folder) is already there:
    a worker writes only files its job creates."""
    if formats.is_sequence(path):
        there = path.parent.is_dir() and any(formats.frame_number(f.name, path) is not None for f in path.parent.iterdir())
    else:
        there = path.exists() or path.is_symlink()
    if there:
        raise VidstyleError(f"output '{name}' exists; a worker never replaces a file (remove it, or submit with --force)")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # (NaN is in no range)
        raise VidstyleError(f"{name} {value:g} is outside {low:g}..{high:g}")


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise VidstyleError(f"{name} '{text}' is not auto, off or a number") from None


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
