"""The stylize task: one job, run by the same `stylize_file` as the embedded mode.

The message carries only the job id; everything else is in the job record. The
output name is the job's own (`force=True`: submit refused an existing output),
and the partial file is named after the job, so a redelivered job replaces the
partial file of the attempt that died instead of leaving a second one.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from vidstyle.config import setting
from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer, resolve_device
from vidstyle.jobs import CANCELLED, FAILED, SUCCEEDED, JobStore
from vidstyle.pipeline import EncodeOptions, stylize_file
from vidstyle.styles import find_style
from workers.celery import app
from workers.celeryconfig import TASK_NAME
from workers.storage import resolve_in_storage, storage_root

PROGRESS_INTERVAL_SECONDS = 1 / 3  # job record updates: a few a second, whatever the frame rate
STYLIZER_CACHE_SIZE = 2  # networks kept per pool process; each is small, its compiled graphs are not

# Worth another attempt: the broker, the job store or the shared filesystem
# hiccuped. Bad input never gets here: the pipeline reports it as VidstyleError.
TRANSIENT_ERRORS = (OSError, redis.ConnectionError, redis.TimeoutError, OperationalError)
# OSErrors that a retry would only repeat.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised from the progress callback: the pipeline stops and removes its partial output."""


class JobProgress:
    """The pipeline's on_progress callback for one job: frames, fps and ETA to the
    job record at a bounded rate, and a stop when the user cancels the job."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.started = time.monotonic()
        self.last_report = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last_report < PROGRESS_INTERVAL_SECONDS and done < total:
            return
        self.last_report = now
        fps = done / max(now - self.started, 1e-6)
        if self.store.report_progress(self.job_id, done, total, fps, (total - done) / fps if fps else 0.0):
            raise JobCancelled


@functools.lru_cache(maxsize=STYLIZER_CACHE_SIZE)
def _cached_stylizer(weights_path: Path, modified_ns: int, device: str) -> Stylizer:
    """Keyed by the weights file and its mtime too, so a retrained style is reloaded."""
    return Stylizer(find_style(str(weights_path)).load_network(), resolve_device(device))


def stylizer_for(style_name: str) -> Stylizer:
    style = find_style(style_name)
    device = str(resolve_device(setting("VIDSTYLE_DEVICE")))
    return _cached_stylizer(style.weights_path, style.weights_path.stat().st_mtime_ns, device)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, VidstyleError):
        return str(exc)
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return f"took longer than the job time limit ({app.conf.task_time_limit:.0f} s, VIDSTYLE_JOB_TIME_LIMIT)"
    return f"{type(exc).__name__}: {exc}"


class JobTask(Task):
    """Keeps the job record in step with Celery's view of the task."""

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        _record_quietly(JobStore.requeue, task_id, failure_reason(exc))

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        _record_quietly(JobStore.finish, task_id, FAILED, failure_reason(exc))


def _record_quietly(method, job_id: str, *args: str) -> None:
    """Update a job record from a failure path: the store may be what failed."""
    try:
        method(JobStore.from_settings(), job_id, *args)
    except redis.RedisError as exc:
        logger.warning("job %s: record not updated: %s", job_id, exc)


@app.task(
    bind=True, base=JobTask, name=TASK_NAME,
    throws=(VidstyleError, SoftTimeLimitExceeded),  # expected failures: logged without a traceback
    autoretry_for=TRANSIENT_ERRORS, dont_autoretry_for=PERMANENT_OS_ERRORS,
    retry_backoff=5, retry_backoff_max=300, retry_jitter=True, max_retries=5,
)
def stylize(self: Task, job_id: str) -> str:
    store = JobStore.from_settings()
    job = store.start(job_id, worker=self.request.hostname)
    if job is None:
        logger.info("job %s: not run (cancelled, finished or expired)", job_id)
        return "skipped"
    if job.cancel_requested:
        store.finish(job_id, CANCELLED)
        return CANCELLED
    root = storage_root()
    input_path, output_path = resolve_in_storage(job.input, root), resolve_in_storage(job.output, root)
    store.set_current_job(self.request.hostname, os.getpid(), job_id)
    try:
        stylize_file(input_path, output_path, stylizer_for(job.style), batch_size=job.batch_size or None,
                     encode=EncodeOptions(codec=job.codec, crf=job.crf, preset=job.preset),
                     force=True, on_progress=JobProgress(store, job_id), partial_token=job_id)
        store.finish(job_id, SUCCEEDED)
        return SUCCEEDED
    except JobCancelled:
        store.finish(job_id, CANCELLED)
        return CANCELLED
    finally:
        store.set_current_job(self.request.hostname, os.getpid(), None)
