"""The tasks: a job, run by the same `stylize_file` as the embedded mode, whole
or split into segments over several workers.

The message carries only the job id; everything else is in the job record. The
output name is the job's own (`force=True`: submit refused an existing output),
and the partial file is named after the job, so a redelivered job replaces the
partial file of the attempt that died instead of leaving a second one.

A long job is split by its first task into keyframe-aligned segments: a Celery
chord of one task per segment (any worker on the job's queue takes them) whose
callback joins the segment files into the output without re-encoding. The
segment files live in a hidden folder beside the output, removed when the job
ends in any way.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from pathlib import Path

import redis
from celery import Task, chord
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from vidstyle import formats
from vidstyle.config import setting
from vidstyle.errors import VidstyleError
from vidstyle.inference import Stylizer, resolve_device
from vidstyle.jobs import AUTO, CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, JobStore
from vidstyle.pipeline import EncodeOptions, Span, is_image, partial_file, probe_video, stylize_file
from vidstyle.segments import join_segments, plan_spans
from vidstyle.styles import find_style
from workers.celery import app
from workers.celeryconfig import JOIN_TASK_NAME, SEGMENT_TASK_NAME, TASK_NAME
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
    """The pipeline's on_progress callback for one job, or one segment of it:
    frames, fps and ETA to the job record at a bounded rate, and a stop when the
    user cancels the job (or another segment failed)."""

    def __init__(self, store: JobStore, job_id: str, segment: int | None = None) -> None:
        self.store, self.job_id, self.segment = store, job_id, segment
        self.started = time.monotonic()
        self.last_report = float("-inf")
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.done = done
        # (The last batch of a known total is always reported; 0 is an unknown total, see complete.)
        if now - self.last_report < PROGRESS_INTERVAL_SECONDS and (done < total or not total):
            return
        self.last_report = now
        if self.segment is not None:
            stop = self.store.report_segment_progress(self.job_id, self.segment, done)
        else:
            fps = done / max(now - self.started, 1e-6)
            stop = self.store.report_progress(self.job_id, done, total, fps, (total - done) / fps if fps and total else 0.0)
        if stop:
            raise JobCancelled

    def complete(self) -> None:
        """The job ran to its end: the frames done are the total (which MKV or WebM do not state before)."""
        fps = self.done / max(time.monotonic() - self.started, 1e-6)
        self.store.report_progress(self.job_id, self.done, self.done, fps, 0.0)


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


class SegmentTask(Task):
    """A segment that fails for good fails its job: the other segments stop at
    their next batch (the job is no longer running) and the files go."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id, index = args[0], args[1]
        _record_quietly(JobStore.finish, job_id, FAILED, f"segment {index}: {failure_reason(exc)}")
        _remove_segments_quietly(job_id)


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
    find_style(job.style)  # an unknown style fails first, whatever the input
    spans = _plan(job, input_path, store)
    if len(spans) > 1:
        # A redelivered first task finds the job split already and leaves it be.
        if store.split(job_id, len(spans), sum(span.frames for span in spans)):
            _start_segments(job, spans, output_path)
        return "split"
    store.set_current_job(self.request.hostname, os.getpid(), job_id)
    progress = JobProgress(store, job_id)
    try:
        stylize_file(input_path, output_path, stylizer_for(job.style), batch_size=job.batch_size or None,
                     encode=EncodeOptions(codec=job.codec, crf=job.crf, preset=job.preset),
                     force=True, on_progress=progress, partial_token=job_id,
                     temporal_strength=job.temporal_strength, sequence_fps=formats.parse_fps(job.sequence_fps))
        progress.complete()
        store.finish(job_id, SUCCEEDED)
        return SUCCEEDED
    except JobCancelled:
        store.finish(job_id, CANCELLED)
        return CANCELLED
    finally:
        store.set_current_job(self.request.hostname, os.getpid(), None)


def _plan(job: Job, input_path: Path, store: JobStore) -> list[Span]:
    """The job's segments: none (not split) unless it is a video long enough to share."""
    if job.segment_seconds == "off" or is_image(input_path) or not input_path.is_file():
        return []  # (a missing input fails in stylize_file, with the pipeline's message; a sequence is no file)
    if formats.is_sequence(Path(job.output)):
        return []  # segments are joined into one file
    probe_video(input_path)  # bad input fails here, with the pipeline's message
    if job.segment_seconds == AUTO:
        workers = sum(job.queue in w.queues.split(",") for w in store.live_workers())
        return plan_spans(input_path, workers=workers)
    return plan_spans(input_path, float(job.segment_seconds))


def _start_segments(job: Job, spans: list[Span], output_path: Path) -> None:
    """A chord: one task per segment, then the join once all have ended."""
    segment_dir(output_path, job.id).mkdir(exist_ok=True)
    bounds = [[span.start, span.end, span.frames] for span in spans]
    segments = [stylize_segment.si(job.id, index, *span).set(queue=job.queue) for index, span in enumerate(bounds)]
    chord(segments)(join_segments_task.si(job.id, bounds).set(queue=job.queue))


def segment_dir(output_path: Path, job_id: str) -> Path:
    return output_path.with_name(f".{output_path.name}.segments-{job_id}")


def _segment_path(output_path: Path, job: Job, index: int) -> Path:
    return segment_dir(output_path, job.id) / f"{index:05d}{formats.segment_suffix(job.codec)}"


def _remove_segments_quietly(job_id: str) -> None:
    try:
        job = JobStore.from_settings().find(job_id)
        if job is not None:
            shutil.rmtree(segment_dir(resolve_in_storage(job.output, storage_root()), job_id), ignore_errors=True)
    except (redis.RedisError, VidstyleError) as exc:
        logger.warning("job %s: segment files not removed: %s", job_id, exc)


@app.task(
    bind=True, base=SegmentTask, name=SEGMENT_TASK_NAME, ignore_result=False,  # the chord counts results
    throws=(VidstyleError, SoftTimeLimitExceeded),
    autoretry_for=TRANSIENT_ERRORS, dont_autoretry_for=PERMANENT_OS_ERRORS,
    retry_backoff=5, retry_backoff_max=300, retry_jitter=True, max_retries=5,
)
def stylize_segment(self: Task, job_id: str, index: int, start: int | None, end: int | None, frames: int) -> str:
    store = JobStore.from_settings()
    job = store.start_segment(job_id, index, worker=self.request.hostname)
    if job is None:
        return CANCELLED
    root = storage_root()
    input_path, output_path = resolve_in_storage(job.input, root), resolve_in_storage(job.output, root)
    store.set_current_job(self.request.hostname, os.getpid(), job_id)
    try:
        stylize_file(input_path, _segment_path(output_path, job, index), stylizer_for(job.style),
                     batch_size=job.batch_size or None, encode=EncodeOptions(codec=job.codec, crf=job.crf, preset=job.preset),
                     force=True, on_progress=JobProgress(store, job_id, segment=index), partial_token=job_id,
                     span=Span(start, end, frames), temporal_strength=job.temporal_strength)
        return SUCCEEDED
    except JobCancelled:
        return CANCELLED
    finally:
        store.set_current_job(self.request.hostname, os.getpid(), None)


@app.task(bind=True, base=JobTask, name=JOIN_TASK_NAME, throws=(VidstyleError,),
          autoretry_for=TRANSIENT_ERRORS, dont_autoretry_for=PERMANENT_OS_ERRORS, retry_backoff=5, max_retries=5)
def join_segments_task(self: Task, job_id: str, spans: list[list[int | None]]) -> str:
    """The chord's callback: every segment has ended (done, or stopped by a cancel)."""
    store = JobStore.from_settings()
    job = store.find(job_id)
    try:
        if job is None or job.state != RUNNING or job.cancel_requested:
            store.finish(job_id, CANCELLED)  # only if it is still running: a failed job stays failed
            return CANCELLED
        root = storage_root()
        input_path, output_path = resolve_in_storage(job.input, root), resolve_in_storage(job.output, root)
        segments = [(_segment_path(output_path, job, index), Span(*span)) for index, span in enumerate(spans)]
        missing = [str(index) for index, (path, _) in enumerate(segments) if not path.is_file()]
        if missing:
            raise VidstyleError(f"segments {', '.join(missing)} are missing (their files were removed)")
        started = time.monotonic()
        with partial_file(output_path, job_id) as partial:
            join_segments(input_path, segments, partial)
        store.transition(job_id, (RUNNING,), join_seconds=round(time.monotonic() - started, 3))
        store.finish(job_id, SUCCEEDED)
        return SUCCEEDED
    finally:
        _remove_segments_quietly(job_id)
