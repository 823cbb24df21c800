"""Submitting a job to the fleet, a stylizing or a training: check what the client can know (by the
rules workers check again, vidstyle.workers.job_checks), record the job, enqueue it."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from fractions import Fraction
from pathlib import Path

from kombu.exceptions import OperationalError

from vidstyle import formats
from vidstyle.errors import VidstyleError
from vidstyle.inference import Controls
from vidstyle.trainer.data import load_style_image
from vidstyle.workers.jobs import (AUTO, DEFAULT_QUEUE, STYLE_TASK, TRAIN_STYLE_TASK, TRAIN_UPSCALER_TASK, TRAINING_QUEUE,
                                   UPSCALE_TASK, Job, JobStore)
from vidstyle.media import EncodeOptions, check_input, check_output, default_output_path, is_image, output_encoder
from vidstyle.styles import available_styles, available_upscalers, find_style, find_treatment
from vidstyle.temporal import DEFAULT_STRENGTH
from vidstyle.workers.celery import app
from vidstyle.workers.celeryconfig import TASK_NAME, TRAIN_TASK_NAME
from vidstyle.workers.job_checks import (MAX_SEGMENT_SECONDS, MIN_SEGMENT_SECONDS, PAINTINGS_FOLDER, RECIPE_CHECKS,
                                         check_dataset, check_fields, check_style_name, check_training_fields,
                                         published_weights)
from vidstyle.workers.storage import relative_to_storage, storage_root


def submit_job(
    input_path: Path,
    style: str | None,
    *,
    painting: Path | None = None,
    upscale: str | None = None,
    output: Path | None = None,
    encode: EncodeOptions = EncodeOptions(),
    batch_size: int | None = None,
    queue: str = DEFAULT_QUEUE,
    force: bool = False,
    segment_seconds: str = AUTO,
    temporal_strength: float = DEFAULT_STRENGTH,
    sequence_fps: Fraction = formats.DEFAULT_SEQUENCE_FPS,
    controls: Controls = Controls(),
    network: str | None = None,
) -> Job:
    """Queue `input_path` (under the storage root) for stylizing with `style` or any `painting`
    (a file anywhere: a copy travels with the job), then upscaling by `upscale` (a factor) if
    given, or only upscaling (neither); return the job record.

    segment_seconds: "auto", "off" or a number of seconds: how a long video is
    split over several workers (see vidstyle.workers.tasks); an image-sequence input is never split."""
    segment_seconds = parse_segment_seconds(segment_seconds)
    root = storage_root()
    input_name = relative_to_storage(input_path, root)
    check_input(root / input_name)
    for name, what in ((style, "--style names an installed style"), (upscale, "the factor names an installed upscaler")):
        if name is not None and (name.endswith(".pth") or os.sep in name):
            raise VidstyleError(f"with a broker, {what} (see `vidstyle styles`), not a file: {name}")
    chosen = find_treatment(style, upscale, painting, network)  # a bad painting fails here, before anything is stored
    output = output or default_output_path(input_path, chosen.name)
    output_name = relative_to_storage(output, root)
    if formats.is_sequence(output) and "/" not in output_name:  # its folder would be the storage root
        raise VidstyleError(f"an image sequence is written into a folder of its own: -o FOLDER/{output.name}")
    check_output(root / output_name, force)
    # Named in the job, so that a split job's segments and their join agree on it.
    codec = (encode.codec or "") if is_image(input_path) else output_encoder(input_path, output, encode.codec, sequence_fps)
    job = Job(id=secrets.token_hex(6), input=input_name, output=output_name, style=style or "", queue=queue,
              codec=codec, crf=encode.crf, preset=encode.preset, batch_size=batch_size or 0,
              painting=store_painting(painting, root) if painting is not None else "",
              painting_name=painting.name if painting is not None else "",
              task=STYLE_TASK if style is not None or painting is not None else UPSCALE_TASK,
              factor=chosen.upscaler.factor if chosen.upscaler is not None else 0,
              segment_seconds=segment_seconds, temporal_strength=temporal_strength, sequence_fps=str(sequence_fps),
              strength=controls.strength, preserve_colors=controls.preserve_colors, network=network or "auto")
    check_fields(job)
    store = JobStore.from_settings()
    store.create(job)
    if force:  # once the job store has taken the job, before a worker can
        remove_output(root / output_name)
    enqueue(job, store)
    return job


def submit_training(name: str, settings: dict, *, queue: str = TRAINING_QUEUE, force: bool = False) -> Job:
    """Queue a training of `name` on the fleet. `settings` are vidstyle.trainer.config.TrainConfig's
    as `vidstyle train` or `train-upscaler` gives them: the painting (`style_image`, a file anywhere:
    a copy travels with the job) or the `factor`, the `dataset` and `vgg_weights` (both under the
    storage root) and the recipe. Whatever is wrong fails here and nothing is queued: a name with
    path characters or already taken (unless `force`), a painting that is no image, a dataset outside
    the storage root or with fewer photos than a batch."""
    root = storage_root()
    settings = dict(settings)
    painting, factor = settings.pop("style_image", None), settings.pop("factor", None)
    task = TRAIN_STYLE_TASK if factor is None else TRAIN_UPSCALER_TASK
    check_style_name(name)
    taken = {*available_styles(), *(upscaler.name for upscaler in available_upscalers().values())}
    if not force and (name in taken or (root / published_weights(name)).exists()):
        raise VidstyleError(f"a style or upscaler named '{name}' exists (see `vidstyle styles`): choose another "
                            "--name, or --force to replace it once trained")
    size, iterations = settings.pop("image_size"), settings.pop("iterations")
    settings["curriculum"] = [list(stage) for stage in settings["curriculum"] or ((size, iterations),)]
    dataset, vgg_weights = settings.pop("dataset"), settings.pop("vgg_weights", None)
    others = [key for key, value in settings.items() if key not in RECIPE_CHECKS[task] and value is not None]
    if others:
        raise VidstyleError(f"{', '.join('--' + key.replace('_', '-') for key in others)}: not taken by a training on the fleet")
    recipe = {key: value for key, value in settings.items() if key in RECIPE_CHECKS[task]}
    if recipe.get("init_from") is not None:
        find_style(recipe["init_from"])  # an installed style, by name: the workers look it up so too
    if painting is not None:
        load_style_image(painting, 64)  # an image at all, read as the worker will
    vgg_name = relative_to_storage(vgg_weights, root) if vgg_weights else ""
    if vgg_name and not (root / vgg_name).is_file():
        raise VidstyleError(f"VGG weights not found: {vgg_weights}")
    dataset_name = relative_to_storage(dataset, root)
    check_dataset(dataset_name, root, recipe.get("batch_size", 1), recipe.get("holdout", 0))
    job = Job(id=secrets.token_hex(6), input=dataset_name, output=published_weights(name), style=name, queue=queue,
              codec="", crf=0, preset="", task=task, factor=factor or 0,
              painting=store_painting(painting, root) if painting is not None else "",
              painting_name=painting.name if painting is not None else "", recipe=json.dumps(recipe),
              vgg_weights=vgg_name, replace=force, iterations=sum(stage[1] for stage in recipe["curriculum"]))
    check_training_fields(job)
    store = JobStore.from_settings()
    store.create(job)
    enqueue(job, store, TRAIN_TASK_NAME)
    return job


def store_painting(painting: Path, root: Path) -> str:
    """The painting copied under the storage root, named by its content (one copy however many jobs
    use it), written under a temporary name then renamed; returns its storage-relative name."""
    digest = hashlib.sha256(painting.read_bytes()).hexdigest()
    name = f"{PAINTINGS_FOLDER}/{digest}{painting.suffix.lower() or '.img'}"
    stored = root / name
    if not stored.is_file():
        stored.parent.mkdir(exist_ok=True)
        partial = stored.with_name(f".{stored.name}.{secrets.token_hex(4)}.part")
        shutil.copyfile(painting, partial)
        os.replace(partial, stored)
    return name


def parse_segment_seconds(value: str) -> str:
    if value in (AUTO, "off"):
        return value
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not MIN_SEGMENT_SECONDS <= seconds <= MAX_SEGMENT_SECONDS:
        raise VidstyleError(f"--segment-seconds must be auto, off or a number of seconds from {MIN_SEGMENT_SECONDS:g} "
                            f"to {MAX_SEGMENT_SECONDS:g}, not '{value}'")
    return f"{seconds:g}"


def remove_output(path: Path) -> None:
    """`--force` with a broker: the existing output goes here, by the user's hand, since a worker
    never writes over a file its job did not create (vidstyle.workers.job_checks)."""
    if formats.is_sequence(path):
        frames = [f for f in path.parent.iterdir() if formats.frame_number(f.name, path) is not None] \
            if path.parent.is_dir() else []
        for frame in frames:
            frame.unlink()
    elif path.is_dir() and not path.is_symlink():
        raise VidstyleError(f"output {path} is a folder")
    else:
        path.unlink(missing_ok=True)


def enqueue(job: Job, store: JobStore, task_name: str = TASK_NAME) -> None:
    """Publish the job's message; a job that could not be queued is no job at all."""
    try:
        app.send_task(task_name, args=[job.id], task_id=job.id, queue=job.queue)
    except OperationalError:
        store.delete(job.id)
        raise
