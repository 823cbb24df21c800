"""A job's fields checked again by the worker, by the worker's own rules, before it
touches a file for the job.

A job record is only what someone wrote to Redis: whoever holds the password can
write one. So a worker takes from it only an installed style's name (never a file),
paths that resolve under its own storage root after symlinks, an output that does
not exist yet (a worker creates outputs, it never replaces a file), and numbers in
range. `submit` applies the same rules, so that a user hears of a bad job at once.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vidstyle import formats
from vidstyle.errors import VidstyleError
from vidstyle.workers.jobs import AUTO, Job
from vidstyle.model import NETWORKS, UPSCALE_FACTORS
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


def check_fields(job: Job) -> None:
    """The job's names and numbers, each within the worker's rules; no file is touched."""
    if not JOB_ID.fullmatch(job.id):
        raise VidstyleError(f"job id '{job.id}' is not a job id (letters, digits, '-' and '_')")
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
    for name, value in (("queue", job.queue), ("codec", job.codec), ("preset", job.preset)):
        pattern = QUEUE if name == "queue" else ENCODER_WORD
        if not pattern.fullmatch(value):
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
