"""Training jobs: a style from a painting, or an upscaler, trained on the fleet by the loop of
`vidstyle train` (vidstyle.trainer.train) and published into the fleet's styles folder.

The run lives under the storage root, in TRAINING_FOLDER/JOB_ID (checkpoint.pt, log.jsonl,
samples/). A worker that dies is handled as for any job (vidstyle.workers.heartbeat puts the job
back), and the next attempt resumes from the last checkpoint: the loop's resume is exact, so the
result is an uninterrupted run's. Checkpoints come every `checkpoint_every` iterations of the recipe
and at least every VIDSTYLE_CHECKPOINT_SECONDS, so a death costs at most that much.

A cancel stops the loop at its next iteration, which writes a checkpoint first; SIGTERM (to the pool
process, as `--on-term requeue` sends it) does the same and hands the job back. The trained network
lands in the fleet's styles folder (vidstyle.styles.FLEET_STYLES_FOLDER) as NAME.pth and its model
card, each written under a temporary name and renamed into place, the card first: the weights'
rename is the moment the style appears to every client and worker sharing the storage, which look
for styles at each job (no restart).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from celery import Task

from vidstyle.errors import VidstyleError
from vidstyle.settings import seconds, setting
from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.train import STOPPED_BY_CALLER, TrainingProgress, train
from vidstyle.workers.celery import app
from vidstyle.workers.celeryconfig import TRAIN_TASK_NAME
from vidstyle.workers.identity import worker_device, worker_id
from vidstyle.workers.job_checks import TRAINING_FOLDER, check_dataset, check_training_fields
from vidstyle.workers.jobs import SUCCEEDED, Attempt, Job, JobStore
from vidstyle.workers.storage import resolve_in_storage, storage_root
from vidstyle.workers.tasks import (RETRIED_TASK, AttemptReporter, JobCancelled, JobPreempted, JobTask, final_fields,
                                    preempted, run_whole_job, start_whole_job)


class TrainingReporter(AttemptReporter):
    """The training loop's on_iteration for one attempt: iteration, losses, speed, ETA and the latest
    sample grid to the job record; it asks the loop to stop (after a checkpoint) when the job is
    cancelled or the worker preempted."""

    def __init__(self, store: JobStore, attempt: Attempt, root: Path) -> None:
        super().__init__(store, attempt)
        self.root = root
        self.first: tuple[int, float] | None = None  # this attempt's first iteration, and when it ended

    def __call__(self, progress: TrainingProgress) -> bool:
        if preempted.is_set():
            return True
        now = time.monotonic()
        self.first = self.first or (progress.iteration, now)
        if not self.due(now, last=progress.iteration == progress.iterations):
            return False
        rate = (progress.iteration - self.first[0]) / max(now - self.first[1], 1e-6)
        eta = (progress.iterations - progress.iteration) / rate if rate else 0.0
        sample = progress.sample.relative_to(self.root).as_posix() if progress.sample else ""
        try:
            self.send(lambda: self.store.report_training(self.attempt, progress.iteration, progress.iterations,
                                                         progress.losses, rate, eta, sample))
        except JobCancelled:
            return True
        return False


def allow_photo_decoders() -> None:
    """A Celery pool process is daemonic, and Python refuses a daemonic process children; the training's
    photo decoders (DataLoader workers) are children the loop ends itself, and that exit with it."""
    multiprocessing.current_process().daemon = False


def vgg_weights(job: Job, root: Path) -> Path:
    """The job's VGG-16 weights under the storage root, else this worker's VIDSTYLE_VGG_WEIGHTS. Never a
    download: a fleet's workers are often offline, and a job's losses must not depend on which one ran it."""
    if job.vgg_weights:
        return resolve_in_storage(job.vgg_weights, root)
    configured = setting("VIDSTYLE_VGG_WEIGHTS")
    if not configured:
        raise VidstyleError(f"worker {worker_id()} has no VGG-16 weights for training: set VIDSTYLE_VGG_WEIGHTS on the "
                            "worker to a vgg16().features file with its JSON sidecar (docs/training.md), or submit "
                            "with --vgg-weights FILE under the storage root")
    return Path(configured).expanduser()


def training_config(job: Job, root: Path) -> TrainConfig:
    """The job's run as the training loop takes it, every field checked by this worker's rules first."""
    recipe = check_training_fields(job)
    recipe["curriculum"] = tuple(tuple(stage) for stage in recipe["curriculum"])
    dataset = check_dataset(job.input, root, recipe.get("batch_size", TrainConfig.batch_size),
                            recipe.get("holdout", TrainConfig.holdout))
    run_dir = resolve_in_storage(f"{TRAINING_FOLDER}/{job.id}", root)
    return TrainConfig(
        dataset=dataset, run_dir=run_dir, output=run_dir / f"{job.style}.pth", name=job.style,
        style_image=resolve_in_storage(job.painting, root) if job.painting else None, factor=job.factor or None,
        vgg_weights=vgg_weights(job, root), device=worker_device(), resume=(run_dir / "checkpoint.pt").is_file(),
        checkpoint_seconds=seconds("VIDSTYLE_CHECKPOINT_SECONDS"), **recipe)


def publish(config: TrainConfig, job: Job, root: Path) -> None:
    """The trained weights and their card, with the job's own entries, into the fleet's styles folder."""
    destination = resolve_in_storage(job.output, root)
    if (destination.exists() or destination.is_symlink()) and not job.replace:
        raise VidstyleError(f"style {job.style} was published while this job ran; its weights are in "
                            f"{config.output.relative_to(root)} (submit again with --force to replace it)")
    card = json.loads(config.output.with_suffix(".json").read_text())
    card["job"] = {"id": job.id, "attempts": job.attempts, "dataset": job.input}
    if job.painting_name:
        card["style_image"] = job.painting_name  # the user's name for it, not the content-named copy
    destination.parent.mkdir(exist_ok=True)
    card_partial = destination.with_name(f".{destination.stem}.json.{job.id}.part")
    weights_partial = destination.with_name(f".{destination.name}.{job.id}.part")
    card_partial.write_text(json.dumps(card, indent=2) + "\n")
    shutil.copyfile(config.output, weights_partial)
    os.replace(card_partial, destination.with_suffix(".json"))
    os.replace(weights_partial, destination)


@app.task(bind=True, base=JobTask, name=TRAIN_TASK_NAME, **RETRIED_TASK)
def train_network(self: Task, job_id: str) -> str:
    store, attempt, job = start_whole_job(self, job_id)
    root = storage_root()
    config = training_config(job, root)

    def work() -> str:
        reporter = TrainingReporter(store, attempt, root)
        allow_photo_decoders()
        stopped = train(config, reporter)
        if stopped == STOPPED_BY_CALLER and not preempted.is_set():
            raise JobCancelled
        if stopped is not None:  # preempted, or a signal: the checkpoint is written, the next worker resumes it
            raise JobPreempted
        reporter.before_commit()
        publish(config, job, root)
        store.end_unit(attempt, SUCCEEDED, job_fields=final_fields(SUCCEEDED))
        return SUCCEEDED

    return run_whole_job(self, store, attempt, job, work)
